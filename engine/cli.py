"""The ``godwit`` command line (a stable contract: scripts run against it).

Admin commands talk to the running engine of ``--data-dir`` over its admin socket and print one
clear line on stderr with a non-zero exit on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

from engine import __version__
from engine.client import AdminClient
from engine.config import DataDir, EngineConfig, default_data_dir
from engine.diskspace import human_bytes
from engine.durations import age_text, duration_text, parse_duration, setting_text
from engine.errors import BadInput, EngineError, EngineNotRunning, UpdateError
from engine.files import write_atomically
from engine.links.admin import EventAdded, Hello, UpdatesChanged
from engine.ports import old_port_text
from engine.prerequisites import CHECKS as PREREQUISITE_CHECKS
from engine.records import (
    AgentUpdate,
    ApplianceHealth,
    Event,
    PortsStatus,
    ServerStatus,
    TargetStatus,
    UpdatesStatus,
    to_json,
)

EXIT_ERROR = 1


def _print_json(data: Any) -> None:
    print(json.dumps(to_json(data), indent=2))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _server_json(s: ServerStatus, now: float) -> dict[str, Any]:
    """A server as JSON, its RPO as of ``now`` (when it is printed), not as of when the engine answered."""
    data: dict[str, Any] = to_json(s)
    data["total_size"] = s.total_size
    data["rpo_seconds"] = s.rpo_at(now)
    return data


def _rpo_text(s: ServerStatus, now: float) -> str:
    """The RPO at ``now`` against the policy's threshold: "42 s (threshold 15m)"; "-" before there is one."""
    rpo = s.rpo_at(now)
    if rpo is None:
        return "-"
    if s.rpo_threshold is None:
        return duration_text(rpo)
    above = "above the threshold of" if rpo > s.rpo_threshold else "threshold"
    return f"{duration_text(rpo)} ({above} {setting_text(s.rpo_threshold)})"


_MOBILITY_STATES = {"up-to-date": "up to date", "update-available": "update available", "updating": "updating",
                    "update-failed": "update failed"}


def _mobility_text(s: ServerStatus) -> str:
    """The mobility version a server runs and where its update stands: "0.1.0 (update available)"."""
    version = s.mobility_version or s.agent_version
    state = _MOBILITY_STATES.get(s.mobility_update, s.mobility_update)
    return f"{version} ({state})" if state else version


