"""Property-based fuzzing of everything that parses what others send: batches on the data port,
segments read back from the cache, registration and heartbeat bodies, the admin API's JSON bodies.

A short run is part of ``make test`` (150 inputs per target); ``benchmarks/fuzz.py`` runs the same
targets with ``GODWIT_FUZZ_EXAMPLES`` inputs each and reports how many were tried.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.codec import SegmentCorrupt, SegmentIdent, open_segment, seal
from engine.errors import ProtocolError
from engine.links.management import Registration, ServerFacts
from engine.protocol import (
    BLOCK,
    MAX_DATA,
    MAX_DESCRIBED,
    MAX_RUN,
    MAX_RUNS,
    BatchHeader,
    Bookmark,
    Kind,
    Run,
    decode_batch,
    encode_batch,
)
from tests.appliance import Appliance, Mobility, wait_for

#: Inputs per parsing target; the over-the-wire targets, a request each, try a tenth (at least 40).
EXAMPLES = int(os.environ.get("GODWIT_FUZZ_EXAMPLES", "150"))
WIRE_EXAMPLES = max(40, EXAMPLES // 10)
settings.register_profile("fuzz", max_examples=EXAMPLES, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("fuzz")

DISK = 64 * MAX_RUN
SERVER = "5b0c6f0e-3f7e-4f57-9d7a-1c2b3d4e5f60"
KEY = bytes(range(32))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


def objects(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects that mostly use the expected keys, with values of any JSON type, sometimes more keys."""
    return st.builds(lambda fixed, extra: {**extra, **fixed},
                     st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys)),
                     st.dictionaries(st.text(max_size=10), json_values, max_size=3))


# --- batches --------------------------------------------------------------------------------------------
runs_strategy = st.lists(st.tuples(st.integers(0, 63), st.integers(1, 16), st.booleans()), min_size=0, max_size=6)


def _data(slot: int, blocks: int) -> bytes:
    """Random bytes for an odd number of blocks; text, which goes packed, for an even one."""
    size = blocks * BLOCK
    return os.urandom(size) if blocks % 2 else ((b"run %d of godwit " % slot) * size)[:size]


def _valid_batch(spec: list[tuple[int, int, bool]], seq: int) -> bytes:
    runs = [(slot * MAX_RUN, blocks * BLOCK, None if zero else _data(slot, blocks)) for slot, blocks, zero in spec]
    return encode_batch(BatchHeader(0, seq, Kind.DELTA, Bookmark.NONE, 1, 0, 0.0, 0), runs,
                        packer=zstandard.ZstdCompressor(level=1))


def _check_decoded(body: bytes) -> None:
    try:
        header, runs = decode_batch(body, disk_size=DISK)
    except ProtocolError:
        return
    assert len(runs) == header.count <= MAX_RUNS
    assert sum(r.length for r in runs) <= MAX_DESCRIBED
    assert sum(r.length for r in runs if r.data is not None) <= MAX_DATA
    for r in runs:
        assert r.offset % BLOCK == 0 and 0 < r.length <= MAX_RUN and r.offset + r.length <= DISK


@given(st.binary(max_size=512))
def test_decode_batch_refuses_random_bytes_cleanly(body: bytes) -> None:
    """Random bytes as a batch, with or without its magic, are refused cleanly or decode within every limit."""
    _check_decoded(body)
    _check_decoded(b"GDWBAT01" + body)


@given(runs_strategy, st.data())
def test_decode_batch_refuses_mutated_batches_cleanly(spec: list[tuple[int, int, bool]], data: st.DataObject) -> None:
    """A batch flipped, cut, grown or spliced is refused cleanly or decodes to runs within every limit."""
    body = bytearray(_valid_batch(spec, 1))
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "cut", "grow", "splice"]))
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if how == "flip" and body:
            body[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del body[pos:]
        elif how == "grow":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=64))
        elif how == "splice" and len(body) >= 8:
            body[pos:pos + 8] = data.draw(st.binary(min_size=8, max_size=8))
    _check_decoded(bytes(body))


# --- segments -------------------------------------------------------------------------------------------
_compressor = zstandard.ZstdCompressor(level=1)
_decompressor = zstandard.ZstdDecompressor()


def _run_data(run: Run) -> bytes | None:
    """What a decoded run holds: None for zeros, a packed run's data unpacked."""
    if run.packed is not None:
        return _decompressor.decompress(run.packed)
    return None if run.data is None else bytes(run.data)


