"""The update feed: real TUF metadata signed by tools/release.py, served over real HTTP on loopback.

Every attack is refused with FeedInvalid or FeedUnreachable and leaves nothing in the download folder:
a tampered or lengthened package, a rolled-back timestamp, expired metadata, metadata mixed from two
releases, metadata signed with a key the root does not name, a malformed compatibility.json, a feed that
is down, refuses, fails or sends one byte at a time.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import pki
from engine.errors import FeedInvalid, FeedUnreachable
from engine.links.agent import AGENT_LINK
from engine.updater.compatibility import AgentRelease, Compatibility, problems
from engine.updater.feed import TARGET_COMPATIBILITY, FeedClient, FeedTarget, target_path, trusted_root
from engine.updater.package import read_manifest
from tests.appliance import free_port
from tests.feed_server import FeedServer, publish_release, release_tool

AGENTS = ("log-processor", "process-server")


@dataclass(frozen=True)
class Feeds:
    keys: Path
    root: bytes
    release1: Path  # 0.2.0 of AGENTS
    release2: Path  # and 0.3.0, where process-server 0.3.0 needs log-processor 0.3.0


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Feeds:
    base = tmp_path_factory.mktemp("feeds")
    keys, feed = base / "keys", base / "feed"
    publish_release(feed, keys, "0.2.0", agents=AGENTS)
    shutil.copytree(feed, base / "release1")
    publish_release(feed, keys, "0.3.0", agents=AGENTS, requires={"process-server": {"log-processor": "0.3.0"}})
    shutil.copytree(feed, base / "release2")
    return Feeds(keys=keys, root=(feed / "metadata" / "1.root.json").read_bytes(), release1=base / "release1",
                 release2=base / "release2")


@pytest.fixture
def copy(tmp_path: Path) -> Callable[[Path], Path]:
    """A copy of a published feed this test may change."""

    def make(feed: Path) -> Path:
        out = tmp_path / f"feed-{feed.name}"
        shutil.copytree(feed, out)
        return out

    return make


@pytest.fixture
def clients(tmp_path: Path, feeds: Feeds) -> Iterator[Callable[..., FeedClient]]:
    """FeedClients with their own folders, trusting the test feed's root; closed at the end."""
    made: list[FeedClient] = []

    def make(url: str, name: str = "client", **kw: object) -> FeedClient:
        kw.setdefault("trusted_root", feeds.root)
        client = FeedClient(url, metadata_dir=tmp_path / name / "metadata", download_dir=tmp_path / name / "downloads",
                            **kw)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def stored(target: FeedTarget) -> str:
    """The URL path of a target in the feed (consistent snapshots)."""
    dirname, _, basename = target.path.rpartition("/")
    return f"targets/{dirname}/{target.sha256}.{basename}"


def packages_in(client_dir: Path) -> list[str]:
    folder = client_dir / "downloads"
    return sorted(p.name for p in folder.iterdir() if p.name != TARGET_COMPATIBILITY) if folder.exists() else []


# --- what works -------------------------------------------------------------------------------------
def test_refresh_and_download_verify(feeds: Feeds, clients: Callable[..., FeedClient], tmp_path: Path) -> None:
    """A refresh lists each agent's versions, the newest, the expiry and the compatibility record; a download
    matches its signed length and hash, reports progress, and is verified again from disk, not fetched again."""
    with FeedServer(feeds.release2) as server:
        client = clients(server.url)
        index = client.refresh()
        assert [t.version for t in index.targets["log-processor"]] == ["0.2.0", "0.3.0"]
        assert set(index.targets) == set(AGENTS)
        newest = index.newest("process-server")
        assert newest is not None and newest.version == "0.3.0"
        assert newest.path == target_path("process-server", "0.3.0")
        assert newest.path == "agents/process-server/process-server-0.3.0.tar.gz"
        assert index.newest("mobility-package") is None
        assert abs(index.timestamp_expires - (time.time() + 7 * 86400)) < 3600
        assert index.compatibility.agents["process-server"]["0.3.0"].requires == {"log-processor": "0.3.0"}
        assert index.compatibility.agents["log-processor"]["0.2.0"].links["agent"] == \
            f"{AGENT_LINK.major}.{AGENT_LINK.minor}"
        assert "feed-" not in repr(client) and "refreshed=" in repr(client)

        seen: list[tuple[int, int]] = []
        path = client.download(newest, lambda done, total: seen.append((done, total)))
        data = path.read_bytes()
        assert len(data) == newest.length and hashlib.sha256(data).hexdigest() == newest.sha256
        assert seen[0] == (0, newest.length) and seen[-1] == (newest.length, newest.length)
        manifest = read_manifest(path)
        assert (manifest.name, manifest.version, manifest.module) == ("process-server", "0.3.0",
                                                                      "engine.process_server")
        asked = len(server.requests)
        assert client.download(newest) == path  # verified again from disk, not downloaded again
        assert len(server.requests) == asked
        assert packages_in(tmp_path / "client") == ["process-server-0.3.0.tar.gz"]


