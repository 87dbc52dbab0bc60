"""Bad input on the data port, and cache segments altered on disk: refused, reported, nothing applied."""

from __future__ import annotations

import json
import os
import random
import signal
import ssl
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zstandard

from engine.links.data import MAX_AHEAD
from engine.process_server.service import AUTH_TTL
from engine.protocol import BLOCK, PACKED, BatchHeader, Bookmark, Kind, digest, encode_batch, pack_header
from tests.appliance import Appliance, Mobility, change_disk, fill_disk, post_batch, replicating, wait_for

MiB = 1024 * 1024


def _stream(app: Appliance) -> dict[str, Any]:
    (path,) = list((app.data_dir / "cache").rglob("stream.json"))
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_bad_batches_are_refused_and_change_nothing(appliance: Appliance, tmp_path: Path) -> None:
    """Bad, out-of-order, stale or revoked batches are refused with a clear code and change nothing."""
    mob, disk = replicating(appliance, "edge-01", 4 * MiB, seed=11)
    mob.stop()  # hold the stream still while we poke at it
    before = _stream(appliance)
    seq = before["acked_seq"] + 1
    size = disk.stat().st_size
    good = os.urandom(BLOCK)

    def batch(seq: int, runs: list[tuple[int, int, bytes | None]], disk_index: int = 0) -> bytes:
        return encode_batch(BatchHeader(disk_index, seq, Kind.DELTA, Bookmark.NONE, 1, 0, time.time(), 0), runs)

    wrong_digest = bytearray(batch(seq, [(0, BLOCK, good)]))
    wrong_digest[-1] ^= 1
    # A packed run whose frame says it unpacks to 64 MiB: refused before anything is unpacked.
    text = (b"replicated " * 10000)[:BLOCK]
    bomb_frame = zstandard.ZstdCompressor(level=1).compress(bytes(64 * MiB))
    bomb = (pack_header(BatchHeader(0, seq, Kind.DELTA, Bookmark.NONE, 1, 0, time.time(), 1))
            + struct.pack(">QIB16sI", 0, BLOCK, PACKED, digest(text), len(bomb_frame)) + bomb_frame)
    cases = [
        (bomb, 0, 400, "does not say it holds"),
        (bytes(wrong_digest), 0, 400, "does not match its digest"),
        (batch(seq + 1, [(0, BLOCK, good)]), 0, 409, "Expected batch"),          # skips a sequence number
        (batch(seq - 1, [(0, BLOCK, good)]), 0, 409, "Expected batch"),          # a replay
        (batch(seq, [(size, BLOCK, good)]), 0, 400, "outside the disk"),         # beyond the disk
        (batch(seq, [(100, BLOCK, good)]), 0, 400, "block-aligned"),
        (batch(seq, [(0, BLOCK, good)])[:-10], 0, 400, "truncated"),
        (batch(seq, [(0, BLOCK, good)], disk_index=3), 3, 400, "No such disk"),
        (b"GDWBAT01" + b"\xff" * 20, 0, 400, "shorter than its header"),
    ]
    for body, disk_index, status, why in cases:
        code, answer = post_batch(appliance, mob.state_dir, disk_index, body)
        assert (code, why in answer["message"]) == (status, True), (why, code, answer)
    # A sender still working for an earlier enabling of replication is told to start over.
    code, answer = post_batch(appliance, mob.state_dir, 0, batch(seq, [(0, BLOCK, good)]), epoch=1)
    assert (code, answer["code"]) == (409, "epoch-changed")
    assert _stream(appliance) == before
    assert "Traceback" not in appliance.log("process-server")

    # A well-formed batch is still accepted afterwards: nothing was left half-done.
    code, answer = post_batch(appliance, mob.state_dir, 0, batch(seq, [(0, BLOCK, good)]))
    assert (code, answer["acked_seq"]) == (200, seq)

    # Revoked: its certificate no longer writes anything (the data port re-checks within AUTH_TTL).
    assert appliance.cli("vm", "forget", "edge-01").returncode == 0
    time.sleep(AUTH_TTL + 0.1)
    code, answer = post_batch(appliance, mob.state_dir, 0, batch(seq + 1, [(0, BLOCK, good)]))
    assert code == 403 and answer["code"] == "registration-revoked"


