"""log-processor: the appliance agent that applies cache segments to seed disks and keeps recovery points."""
