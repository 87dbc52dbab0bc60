"""The launcher: ``godwit mobility run`` of the installed code, running an installed mobility version.

While no installed version newer than the installed code is current, ``godwit mobility run`` is the service
itself (one process, as on a server that never updated). Once the service installed a version from its
appliance, ``godwit mobility run`` (always the installed code: the launcher never updates itself) runs the
current version as a **child** process with the same arguments, its code first on the import path, and waits:

- the child dies with the launcher (``PR_SET_PDEATHSIG``: a ``kill -9`` of the launcher is one of the
  whole service); SIGTERM and SIGINT are passed on, and the launcher exits once the child stopped;
- a child that exits with :data:`~engine.mobility.versions.RESTART_EXIT` switched the record to another
  version: the launcher starts what the record says now;
- during a trial (:class:`~engine.mobility.versions.VersionRecord`), a child that exits on its own, or that
  did not reach the appliance before ``trial_until``, is stopped and the record rolled back to the previous
  version (the outcome kept for the next heartbeat), which is started instead;
- when what is current is the installed code again (a rollback to it), the launcher becomes the service
  itself (it executes itself anew: one process, as before).

Outside a trial, a child that exits on its own ends the launcher with its exit code, as the service itself
would have ended (whoever runs it restarts it).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import engine
from engine.mobility.versions import CHILD_ENV, RESTART_EXIT, VersionStore, trial_seconds

log = logging.getLogger(__name__)

#: How often the launcher looks at its child and the clock (seconds).
POLL = 0.2
#: How long a child may take to stop cleanly (replication stops at a batch's end) before it is killed.
STOP_WAIT = 60.0
_PR_SET_PDEATHSIG = 1


def own_command(argv: list[str]) -> list[str]:
    """The command that runs ``godwit`` with ``argv`` on this interpreter (``-P``: never a module of the current
    directory instead of ours)."""
    return [sys.executable, "-P", "-m", "engine", *argv]


def exit_code(code: int) -> int:
    """A child's return code as a process exit status (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def how_it_ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Launcher:
    """Runs the current installed mobility version as a child, follows switches, and rolls back failed trials."""

    def __init__(self, store: VersionStore, *, argv: list[str], installed: str = engine.__version__,
                 stop_wait: float = STOP_WAIT) -> None:
        self.store = store
        #: ``godwit`` arguments of this process (``mobility run ...``): the child gets the same.
        self.argv = argv
        #: The version of the code installed on the machine (this launcher's).
        self.installed = installed
        self.stop_wait = stop_wait
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self._libc: ctypes.CDLL | None = None
        with contextlib.suppress(OSError):
            self._libc = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before any fork

    def __repr__(self) -> str:
        child = self.child
        return (f"<Launcher installed={self.installed} child={child.pid if child else None} "
                f"stopping={self.stopping}>")

    # --- signals ---------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._signal_child(signal.SIGTERM)

    def _signal_child(self, sig: int) -> None:
        child = self.child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    def _die_with_us(self, parent: int) -> None:
        """In the child, before it executes: it is killed when the launcher dies, even by ``kill -9``."""
        if self._libc is not None:
            self._libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the request took effect
            os._exit(1)

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped (SIGTERM/SIGINT) or until a child outside a trial exits; returns the exit code.
        Never returns when the installed code is to run itself (it executes itself anew)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        while True:
            record = self.store.read()
            if record is not None and record.trial_failed(time.time()):  # e.g. the machine was off meanwhile
                self.store.roll_back(record, "it did not reach the appliance before its trial ended")
            version = self.store.plan(self.installed)
            if self.stopping:
                return 0
            if version is None:
                self.become_installed()
            code = self.run_child(version)
            if self.stopping:
                return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else exit_code(code)
            if code == RESTART_EXIT:
                continue
            record = self.store.read()
            if record is not None and record.current == version and record.in_trial(time.time()):
                self.store.roll_back(record, f"it {how_it_ended(code)} during its trial")
                continue
            log.warning("mobility %s %s", version, how_it_ended(code))
            return exit_code(code)

    def become_installed(self) -> NoReturn:
        """The installed code runs itself from now on: execute it anew (one process, as before any update)."""
        log.info("running the installed mobility service %s itself", self.installed)
        sys.stdout.flush()
        sys.stderr.flush()
        command = own_command(self.argv)
        os.execv(command[0], command)

    def _environment(self, version: str, code_dir: Path) -> dict[str, str]:
        from engine.updater.feed import ROOT_ENV

        env = dict(os.environ)
        env[CHILD_ENV] = version
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code_dir), env.get("PYTHONPATH")) if p)
        # A package holds the engine, not the installed tree's resources: the child trusts the same root.
        root = Path(engine.__file__).resolve().parent.parent / "resources" / "updates" / "root.json"
        if ROOT_ENV not in env and root.is_file():
            env[ROOT_ENV] = str(root)
        return env

    def run_child(self, version: str) -> int:
        """Run ``version`` until it exits; during its trial, stop it and return :data:`RESTART_EXIT` once the
        trial failed (the record rolled back). Returns its return code."""
        code_dir = self.store.code_dir(version)
        assert code_dir is not None, "planned"
        record = self.store.read()
        trial_until = record.trial_until if record is not None and record.current == version else None
        parent = os.getpid()
        self.child = child = subprocess.Popen(own_command(self.argv), env=self._environment(version, code_dir),
                                              stdin=subprocess.DEVNULL, preexec_fn=lambda: self._die_with_us(parent))
        log.info("mobility %s runs (pid %d)%s", version, child.pid, " on trial" if trial_until else "")
        if self.stopping:  # a signal came while it started
            self._signal_child(signal.SIGTERM)
        try:
            while True:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return child.wait(timeout=POLL)
                if trial_until is None or time.time() < trial_until or self.stopping:
                    continue
                record = self.store.read()
                if record is None or record.current != version or record.confirmed:
                    log.info("mobility %s passed its trial", version)
                    trial_until = None
                    continue
                log.warning("mobility %s did not reach the appliance before its trial ended: stopping it", version)
                self.stop_child()
                record = self.store.read()
                if record is not None and record.current == version and not record.confirmed:
                    self.store.roll_back(record, f"it did not reach the appliance within {trial_seconds():.0f} s of "
                                         "the switch")
                return RESTART_EXIT  # what the record says now runs next
        finally:
            self.child = None

    def stop_child(self) -> int:
        """SIGTERM, wait for a clean stop (at most ``stop_wait``), then SIGKILL."""
        child = self.child
        assert child is not None
        self._signal_child(signal.SIGTERM)
        try:
            return child.wait(timeout=self.stop_wait)
        except subprocess.TimeoutExpired:
            log.warning("mobility (pid %d) did not stop within %.0f s: killing it", child.pid, self.stop_wait)
            child.kill()
            return child.wait()