def _date(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts is not None else "-"


# --- commands ----------------------------------------------------------------------------------
async def cmd_setup_show(client: AdminClient, args: argparse.Namespace) -> None:
    info = await client.setup()
    if args.json:
        _print_json(info)
        return
    print(f"Appliance id:     {info.appliance_id}\nPassphrase:       {info.passphrase}\n"
          f"CA fingerprint:   {info.ca_fingerprint}\nManagement port:  {info.management_port}\n"
          f"Data port:        {info.data_port}\nSecrets:          {info.secret_store}\n"
          f"Set-up completed: {_date(info.setup_completed_at) if info.setup_completed_at else 'not yet'}\n\n"
          f"Register a source server (write the passphrase to passphrase.txt there first):\n  {info.mobility_command}")
    if info.install_command:  # "" from an engine before admin 1.7
        print(f"\nOr install the self-contained mobility bundle from this appliance on a source without Python 3.11 "
              f"(passphrase in passphrase.txt where you run it; replace --disk /dev/sdX with its disks, one --disk "
              f"each; --name NAME may follow):\n  {info.install_command}")


async def cmd_setup_complete(client: AdminClient, args: argparse.Namespace) -> None:
    info = await client.complete_setup()
    if args.json:
        _print_json(info)
    else:
        print(f"First-run setup completed on {_date(info.setup_completed_at)}; the console no longer opens it by "
              "itself.")


async def cmd_setup_rotate(client: AdminClient, args: argparse.Namespace) -> None:
    info = await client.rotate_passphrase()
    if args.json:
        _print_json(info)
    else:
        print(f"New registration passphrase: {info.passphrase}\nRegistered servers keep working; new servers "
              "need this passphrase.")


async def cmd_vm_list(client: AdminClient, args: argparse.Namespace) -> None:
    servers = await client.servers()
    now = time.time()
    if args.json:
        print(json.dumps([_server_json(s, now) for s in servers], indent=2))
        return
    if not servers:
        print("No source servers are registered. `godwit setup show` prints the command to run on one.")
        return
    rows = [[s.name, s.state, s.health, s.os, str(len(s.disks)), human_bytes(s.total_size), _mobility_text(s),
             age_text(s.last_heartbeat, now), "-" if (rpo := s.rpo_at(now)) is None else duration_text(rpo)]
            for s in servers]
    print(_table(rows, ["NAME", "STATE", "HEALTH", "OS", "DISKS", "SIZE", "MOBILITY", "LAST HEARTBEAT", "RPO"]))


async def cmd_vm_show(client: AdminClient, args: argparse.Namespace) -> None:
    s = await client.server(args.name)
    now = time.time()
    if args.json:
        print(json.dumps(_server_json(s, now), indent=2))
        return
    print(f"Name:            {s.name}\nServer id:       {s.server_id}\nHost name:       {s.hostname}\n"
          f"Address:         {s.address or '-'}\nOS:              {s.os}\nMobility:        {_mobility_text(s)}\n"
          f"State:           {s.state}\nHealth:          {s.health}"
          + (f" ({s.health_cause}: {s.health_detail})" if s.health_cause else "")
          + f"\nLast heartbeat:  {age_text(s.last_heartbeat)}\nRegistered:      {age_text(s.registered_at)}")
    if s.replicating:
        cap = "none" if s.max_mbps is None else f"{s.max_mbps:g} Mbit/s"
        print(f"Policy:          {s.policy}\nRPO:             {_rpo_text(s, now)}\n"
              f"Last point:      {age_text(s.last_recovery_point, now)}\nBandwidth cap:   {cap}")
    print("Disks:")
    for d in s.disks:
        line = f"  {d.path}  {human_bytes(d.size)}"
        if s.replicating and d.bytes_done < d.bytes_total:
            phase = "resync" if d.phase == "resync" else "initial"  # engines before admin 1.3: initial only
            line += f"  {phase} {100 * d.bytes_done / d.bytes_total:.0f}% ({human_bytes(d.bytes_done)})"
            if d.throughput_bps:
                line += f"  {human_bytes(int(d.throughput_bps))}/s"
            if d.eta_seconds is not None:
                line += f"  ETA {d.eta_seconds:.0f} s"
        print(line)
        if d.note:
            print(f"    points: {d.note}")


def _step_text(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 60 else duration_text(seconds)


def _rate_text(bps: float) -> str:
    return f"{human_bytes(int(bps))}/s" if bps >= 1 else "0"


async def cmd_vm_history(client: AdminClient, args: argparse.Namespace) -> None:
    history = await client.server_history(args.name, args.span)
    if args.json:
        _print_json(history)
        return
    if not history.samples:
        print(f"No samples of {history.name} yet: the engine keeps them from when it started (one every "
              f"{_step_text(history.step_seconds)} for the last {args.span}).")
        return
    clock = "%H:%M:%S" if history.step_seconds < 60 else "%H:%M"
    rows = [[time.strftime(clock, time.localtime(x.at)), _rate_text(x.received_bps), _rate_text(x.applied_bps),
             "-" if x.rpo_seconds is None else duration_text(x.rpo_seconds)] for x in history.samples]
    print(f"{history.name}, last {args.span}, one sample every {_step_text(history.step_seconds)}:")
    print(_table(rows, ["TIME", "IN", "APPLIED", "RPO"]))


async def cmd_vm_update_mobility(client: AdminClient, args: argparse.Namespace) -> None:
    servers = await client.update_mobility(args.names)
    if args.json:
        now = time.time()
        print(json.dumps([_server_json(s, now) for s in servers], indent=2))
        return
    for s in servers:
        if s.mobility_update == "up-to-date":
            print(f"{s.name}: mobility {s.mobility_version} is up to date.")
        else:
            print(f"{s.name}: runs mobility {s.mobility_version}; it installs the version the appliance offers at "
                  "its next heartbeat (`godwit vm list` shows when it is done).")


async def cmd_vm_forget(client: AdminClient, args: argparse.Namespace) -> None:
    await client.forget_server(args.name)
    print(f"{args.name} is forgotten: its certificate is revoked and the appliance refuses it from now on.")


async def cmd_policy_list(client: AdminClient, args: argparse.Namespace) -> None:
    policies = await client.policies()
    if args.json:
        _print_json(policies)
        return
    rows = [[p.name, setting_text(p.rpo_threshold), setting_text(p.retention),
             setting_text(p.crash_consistent_every), setting_text(p.app_consistent_every)] for p in policies]
    print(_table(rows, ["NAME", "RPO THRESHOLD", "RETENTION", "CRASH-CONSISTENT", "APP-CONSISTENT"]))


async def cmd_policy_show(client: AdminClient, args: argparse.Namespace) -> None:
    p = await client.policy(args.name)
    if args.json:
        _print_json(p)
        return
    print(f"Name:                    {p.name}\nRPO threshold:           {setting_text(p.rpo_threshold)}\n"
          f"Retention:               {setting_text(p.retention)}\n"
          f"Crash-consistent every:  {setting_text(p.crash_consistent_every)}\n"
          f"App-consistent every:    {setting_text(p.app_consistent_every)}")


async def cmd_policy_create(client: AdminClient, args: argparse.Namespace) -> None:
    p = await client.create_policy(name=args.name, rpo_threshold=args.rpo_threshold, retention=args.retention,
                                   crash_consistent_every=args.crash_consistent_every,
                                   app_consistent_every=args.app_consistent_every)
    if args.json:
        _print_json(p)
    else:
        print(f"Policy {p.name} created.")


#: The options of `policy create` and `policy edit`, as the policy's settings.
_POLICY_OPTIONS = ("rpo_threshold", "retention", "crash_consistent_every", "app_consistent_every")


async def cmd_policy_edit(client: AdminClient, args: argparse.Namespace) -> None:
    changes = {k: getattr(args, k) for k in _POLICY_OPTIONS if getattr(args, k) is not None}
    if not changes:
        raise BadInput("Nothing to change: give --rpo-threshold, --retention, --crash-consistent-every and/or "
                       "--app-consistent-every.")
    p = await client.edit_policy(args.name, **changes)
    if args.json:
        _print_json(p)
    else:
        print(f"Policy {p.name}: RPO threshold {setting_text(p.rpo_threshold)}, retention "
              f"{setting_text(p.retention)}, crash-consistent every {setting_text(p.crash_consistent_every)}, "
              f"app-consistent every {setting_text(p.app_consistent_every)}. Its servers follow from their next "
              "cycle.")


async def cmd_policy_delete(client: AdminClient, args: argparse.Namespace) -> None:
    await client.delete_policy(args.name)
    print(f"Policy {args.name} deleted.")


async def cmd_vm_enable(client: AdminClient, args: argparse.Namespace) -> None:
    s = await client.enable(args.name, args.policy)
    print(f"Replication of {s.name} enabled with policy {s.policy}; initial replication starts at its next "
          "heartbeat.")


async def cmd_vm_disable(client: AdminClient, args: argparse.Namespace) -> None:
    if not args.yes:
        if not sys.stdin.isatty():
            raise EngineError(f"Disabling deletes {args.name}'s recovery points and cached data: add --yes to confirm.")
        answer = input(f"Disable replication of {args.name} and delete its recovery points? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.")
            return
    await client.disable(args.name)
    print(f"Replication of {args.name} disabled; its recovery points and cached data are deleted.")


async def cmd_vm_resync(client: AdminClient, args: argparse.Namespace) -> None:
    s = await client.resync(args.name)
    print(f"Resync of {s.name} requested: its next cycle sends every block again; recovery points are kept.")


async def cmd_vm_set(client: AdminClient, args: argparse.Namespace) -> None:
    from engine.replication import parse_max_mbps

    settings: dict[str, Any] = {}
    if args.max_mbps is not None:
        settings["max_mbps"] = parse_max_mbps(args.max_mbps, "--max-mbps")
    if args.policy is not None:
        settings["policy"] = args.policy
    if not settings:
        raise BadInput("Nothing to set: give --policy P and/or --max-mbps N (or off).")
    s = await client.set_server(args.name, **settings)
    if "policy" in settings:
        print(f"{s.name}: policy {s.policy}; it applies from the server's next cycle.")
    if "max_mbps" in settings:
        print(f"{s.name}: bandwidth cap " + ("off." if s.max_mbps is None else f"{s.max_mbps:g} Mbit/s."))


async def cmd_vm_points(client: AdminClient, args: argparse.Namespace) -> None:
    points = await client.points(args.name)
    if args.json:
        _print_json(points)
        return
    if not points:
        print(f"{args.name} has no recovery point yet.")
        return
    rows = [[str(p.id), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.created_at)), p.kind] for p in points]
    print(_table(rows, ["ID", "CREATED", "KIND"]))


