"""Agent updates: versioned appliance agents, the signed update feed (TUF) and the updater.

- :mod:`engine.updater.package` — an agent package: its format, building one, unpacking one.
- :mod:`engine.updater.feed` — the update feed: a TUF repository read with ``tuf.ngclient``.
- :mod:`engine.updater.store` — the versions installed under the data directory, and the atomic switch.
- :mod:`engine.updater.service` — the updater the supervisor runs: checks, installs, health checks,
  rollbacks, the auto and manual modes.

docs/agent-updates.md has the design and the threat model.
"""

from __future__ import annotations

#: Every updatable agent, in the order an update of all of them installs them: the reader of a format
#: before its writer (log-processor before process-server), the appliance before its sources.
AGENT_ORDER: tuple[str, ...] = ("log-processor", "process-server", "replication-manager", "mobility-package")

#: How the admin knows each agent.
AGENT_TITLES: dict[str, str] = {
    "log-processor": "Log processor",
    "process-server": "Process server",
    "replication-manager": "Replication manager",
    "mobility-package": "Mobility package",
}

#: The module the supervisor runs for each agent; None for the mobility package, which the appliance serves to
#: source servers and never runs.
AGENT_MODULES: dict[str, str | None] = {
    "log-processor": "engine.log_processor",
    "process-server": "engine.process_server",
    "replication-manager": "engine.manager",
    "mobility-package": None,
}
