"""The update feed: a TUF repository of agent packages, read with ``tuf.ngclient``.

Layout of a feed at ``URL`` (written by ``tools/release.py``, or by :meth:`FeedClient.export`):

- ``URL/metadata/``: ``N.root.json`` for every root version, ``timestamp.json``, ``N.snapshot.json``,
  ``N.targets.json`` (consistent snapshots: every file but the timestamp carries its version).
- ``URL/targets/``: each target as ``<dirs>/<sha256>.<basename>``; the targets are the packages
  (:func:`target_path`: ``agents/<name>/<name>-<version>.tar.gz``) and ``compatibility.json``.

Trust starts from the root shipped with Godwit (:func:`trusted_root`). Whatever TUF refuses (a bad or
unknown signature, a rolled-back version, expired metadata, metadata mixed from different releases, a
target of the wrong length or hash) is a :class:`~engine.errors.FeedInvalid`; a feed that does not answer
(in time) is a :class:`~engine.errors.FeedUnreachable`. The client is synchronous: callers run it in a
thread, never on an event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import urllib3
from tuf.api import exceptions as tuf_errors

# tuf documents these names in tuf.api.metadata but re-exports them without __all__ (mypy strict would refuse).
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

import engine
from engine.diskspace import NO_SPACE
from engine.errors import FeedInvalid, FeedUnreachable, UpdateError
from engine.files import fsync_dir, fsync_tree, write_atomically
from engine.updater import AGENT_ORDER
from engine.updater.compatibility import Compatibility
from engine.updater.package import MAX_PACKAGE_BYTES, parse_version

log = logging.getLogger(__name__)

TARGET_COMPATIBILITY = "compatibility.json"
#: Environment variable naming a root.json to trust instead of the shipped one (tests, demos).
ROOT_ENV = "GODWIT_UPDATE_ROOT"
#: The cap on compatibility.json, whatever the metadata says.
MAX_COMPATIBILITY_BYTES = 4 * 1024 * 1024
_TARGET = re.compile(r"^agents/([a-z-]{1,32})/([a-z-]{1,32})-(\d{1,4}\.\d{1,4}\.\d{1,4})\.tar\.gz$")
_METADATA = re.compile(r"^(?:(\d+)\.)?(root|timestamp|snapshot|targets)\.json$")
_CHUNK = 64 * 1024


def target_path(name: str, version: str) -> str:
    """The feed's path of agent ``name`` at ``version``."""
    return f"agents/{name}/{name}-{version}.tar.gz"


@dataclass(frozen=True)
class FeedTarget:
    """One package the feed publishes, as its signed targets metadata describes it."""

    path: str
    name: str
    version: str
    length: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class FeedIndex:
    """What a refresh found: the verified packages and compatibility record of the feed."""

    #: Agent name -> its published versions, oldest first.
    targets: dict[str, tuple[FeedTarget, ...]]
    compatibility: Compatibility
    #: When the feed's timestamp metadata expires (epoch seconds): the feed must be refreshed before.
    timestamp_expires: float

    def newest(self, name: str) -> FeedTarget | None:
        versions = self.targets.get(name, ())
        return versions[-1] if versions else None

    def find(self, name: str, version: str) -> FeedTarget | None:
        return next((t for t in self.targets.get(name, ()) if t.version == version), None)


def trusted_root() -> bytes:
    """The root metadata to trust: the file named by ``GODWIT_UPDATE_ROOT`` if set, else the
    ``resources/updates/root.json`` of the installed tree. Raises :class:`UpdateError` if unreadable."""
    override = os.environ.get(ROOT_ENV)
    path = Path(override) if override else Path(engine.__file__).parent.parent / "resources" / "updates" / "root.json"
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UpdateError(f"The trusted root of the update feed ({path}) cannot be read: {exc.strerror}. Reinstall "
                          f"Godwit{' or fix ' + ROOT_ENV if override else ''}.") from exc


# --- the fetcher ------------------------------------------------------------------------------------
class _Unreachable(tuf_errors.DownloadError):
    """The feed did not answer; ``why`` says how, in plain words."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"{url}: {why}")
        self.url = url
        self.why = why


class _TooSlow(tuf_errors.SlowRetrievalError):
    """The feed answered slower than the deadline of this file allows."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"{url}: {why}")
        self.url = url
        self.why = why