def test_batches_sent_ahead_are_made_durable_in_order_and_only_after_their_own_run(appliance: Appliance) -> None:
    """A batch sent ahead of its turn (data 1.1) waits for the one before it and is then acknowledged after it;
    it is refused when the batch before it came from another run of the sender (one that stopped while its
    batches were on their way), or was refused itself (at once, not after a timeout); a batch sent again after
    it was taken is answered as taken, for its own run only; nothing further ahead than MAX_AHEAD is taken."""
    mob, _ = replicating(appliance, "ahead-01", 4 * MiB, seed=12)
    mob.stop()
    seq = _stream(appliance)["acked_seq"] + 1

    def batch(seq: int, offset: int = 0) -> bytes:
        return encode_batch(BatchHeader(0, seq, Kind.DELTA, Bookmark.NONE, 1, 0, time.time(), 0),
                            [(offset, BLOCK, os.urandom(BLOCK))])

    def post(body: bytes, sender: str) -> tuple[int, dict[str, Any]]:
        return post_batch(appliance, mob.state_dir, 0, body, sender=sender)

    def ahead(body: bytes, sender: str) -> Future[tuple[int, dict[str, Any]]]:
        """Posted on its own connection; still waiting on the appliance when this returns."""
        answer = pool.submit(post, body, sender)
        time.sleep(1.0)
        assert not answer.done(), answer.result()
        return answer

    with ThreadPoolExecutor(max_workers=2) as pool:
        later = ahead(batch(seq + 1, BLOCK), "run-a")
        code, answer = post(batch(seq), "run-a")
        assert (code, answer["acked_seq"]) == (200, seq)
        code, answer = later.result(timeout=30)
        assert (code, answer["acked_seq"]) == (200, seq + 1)
        # Another run (run-b) took over: run-a's batch still on its way is not stacked on run-b's.
        stale = ahead(batch(seq + 3), "run-a")
        assert post(batch(seq + 2), "run-b")[0] == 200
        code, answer = stale.result(timeout=30)
        assert (code, answer["code"], "another run" in answer["message"]) == (409, "out-of-order", True)
        # A batch refused: the one after it, waiting, is told to wait for it (at once).
        waiting = ahead(batch(seq + 4), "run-b")
        bad = bytearray(batch(seq + 3))
        bad[-1] ^= 1
        assert post(bytes(bad), "run-b")[0] == 400
        code, answer = waiting.result(timeout=10)
        assert (code, answer["code"]) == (503, "waiting-for-earlier")
        assert f"Batch {seq + 3} of disk 0 was not taken" in answer["message"]
    # Sent again after it was taken (its answer lost): the same answer, for its own run only.
    again = batch(seq + 3)
    first = post(again, "run-b")
    assert first[0] == 200 and post(again, "run-b") == first
    assert post(again, "run-a")[0] == 409
    assert post(batch(seq + 4 + MAX_AHEAD), "run-b")[0] == 409
    assert _stream(appliance)["acked_seq"] == seq + 3
    assert "Traceback" not in appliance.log("process-server")