def test_trusted_root_comes_from_the_environment_or_the_installed_tree(
        feeds: Feeds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trusted root is read from GODWIT_UPDATE_ROOT when set, else from the root.json shipped in
    resources/updates."""
    root_file = tmp_path / "root.json"
    root_file.write_bytes(feeds.root)
    monkeypatch.setenv("GODWIT_UPDATE_ROOT", str(root_file))
    assert trusted_root() == feeds.root
    monkeypatch.delenv("GODWIT_UPDATE_ROOT")
    shipped = Path(__file__).resolve().parents[2] / "resources" / "updates" / "root.json"
    assert trusted_root() == shipped.read_bytes()
    assert b'"consistent_snapshot": true' in shipped.read_bytes()


# --- tampering ----------------------------------------------------------------------------------------
def test_a_tampered_package_is_refused(feeds: Feeds, clients: Callable[..., FeedClient], tmp_path: Path) -> None:
    """A package with one byte changed is refused as tampered (length or hash) and leaves no file, not even a
    partial one."""
    with FeedServer(feeds.release2) as server:
        client = clients(server.url)
        target = client.refresh().newest("log-processor")
        assert target is not None
        data = bytearray(server.read(stored(target)) or b"")
        data[len(data) // 2] ^= 0x01
        server.replace(stored(target), bytes(data))
        with pytest.raises(FeedInvalid, match=r"the package log-processor 0\.3\.0 .*length or hash.*tampered"):
            client.download(target)
        assert packages_in(tmp_path / "client") == []
        assert not [p for p in (tmp_path / "client" / "downloads").iterdir() if p.name.startswith(".")]


def test_a_package_with_a_byte_more_is_refused(feeds: Feeds, clients: Callable[..., FeedClient],
                                               tmp_path: Path) -> None:
    """A package longer than its signed length is refused at the extra byte and leaves nothing downloaded."""
    with FeedServer(feeds.release2) as server:
        client = clients(server.url)
        target = client.refresh().newest("log-processor")
        assert target is not None
        server.replace(stored(target), (server.read(stored(target)) or b"") + b"\0")
        with pytest.raises(FeedInvalid, match=r"more bytes for the package log-processor 0\.3\.0"):
            client.download(target)
        assert packages_in(tmp_path / "client") == []


def test_a_rolled_back_timestamp_is_refused(feeds: Feeds, clients: Callable[..., FeedClient], tmp_path: Path) -> None:
    """A timestamp older than one already seen is refused as rolled back or replayed, also by a new client on
    the same folders."""
    with FeedServer(feeds.release2) as server:
        client = clients(server.url)
        client.refresh()
        server.replace("metadata/timestamp.json", (feeds.release1 / "metadata" / "timestamp.json").read_bytes())
        with pytest.raises(FeedInvalid, match=r"timestamp metadata \(version 1\) is older than version 2 already "
                                              "seen: the feed is rolled back or replayed"):
            clients(server.url, "client").refresh()  # a new client on the same folders: what was seen is kept
        with pytest.raises(FeedInvalid, match="rolled back"):
            client.refresh()
        assert packages_in(tmp_path / "client") == []


def test_metadata_mixed_from_two_releases_is_refused(feeds: Feeds, clients: Callable[..., FeedClient],
                                                     tmp_path: Path) -> None:
    """Release 1's timestamp and snapshot with release 2's targets are refused as mixed from different
    releases; release 1 whole is accepted."""
    # Release 1's timestamp and snapshot (targets version 1), with release 2's targets served as version 1.
    with FeedServer(feeds.release2) as server:
        server.replace("metadata/timestamp.json", (feeds.release1 / "metadata" / "timestamp.json").read_bytes())
        server.replace("metadata/1.targets.json", (feeds.release2 / "metadata" / "2.targets.json").read_bytes())
        client = clients(server.url)
        with pytest.raises(FeedInvalid, match=r"targets metadata \(version 2\) is not the version its snapshot "
                                              "lists: metadata mixed from different releases"):
            client.refresh()
        assert packages_in(tmp_path / "client") == []
        server.restore("metadata/1.targets.json")  # release 1 whole is fine
        assert [t.version for t in client.refresh().targets["log-processor"]] == ["0.2.0"]


def test_metadata_signed_with_an_unknown_key_is_refused(feeds: Feeds, clients: Callable[..., FeedClient],
                                                        tmp_path: Path) -> None:
    """A timestamp signed with keys the trusted root does not name is refused; nothing is downloaded."""
    forged = release_tool().timestamp_bytes(feeds.release2, tmp_path / "attacker-keys",
                                            expires=datetime.now(UTC) + timedelta(days=1), version=10)
    with FeedServer(feeds.release2) as server:
        server.replace("metadata/timestamp.json", forged)
        with pytest.raises(FeedInvalid, match="timestamp metadata is not signed by the keys the trusted root names"):
            clients(server.url).refresh()
    assert packages_in(tmp_path / "client") == []


def test_a_different_trusted_root_refuses_the_feed(feeds: Feeds, clients: Callable[..., FeedClient],
                                                   tmp_path: Path) -> None:
    """A client trusting another root refuses the feed's metadata as not signed by the keys that root names."""
    other = tmp_path / "other-feed"
    release_tool().ensure_repository(other, release_tool().ensure_keys(tmp_path / "other-keys"))
    with FeedServer(feeds.release2) as server:
        client = clients(server.url, trusted_root=(other / "metadata" / "1.root.json").read_bytes())
        with pytest.raises(FeedInvalid, match="not signed by the keys the trusted root names"):
            client.refresh()


@pytest.mark.parametrize("role", ["timestamp", "snapshot"])
def test_expired_metadata_is_refused(feeds: Feeds, clients: Callable[..., FeedClient], copy: Callable[[Path], Path],
                                     tmp_path: Path, role: str) -> None:
    """An expired timestamp, or an expired snapshot behind a fresh timestamp, is refused with its expiry date;
    nothing is downloaded."""
    feed = copy(feeds.release1)
    expired = datetime.now(UTC) - timedelta(days=2)
    if role == "timestamp":
        release_tool().write_timestamp(feed, feeds.keys, expires=expired)
    else:  # a whole release whose snapshot (and targets) expired two days ago, with a fresh timestamp
        publish_release(feed, feeds.keys, "0.4.0", agents=["log-processor"],
                        now=datetime.now(UTC) - timedelta(days=32))
        release_tool().write_timestamp(feed, feeds.keys, expires=datetime.now(UTC) + timedelta(days=1))
    with FeedServer(feed) as server, pytest.raises(FeedInvalid) as info:
        clients(server.url).refresh()
    assert str(info.value).startswith(f"The update feed's {role} metadata expired on {expired:%Y-%m-%d} ")
    assert "stale or replayed; nothing was installed" in str(info.value)
    assert packages_in(tmp_path / "client") == []


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "godwit-compatibility", "version": 1, '
                                                   b'"agents": {"log-processor": {"0.2": {}}}}'])
