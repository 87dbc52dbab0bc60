"""Agent updates: versioned appliance agents, the signed update feed (TUF) and the updater.

- :mod:`engine.updater.package` — an agent package: its format, building one, unpacking one.
- :mod:`engine.updater.feed` — the update feed: a TUF repository read with ``tuf.ngclient``.
- :mod:`engine.updater.store` — the versions installed under the data directory, and the atomic switch.
- :mod:`engine.updater.service` — the updater the supervisor runs: checks, installs, health checks,
  rollbacks, the auto and manual modes.

docs/agent-updates.md has the design and the threat model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.records import UpdateMode
    from engine.state import StateDB

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

#: The agent whose versions the appliance serves to source servers.
MOBILITY_PACKAGE = "mobility-package"

#: The state database's key for the update mode; the agents and the mobility services follow the same one.
MODE_KEY = "updates_mode"


def update_mode(state: StateDB) -> UpdateMode:
    """The appliance's update mode: "auto" unless an admin chose "manual"."""
    return "manual" if state.get_meta(MODE_KEY) == "manual" else "auto"


def version_tuple(text: object) -> tuple[int, int, int] | None:
    """``"MAJOR.MINOR.PATCH"`` as a comparable tuple (digits only, each at most 9999); None if it is not one."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) <= 4 for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])
