"""The mobility service: runs on each source server, registers with the appliance, heartbeats."""