def test_a_malformed_compatibility_record_is_refused(feeds: Feeds, clients: Callable[..., FeedClient],
                                                     copy: Callable[[Path], Path], content: bytes) -> None:
    """A correctly signed compatibility.json that is not JSON, or names a bad version, is refused as not valid."""
    feed = copy(feeds.release1)
    release_tool().publish_target(feed, feeds.keys, TARGET_COMPATIBILITY, content)  # correctly signed, but wrong
    with FeedServer(feed) as server, pytest.raises(
            FeedInvalid, match=r"compatibility\.json is not valid \((not JSON|log-processor 0\.2 is not a version)\)"):
        clients(server.url).refresh()


def test_a_tampered_compatibility_record_is_refused(feeds: Feeds, clients: Callable[..., FeedClient]) -> None:
    """A compatibility.json changed on the server after signing is refused for its length or hash."""
    with FeedServer(feeds.release1) as server:
        client = clients(server.url)
        client.refresh()
        path = next(p.relative_to(feeds.release1).as_posix()
                    for p in (feeds.release1 / "targets").glob("*.compatibility.json"))
        server.replace(path, b'{"format": "godwit-compatibility", "version": 1, "agents": {}}')
        with pytest.raises(FeedInvalid, match=r"compatibility\.json with a length or hash other than its signed"):
            clients(server.url, "fresh").refresh()