class _HTTPStatus(tuf_errors.DownloadHTTPError):
    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"{url}: HTTP {status}", status)
        self.url = url


class _Fetcher(FetcherInterface):
    """urllib3 with a connect timeout, a per-read timeout and an overall deadline per file of
    ``timeout + max_length / min_rate`` seconds (a feed that sends one byte a second is cut off), and
    optionally mutual TLS (the client certificate, the CA pinned, the host name not checked: the
    appliance's certificate names the appliance, not the address a source server uses).

    Records the last URL asked and the last metadata file received, so that a refusal can be told
    in plain words (which metadata, which version)."""

    def __init__(self, *, metadata_url: str, timeout: float, min_rate: float,
                 tls: tuple[Path, Path, Path] | None) -> None:
        self._metadata_url = metadata_url
        self._timeout = timeout
        self._min_rate = min_rate
        options: dict[str, Any] = {}
        if tls is not None:
            cert, key, ca = tls
            options = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(ca), "assert_hostname": False,
                       "cert_file": str(cert), "key_file": str(key)}
        # Two connection retries (a feed restarting), no read retries (a body is never asked twice).
        retries = urllib3.Retry(total=3, connect=2, read=0, status=0, other=0, redirect=3, backoff_factor=0.2,
                                raise_on_redirect=True, raise_on_status=False)
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=2, retries=retries, **options)
        #: The last URL asked, and the last metadata file received with its URL.
        self.last_url: str | None = None
        self.last_metadata: tuple[str, bytes] | None = None
        #: Called as ``progress(done, total)`` while a file downloads (set by the client around a download).
        self.progress: Callable[[int, int], None] | None = None

    def close(self) -> None:
        self._pool.clear()

    def _fetch(self, url: str) -> Iterator[bytes]:
        limit = self._timeout + MAX_PACKAGE_BYTES / self._min_rate
        return self._stream(url, time.monotonic() + limit, limit)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """The body of ``url`` (at most ``max_length`` bytes) in a temporary file, within the deadline."""
        limit = self._timeout + max_length / self._min_rate
        deadline = time.monotonic() + limit
        self.last_url = url
        progress = self.progress
        received = 0
        with tempfile.TemporaryFile() as f:
            if progress is not None:
                progress(0, max_length)
            for chunk in self._stream(url, deadline, limit):
                received += len(chunk)
                if received > max_length:
                    raise tuf_errors.DownloadLengthMismatchError(f"{url}: more than {max_length} bytes")
                f.write(chunk)
                if progress is not None:
                    progress(received, max_length)
            log.debug("feed.download.complete url=%s bytes=%d", url, received)
            if url.startswith(self._metadata_url) and received <= 1024 * 1024:
                f.seek(0)
                self.last_metadata = (url, f.read())
            f.seek(0)
            yield f

    def _stream(self, url: str, deadline: float, limit: float) -> Iterator[bytes]:
        """Ask for ``url``; its body as an iterator (``deadline``: monotonic time it must be whole by,
        ``limit`` seconds from the start)."""
        self.last_url = url
        remaining = deadline - time.monotonic()
        step = max(0.05, min(self._timeout, remaining))
        try:
            response = self._pool.request("GET", url, preload_content=False,
                                          timeout=urllib3.Timeout(connect=step, read=step))
        except urllib3.exceptions.MaxRetryError as exc:
            raise self._translate(url, exc.reason or exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._translate(url, exc) from exc
        if response.status >= 400:
            response.close()  # its body is not read (it may be large or slow): the connection is not reused
            response.release_conn()
            raise _HTTPStatus(url, response.status)
        return self._body(url, response, deadline, limit)

    def _body(self, url: str, response: urllib3.BaseHTTPResponse, deadline: float, limit: float) -> Iterator[bytes]:
        """The body as it comes, cut off when the deadline passes (each read also waits at most the read
        timeout, and never past the deadline)."""
        done = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _TooSlow(url, f"it was slower than the {limit:.1f} s deadline allows")
                sock = getattr(getattr(response, "connection", None), "sock", None)
                if isinstance(sock, socket.socket):
                    sock.settimeout(max(0.05, min(self._timeout, remaining)))
                chunk = response.read1(_CHUNK)
                if not chunk:
                    done = True
                    return
                yield chunk
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, urllib3.exceptions.TimeoutError | socket.timeout) and time.monotonic() >= deadline:
                raise _TooSlow(url, f"it was slower than the {limit:.1f} s deadline allows") from exc
            raise self._translate(url, exc) from exc
        finally:
            if not done:
                response.close()  # a connection with unread body is never reused
            response.release_conn()

    def _translate(self, url: str, exc: BaseException) -> tuf_errors.DownloadError:
        """The download error for a urllib3 or socket error, by its type. (Order matters: urllib3's
        NewConnectionError is also a ConnectTimeoutError, for backwards compatibility.)"""
        if isinstance(exc, urllib3.exceptions.NameResolutionError):
            return _Unreachable(url, "its host name did not resolve")
        if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError):
            return _Unreachable(url, "the TLS handshake failed (certificate not trusted or not accepted)")
        if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
            return _Unreachable(url, "the connection was refused")
        if isinstance(exc, urllib3.exceptions.TimeoutError | socket.timeout):
            return _TooSlow(url, f"no answer within {self._timeout:g} s")
        if isinstance(exc, urllib3.exceptions.ProtocolError | ConnectionError):
            return _Unreachable(url, "it closed the connection")
        return _Unreachable(url, f"the download failed ({type(exc).__name__})")


