"""The appliance's prerequisites, each check ok and not ok, on real ports, files and this machine; only what cannot be
made real here (what the system says about NTP) is given."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from engine import diskspace
from engine.errors import BadInput, TargetUnwritable
from engine.prerequisites import (
    CHECKS,
    GIB,
    MIN_CACHE_FREE,
    SIZING,
    Facts,
    PortFact,
    PrerequisiteChecker,
    Prerequisites,
    check_cache_space,
    check_clock,
    check_ports,
    check_secret_store,
    check_sizing,
    check_target,
    kernel_clock,
    run_check,
)
from engine.storage.local import LocalStorage


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_ports_held_by_the_engine_or_free_are_ok() -> None:
    """A port this engine holds and a port nobody holds are both ok, and the found text names each port."""
    probe = _listening()
    free = probe.getsockname()[1]
    probe.close()
    check = check_ports([PortFact("management", 443, held=True), PortFact("data", free, held=False)], "127.0.0.1")
    assert check.status == "ok" and check.action == ""
    assert "management port 443 is served by this engine" in check.found and f"data port {free} is free" in check.found


def test_a_held_port_whose_agent_does_not_answer_fails_naming_the_agent() -> None:
    """A port the engine holds but where no TLS handshake completes (its agent is down or hung) fails, naming the
    agent and its log."""
    probe = _listening()
    closed = probe.getsockname()[1]
    probe.close()  # nothing listens there: the connection is refused
    check = check_ports([PortFact("data", closed, held=True, reach=("127.0.0.1", closed))], "127.0.0.1")
    assert check.status == "failed"
    assert f"data port {closed} is open but its process-server does not answer" in check.found
    assert "logs/process-server.log" in check.action


def test_a_check_that_hangs_fails_after_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that does not finish (a target that never answers) is a failure saying so after the deadline; the
    other checks are answered meanwhile."""
    import threading

    from engine import prerequisites

    monkeypatch.setattr(prerequisites, "CHECK_TIMEOUT", 0.5)
    release = threading.Event()

    def run(key: str, facts: Facts) -> object:
        if key == "target":
            release.wait(10)
        return run_check(key, facts)

    checker = PrerequisiteChecker(lambda: _facts(tmp_path), run=run)  # type: ignore[arg-type]

    async def scenario() -> Prerequisites:
        try:
            return await checker.check()
        finally:
            release.set()  # the hung thread ends, so the loop can close

    result = asyncio.run(scenario())
    target = next(c for c in result.checks if c.key == "target")
    assert target.status == "failed" and "did not finish within 0.5 s" in target.found
    assert {c.key for c in result.checks} == set(CHECKS) and all(c.key == "target" or c.status != "failed" or
                                                                 "did not finish" not in c.found
                                                                 for c in result.checks)


def test_a_port_taken_by_another_program_fails_naming_it() -> None:
    """A port another process listens on fails; found names that program and its pid, action says what to do."""
    taken = _listening()
    try:
        port = taken.getsockname()[1]
        check = check_ports([PortFact("data", port, held=False)], "127.0.0.1")
    finally:
        taken.close()
    assert check.status == "failed"
    assert f"data port {port} is in use by another program" in check.found and f"(pid {os.getpid()})" in check.found
    assert "godwit ports set --data" in check.action


def _usage(free: int, size: int):  # type: ignore[no-untyped-def]
    return lambda path: (free, size)


