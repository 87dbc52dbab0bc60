"""Which agent versions work together: the feed's compatibility record and the rules that read it.

The feed publishes the target ``compatibility.json`` (written by ``tools/release.py``)::

    {"format": "godwit-compatibility", "version": 1,
     "agents": {NAME: {VERSION: {"links": {"management": "1.1", ...},
                                 "requires": {OTHER_NAME: "MIN_VERSION"}}}}}

``links`` are the link protocol versions the build speaks (from its package manifest); ``requires``
the oldest version of another agent it needs (the maintainer's ``--requires``; none by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import FeedInvalid
from engine.updater import AGENT_ORDER
from engine.updater.package import LINK_NAME, LINK_VERSION, parse_version

COMPATIBILITY_FORMAT = "godwit-compatibility"
COMPATIBILITY_VERSION = 1
#: The links two agents speak to each other, and who speaks each: both ends must speak the same major
#: version. (The ``agent`` link is between each process agent and the supervisor: see :func:`problems`.)
SHARED_LINKS: dict[str, tuple[str, str]] = {
    "management": ("replication-manager", "mobility-package"),
    "data": ("process-server", "mobility-package"),
}
#: The agents the supervisor runs, which speak the ``agent`` link to it.
PROCESS_AGENTS: tuple[str, ...] = tuple(name for name in AGENT_ORDER if name != "mobility-package")


def _invalid(why: str) -> FeedInvalid:
    return FeedInvalid(f"The update feed's compatibility.json is not valid ({why}): the release was published "
                       "wrongly; nothing was installed. Tell the feed's maintainer.")


def _major(version: str) -> int | None:
    match = LINK_VERSION.match(version)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class AgentRelease:
    """One published version of one agent, as the compatibility record knows it."""

    name: str
    version: str
    #: The link protocol versions this build speaks: ``{"management": "1.1", ...}``.
    links: dict[str, str]
    #: ``{other agent: oldest version of it this one needs}``.
    requires: dict[str, str]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class Compatibility:
    """The feed's compatibility record: every published version of every agent."""

    #: ``{agent name: {version: AgentRelease}}``.
    agents: dict[str, dict[str, AgentRelease]]

    def release(self, name: str, version: str) -> AgentRelease | None:
        return self.agents.get(name, {}).get(version)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": COMPATIBILITY_FORMAT,
            "version": COMPATIBILITY_VERSION,
            "agents": {
                name: {version: {"links": dict(sorted(r.links.items())), "requires": dict(sorted(r.requires.items()))}
                       for version, r in sorted(versions.items(), key=lambda item: parse_version(item[0]))}
                for name, versions in sorted(self.agents.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> Compatibility:
        """The record from its JSON values. Raises :class:`FeedInvalid` (an :class:`UpdateError`) naming the
        first thing wrong. Agents this version does not know are kept (a newer feed may add one)."""
        if not isinstance(data, dict):
            raise _invalid("not a JSON object")
        if data.get("format") != COMPATIBILITY_FORMAT:
            raise _invalid(f"format {str(data.get('format'))[:40]!r}, not {COMPATIBILITY_FORMAT!r}")
        if data.get("version") != COMPATIBILITY_VERSION:
            raise _invalid(f"version {str(data.get('version'))[:20]}, not {COMPATIBILITY_VERSION}: update this "
                           "appliance's updater first")
        agents = data.get("agents")
        if not isinstance(agents, dict):
            raise _invalid("no agents")
        out: dict[str, dict[str, AgentRelease]] = {}
        for name, versions in agents.items():
            if not isinstance(name, str) or not LINK_NAME.match(name) or not isinstance(versions, dict):
                raise _invalid(f"agent {str(name)[:40]!r} is not a name with its versions")
            out[name] = {}
            for version, entry in versions.items():
                what = f"{name} {str(version)[:20]}"
                try:
                    parse_version(version)
                except ValueError:
                    raise _invalid(f"{what} is not a version") from None
                if not isinstance(entry, dict):
                    raise _invalid(f"{what} is not an object")
                links, requires = entry.get("links", {}), entry.get("requires", {})
                if not isinstance(links, dict) or not all(
                        isinstance(k, str) and LINK_NAME.match(k) and isinstance(v, str) and LINK_VERSION.match(v)
                        for k, v in links.items()):
                    raise _invalid(f"{what} has links that are not {{name: \"MAJOR.MINOR\"}}")
                if not isinstance(requires, dict):
                    raise _invalid(f"{what} has requires that are not {{agent: version}}")
                for other, minimum in requires.items():
                    try:
                        ok = isinstance(other, str) and bool(LINK_NAME.match(other)) and bool(parse_version(minimum))
                    except ValueError:
                        ok = False
                    if not ok:
                        raise _invalid(f"{what} requires {str(other)[:40]} {str(minimum)[:20]}, not an agent and a "
                                       "version")
                out[name][version] = AgentRelease(name=name, version=version, links=dict(links),
                                                  requires=dict(requires))
        return cls(agents=out)


def problems(chosen: Mapping[str, AgentRelease], *, supervisor_links: Mapping[str, str]) -> list[str]:
    """One sentence per reason the agent versions in ``chosen`` (``{agent name: release}``) would not work
    together; empty if they do. ``supervisor_links`` are the running engine's link versions
    (``{"agent": "1.1", ...}``).

    The rules: (1) what a version ``requires`` must be met by the chosen version of that agent; (2) agents
    that share a link (management: replication-manager and mobility-package; data: process-server and
    mobility-package) speak the same major version of it; (3) every process agent speaks the supervisor's
    major version of the ``agent`` link. A link one side does not name is not judged (a build from before
    links were recorded). Pure: no I/O."""
    found: list[str] = []
    for name in sorted(chosen, key=_order):
        release = chosen[name]
        for other, minimum in sorted(release.requires.items()):
            have = chosen.get(other)
            if have is None:
                continue  # not part of this set: the caller checks against what is installed by passing it
            try:
                met = parse_version(have.version) >= parse_version(minimum)
            except ValueError:
                met = False
            if not met:
                found.append(f"{name} {release.version} needs {other} {minimum} or newer; {other} would be "
                             f"{have.version}. Update them together with Update all.")
    for link, (left, right) in SHARED_LINKS.items():
        a, b = chosen.get(left), chosen.get(right)
        if a is None or b is None or link not in a.links or link not in b.links:
            continue
        if _major(a.links[link]) != _major(b.links[link]):
            found.append(f"{left} {a.version} speaks the {link} protocol {a.links[link]} but {right} {b.version} "
                         f"speaks {b.links[link]}: they could not talk to each other. Update them together with "
                         "Update all.")
    supervisor_agent = supervisor_links.get("agent")
    if supervisor_agent is not None:
        for name in PROCESS_AGENTS:
            agent = chosen.get(name)
            if agent is None or "agent" not in agent.links:
                continue
            if _major(agent.links["agent"]) != _major(supervisor_agent):
                found.append(f"{name} {agent.version} speaks the agent link {agent.links['agent']} but "
                             f"this engine's supervisor speaks {supervisor_agent}: it could not be started. Update "
                             "Godwit itself first, or choose another version.")
    return found


def _order(name: str) -> int:
    return AGENT_ORDER.index(name) if name in AGENT_ORDER else len(AGENT_ORDER)