# --- a feed that does not answer ------------------------------------------------------------------------
def test_a_feed_that_refuses_connections_is_unreachable(clients: Callable[..., FeedClient]) -> None:
    """A feed whose port refuses connections fails within seconds with one sentence naming the URL, the
    refusal and what to check."""
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(FeedUnreachable) as info:
        clients(url, timeout=2.0).refresh()
    assert time.monotonic() - started < 5
    # The first file a refresh asks for is the next root version.
    assert str(info.value) == (f"The update feed at {url} did not answer: the connection was refused (root "
                               "metadata). Check the feed URL (godwit agents feed URL) and the network.")


def test_a_feed_that_closes_connections_or_fails_is_unreachable(feeds: Feeds,
                                                                clients: Callable[..., FeedClient]) -> None:
    """A feed that closes the connection or answers HTTP 503 is unreachable, saying which; once it serves
    again, a refresh works."""
    with FeedServer(feeds.release1) as server:
        server.down = True
        with pytest.raises(FeedUnreachable, match="did not answer: it closed the connection"):
            clients(server.url, timeout=2.0).refresh()
        server.down = False
        server.fail_status = 503
        with pytest.raises(FeedUnreachable, match="did not answer: HTTP 503 for"):
            clients(server.url, timeout=2.0).refresh()
        server.fail_status = None
        assert clients(server.url, timeout=2.0).refresh().newest("log-processor") is not None


def test_a_feed_that_is_not_there_is_unreachable(tmp_path: Path, clients: Callable[..., FeedClient]) -> None:
    """A server without a feed (HTTP 404 for the timestamp) is reported unreachable, naming the 404."""
    (tmp_path / "empty").mkdir()
    with FeedServer(tmp_path / "empty") as server, pytest.raises(
            FeedUnreachable, match="did not answer: HTTP 404 for timestamp metadata"):
        clients(server.url).refresh()


def test_a_feed_slower_than_a_byte_a_second_is_cut_off(feeds: Feeds, clients: Callable[..., FeedClient],
                                                       tmp_path: Path) -> None:
    """A feed trickling 2 bytes a second is cut off by the deadline per file, for metadata and for a package,
    long before it would finish; nothing is downloaded."""
    # 2 bytes a second never trips the 1 s read timeout: only the deadline per file can stop it.
    with FeedServer(feeds.release2) as server:
        client = clients(server.url, timeout=1.0, min_rate=64 * 1024)
        server.slow_bytes_per_second = 2.0
        started = time.monotonic()
        with pytest.raises(FeedUnreachable, match=r"did not answer: it was slower than the 1\.2 s deadline allows "
                                                  r"\(timestamp metadata\)"):
            client.refresh()
        took = time.monotonic() - started
        assert took < 1.0 + 16384 / (64 * 1024) + 2.0, took  # timeout + timestamp max length / min_rate (+ slack)

        server.slow_bytes_per_second = None
        target = client.refresh().newest("log-processor")
        assert target is not None
        server.slow_bytes_per_second = 2.0
        started = time.monotonic()
        with pytest.raises(FeedUnreachable,
                           match=r"slower than the \d+\.\d s deadline allows \(the package log-processor 0\.3\.0\)"):
            client.download(target)
        took = time.monotonic() - started
        assert took < 1.0 + target.length / (64 * 1024) + 2.0, took
        assert packages_in(tmp_path / "client") == []


# --- compatibility ---------------------------------------------------------------------------------------
def rel(name: str, version: str, links: dict[str, str] | None = None,
        requires: dict[str, str] | None = None) -> AgentRelease:
    return AgentRelease(name=name, version=version, links=links or {}, requires=requires or {})