def test_cache_space_by_the_rule(tmp_path: Path) -> None:
    """Plenty free is ok; below a day's churn or 30 % warns; below the process server's reserve fails; each found
    states the rule with the figures."""
    size = 1000 * GIB
    ok = check_cache_space(tmp_path, 100 * GIB, usage=_usage(500 * GIB, size))
    assert ok.status == "ok" and "10 % of the registered servers' disks" in ok.found and "10.0 GiB" in ok.found
    churn = check_cache_space(tmp_path, 4000 * GIB, usage=_usage(350 * GIB, size))
    assert churn.status == "warning" and "400.0 GiB" in churn.found and "400.0 GiB free" in churn.action
    low = check_cache_space(tmp_path, 0, usage=_usage(200 * GIB, size))
    assert low.status == "warning" and "(20 %)" in low.found
    small = check_cache_space(tmp_path, 0, usage=_usage(MIN_CACHE_FREE // 2, 10 * GIB))
    assert small.status == "warning"
    full = check_cache_space(tmp_path, 0, usage=_usage(diskspace.batch_reserve(size), size))
    assert full.status == "failed" and "refuses replication data" in full.found and full.action
    real = check_cache_space(tmp_path, 0)  # this machine's own file system
    assert real.status in ("ok", "warning", "failed") and diskspace.mount_point(tmp_path) in real.found


def test_clock_from_systemd_the_kernel_or_neither() -> None:
    """systemd's answer wins; without one the kernel's; a machine that cannot tell is a warning, never a failure."""
    assert check_clock(systemd=lambda: True, kernel=lambda: None).status == "ok"
    no = check_clock(systemd=lambda: False, kernel=lambda: (True, 0.001))
    assert no.status == "warning" and "NTP" in no.action
    kernel_ok = check_clock(systemd=lambda: None, kernel=lambda: (True, 0.012))
    assert kernel_ok.status == "ok" and "12 ms" in kernel_ok.found
    assert check_clock(systemd=lambda: None, kernel=lambda: (False, 16.0)).status == "warning"
    unknown = check_clock(systemd=lambda: None, kernel=lambda: None)
    assert unknown.status == "warning" and "Cannot tell" in unknown.found
    real = kernel_clock()  # this machine's kernel answers (read only, no privilege)
    assert real is not None and real[1] >= 0
    assert check_clock().status in ("ok", "warning")


def test_secret_store(tmp_path: Path) -> None:
    """The OS keyring is ok; the file store is a warning that says what to do."""
    assert check_secret_store("keyring", "OS keyring (SecretService)", tmp_path / "secrets.json").status == "ok"
    file = check_secret_store("file", "", tmp_path / "secrets.json")
    assert file.status == "warning" and "file permissions only" in file.found and str(tmp_path) in file.found
    assert "godwit appliance backup" in file.action


def test_sizing_against_the_table() -> None:
    """Enough CPUs and memory for the registered servers is ok; short of the needed row warns; short of the smallest
    row fails; more servers than the table holds warns; found states the table."""
    ok = check_sizing(5, cpus=2, memory=4 * GIB)
    assert ok.status == "ok" and "up to 150 servers: 8 CPUs and 16 GiB" in ok.found and "5 registered" in ok.found
    assert check_sizing(5, cpus=2, memory=int(3.7 * GIB)).status == "ok"  # MemTotal is a little below the RAM
    short = check_sizing(40, cpus=2, memory=16 * GIB)
    assert short.status == "warning" and "4 CPUs and 8 GiB" in short.action
    assert check_sizing(0, cpus=1, memory=64 * GIB).status == "failed"
    assert check_sizing(0, cpus=8, memory=2 * GIB).status == "failed"
    beyond = check_sizing(SIZING[-1][0] + 1, cpus=64, memory=256 * GIB)
    assert beyond.status == "warning" and "another appliance" in beyond.action


def test_target_storage_probe(tmp_path: Path) -> None:
    """A writable local target takes the probe and leaves nothing; one that cannot be written fails with why."""
    storage = LocalStorage(tmp_path)
    ok = check_target("local", storage.probe_target)
    assert ok.status == "ok" and "is writable" in ok.found
    assert [p.name for p in (tmp_path / "target").iterdir()] == []
    (tmp_path / "target").rmdir()
    (tmp_path / "target").write_text("a file where the directory should be")
    bad = check_target("local", storage.probe_target)
    assert bad.status == "failed" and "cannot be written" in bad.found and bad.action

    def refuses() -> str:
        raise TargetUnwritable("The target storage is read-only.")

    assert check_target("azure", refuses).status == "failed"


def _facts(tmp_path: Path) -> Facts:
    return Facts(ports=(), listen_address="127.0.0.1", cache_path=tmp_path, servers=0, protected_bytes=0,
                 secret_kind="file", secret_description="", secrets_file=tmp_path / "secrets.json",
                 target_kind="local", probe_target=LocalStorage(tmp_path).probe_target)


def test_checker_runs_all_or_one_and_keeps_the_others(tmp_path: Path) -> None:
    """All checks run in their order; one check runs alone and the others stay as last checked; an unknown key is
    one line naming the checks."""
    runs: list[str] = []

    def run(key: str, facts: Facts) -> object:
        runs.append(key)
        return run_check(key, facts)

    checker = PrerequisiteChecker(lambda: _facts(tmp_path), run=run)  # type: ignore[arg-type]
    assert checker.last().checks == () and checker.last().checked_at is None
    every = asyncio.run(checker.check())
    assert [c.key for c in every.checks] == list(CHECKS) and every.checked_at
    assert sorted(runs) == sorted(CHECKS)
    runs.clear()
    one = asyncio.run(checker.check("secret-store"))
    assert runs == ["secret-store"] and [c.key for c in one.checks] == list(CHECKS)
    assert one.checks == every.checks  # nothing changed meanwhile
    with pytest.raises(BadInput, match="the checks are ports, cache-space, clock"):
        asyncio.run(checker.check("nonsense" * 1000))
    assert "sizing" in repr(checker)
