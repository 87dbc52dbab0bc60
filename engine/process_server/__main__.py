from engine.agents import run_agent
from engine.process_server.service import serve

run_agent("process-server", serve)