SUPERVISOR = {"agent": "1.1", "admin": "1.2"}


def test_problems_requires_unmet(feeds: Feeds, clients: Callable[..., FeedClient]) -> None:
    """An agent release that needs a newer version of another agent than the set would hold is one problem,
    naming both versions and pointing to Update all."""
    with FeedServer(feeds.release2) as server:
        compat = clients(server.url).refresh().compatibility
    ps3, lp2, lp3 = (compat.agents["process-server"]["0.3.0"], compat.agents["log-processor"]["0.2.0"],
                     compat.agents["log-processor"]["0.3.0"])
    assert problems({"process-server": ps3, "log-processor": lp3}, supervisor_links=SUPERVISOR) == []
    found = problems({"process-server": ps3, "log-processor": lp2}, supervisor_links=SUPERVISOR)
    assert len(found) == 1
    assert found[0].startswith("process-server 0.3.0 needs log-processor 0.3.0 or newer; log-processor would be "
                               "0.2.0.")
    assert "Update all" in found[0]


def test_problems_shared_link_majors() -> None:
    """Agents sharing a protocol must agree on its major version (minors may differ); the mobility package's
    agent link is not checked, as the supervisor does not run it."""
    rm = rel("replication-manager", "0.3.0", {"management": "2.0", "agent": "1.1"})
    mp = rel("mobility-package", "0.2.0", {"management": "1.1", "data": "1.0", "agent": "9.0"})
    found = problems({"replication-manager": rm, "mobility-package": mp}, supervisor_links=SUPERVISOR)
    assert len(found) == 1  # the mobility package is not run by the supervisor: its agent link does not count
    assert "replication-manager 0.3.0" in found[0] and "mobility-package 0.2.0" in found[0]
    assert "management protocol 2.0" in found[0] and "Update all" in found[0]
    same_major = rel("replication-manager", "0.3.1", {"management": "1.9", "agent": "1.0"})
    assert problems({"replication-manager": same_major, "mobility-package": mp}, supervisor_links=SUPERVISOR) == []
    ps = rel("process-server", "0.3.0", {"data": "2.0"})
    found = problems({"process-server": ps, "mobility-package": mp}, supervisor_links=SUPERVISOR)
    assert len(found) == 1 and "data protocol" in found[0]


def test_problems_agent_link_against_the_supervisor() -> None:
    """An agent whose agent link major differs from the supervisor's is a problem naming both; another minor
    is fine."""
    lp = rel("log-processor", "0.4.0", {"agent": "2.0"})
    found = problems({"log-processor": lp}, supervisor_links=SUPERVISOR)
    assert len(found) == 1 and "log-processor 0.4.0 speaks the agent link 2.0" in found[0] and "1.1" in found[0]
    assert problems({"log-processor": rel("log-processor", "0.4.0", {"agent": "1.7"})},
                    supervisor_links=SUPERVISOR) == []


def test_compatibility_round_trips_and_refuses_bad_shapes() -> None:
    """The compatibility record round-trips through JSON with versions in numeric order; bad shapes are
    refused as not valid."""
    compat = Compatibility(agents={"log-processor": {"0.10.0": rel("log-processor", "0.10.0", {"agent": "1.1"}),
                                                     "0.9.0": rel("log-processor", "0.9.0", {},
                                                                  {"process-server": "0.2.0"})}})
    data = compat.to_json()
    assert list(data["agents"]["log-processor"]) == ["0.9.0", "0.10.0"]  # by version, not by text
    assert Compatibility.from_json(data) == compat
    for bad in ([], {"format": "x"}, {**data, "version": 2}, {**data, "agents": {"a": {"1.0.0": {"links": 1}}}},
                {**data, "agents": {"a": {"1.0.0": {"requires": {"b": "new"}}}}}):
        with pytest.raises(FeedInvalid, match=r"compatibility\.json is not valid"):
            Compatibility.from_json(bad)


