"""replication-manager: the appliance agent on the management port (registration, heartbeats)."""