def _export_paths(out_dir: Path, server: ServerStatus, disks: list[int], fmt: str, *, force: bool) -> list[Path]:
    """Where each disk's image goes: ``out_dir`` must exist (it is never created), and an image there is
    replaced only with ``force``. Checked for every disk before anything is written."""
    if not out_dir.exists():
        raise BadInput(f"{out_dir} does not exist: create it first, or give an existing directory as --out.")
    if not out_dir.is_dir():
        raise BadInput(f"{out_dir} is not a directory: give a directory as --out.")
    paths = [out_dir / f"{server.name}-disk{disk}.{'vhd' if fmt == 'vhd' else 'raw'}" for disk in disks]
    if not force:
        for path in paths:
            if path.exists() or path.is_symlink():
                raise BadInput(f"{path} exists: give --force to overwrite it, or another --out.")
    return paths


async def cmd_vm_export(client: AdminClient, args: argparse.Namespace) -> None:
    server = await client.server(args.name)
    disks = [args.disk] if args.disk is not None else list(range(len(server.disks)))
    paths = _export_paths(Path(args.out), server, disks, args.format, force=args.force)
    show = sys.stderr.isatty()
    for disk, path in zip(disks, paths, strict=True):
        started = time.monotonic()

        def progress(done: int, total: int, path: Path = path) -> None:
            if show and (done == total or done % (64 << 20) < 65536):
                pct = 100 * done / total if total else 100
                print(f"\r{path.name}: {pct:5.1f}%  {human_bytes(done)} of {human_bytes(total)}", end="",
                      file=sys.stderr, flush=True)

        # With --force the image is written beside its final name and renamed over it once complete: the image
        # it replaces stays whole until then. Without, it is created exclusively: one that appeared meanwhile
        # is not replaced either. The bytes are the same either way.
        writing = path.with_name(f".{path.name}.{os.getpid()}-{time.monotonic_ns()}.partial") if args.force else path
        try:
            with open(writing, "xb") as out:
                point, size = await client.export(server.name, point=args.point, disk=disk, fmt=args.format,
                                                  out=out, progress=progress)
            if writing != path:
                os.replace(writing, path)
        except FileExistsError as exc:
            raise BadInput(f"{path} exists: give --force to overwrite it, or another --out.") from exc
        except BaseException as exc:
            writing.unlink(missing_ok=True)  # ours: created above
            if isinstance(exc, OSError):
                raise BadInput(f"Cannot write {path}: {exc.strerror or exc}.") from exc
            raise
        if show:
            print(file=sys.stderr)
        print(f"{path}  point {point}  {human_bytes(size)}  {time.monotonic() - started:.1f} s")


async def cmd_license_show(client: AdminClient, args: argparse.Namespace) -> None:
    lic = await client.licence()
    if args.json:
        _print_json(lic)
        return
    state = {"evaluation": "evaluation", "active": "active", "expired": "EXPIRED"}[lic.state]
    left = "no end" if lic.days_left is None else "1 day left" if lic.days_left == 1 else f"{lic.days_left} days left"
    print(f"Licence:          {state} ({left})\nExpires:          {_date(lic.expires_at)}\n"
          f"Licensee:         {lic.licensee or '-'}\nActivated:        {_date(lic.activated_at)}\n"
          f"Servers allowed:  {'unlimited' if lic.max_servers is None else lic.max_servers}\n"
          f"Evaluation began: {_date(lic.evaluation_started_at)}")
    if lic.message:
        print(f"\n{lic.message}\n  Activate: godwit license activate FILE\n"
              "  Move:     godwit appliance backup --out FILE, then godwit appliance restore FILE on the new "
              "appliance (docs/moving-an-appliance.md)")


def _read_small_text(path: Path, what: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"Cannot read {what} {path}: {exc.strerror}.") from exc
    if len(data) > limit:
        raise BadInput(f"{path} is larger than {limit // 1024} KiB: it is not a {what}.")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path} is not text: it is not a {what}.") from exc


async def cmd_license_activate(client: AdminClient, args: argparse.Namespace) -> None:
    from engine.licence import read_licence_file

    lic = await client.activate_licence(read_licence_file(Path(args.file)))
    end = "without end" if lic.expires_at is None else f"until {_date(lic.expires_at)}"
    servers = "unlimited servers" if lic.max_servers is None else f"up to {lic.max_servers} replicating servers"
    print(f"Licence activated for {lic.licensee}: {servers}, {end}.")


_UPDATE_STATES = {"up-to-date": "Up to date", "update-available": "Update available", "updating": "Updating",
                  "update-failed": "Update failed", "cannot-update": "Cannot update"}


def _update_text(agent: AgentUpdate) -> str:
    text = _UPDATE_STATES[agent.status]
    if agent.stage:
        text += f"… {agent.stage}" + (f" {agent.progress:.0%}" if agent.progress is not None else "")
    return text + (f": {agent.reason}" if agent.reason else "")