# --- export --------------------------------------------------------------------------------------------------
def test_export_verifies_for_a_client_with_the_same_root(feeds: Feeds, clients: Callable[..., FeedClient],
                                                        copy: Callable[[Path], Path], tmp_path: Path) -> None:
    """An export holds the root chain, the current metadata and the chosen packages only (an earlier export's
    files go); a client with the same root verifies it and finds a package not exported missing."""
    feed = copy(feeds.release2)
    release_tool().renew_root(feed, feeds.keys)  # a root chain: 1.root.json -> 2.root.json
    with FeedServer(feed) as server:
        appliance = clients(server.url, "appliance")
        index = appliance.refresh()
        wanted = index.newest("log-processor")
        assert wanted is not None
        dest = tmp_path / "export"
        dest.mkdir()
        (dest / "stale").write_text("from an earlier export")
        appliance.export(dest, [wanted])
    assert sorted(p.name for p in (dest / "metadata").iterdir()) == [
        "1.root.json", "2.root.json", "2.snapshot.json", "2.targets.json", "timestamp.json"]
    assert not (dest / "stale").exists()
    assert (dest / stored(wanted)).is_file()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".export")] == []

    with FeedServer(dest) as exported:
        source = clients(exported.url, "source")
        got = source.refresh()
        assert got.compatibility == index.compatibility
        path = source.download(wanted)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == wanted.sha256
        assert "metadata/2.root.json" in exported.requests
        other = got.newest("process-server")
        assert other is not None
        with pytest.raises(FeedInvalid, match=r"lacks the package process-server 0\.3\.0 \(HTTP 404\)"):
            source.download(other)  # listed in the signed metadata, but not exported


def test_export_root_chain_refuses_a_root_not_signed_by_the_old_keys(
        feeds: Feeds, clients: Callable[..., FeedClient], copy: Callable[[Path], Path], tmp_path: Path) -> None:
    """A next root not signed by the current root's keys is refused at refresh and not kept among the trusted
    roots, so no export can carry it."""
    feed = copy(feeds.release1)
    # A 2.root.json made with other keys only: TUF refuses it, and export must not carry it.
    other = tmp_path / "other"
    release_tool().ensure_repository(other, release_tool().ensure_keys(tmp_path / "other-keys"))
    forged = (other / "metadata" / "1.root.json").read_bytes().replace(b'"version": 1', b'"version": 2')
    (feed / "metadata" / "2.root.json").write_bytes(forged)
    with FeedServer(feed) as server:
        client = clients(server.url)
        with pytest.raises(FeedInvalid, match="root metadata"):
            client.refresh()
    assert sorted(p.name for p in (tmp_path / "client" / "metadata" / "roots").iterdir()) == ["1.root.json"]


# --- mutual TLS ---------------------------------------------------------------------------------------------
def test_mutual_tls_feed(feeds: Feeds, clients: Callable[..., FeedClient], tmp_path: Path) -> None:
    """A feed that asks for client certificates serves a client with the right certificate and CA; a client
    pinning another CA, or speaking plain HTTP, finds it unreachable."""
    ca, ca_key = pki.create_ca("appliance-under-test")
    server_cert, server_key = pki.issue_server_cert(ca, ca_key)
    client_key = pki.new_key()
    client_cert = pki.issue_client_cert(ca, ca_key, pki.make_csr(client_key, "x").decode(), "source-1")
    files = {"ca.pem": pki.cert_pem(ca), "server.pem": pki.cert_pem(server_cert),
             "server.key": pki.key_pem(server_key, None), "client.pem": pki.cert_pem(client_cert),
             "client.key": pki.key_pem(client_key, None)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    context.load_verify_locations(tmp_path / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    tls = (tmp_path / "client.pem", tmp_path / "client.key", tmp_path / "ca.pem")
    with FeedServer(feeds.release1, ssl_context=context) as server:
        assert server.url.startswith("https://127.0.0.1:")
        client = clients(server.url, "tls", tls=tls, timeout=5.0)
        target = client.refresh().newest("log-processor")
        assert target is not None and client.download(target).is_file()

        other_ca, _ = pki.create_ca("someone-else")
        (tmp_path / "other-ca.pem").write_bytes(pki.cert_pem(other_ca))
        pinned_wrong = clients(server.url, "wrong-ca", tls=(tls[0], tls[1], tmp_path / "other-ca.pem"), timeout=5.0)
        with pytest.raises(FeedUnreachable, match="TLS handshake failed"):
            pinned_wrong.refresh()
        plain = clients(server.url.replace("https", "http"), "plain", timeout=2.0)
        with pytest.raises(FeedUnreachable):
            plain.refresh()