# --- the client -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Verified:
    """The exact bytes of the top-level metadata the last refresh verified (for :meth:`FeedClient.export`)."""

    timestamp: bytes
    snapshot: bytes
    snapshot_version: int
    targets: bytes
    targets_version: int
    compatibility: TargetFile
    compatibility_file: Path


def _peek(data: bytes) -> Signed | None:
    """The payload of a metadata file, unverified (to word a refusal), or None if it does not parse."""
    try:
        return Metadata.from_bytes(data).signed
    except (tuf_errors.RepositoryError, ValueError, KeyError, TypeError):
        return None


def _date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


class FeedClient:
    """Reads one update feed with TUF: refreshes its metadata, lists and downloads verified packages,
    and exports a verifiable copy of part of it (the feed the appliance re-serves to source servers).

    Synchronous and not thread-safe: one caller at a time, in a thread (never on an event loop).
    Local state lives under ``metadata_dir`` (``tuf/``: TUF's cache; ``roots/``: every root version
    verified, ``N.root.json``) and ``download_dir`` (verified files)."""

    def __init__(self, url: str, *, metadata_dir: Path, download_dir: Path, trusted_root: bytes,
                 tls: tuple[Path, Path, Path] | None = None, timeout: float = 30.0, min_rate: float = 1024.0) -> None:
        self.url = url.rstrip("/")
        self._metadata_dir = metadata_dir
        self._tuf_dir = metadata_dir / "tuf"
        self._roots_dir = metadata_dir / "roots"
        self._download_dir = download_dir
        self._trusted_root = trusted_root
        self._fetcher = _Fetcher(metadata_url=f"{self.url}/metadata/", timeout=timeout, min_rate=min_rate, tls=tls)
        self._updater: Updater | None = None
        self._verified: _Verified | None = None
        self._index: FeedIndex | None = None
        self._refreshed_at: float | None = None

    def __repr__(self) -> str:
        index = self._index
        state = "never refreshed" if self._refreshed_at is None else (
            f"refreshed={time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(self._refreshed_at))} "
            f"targets={sum(len(v) for v in index.targets.values()) if index else 0}")
        return f"<FeedClient {self.url} {state} last_url={self._fetcher.last_url}>"

    def close(self) -> None:
        """Close the connections (idempotent)."""
        self._fetcher.close()

    # --- refresh ------------------------------------------------------------------------------------
    def refresh(self) -> FeedIndex:
        """Refresh the TUF metadata (the root chain, timestamp, snapshot, targets), then download and verify
        ``compatibility.json``. Returns what the feed publishes. Raises :class:`FeedUnreachable`,
        :class:`FeedInvalid` or :class:`UpdateError` (a local write failed); the metadata trusted before
        stays trusted then (TUF keeps only what verified)."""
        started = time.monotonic()
        log.info("feed.refresh.started url=%s", self.url)
        self._updater = None
        self._verified = None
        try:
            for path in (self._tuf_dir, self._roots_dir, self._download_dir):
                path.mkdir(parents=True, exist_ok=True)
            try:
                updater = Updater(str(self._tuf_dir), f"{self.url}/metadata/", str(self._download_dir),
                                  f"{self.url}/targets/", fetcher=self._fetcher, config=UpdaterConfig(),
                                  bootstrap=self._trusted_root)
            except tuf_errors.RepositoryError as exc:
                raise UpdateError("The trusted root of the update feed is not valid TUF root metadata: reinstall "
                                  f"Godwit or fix {ROOT_ENV}.") from exc
            try:
                updater.refresh()
            finally:
                try:
                    self._keep_roots()
                except OSError as exc:  # the next refresh tries again; never hide what refresh raised
                    log.warning("feed.roots.failed dir=%s error=%s", self._roots_dir, exc)
            targets = self._list_targets(updater)
            compat_info = updater.get_targetinfo(TARGET_COMPATIBILITY)
            if compat_info is None:
                raise FeedInvalid("The update feed publishes no compatibility.json: the release was published "
                                  "wrongly; nothing was installed. Tell the feed's maintainer.")
            if compat_info.length > MAX_COMPATIBILITY_BYTES:
                raise FeedInvalid(f"The update feed's compatibility.json is {compat_info.length} bytes, more than "
                                  f"{MAX_COMPATIBILITY_BYTES}: refused; nothing was installed.")
            compat_file = self._download_verified(updater, compat_info, None, what=TARGET_COMPATIBILITY)
            try:
                compat_data = json.loads(compat_file.read_bytes())
            except ValueError:
                raise FeedInvalid("The update feed's compatibility.json is not valid (not JSON): the release was "
                                  "published wrongly; nothing was installed. Tell the feed's maintainer.") from None
            compatibility = Compatibility.from_json(compat_data)
            verified, timestamp_expires = self._read_verified(compat_info, compat_file)
        except UpdateError:
            raise
        except Exception as exc:
            raise self._refusal(exc, target=None) from exc
        self._updater = updater
        self._verified = verified
        self._refreshed_at = time.time()
        self._index = FeedIndex(targets=targets, compatibility=compatibility, timestamp_expires=timestamp_expires)
        log.info("feed.refresh.complete url=%s targets=%d snapshot=%d targets_version=%d seconds=%.2f", self.url,
                 sum(len(v) for v in targets.values()), verified.snapshot_version, verified.targets_version,
                 time.monotonic() - started)
        return self._index

    def _list_targets(self, updater: Updater) -> dict[str, tuple[FeedTarget, ...]]:
        """Every package the verified targets metadata lists, each confirmed through TUF's own lookup."""
        listed = Metadata[Targets].from_bytes((self._tuf_dir / "targets.json").read_bytes()).signed.targets
        found: dict[str, list[FeedTarget]] = {}
        for path in sorted(listed):
            match = _TARGET.match(path)
            if match is None or match.group(1) != match.group(2) or match.group(1) not in AGENT_ORDER:
                continue  # compatibility.json, or an agent this version does not know
            info = updater.get_targetinfo(path)
            sha256 = info.hashes.get("sha256") if info is not None else None
            if info is None or sha256 is None:
                log.warning("feed.target.skipped path=%s reason=%s", path, "no sha256" if info else "not trusted")
                continue
            found.setdefault(match.group(1), []).append(FeedTarget(path=path, name=match.group(1),
                                                                   version=match.group(3), length=info.length,
                                                                   sha256=sha256))
        return {name: tuple(sorted(items, key=lambda t: parse_version(t.version))) for name, items in found.items()}

    def _read_verified(self, compat_info: TargetFile, compat_file: Path) -> tuple[_Verified, float]:
        """The bytes TUF verified and cached in this refresh, with the versions that name them."""
        timestamp = (self._tuf_dir / "timestamp.json").read_bytes()
        snapshot = (self._tuf_dir / "snapshot.json").read_bytes()
        targets = (self._tuf_dir / "targets.json").read_bytes()
        ts = Metadata[Timestamp].from_bytes(timestamp).signed
        snap = Metadata[Snapshot].from_bytes(snapshot).signed
        tgt = Metadata[Targets].from_bytes(targets).signed
        verified = _Verified(timestamp=timestamp, snapshot=snapshot, snapshot_version=snap.version, targets=targets,
                             targets_version=tgt.version, compatibility=compat_info, compatibility_file=compat_file)
        return verified, ts.expires.timestamp()

    def _keep_roots(self) -> None:
        """Copy into ``roots/`` every root version TUF accepted that chains from the trusted root: each signed
        by the threshold of its predecessor's root keys and of its own, version by version."""
        try:
            bootstrap = Metadata[Root].from_bytes(self._trusted_root)
        except (tuf_errors.RepositoryError, ValueError):
            return
        version = bootstrap.signed.version
        first = self._roots_dir / f"{version}.root.json"
        if not first.exists() or first.read_bytes() != self._trusted_root:
            for old in self._roots_dir.glob("*.root.json"):  # another trusted root: start the chain again
                old.unlink()
            write_atomically(first, self._trusted_root, mode=0o644)
        current = bootstrap
        while True:
            have = self._roots_dir / f"{version + 1}.root.json"
            if have.exists():
                current, version = Metadata[Root].from_bytes(have.read_bytes()), version + 1
                continue
            candidate = self._tuf_dir / "root_history" / f"{version + 1}.root.json"
            try:
                data = candidate.read_bytes()
                new = Metadata[Root].from_bytes(data)
                if new.signed.version != version + 1:
                    return
                current.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
                new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            except (OSError, tuf_errors.RepositoryError, ValueError):
                return
            write_atomically(have, data, mode=0o644)
            current, version = new, version + 1

    # --- download -----------------------------------------------------------------------------------
    def download(self, target: FeedTarget, progress: Callable[[int, int], None] | None = None) -> Path:
        """The verified package ``target`` as a file in ``download_dir``: one already there is reused if it
        verifies, else it is downloaded (``progress(done, total)`` as it comes) and verified against the
        signed length and sha256 before it appears under its name. Refreshes first if this client has not.
        ``progress`` is called on this thread, between reads; it should not raise. Raises
        :class:`FeedUnreachable`, :class:`FeedInvalid` (nothing is left in ``download_dir``) or
        :class:`UpdateError` (also when the last refresh no longer lists ``target`` as it is)."""
        if self._updater is None:
            self.refresh()
        updater = self._updater
        assert updater is not None
        try:
            info = updater.get_targetinfo(target.path)
        except Exception as exc:
            raise self._refusal(exc, target=None) from exc
        if info is None or info.length != target.length or info.hashes.get("sha256") != target.sha256:
            raise UpdateError(f"The update feed no longer publishes {target} as it was listed: refresh the feed "
                              "and try again.")
        return self._download_verified(updater, info, progress, what=f"the package {target}")

    def _download_verified(self, updater: Updater, info: TargetFile, progress: Callable[[int, int], None] | None,
                           *, what: str) -> Path:
        path = self._download_dir / info.path.rpartition("/")[2]
        if updater.find_cached_target(info, str(path)) is not None:
            log.info("feed.download.reused path=%s file=%s", info.path, path)
            return path
        log.info("feed.download.started path=%s bytes=%d", info.path, info.length)
        started = time.monotonic()
        tmp = self._download_dir / f".{path.name}.{secrets.token_hex(4)}.partial"
        self._fetcher.progress = progress
        try:
            updater.download_target(info, str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self._download_dir)
        except Exception as exc:
            raise self._refusal(exc, target=what) from exc
        finally:
            self._fetcher.progress = None
            tmp.unlink(missing_ok=True)
        log.info("feed.download.complete path=%s bytes=%d seconds=%.2f", info.path, info.length,
                 time.monotonic() - started)
        return path

    # --- export -------------------------------------------------------------------------------------
    def export(self, dest: Path, targets: Sequence[FeedTarget]) -> None:
        """Write to ``dest`` a feed that verifies ``targets`` (and ``compatibility.json``) for a client with
        the same trusted root: ``metadata/`` with every root version from the trusted one to the current,
        and the exact timestamp, snapshot and targets metadata the last refresh verified; ``targets/`` with
        each file under its consistent-snapshot name. Refreshes first if this client has not; downloads
        (and verifies) what is not in ``download_dir`` yet.

        Written into a temporary sibling folder, fsynced, then swapped in for ``dest``: a reader sees the
        old export or the new one, never a mix (except for an instant between two renames, where ``dest``
        is absent). Raises :class:`UpdateError` (or a feed error while downloading)."""
        if self._verified is None:
            self.refresh()
        verified = self._verified
        assert verified is not None
        files = [(t.path, t.sha256, self.download(t)) for t in targets]
        compat_sha = verified.compatibility.hashes["sha256"]
        files.append((verified.compatibility.path, compat_sha, verified.compatibility_file))
        log.info("feed.export.started dest=%s targets=%d", dest, len(targets))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".export-{dest.name}-{secrets.token_hex(4)}"
        old = dest.parent / f".export-old-{dest.name}-{secrets.token_hex(4)}"
        try:
            metadata = tmp / "metadata"
            metadata.mkdir(parents=True)
            roots = self._root_chain()
            for version, data in roots:
                (metadata / f"{version}.root.json").write_bytes(data)
            (metadata / "timestamp.json").write_bytes(verified.timestamp)
            (metadata / f"{verified.snapshot_version}.snapshot.json").write_bytes(verified.snapshot)
            (metadata / f"{verified.targets_version}.targets.json").write_bytes(verified.targets)
            for path, sha256, source in files:
                dirname, _, basename = path.rpartition("/")
                out = tmp / "targets" / dirname / f"{sha256}.{basename}"
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, out)
                if _sha256(out) != sha256:  # changed on disk since it was verified
                    raise UpdateError(f"{source} changed after it was verified: export again.")
            fsync_tree(tmp)
            if dest.exists():
                os.rename(dest, old)
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise UpdateError(f"Not enough space in {dest.parent} to export the update feed: free some space "
                                  "and try again.") from exc
            raise UpdateError(f"Could not export the update feed to {dest}: {exc.strerror}. Check the folder and "
                              "try again.") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        log.info("feed.export.complete dest=%s targets=%d roots=%d", dest, len(targets), len(roots))

    def _root_chain(self) -> list[tuple[int, bytes]]:
        """``(version, bytes)`` of every root in ``roots/``, contiguous up to the newest."""
        versions = sorted(int(p.name.split(".")[0]) for p in self._roots_dir.glob("*.root.json")
                          if p.name.split(".")[0].isdigit())
        chain: list[int] = []
        for version in reversed(versions):
            if chain and version != chain[-1] - 1:
                break
            chain.append(version)
        return [(v, (self._roots_dir / f"{v}.root.json").read_bytes()) for v in reversed(chain)]

    # --- errors -------------------------------------------------------------------------------------
    def _unreachable(self, why: str) -> FeedUnreachable:
        return FeedUnreachable(f"The update feed at {self.url} did not answer: {why}. Check the feed URL (godwit "
                               "agents feed URL) and the network.")

    def _what(self, url: str | None) -> tuple[str, str | None]:
        """(how a URL is named to the admin, the metadata role if it is metadata)."""
        if url is None:
            return "the feed", None
        name = url.rpartition("/")[2]
        match = _METADATA.match(name)
        if url.startswith(f"{self.url}/metadata/") and match:
            return f"{match.group(2)} metadata", match.group(2)
        return name, None

    def _refusal(self, exc: BaseException, *, target: str | None) -> UpdateError:
        """The one-line error for what TUF or the network raised, chosen by the exception's type (``target``:
        how the target being downloaded is named, if one is)."""
        log.info("feed.refused url=%s last=%s error=%s: %s", self.url, self._fetcher.last_url, type(exc).__name__, exc)
        what, role = self._what(self._fetcher.last_url)
        subject = target or what
        if isinstance(exc, UpdateError):
            return exc
        if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
            return FeedInvalid(f"The update feed sent more bytes for {subject} than its signed metadata (or the limit "
                               "for it) allows: it was tampered with or damaged in transit; refused, nothing was "
                               "installed.")
        if isinstance(exc, tuf_errors.DownloadHTTPError):
            if exc.status_code >= 500 or (target is None and role == "timestamp"):
                return self._unreachable(f"HTTP {exc.status_code} for {subject}")  # a wrong URL, or a feed down
            return FeedInvalid(f"The update feed lacks {subject} (HTTP {exc.status_code}), which its signed "
                               "metadata lists: the feed is incomplete; nothing was installed. Try again later or "
                               "tell the feed's maintainer.")
        if isinstance(exc, _Unreachable | _TooSlow):
            return self._unreachable(f"{exc.why} ({subject})")
        if isinstance(exc, tuf_errors.SlowRetrievalError):
            return self._unreachable(f"{subject} came slower than the deadline allows")
        if isinstance(exc, tuf_errors.DownloadError):
            return self._unreachable(f"the download of {subject} failed")
        if isinstance(exc, tuf_errors.ExpiredMetadataError):
            return self._expired()
        if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
            if target is not None:
                return FeedInvalid(f"The update feed sent {subject} with a length or hash other than its signed "
                                   "metadata says: it was tampered with or damaged in transit; refused, nothing was "
                                   "installed.")
            return FeedInvalid(f"The update feed's {what} does not match the length or hash the rest of the feed "
                               "lists: tampered with or mixed from different releases; nothing was installed.")
        if isinstance(exc, tuf_errors.UnsignedMetadataError):
            return FeedInvalid(f"The update feed's {what} is not signed by the keys the trusted root names (an "
                               "unknown key or a forged file): refused, nothing was installed.")
        if isinstance(exc, tuf_errors.BadVersionNumberError):
            return FeedInvalid(self._bad_version(what, role))
        if isinstance(exc, tuf_errors.RepositoryError):  # DeserializationError and the rest
            return FeedInvalid(f"The update feed's {what} is not valid or does not agree with the rest of the "
                               "feed: refused, nothing was installed. Try again later or tell the feed's "
                               "maintainer.")
        if isinstance(exc, OSError):
            place = self._download_dir if target else self._metadata_dir
            if exc.errno in NO_SPACE:
                return UpdateError(f"Not enough space in {place} for the update feed's files: free some space and "
                                   "try again.")
            return UpdateError(f"Could not write the update feed's files under {place}: {exc.strerror or exc}. "
                               "Check the folder and try again.")
        log.warning("feed.error url=%s", self.url, exc_info=exc)  # not foreseen: keep the traceback in the log
        return UpdateError(f"The update feed at {self.url} could not be read ({type(exc).__name__}): try again; "
                           "if it goes on, send the engine log to support.")

    def _bad_version(self, what: str, role: str | None) -> str:
        seen = self._fetcher.last_metadata
        got = _peek(seen[1]) if seen and seen[0] == self._fetcher.last_url else None
        sent = f" (version {got.version})" if got is not None else ""
        if role == "timestamp":
            trusted = self._local("timestamp")
            had = f" version {trusted.version}" if trusted is not None else " a newer one"
            return (f"The update feed's timestamp metadata{sent} is older than{had} already seen: the feed is "
                    "rolled back or replayed; nothing was installed.")
        if role == "targets":
            return (f"The update feed's targets metadata{sent} is not the version its snapshot lists: metadata "
                    "mixed from different releases; nothing was installed.")
        if role == "snapshot":
            return (f"The update feed's snapshot metadata{sent} is not the version its timestamp lists, or rolls "
                    "back a version already seen: rolled back or mixed from different releases; nothing was "
                    "installed.")
        return (f"The update feed's {what}{sent} has the wrong version: rolled back or mixed from different "
                "releases; nothing was installed.")

    def _local(self, role: str) -> Signed | None:
        try:
            return _peek((self._tuf_dir / f"{role}.json").read_bytes())
        except OSError:
            return None

    def _expired(self) -> FeedInvalid:
        """Which metadata expired: the trusted root, the timestamp (TUF keeps it before judging its expiry),
        or the file just received."""
        now = datetime.now(UTC)
        candidates: list[tuple[str, Signed | None]] = [("root", self._local("root")),
                                                       ("timestamp", self._local("timestamp"))]
        seen = self._fetcher.last_metadata
        if seen is not None:
            candidates.append((self._what(seen[0])[1] or "metadata", _peek(seen[1])))
        for role, signed in candidates:
            if signed is not None and signed.is_expired(now):
                return FeedInvalid(f"The update feed's {role} metadata expired on {_date(signed.expires)}: the feed "
                                   "is stale or replayed; nothing was installed. Try again later or tell the "
                                   "feed's maintainer.")
        return FeedInvalid("The update feed's metadata has expired: the feed is stale or replayed; nothing was "
                           "installed. Try again later or tell the feed's maintainer.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


