"""The supervisor's planned restarts of an agent process (a port change, an update, a rollback)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from engine.agents import AgentSpec
from engine.config import DataDir
from engine.events import EventHub
from engine.state import StateDB
from engine.supervisor import AgentProcess, Launch, Launcher


class _Sleeper(Launcher):
    """Starts a process that only sleeps, in place of an agent."""

    def launch(self, spec: AgentSpec) -> Launch:
        return Launch((sys.executable, "-c", "import time; time.sleep(120)"))


@pytest.mark.asyncio
async def test_overlapping_restarts_both_return_and_each_restarts_the_agent(tmp_path: Path) -> None:
    """Two restarts asked at once (a port change during an update) run one after the other: neither caller
    waits forever, and the process is replaced."""
    data = DataDir(tmp_path / "data")
    data.logs.mkdir(parents=True)
    data.run_dir.mkdir(parents=True)
    state = StateDB(data.state_db)
    spec = AgentSpec(name="sleeper", module="unused", version="1.0.0")
    agent = AgentProcess(spec, data, _Sleeper(data, {}), EventHub(state), lambda: None)
    runner = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(20):
            while agent.pid is None:
                await asyncio.sleep(0.05)
        first = agent.pid
        async with asyncio.timeout(30):
            await asyncio.gather(agent.restart("a port moved"), agent.restart("an update"))
            while agent.pid is None:
                await asyncio.sleep(0.05)
        assert agent.pid != first
        assert agent.restarts == 0, "a planned restart is not counted as a crash"
    finally:
        await agent.stop()
        async with asyncio.timeout(20):
            await runner
        state.close()
