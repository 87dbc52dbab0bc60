"""process-server: the appliance agent on the data port (verify, compress, encrypt, cache, acknowledge)."""