@given(runs_strategy, st.data())
def test_any_alteration_of_a_segment_is_refused(spec: list[tuple[int, int, bool]], data: st.DataObject) -> None:
    """A segment reads back exactly; any flipped bit, cut or insertion, or another epoch or position, is refused."""
    header, runs = decode_batch(_valid_batch(spec, 3), disk_size=DISK)
    ident = SegmentIdent(SERVER, 0, 3, epoch=2)
    segment = seal(KEY, ident, header, runs, _compressor)
    _, blocks = open_segment(KEY, segment, ident, _decompressor)
    assert [(b.offset, b.length, b.data) for b in blocks] == [(r.offset, r.length, _run_data(r)) for r in runs]
    altered = bytearray(segment)
    how = data.draw(st.sampled_from(["flip", "cut", "grow", "epoch", "seq"]))
    if how == "flip":
        pos = data.draw(st.integers(0, len(altered) - 1))
        altered[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "cut":
        del altered[data.draw(st.integers(0, len(altered) - 1)):]
    elif how == "grow":
        pos = data.draw(st.integers(0, len(altered)))
        altered[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
    with pytest.raises(SegmentCorrupt):
        other = {"epoch": SegmentIdent(SERVER, 0, 3, epoch=3), "seq": SegmentIdent(SERVER, 0, 4, epoch=2)}
        open_segment(KEY, bytes(altered), other.get(how, ident), _decompressor)


# --- what source servers send to the management port -------------------------------------------------
disk_objects = st.lists(objects(["path", "size", "capture", "tracking", "note"]), max_size=3) | json_values
fact_keys = ["hostname", "os", "agent_version", "disks", "notices", "points"]
registration_keys = [*fact_keys, "name", "passphrase", "csr"]


@given(objects(registration_keys), disk_objects)
def test_registration_and_heartbeat_bodies_parse_or_refuse(body: dict[str, Any], disks: Any) -> None:
    """Any JSON as a registration or heartbeat body is parsed or refused as a bad request, never a crash."""
    for candidate in (body, {**body, "disks": disks}):
        for parse in (Registration.parse, ServerFacts.parse):
            with contextlib.suppress(ProtocolError):
                parse(candidate)


# --- over the wire: the management port and the admin API, on a real engine ---------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Path]]:
    app = Appliance(tmp_path_factory.mktemp("fuzz"))
    app.start()
    mob = Mobility(app, "fuzz-01").start()
    wait_for(lambda: app.servers().get("fuzz-01"), what="fuzz-01 to register")
    mob.stop()
    yield app, mob.state_dir
    app.stop()


def _tls_post(app: Appliance, state_dir: Path | None, path: str, body: bytes) -> int:
    import http.client

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if state_dir is not None:
        ctx.load_cert_chain(state_dir / "client.crt", state_dir / "client.key")
    conn = http.client.HTTPSConnection("127.0.0.1", app.management_port, context=ctx, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _admin(app: Appliance, method: str, path: str, body: bytes) -> int:
    import http.client

    class UnixHTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(30)
            self.sock.connect(str(app.data_dir / "admin.sock"))

    conn = UnixHTTP("godwit")
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _no_traceback(app: Appliance) -> None:
    for log in (app.data_dir / "logs").glob("*"):
        assert "Traceback" not in log.read_text(errors="replace"), log.name


@settings(max_examples=WIRE_EXAMPLES)
@given(st.one_of(objects(registration_keys).map(json.dumps), st.text(max_size=64)))
def test_management_port_bodies_never_crash_it(engine: tuple[Appliance, Path], body: str) -> None:
    """Random registration and heartbeat bodies on the management port never get a 5xx answer."""
    app, state_dir = engine
    assert _tls_post(app, None, "/v1/register", body.encode()) < 500
    assert _tls_post(app, state_dir, "/v1/heartbeat", body.encode()) < 500


ADMIN_POSTS = {
    "/v1/policies": ["name", "rpo_threshold", "retention", "crash_consistent_every", "app_consistent_every"],
    "/v1/servers/fuzz-01/enable": ["policy"],
    "/v1/servers/fuzz-01/settings": ["max_mbps"],
    "/v1/servers/no-such/enable": ["policy"],
    "/v1/setup/rotate-passphrase": ["passphrase"],
    "/v1/setup/complete": ["at"],
    "/v1/appliance/prerequisites": ["check"],
}


@settings(max_examples=WIRE_EXAMPLES)
@given(st.sampled_from(sorted(ADMIN_POSTS)), st.data())
def test_admin_api_bodies_never_crash_it(engine: tuple[Appliance, Path], path: str, data: st.DataObject) -> None:
    """Random JSON bodies on the admin API's POST routes never get a 5xx answer."""
    app, _ = engine
    body = data.draw(objects(ADMIN_POSTS[path]).map(json.dumps) | st.text(max_size=40))
    status = _admin(app, "POST", path, body.encode())
    assert status < 500, (path, body, status)
    if path.endswith("/enable") and status == 200:
        _admin(app, "POST", path.replace("enable", "disable"), b"{}")


def test_fuzzing_left_no_traceback(engine: tuple[Appliance, Path]) -> None:
    """Runs after the wire targets above (file order): the engine served them all without a traceback."""
    app, _ = engine
    time.sleep(0.5)
    assert app.json("engine", "status")["agents"]
    _no_traceback(app)