def test_altered_segment_is_refused_and_reported(patient_appliance: Appliance, tmp_path: Path) -> None:
    """A cache segment altered on disk is refused and reported, never applied, and the admin's resync mends it."""
    appliance = patient_appliance
    mob, disk = replicating(appliance, "tamper-01", 4 * MiB, seed=11)
    try:
        good_points = appliance.points("tamper-01")
        processor = appliance.agent_pid("log-processor")
        os.kill(processor, signal.SIGSTOP)
        try:
            change_disk(disk, seed=5, writes=5)
            cache = appliance.data_dir / "cache"
            segment = wait_for(lambda: sorted(cache.rglob("*.seg"))[-1:] and sorted(cache.rglob("*.seg"))[0],
                               what="a new segment waiting in the cache")
            data = bytearray(segment.read_bytes())
            data[len(data) // 2] ^= 0x40
            segment.write_bytes(bytes(data))
        finally:
            os.kill(processor, signal.SIGCONT)
        server = wait_for(lambda: (s := appliance.servers()["tamper-01"])["state"] == "error" and s,
                          what="the refusal to be reported")
        assert server["health"] == "critical" and server["health_cause"] == "segment-corrupt"
        assert "failed authentication" in server["health_detail"] or "truncated" in server["health_detail"]
        assert "segment-refused" in [e["code"] for e in appliance.events()]
        assert list((cache).rglob("refused/*.seg"))
        # Nothing of it was applied: the last good point exports as it was.
        last = good_points[-1]
        assert appliance.points("tamper-01")[: len(good_points)] == good_points
        assert appliance.export("tamper-01", last["id"], tmp_path / "p").exists()
        # The error survives a restart of the log processor ...
        os.kill(appliance.agent_pid("log-processor"), signal.SIGKILL)
        time.sleep(2.5)
        assert appliance.servers()["tamper-01"]["state"] == "error"
        # ... and the admin's resync mends it: every block is sent again, the points stay.
        res = appliance.cli("vm", "resync", "tamper-01")
        assert res.returncode == 0, res.stderr
        t = time.time()
        wait_for(lambda: appliance.servers()["tamper-01"]["state"] == "protected", timeout=60, what="the resync")
        after = wait_for(lambda: next((p for p in appliance.points("tamper-01") if p["id"] / 1000 > t), None),
                         timeout=60, what="a point after the resync")
        assert appliance.export("tamper-01", after["id"], tmp_path / "r").read_bytes() == disk.read_bytes()
        assert appliance.points("tamper-01")[: len(good_points)] == good_points
        assert "resync-requested" in [e["code"] for e in appliance.events()]
    finally:
        mob.stop()


def test_full_cache_applies_back_pressure_and_loses_nothing(tmp_path_factory: object, tmp_path: Path) -> None:
    """A full cache makes sources wait, shown as cache-full, and once it drains the replica is byte-exact."""
    app = Appliance(tmp_path_factory.mktemp("smallcache"))  # type: ignore[attr-defined]
    app.start(env={"GODWIT_CACHE_LIMIT_MB": "2", "GODWIT_AGENT_HUNG_AFTER": "600"})
    disk = app.root / "big.img"
    fill_disk(disk, 24 * MiB, seed=8)
    mob = Mobility(app, "full-01", disks=[disk]).start()
    try:
        wait_for(lambda: app.servers().get("full-01"), what="registration")
        processor = app.agent_pid("log-processor")
        os.kill(processor, signal.SIGSTOP)  # nothing drains the cache
        try:
            app.enable("full-01")
            server = wait_for(lambda: (s := app.servers()["full-01"])["health_cause"] == "cache-full" and s,
                              timeout=60, what="back-pressure to be reported")
            assert server["health"] == "warning" and "cache is full" in server["health_detail"]
        finally:
            os.kill(processor, signal.SIGCONT)
        wait_for(lambda: app.servers()["full-01"]["state"] == "protected", timeout=90, what="the backlog to drain")
        assert app.export("full-01", "latest", tmp_path / "f").read_bytes() == disk.read_bytes()
        assert "cache-full" in [e["code"] for e in app.events()]
    finally:
        mob.stop()
        app.stop()


def test_one_server_cannot_fill_the_cache_for_all(tmp_path_factory: object, tmp_path: Path) -> None:
    """With nothing draining the cache, a big server stops at its share of it (cache-full, saying it is this
    server's share) while a second server's initial replication still gets in whole; once the log processor
    runs again both are protected and byte-exact."""
    app = Appliance(tmp_path_factory.mktemp("quota"))  # type: ignore[attr-defined]
    app.start(env={"GODWIT_CACHE_LIMIT_MB": "16", "GODWIT_CACHE_SERVER_QUOTA_MB": "3",
                   "GODWIT_AGENT_HUNG_AFTER": "600"})
    big, small = app.root / "big.img", app.root / "small.img"
    big.write_bytes(random.Random(9).randbytes(16 * MiB))  # incompressible: well past its 3 MiB share
    fill_disk(small, 2 * MiB, seed=10)
    hog, other = Mobility(app, "hog-01", disks=[big]).start(), Mobility(app, "other-01", disks=[small]).start()
    try:
        wait_for(lambda: {"hog-01", "other-01"} <= set(app.servers()), what="both servers to register")
        processor = app.agent_pid("log-processor")
        os.kill(processor, signal.SIGSTOP)  # nothing drains the cache
        try:
            app.enable("hog-01")
            hog_status = wait_for(lambda: (s := app.servers()["hog-01"])["health_cause"] == "cache-full" and s,
                                  timeout=60, what="the big server to reach its share")
            assert hog_status["health"] == "warning", hog_status
            assert "share of the appliance's cache is full" in hog_status["health_detail"], hog_status
            app.enable("other-01")

            def received_whole() -> bool:
                disk = app.servers()["other-01"]["disks"][0]
                return bool(disk["bytes_total"]) and disk["bytes_done"] == disk["bytes_total"]

            wait_for(received_whole, timeout=60, what="the second server's initial replication to get in whole")
            assert app.servers()["other-01"]["health_cause"] != "cache-full"
            assert app.servers()["hog-01"]["health_cause"] == "cache-full"
        finally:
            os.kill(processor, signal.SIGCONT)
        for name in ("hog-01", "other-01"):
            wait_for(lambda n=name: app.servers()[n]["state"] == "protected", timeout=120,  # type: ignore[misc]
                     what=f"{name} to be protected")
        assert app.export("hog-01", "latest", tmp_path / "h").read_bytes() == big.read_bytes()
        assert app.export("other-01", "latest", tmp_path / "o").read_bytes() == small.read_bytes()
    finally:
        hog.stop()
        other.stop()
        app.stop()


def test_a_trickling_sender_does_not_hold_up_other_servers(appliance: Appliance, tmp_path: Path) -> None:
    """A sender that trickles a batch byte by byte does not hold up another server's replication."""
    mob, _ = replicating(appliance, "slow-01", 4 * MiB, seed=11)
    other_disk = appliance.root / "other.img"
    fill_disk(other_disk, 4 * MiB, seed=13)
    other = Mobility(appliance, "fast-01", disks=[other_disk]).start()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(mob.state_dir / "ca.crt")
    ctx.load_cert_chain(mob.state_dir / "client.crt", mob.state_dir / "client.key")
    import socket

    raw = socket.create_connection(("127.0.0.1", appliance.data_port))
    trickle = ctx.wrap_socket(raw)
    try:
        # slow-01's certificate starts a batch and then sends one byte at a time, slowly.
        trickle.sendall(b"POST /v1/streams/0/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nG")
        wait_for(lambda: appliance.servers().get("fast-01"), what="fast-01 to register")
        appliance.enable("fast-01")
        wait_for(lambda: appliance.servers()["fast-01"]["state"] == "protected", timeout=60,
                 what="another server to replicate meanwhile")
        trickle.sendall(b"D")
        assert appliance.export("fast-01", "latest", tmp_path / "o").read_bytes() == other_disk.read_bytes()
    finally:
        trickle.close()
        other.stop()
        mob.stop()