def _print_updates(updates: UpdatesStatus) -> None:
    rows = [[a.name, a.installed_version, a.available_version or "-", a.previous_version or "-", _update_text(a)]
            for a in updates.agents]
    print(_table(rows, ["AGENT", "INSTALLED", "AVAILABLE", "PREVIOUS", "STATUS"]))
    mode = (f"auto (checks and installs every day at {updates.window}, local time)" if updates.mode == "auto"
            else "manual (installs only on `godwit agents update`)")
    print(f"\nMode:        {mode}\nFeed:        {updates.feed_url or '- (none set: godwit agents feed URL)'}\n"
          f"Last check:  {_date(updates.last_check_at)}" + ("" if updates.check_error else " (ok)"))
    if updates.next_install_at is not None:
        print(f"Next install: {_date(updates.next_install_at)}")
    if updates.mismatched:
        print("\nThe agents run different versions: update them all together (godwit agents update --all).")


def _agents_json(updates: UpdatesStatus) -> list[dict[str, Any]]:
    return [{"name": a.name, "installed_version": a.installed_version, "available_version": a.available_version,
             "previous_version": a.previous_version, "status": a.status, "reason": a.reason, "stage": a.stage,
             "progress": a.progress} for a in updates.agents]


async def cmd_agents_list(client: AdminClient, args: argparse.Namespace) -> None:
    updates = await client.agent_updates()
    if args.json:
        _print_json(_agents_json(updates))
    else:
        _print_updates(updates)


async def cmd_agents_check(client: AdminClient, args: argparse.Namespace) -> None:
    updates = await client.check_updates()
    if updates.check_error:
        raise EngineError(updates.check_error)
    _print_updates(updates)


async def cmd_agents_update(client: AdminClient, args: argparse.Namespace) -> None:
    if bool(args.name) == bool(args.all):
        raise BadInput("Name one agent, or give --all (every outdated agent, together).")
    names = None if args.all else [args.name]
    updates = await client.update_agents(names)
    wanted = [a.name for a in updates.agents if a.stage is not None]  # in the order they install
    print(f"Updating {', '.join(wanted) or 'nothing'}…", file=sys.stderr)
    if args.no_wait:
        return
    async for message in client.updates():  # until no agent is updating any more
        if isinstance(message, UpdatesChanged | Hello) and (status := message.updates) is not None and \
                not any(a.stage for a in status.agents):
            updates = status
            break
    _print_updates(updates)
    failed = [a for a in updates.agents if a.name in wanted and a.status == "update-failed"]
    if failed:
        raise UpdateError("; ".join(f"{a.name}: {a.reason}" for a in failed))


async def cmd_agents_rollback(client: AdminClient, args: argparse.Namespace) -> None:
    _print_updates(await client.rollback_agent(args.name))


async def cmd_agents_mode(client: AdminClient, args: argparse.Namespace) -> None:
    if args.mode is None and args.window is None and not args.now:
        updates = await client.agent_updates()
    else:
        updates = await client.set_update_mode(args.mode, window=args.window, now=args.now)
    print(f"Agent updates: {updates.mode}, window {updates.window} (local time).")


async def cmd_agents_feed(client: AdminClient, args: argparse.Namespace) -> None:
    updates = await client.set_update_feed(None if args.url in ("", "none") else args.url)
    print(f"Update feed: {updates.feed_url or 'none'}.")


def _print_ports(ports: PortsStatus) -> None:
    print(f"Management port:  {ports.management_port}\nData port:        {ports.data_port}\n"
          f"Listen address:   {ports.listen_address}")
    if ports.old_management_port is not None:
        print(old_port_text(ports))
    rows = [[r.direction, r.protocol, str(r.port) if r.port is not None else "-", r.peer, r.purpose]
            for r in ports.firewall]
    print("\nFirewall rules this appliance needs:\n" + _table(rows, ["DIRECTION", "PROTOCOL", "PORT", "PEER", "WHAT"]))


async def cmd_ports_show(client: AdminClient, args: argparse.Namespace) -> None:
    ports = await client.ports()
    if args.json:
        _print_json(ports)
    else:
        _print_ports(ports)


async def cmd_ports_set(client: AdminClient, args: argparse.Namespace) -> None:
    if args.management is None and args.data is None and args.listen is None:
        raise BadInput("Say what to change: --management N, --data N and/or --listen ADDRESS.")
    keep = None if args.keep_old_port is None else parse_duration(args.keep_old_port, "--keep-old-port")
    ports = await client.set_ports(management=args.management, data=args.data, listen=args.listen, keep_old_for=keep)
    if args.json:
        _print_json(ports)
    else:
        _print_ports(ports)


async def cmd_ports_test(client: AdminClient, args: argparse.Namespace) -> None:
    report = await client.test_ports()
    if args.json:
        data = to_json(report)
        data["ok"] = report.ok
        print(json.dumps(data, indent=2))
    else:
        for c in report.checks:
            print(f"{'OK    ' if c.ok else 'FAILED'}  {c.name}: {c.detail}" + (f" {c.fix}" if c.fix else ""))
        if report.servers:
            rows = [[r.name, age_text(r.management_at), str(r.management_port or "-"), age_text(r.data_at)]
                    for r in report.servers]
            print("\n" + _table(rows, ["SERVER", "MANAGEMENT PORT SEEN", "ON PORT", "DATA PORT SEEN"]))
    if not report.ok:
        failed = sum(1 for c in report.checks if not c.ok)
        raise EngineError(f"{failed} connectivity check(s) failed; each says above what to do.")


def _print_target(target: TargetStatus) -> None:
    print(f"Target storage:   {target.location}")
    if target.servers_elsewhere:
        print(f"Elsewhere:        {', '.join(target.servers_elsewhere)} (they keep the target they began on until "
              "disabled and enabled again)")


