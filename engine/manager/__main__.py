from engine.agents import run_agent
from engine.manager.service import serve

run_agent("replication-manager", serve)
