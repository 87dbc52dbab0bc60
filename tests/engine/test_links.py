"""The contracts between programs: each link carries its protocol version; a newer minor version's
extra fields and stream messages are ignored, another major version is refused in one line that
names both. Clients and servers here are real aiohttp servers on Unix sockets."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiohttp import web

from engine.client import UnixJsonClient
from engine.errors import ProtocolError, VersionMismatch
from engine.http_server import error_middleware, speaks
from engine.links import HEADER, Link, decode, encode
from engine.links.admin import ADMIN, EventAdded, ServerRemoved, decode_message, encode_message
from engine.links.agent import AGENT_LINK, Ack, AppliedPoint, AppliedReport
from engine.links.data import DATA, StreamStates
from engine.links.management import MANAGEMENT, DesiredState, DiskSize, HeartbeatAnswer, PolicyTerms, Registered
from engine.records import Event


def test_a_missing_header_is_version_1_0_and_a_newer_minor_is_accepted() -> None:
    """Peers from before versions were carried speak 1.0; a newer minor version is understood."""
    assert MANAGEMENT.check(None) == (1, 0)
    assert MANAGEMENT.check("management/1.7") == (1, 7)


@pytest.mark.parametrize("link", [MANAGEMENT, AGENT_LINK, ADMIN])
def test_another_major_version_is_refused_naming_both(link: Link) -> None:
    """A peer speaking another major version is refused with one line naming both versions."""
    for theirs in (f"{link.name}/2.0", f"{link.name}/0.9"):
        with pytest.raises(VersionMismatch) as caught:
            link.check(theirs, peer="The console")
        message = caught.value.message
        assert theirs.split("/")[1] in message and f"{link.major}.{link.minor}" in message
        assert message.startswith("The console speaks") and "\n" not in message
        assert caught.value.code == "protocol-version" and caught.value.status == 400


@pytest.mark.parametrize("header", ["data/1.0", "management", "management/one", "x" * 500])
def test_a_header_that_is_not_this_links_version_is_a_protocol_error(header: str) -> None:
    """A version header of another link, or one that is not a version, is refused, briefly."""
    with pytest.raises(ProtocolError) as caught:
        MANAGEMENT.check(header)
    assert not isinstance(caught.value, VersionMismatch) and len(caught.value.message) < 200


def test_messages_ignore_fields_a_newer_minor_version_adds() -> None:
    """A message with fields this version does not know decodes to the fields it knows, nested too."""
    answer = HeartbeatAnswer(heartbeat_interval=5.0, data_port=9443, desired=DesiredState(
        replicate=True, epoch=7, policy=PolicyTerms("p", 300, None, 86400), disks=(DiskSize(0, 1 << 20),)))
    wire = encode(answer)
    wire["added_later"] = {"x": 1}
    wire["policy"]["added_later_too"] = [1, 2]
    assert decode(HeartbeatAnswer, wire, link=MANAGEMENT) == answer


def test_a_message_missing_a_field_is_refused_by_name() -> None:
    """A message without a required field is a protocol error that names the field."""
    with pytest.raises(ProtocolError, match="lacks disk, epoch, applied_seq"):
        decode(AppliedReport, {"server_id": "s"}, link=AGENT_LINK)
    with pytest.raises(ProtocolError, match="JSON object"):
        decode(AppliedReport, ["not", "an", "object"], link=AGENT_LINK)


def test_stream_messages_of_unknown_types_are_skipped() -> None:
    """The console skips push-stream messages a newer engine added, and reads the ones it knows."""
    event = Event(id=3, ts=1.0, severity="info", code="c", message="m")
    assert decode_message(encode_message(EventAdded(event))) == EventAdded(event)
    assert decode_message({"type": "licence-warning", "days_left": 7}) is None
    assert decode_message({**encode_message(ServerRemoved("web")), "why": "forgotten"}) == ServerRemoved("web")
    with pytest.raises(ProtocolError):
        decode_message({"no": "type"})


def _serve(sock: Path, link: Link, answer: object) -> web.AppRunner:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(encode(answer))

    app = web.Application(middlewares=[error_middleware("agent link", network=False)])
    speaks(app, link, peer="An appliance agent")
    app.router.add_post("/agent/applied", handler)
    return web.AppRunner(app)


async def _exchange(tmp_path: Path, *, server: Link, client: Link, answer: object) -> object:
    sock = tmp_path / "agent.sock"
    runner = _serve(sock, server, answer)
    await runner.setup()
    await web.UnixSite(runner, str(sock)).start()
    link = UnixJsonClient(sock, link=client, what="unreachable")
    try:
        report = AppliedReport(server_id="s", disk=0, epoch=1, applied_seq=3, points=(AppliedPoint(1, 2.0, "k"),))
        return await link.call("POST", "/agent/applied", report, Ack)
    finally:
        await link.aclose()
        await runner.cleanup()


def test_agent_link_round_trip_between_the_same_major_versions(tmp_path: Path) -> None:
    """An agent one minor version ahead of the supervisor (or behind it) is understood both ways."""
    newer = Link("agent", 1, AGENT_LINK.minor + 1, "agent link")
    assert asyncio.run(_exchange(tmp_path, server=AGENT_LINK, client=newer, answer=Ack(True))) == Ack(True)
    assert asyncio.run(_exchange(tmp_path, server=newer, client=AGENT_LINK, answer=Ack(False))) == Ack(False)


def test_a_server_of_another_major_version_refuses_the_request(tmp_path: Path) -> None:
    """A supervisor of agent link 2.x refuses an agent of 1.x with one line that names both."""
    with pytest.raises(VersionMismatch, match=rf"speaks agent link 1\.{AGENT_LINK.minor}; this program speaks 2\.0"):
        asyncio.run(_exchange(tmp_path, server=Link("agent", 2, 0, "agent link"), client=AGENT_LINK,
                              answer=Ack(True)))


def test_a_client_refuses_an_answer_of_another_major_version(tmp_path: Path) -> None:
    """An agent refuses an answer stamped with another major version, even one its server sent without
    checking the request (the check is on both ends)."""
    async def main() -> object:
        sock = tmp_path / "b.sock"

        async def handler(request: web.Request) -> web.Response:
            return web.json_response(encode(Ack(True)), headers={HEADER: "agent/2.1"})

        app = web.Application()
        app.router.add_post("/agent/applied", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        link = UnixJsonClient(sock, link=AGENT_LINK, what="unreachable")
        try:
            return await link.call("POST", "/agent/applied", None, Ack)
        finally:
            await link.aclose()
            await runner.cleanup()

    with pytest.raises(VersionMismatch,
                       match=rf"The engine speaks agent link 2\.1; this program speaks 1\.{AGENT_LINK.minor}"):
        asyncio.run(main())


def test_every_answer_carries_the_servers_version(tmp_path: Path) -> None:
    """Each answer, errors included, says which version of the link the server speaks."""
    async def main() -> tuple[str | None, str | None]:
        sock = tmp_path / "a.sock"
        runner = _serve(sock, AGENT_LINK, Ack(True))
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        import aiohttp

        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
                async with http.post("http://x/agent/applied", json={}) as ok:
                    good = ok.headers.get(HEADER)
                async with http.post("http://x/agent/applied", headers={HEADER: "agent/9.0"}, json={}) as bad:
                    assert bad.status == 400 and (await bad.json())["code"] == "protocol-version"
                    refused = bad.headers.get(HEADER)
            return good, refused
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) == (f"agent/1.{AGENT_LINK.minor}",) * 2


@pytest.mark.parametrize(("wire", "field"), [
    ({"server_id": "s", "disk": "0", "epoch": 1, "applied_seq": 3}, "disk"),
    ({"server_id": "s", "disk": 0, "epoch": 1, "applied_seq": True}, "applied_seq"),
    ({"server_id": "s", "disk": 0, "epoch": 1, "applied_seq": 3, "points": [{"id": 1, "created_at": "x",
                                                                              "kind": "k"}]}, "points[0].created_at"),
    ({"server_id": "s", "disk": 0, "epoch": 1, "applied_seq": 3, "points": "not a list"}, "points"),
])
def test_a_field_of_the_wrong_type_is_refused_by_name(wire: dict[str, object], field: str) -> None:
    """A message whose field has the wrong type is a protocol error naming the field, not a crash later."""
    with pytest.raises(ProtocolError, match=rf"field {re.escape(field)} has the wrong type"):
        decode(AppliedReport, wire, link=AGENT_LINK)


def test_version_1_0_keeps_the_wire_shape_sources_already_speak() -> None:
    """Answers to sources keep the flat shape that mobility services from before versions read (the
    desired state's fields beside the others), and such flat bodies decode to the typed messages."""
    old_heartbeat_answer = {"heartbeat_interval": 5.0, "data_port": 9443, "replicate": True, "max_mbps": 50.0,
                            "resync_gen": 2, "epoch": 1700000000000,
                            "policy": {"name": "fast", "crash_consistent_every": 1.0, "app_consistent_every": None,
                                       "retention": 3600.0},
                            "disks": [{"index": 0, "size": 1 << 30}]}
    answer = decode(HeartbeatAnswer, old_heartbeat_answer, link=MANAGEMENT)
    assert answer.desired.epoch == 1700000000000 and answer.desired.disk_sizes == [1 << 30]
    assert answer.management_port is None  # 1.1 added it; an answer without it is from an older appliance
    assert answer.mobility_update is None  # 1.2 added it
    assert answer.desired_generation is None  # 1.4 added it
    added = {"management_port": None, "mobility_update": None, "desired_generation": None}
    assert encode(answer) == {**old_heartbeat_answer, **added}  # only added, nothing reshaped
    old_registered = {"server_id": "id", "name": "web-01", "certificate": "PEM", **old_heartbeat_answer}
    assert encode(decode(Registered, old_registered, link=MANAGEMENT)) == {**old_registered, **added}
    old_streams = {"disks": [{"disk": 0, "epoch": 7, "acked_seq": 12, "initial_done": 65536,
                              "initial_complete": False, "bytes_received": 99}]}
    states = decode(StreamStates, old_streams, link=DATA)
    assert states.disks[0].state.acked_seq == 12 and encode(states) == old_streams


def test_a_peer_that_hangs_up_mid_body_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    """A source stopping while its batch is on the way (the connection lost mid-body), and a console closing its
    event stream while it is written, are each a warning line that says so, never an internal error with a
    traceback."""

    async def slow_reader(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    async def endless_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:  # until the reader goes away, as a console's event stream does
            await resp.write(b"x" * 65536 + b"\n")

    async def scenario() -> None:
        app = web.Application(middlewares=[error_middleware("data port", network=True)])
        app.router.add_post("/v1/batch", slow_reader)
        app.router.add_get("/v1/stream", endless_stream)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.read(1000)
            writer.transport.abort()  # gone without reading the rest
            await asyncio.sleep(0.5)
        finally:
            await runner.cleanup()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    lines = [r for r in caplog.records if "data port" in r.getMessage()]
    assert len([r for r in lines if "closed the connection" in r.getMessage()]) == 2, caplog.text
    assert not any(r.exc_info for r in caplog.records) and "internal" not in caplog.text, caplog.text