async def cmd_target_show(client: AdminClient, args: argparse.Namespace) -> None:
    target = await client.target()
    if args.json:
        _print_json(target)
    else:
        _print_target(target)


async def cmd_target_set(client: AdminClient, args: argparse.Namespace) -> None:
    if args.kind == "local":
        if args.account_url or args.container or args.connection_string_file or args.sas_file:
            raise BadInput("`godwit target set local` takes no account, container or credential.")
        target = await client.set_target("local")
    else:
        if not args.account_url or not args.container:
            raise BadInput("Give --account-url URL and --container NAME for an Azure target.")
        if bool(args.connection_string_file) == bool(args.sas_file):
            raise BadInput("Give the credential in one file: --connection-string-file F or --sas-file F.")
        path = args.connection_string_file or args.sas_file
        credential = _read_small_text(Path(path), "credential file", 8192).strip()
        if not credential:
            raise BadInput(f"{path} is empty: it must hold the connection string or SAS token.")
        target = await client.set_target("azure", account_url=args.account_url, container=args.container,
                                         credential=credential)
    if args.json:
        _print_json(target)
        return
    print(f"Servers enabled from now on replicate to {target.location}.")
    if target.servers_elsewhere:
        print(f"{', '.join(target.servers_elsewhere)} keep the target they began on until disabled and enabled again.")


def _read_passphrase(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.passphrase_file:
        text = _read_small_text(Path(args.passphrase_file), "passphrase file", 4096).strip()
        if not text:
            raise BadInput(f"{args.passphrase_file} is empty: write the backup's passphrase in it.")
        return text
    if not sys.stdin.isatty():
        raise BadInput("Give the backup's passphrase with --passphrase-file F (no terminal to ask on).")
    import getpass

    text = getpass.getpass("Backup passphrase: ")
    if confirm and getpass.getpass("The same again: ") != text:
        raise BadInput("The two passphrases differ; nothing was written.")
    return text


async def cmd_appliance_backup(client: AdminClient, args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise BadInput(f"{out} exists: give another --out, or --force to replace it.")
    blob = await client.backup(_read_passphrase(args, confirm=True))
    try:
        write_atomically(out.absolute(), blob, mode=0o600)
    except OSError as exc:
        raise BadInput(f"Cannot write {out}: {exc.strerror}.") from exc
    print(f"Wrote an encrypted backup of the appliance to {out} ({human_bytes(len(blob))}). Restore it on the new "
          "appliance with `godwit appliance restore FILE`; see docs/moving-an-appliance.md.")


def _percent_text(value: float | None) -> str:
    return f"{value:.0f} %" if value is not None else "-"


def _print_health(h: ApplianceHealth) -> None:
    t = h.thresholds
    held = duration_text(t.sustain)
    if h.backlog_bytes is None:
        backlog = "-"
    else:
        rate = f"{human_bytes(int(h.apply_rate_bps))}/s" if h.apply_rate_bps is not None else "not measured yet"
        drain = duration_text(h.backlog_drain_seconds) if h.backlog_drain_seconds is not None else (
            "does not drain" if h.backlog_bytes and h.apply_rate_bps == 0 else "-")
        backlog = f"{human_bytes(h.backlog_bytes)} (applied at {rate}; drains in {drain})"
    where = f" ({h.cache_mount})" if h.cache_mount else ""
    rows = [["CPU", _percent_text(h.cpu_percent), f"above {t.cpu_warning:.0f} % / {t.cpu_critical:.0f} % for {held}"],
            ["Memory", _percent_text(h.memory_percent),
             f"above {t.memory_warning:.0f} % / {t.memory_critical:.0f} % for {held}"],
            ["Cache free" + where, _percent_text(h.cache_free_percent),
             f"below {t.cache_free_warning:.0f} % / {t.cache_free_critical:.0f} %"],
            ["Backlog", backlog, f"drains in more than {duration_text(t.backlog_warning)} / "
                                 f"{duration_text(t.backlog_critical)}"]]
    rows += [[f"Agent {a.name}", f"seen {duration_text(a.silent_seconds)} ago" if a.last_seen is not None
              else "never seen", f"silent {duration_text(t.agent_silent)} (critical)"] for a in h.agents]
    sampled = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.sampled_at)) if h.sampled_at else "not yet"
    print(f"Appliance health: {h.level} (sampled {sampled})\n")
    print(_table(rows, ["METRIC", "NOW", "WARNING / CRITICAL"]))
    if h.alerts:
        print("\nAlerts:")
        for a in h.alerts:
            print(f"  {a.level.upper():8}  {a.message}")


async def cmd_appliance_health(client: AdminClient, args: argparse.Namespace) -> None:
    health = await client.appliance_health(history=args.history)
    if args.json:
        _print_json(health)
        return
    _print_health(health)
    if args.history:
        print(f"\nThe last 24 hours, one sample a minute ({len(health.history)}):")
        print(f"{'TIME':<17}{'CPU':>6}{'MEMORY':>8}{'CACHE FREE':>12}  BACKLOG")

        def percent(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f} %"

        for sample in health.history:
            backlog = "-" if sample.backlog_bytes is None else human_bytes(sample.backlog_bytes)
            print(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(sample.at)):<17}{percent(sample.cpu_percent):>6}"
                  f"{percent(sample.memory_percent):>8}{percent(sample.cache_free_percent):>12}  {backlog}")


#: How each prerequisite's status reads in the table.
_MARKS = {"ok": "OK", "warning": "WARNING", "failed": "FAILED"}


async def cmd_appliance_check(client: AdminClient, args: argparse.Namespace) -> None:
    found = await client.prerequisites(args.only)
    if args.json:
        _print_json(found)
    else:
        shown = [c for c in found.checks if args.only in (None, c.key)]
        width = max((len(c.title) for c in shown), default=0)
        for c in shown:
            print(f"{_MARKS.get(c.status, c.status.upper()):8}{c.title.ljust(width)}  {c.found}")
            if c.action:
                print(f"{'':8}{'':{width}}  → {c.action}")
    failed = [c.title for c in found.checks if c.status == "failed" and args.only in (None, c.key)]
    if failed:
        raise EngineError(f"{len(failed)} prerequisite(s) failed ({', '.join(failed)}); each says above what to do.")


