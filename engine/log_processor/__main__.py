from engine.agents import run_agent
from engine.log_processor.service import serve

run_agent("log-processor", serve)