def cmd_appliance_restore(args: argparse.Namespace) -> None:
    from engine.backup import read_backup, restore_backup

    blob = read_backup(Path(args.file))
    storage_from = DataDir(Path(args.storage_from).absolute()) if args.storage_from else None
    print(restore_backup(blob, passphrase=_read_passphrase(args, confirm=False), data_dir=DataDir(args.data_dir),
                         storage_from=storage_from))


def _print_event(e: Event, as_json: bool) -> None:
    if as_json:
        print(json.dumps(to_json(e)), flush=True)
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts))
        print(f"{when}  {e.severity:<7}  {e.code:<22}  {e.message}", flush=True)


async def cmd_events(client: AdminClient, args: argparse.Namespace) -> None:
    events = await client.events(limit=args.limit)
    if args.json and not args.follow:
        _print_json(events)
        return
    for e in events:
        _print_event(e, args.json)
    if not args.follow:
        return
    last = events[-1].id if events else 0
    stopped = EngineError(f"The engine of {client.data_dir.root} stopped; no more events will come.")
    while True:
        try:
            async for message in client.updates():
                if isinstance(message, Hello):  # catch up on what happened since the last one printed
                    for e in await client.events(after=last, limit=10_000):
                        _print_event(e, args.json)
                        last = e.id
                elif isinstance(message, EventAdded) and message.event.id > last:
                    _print_event(message.event, args.json)
                    last = message.event.id
            # The stream ended: the engine stopped, or dropped us for reading too slowly (then go on).
            await client.engine_status()
        except EngineNotRunning:
            raise stopped from None


def _admin(fn: Callable[[AdminClient, argparse.Namespace], Coroutine[Any, Any, None]]
           ) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        async def main() -> None:
            client = AdminClient(DataDir(args.data_dir))
            try:
                await fn(client, args)
            finally:
                await client.aclose()

        asyncio.run(main())

    return run


def cmd_serve(args: argparse.Namespace) -> None:
    from engine.daemon import serve, serve_in_background

    config = EngineConfig(data_dir=DataDir(args.data_dir), management_port=args.management_port,
                          data_port=args.data_port, listen_address=args.listen,
                          heartbeat_interval=args.heartbeat_interval)
    if args.background:
        print(serve_in_background(config))
    else:
        serve(config)


def cmd_mobility_run(args: argparse.Namespace) -> None:
    from engine import logs
    from engine.mobility.service import run

    logs.to_stderr(level=logging.DEBUG if args.verbose else logging.INFO)
    run(args)


def cmd_console(args: argparse.Namespace) -> None:
    # The console is the app package; the engine never imports it, it hands over the process.
    # -P: never import a module of that name from the current directory instead of ours.
    argv = [sys.executable, "-P", "-m", "app", "--data-dir", str(args.data_dir)]
    if args.management_port:
        argv += ["--management-port", str(args.management_port)]
    if args.data_port:
        argv += ["--data-port", str(args.data_port)]
    os.execv(sys.executable, argv)


# --- parser ------------------------------------------------------------------------------------
def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 65535")
    return value


def _count(text: str) -> int:
    """A number of things to show: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    data_dir = _Parser(add_help=False)
    data_dir.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                          help="appliance data directory (default: $GODWIT_DATA_DIR or the user data dir)")
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    parser = _Parser(prog="godwit", parents=[data_dir],
                                     description="Godwit replication appliance. Without a command: the console.")
    parser.add_argument("--version", action="version", version=f"godwit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("console", parents=[data_dir], help="open the desktop console (the default)")
    p.add_argument("--management-port", type=_port, help="management port for an engine the console starts")
    p.add_argument("--data-port", type=_port, help="data port for an engine the console starts")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("serve", parents=[data_dir], help="run the engine daemon in the foreground")
    p.add_argument("--management-port", type=_port, help="management port (default 443, then the stored one)")
    p.add_argument("--data-port", type=_port, help="data port (default 9443, then the stored one)")
    p.add_argument("--listen", metavar="ADDRESS", help="the IPv4 address both ports listen on (default 0.0.0.0, "
                   "every address; then the stored one)")
    p.add_argument("--background", action="store_true",
                   help="detach and return once the engine serves (its output goes to logs/engine.out)")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    setup = sub.add_parser("setup", help="appliance identity and registration details").add_subparsers(
        dest="setup_command", metavar="ACTION", required=True)
    p = setup.add_parser("show", parents=[data_dir, as_json], help="passphrase, CA fingerprint, ports")
    p.set_defaults(func=_admin(cmd_setup_show))
    p = setup.add_parser("rotate-passphrase", parents=[data_dir, as_json], help="issue a new registration passphrase")
    p.set_defaults(func=_admin(cmd_setup_rotate))
    p = setup.add_parser("complete", parents=[data_dir, as_json], help="record that the first-run setup is done "
                         "(the console stops opening it by itself)")
    p.set_defaults(func=_admin(cmd_setup_complete))

    vm = sub.add_parser("vm", help="registered source servers").add_subparsers(
        dest="vm_command", metavar="ACTION", required=True)
    p = vm.add_parser("list", parents=[data_dir, as_json], help="list registered servers")
    p.set_defaults(func=_admin(cmd_vm_list))
    p = vm.add_parser("show", parents=[data_dir, as_json], help="one server in detail")
    p.add_argument("name")
    p.set_defaults(func=_admin(cmd_vm_show))
    p = vm.add_parser("update-mobility", parents=[data_dir, as_json],
                      help="install the mobility version the appliance offers on these servers (manual mode)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=_admin(cmd_vm_update_mobility))
    p = vm.add_parser("forget", parents=[data_dir], help="revoke a server's certificate and remove it")
    p.add_argument("name")
    p.set_defaults(func=_admin(cmd_vm_forget))
    p = vm.add_parser("enable", parents=[data_dir], help="start replicating a server")
    p.add_argument("name")
    p.add_argument("--policy", help="replication policy (default: default)")
    p.set_defaults(func=_admin(cmd_vm_enable))
    p = vm.add_parser("disable", parents=[data_dir], help="stop replicating and delete its target data")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=_admin(cmd_vm_disable))
    p = vm.add_parser("resync", parents=[data_dir], help="send every block of a server again (keeps points)")
    p.add_argument("name")
    p.set_defaults(func=_admin(cmd_vm_resync))
    p = vm.add_parser("set", parents=[data_dir], help="per-server settings (applied live)")
    p.add_argument("name")
    p.add_argument("--policy", metavar="P", help="move a replicating server to another policy (from its next cycle)")
    p.add_argument("--max-mbps", metavar="N|off", help="bandwidth cap of the server's replication, 1 to 100000 "
                   "Mbit/s (off: none)")
    p.set_defaults(func=_admin(cmd_vm_set))
    p = vm.add_parser("history", parents=[data_dir, as_json], help="a server's throughput and RPO, sample by sample")
    p.add_argument("name")
    p.add_argument("--span", default="hour", choices=("hour", "day"), help="the last hour (a sample every 10 s, "
                   "the default) or the last day (one a minute)")
    p.set_defaults(func=_admin(cmd_vm_history))
    p = vm.add_parser("points", parents=[data_dir, as_json], help="recovery points of a server")
    p.add_argument("name")
    p.set_defaults(func=_admin(cmd_vm_points))
    p = vm.add_parser("export", parents=[data_dir], help="export a recovery point as raw or fixed VHD images")
    p.add_argument("name")
    p.add_argument("--point", required=True, metavar="ID|latest")
    p.add_argument("--format", required=True, choices=("raw", "vhd"))
    p.add_argument("--out", required=True, metavar="DIR", help="an existing directory")
    p.add_argument("--disk", type=int, metavar="N", help="only this disk (default: every disk)")
    p.add_argument("--force", action="store_true", help="replace images of the same name in DIR")
    p.set_defaults(func=_admin(cmd_vm_export))

    pol = sub.add_parser("policy", help="replication policies").add_subparsers(
        dest="policy_command", metavar="ACTION", required=True)
    p = pol.add_parser("list", parents=[data_dir, as_json], help="list policies")
    p.set_defaults(func=_admin(cmd_policy_list))
    p = pol.add_parser("show", parents=[data_dir, as_json], help="one policy")
    p.add_argument("name")
    p.set_defaults(func=_admin(cmd_policy_show))
    p = pol.add_parser("create", parents=[data_dir, as_json], help="create a policy")
    p.add_argument("name")
    p.add_argument("--rpo-threshold", default="15m", help="alert when the RPO exceeds this (default 15m)")
    p.add_argument("--retention", default="24h", help="keep recovery points this long (at most 15d; default 24h)")
    p.add_argument("--crash-consistent-every", default="5m", help="crash-consistent point cadence (default 5m)")
    p.add_argument("--app-consistent-every", default="4h", help="app-consistent cadence, 1h-12h or off (default 4h)")
    p.set_defaults(func=_admin(cmd_policy_create))
    p = pol.add_parser("edit", parents=[data_dir, as_json], help="change a policy's settings (only those given; "
                       "its servers follow from their next cycle)")
    p.add_argument("name")
    p.add_argument("--rpo-threshold", metavar="D", help="alert when the RPO exceeds this")
    p.add_argument("--retention", metavar="D", help="keep recovery points this long (at most 15d)")
    p.add_argument("--crash-consistent-every", metavar="D", help="crash-consistent point cadence")
    p.add_argument("--app-consistent-every", metavar="D|off", help="app-consistent cadence, 1h-12h or off")
    p.set_defaults(func=_admin(cmd_policy_edit))
    p = pol.add_parser("delete", parents=[data_dir], help="delete a policy no server replicates with")
    p.add_argument("name")
    p.set_defaults(func=_admin(cmd_policy_delete))

    p = sub.add_parser("events", parents=[data_dir, as_json], help="what happened on the appliance")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--limit", type=_count, default=50, help="how many recent events to print (default 50)")
    p.set_defaults(func=_admin(cmd_events))

    lic = sub.add_parser("license", aliases=["licence"], help="the appliance's licence").add_subparsers(
        dest="license_command", metavar="ACTION", required=True)
    p = lic.add_parser("show", parents=[data_dir, as_json], help="state, days left, licensee")
    p.set_defaults(func=_admin(cmd_license_show))
    p = lic.add_parser("activate", parents=[data_dir], help="activate a licence file")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_admin(cmd_license_activate))

    ports = sub.add_parser("ports", help="the management and data ports").add_subparsers(
        dest="ports_command", metavar="ACTION", required=True)
    p = ports.add_parser("show", parents=[data_dir, as_json], help="ports, listen address and firewall rules")
    p.set_defaults(func=_admin(cmd_ports_show))
    p = ports.add_parser("set", parents=[data_dir, as_json], help="move the ports (checked first, applied live)")
    p.add_argument("--management", type=_port, metavar="N", help="new management port")
    p.add_argument("--data", type=_port, metavar="N", help="new data port")
    p.add_argument("--listen", metavar="ADDRESS", help="IPv4 address to listen on (0.0.0.0: every address)")
    p.add_argument("--keep-old-port", metavar="DURATION", help="how long the old management port stays open for "
                   "servers that have not moved (default 24h; 0 closes it at once)")
    p.set_defaults(func=_admin(cmd_ports_set))
    p = ports.add_parser("test", parents=[data_dir, as_json], help="check that both ports and the target answer")
    p.set_defaults(func=_admin(cmd_ports_test))

    target = sub.add_parser("target", help="where seed disks and recovery points are kept").add_subparsers(
        dest="target_command", metavar="ACTION", required=True)
    p = target.add_parser("show", parents=[data_dir, as_json], help="the target new copies go to")
    p.set_defaults(func=_admin(cmd_target_show))
    p = target.add_parser("set", parents=[data_dir, as_json], help="choose the target (checked first; servers "
                          "already replicating keep theirs)")
    p.add_argument("kind", choices=["local", "azure"])
    p.add_argument("--account-url", metavar="URL", help="the storage account, https://ACCOUNT.blob.core.windows.net")
    p.add_argument("--container", metavar="NAME", help="the container (created if missing)")
    p.add_argument("--connection-string-file", metavar="F", help="a file holding the account's connection string")
    p.add_argument("--sas-file", metavar="F", help="a file holding a SAS token (an account SAS for the Blob service)")
    p.set_defaults(func=_admin(cmd_target_set))

    agents = sub.add_parser("agents", help="the appliance agents' versions and their updates").add_subparsers(
        dest="agents_command", metavar="ACTION", required=True)
    p = agents.add_parser("list", parents=[data_dir, as_json], help="installed and available versions")
    p.set_defaults(func=_admin(cmd_agents_list))
    p = agents.add_parser("check", parents=[data_dir], help="ask the update feed now")
    p.set_defaults(func=_admin(cmd_agents_check))
    p = agents.add_parser("update", parents=[data_dir], help="install the available version of an agent, or all")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--all", action="store_true", help="every outdated agent, together, in dependency order")
    p.add_argument("--no-wait", action="store_true", help="return once the install started")
    p.set_defaults(func=_admin(cmd_agents_update))
    p = agents.add_parser("rollback", parents=[data_dir], help="run an agent's previous version again")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_admin(cmd_agents_rollback))
    p = agents.add_parser("mode", parents=[data_dir], help="auto or manual updates, and the daily window")
    p.add_argument("mode", nargs="?", choices=["auto", "manual"])
    p.add_argument("--window", metavar="HH:MM", help="when auto mode checks and installs (local time)")
    p.add_argument("--now", action="store_true", help="back in auto mode: install what is pending now")
    p.set_defaults(func=_admin(cmd_agents_mode))
    p = agents.add_parser("feed", parents=[data_dir], help="the update feed's URL (none: no feed)")
    p.add_argument("url", metavar="URL")
    p.set_defaults(func=_admin(cmd_agents_feed))

    appl = sub.add_parser("appliance", help="the appliance itself: prerequisites, health, backup and "
                          "restore").add_subparsers(dest="appliance_command", metavar="ACTION", required=True)
    p = appl.add_parser("backup", parents=[data_dir], help="write an encrypted backup of the appliance")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--passphrase-file", metavar="F", help="the backup's passphrase (default: asked on the terminal)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(func=_admin(cmd_appliance_backup))
    p = appl.add_parser("health", parents=[data_dir, as_json], help="CPU, memory, cache space, backlog and agents "
                        "against their thresholds, and the alerts")
    p.add_argument("--history", action="store_true", help="the samples of the last 24 hours too (one a minute)")
    p.set_defaults(func=_admin(cmd_appliance_health))
    p = appl.add_parser("check", parents=[data_dir, as_json], help="check the prerequisites: ports, cache space, "
                        "clock, secret store, CPU and memory, target storage (exit 1 if one failed)")
    p.add_argument("--only", metavar="KEY", choices=PREREQUISITE_CHECKS,
                   help=f"run one check: {', '.join(PREREQUISITE_CHECKS)}")
    p.set_defaults(func=_admin(cmd_appliance_check))
    p = appl.add_parser("restore", parents=[data_dir], help="restore a backup into a new data directory "
                        "(the engine must not run there)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--passphrase-file", metavar="F", help="the backup's passphrase (default: asked on the terminal)")
    p.add_argument("--storage-from", metavar="OLD_DATA_DIR", help="copy the replicated data (cache and target) "
                   "from the old appliance's data directory on this host (its engine must be stopped)")
    p.set_defaults(func=cmd_appliance_restore)

    mob = sub.add_parser("mobility", help="the mobility service of a source server").add_subparsers(
        dest="mobility_command", metavar="ACTION", required=True)
    p = mob.add_parser("run", help="register with the appliance and keep it informed")
    p.add_argument("--appliance", required=True, metavar="HOST[:PORT]")
    p.add_argument("--passphrase-file", required=True, metavar="F")
    p.add_argument("--ca-fingerprint", required=True, metavar="SHA256")
    p.add_argument("--state-dir", required=True, metavar="DIR")
    p.add_argument("--disk", required=True, action="append", metavar="PATH")
    p.add_argument("--name", help="name shown on the appliance (default: host name)")
    p.add_argument("--pre-snapshot", metavar="CMD", help="command that quiesces applications before an "
                   "app-consistent point (run with sh -c; non-zero exit: the point is crash-consistent)")
    p.add_argument("--post-snapshot", metavar="CMD", help="command that resumes them afterwards")
    p.add_argument("--freeze", action="append", metavar="MOUNT", help="file system to fsfreeze around an "
                   "app-consistent point (repeatable)")
    p.add_argument("--freeze-budget-ms", type=int, default=200, metavar="N", help="longest a point may hold up "
                   "writers (default 200); a point whose remainder does not fit is deferred")
    p.add_argument("--verbose", "-v", action="store_true", help="log every heartbeat")
    p.set_defaults(func=cmd_mobility_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "data_dir"):
        args.data_dir = default_data_dir()
    args.data_dir = Path(args.data_dir).absolute()  # the daemon leaves the current directory
    func = getattr(args, "func", cmd_console)
    if func is cmd_console:
        args.management_port = getattr(args, "management_port", None)
        args.data_port = getattr(args, "data_port", None)
    try:
        func(args)
    except EngineError as exc:
        print(f"godwit: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line for the user, the traceback only on request
        if os.environ.get("GODWIT_DEBUG"):
            raise
        print(f"godwit: internal error ({type(exc).__name__}: {exc}). Run again with GODWIT_DEBUG=1 for details "
              "and report it.", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
