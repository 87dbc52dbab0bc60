"""The mobility service's one HTTPS client against a real aiohttp server with real TLS: keep-alive,
the protocol version on both sides, and one translation of what goes wrong into EngineError."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from engine import pki
from engine.errors import (
    ApplianceUnreachable,
    FingerprintMismatch,
    ProtocolError,
    Revoked,
    VersionMismatch,
)
from engine.links import HEADER
from engine.links.data import EPOCH_HEADER, StreamState
from engine.links.management import MANAGEMENT, PolicyTerms
from engine.mobility.appliance_client import ApplianceClient, data_client, management_client
from engine.mobility.replicator import SENDERS, Desired, Replicator, retryable


@dataclass
class Port:
    """A TLS port on 127.0.0.1 whose answers a test chooses, and what it was sent."""

    port: int
    ca_pem: bytes
    loop: asyncio.AbstractEventLoop
    #: The headers of every request, in order.
    seen: list[dict[str, str]] = field(default_factory=list)
    #: The answer's Godwit-Protocol header (None: none).
    version: str | None = "management/1.0"
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    def client(self) -> ApplianceClient:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=self.ca_pem.decode())
        return management_client("127.0.0.1", self.port, ctx)

    def close_idle_connections(self) -> None:
        """What the appliance does to a keep-alive connection that idled past its timeout."""

        async def close() -> None:
            for transport in self.transports:
                transport.close()
            await asyncio.sleep(0.05)  # let the close reach the peer before the next request is sent

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)


def _app(port: Port) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        port.seen.append(dict(request.headers))
        if request.transport is not None and request.transport not in port.transports:
            port.transports.append(request.transport)
        response = await handler(request)
        if port.version is not None:
            response.headers[HEADER] = port.version
        return response

    async def state(request: web.Request) -> web.Response:
        return web.json_response({"epoch": 3, "acked_seq": 9, "field_of_a_newer_minor": True})

    async def refuse(request: web.Request) -> web.Response:
        code, status = request.match_info["code"], int(request.match_info["status"])
        return web.json_response({"code": code, "message": f"Refused with {code}."}, status=status)

    async def proxy_error(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["status"]), text="<html>Bad gateway</html>",
                            content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        for _ in range(600):  # an appliance that stalls for a minute, or until the client goes
            if request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(0.1)
        return web.json_response({})

    app = web.Application(middlewares=[record])
    app.router.add_route("*", "/state", state)
    app.router.add_get("/slow", slow)
    app.router.add_get("/refuse/{status}/{code}", refuse)
    app.router.add_get("/html/{status}", proxy_error)
    return app


@pytest.fixture
def port(tmp_path: Path) -> Iterator[Port]:
    (tmp_path / "pki").mkdir()
    authority = pki.AppliancePKI(tmp_path / "pki", b"test")
    authority.create("appliance-under-test")
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    served = Port(port=sock.getsockname()[1], ca_pem=authority.ca_cert_path.read_bytes(), loop=loop)
    runner = web.AppRunner(_app(served), access_log=None, handle_signals=False)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock, ssl_context=authority.server_context()).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield served
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_requests_share_one_connection_and_carry_the_protocol_version(port: Port) -> None:
    """Consecutive calls reuse one kept-alive connection; every request says which link and version
    it speaks, with the extra headers of the call; a field of a newer minor version is ignored."""
    with port.client() as client:
        for _ in range(3):
            answer = client.call("POST", "/state", {"disks": []}, StreamState, headers={EPOCH_HEADER: "3"})
        assert answer == StreamState(epoch=3, acked_seq=9)
        assert client.connections == 1 and "connections=1" in repr(client)
    assert [seen[HEADER] for seen in port.seen] == [str(MANAGEMENT)] * 3
    assert all(seen[EPOCH_HEADER] == "3" and seen["Content-Type"] == "application/json" for seen in port.seen)


def test_a_connection_the_appliance_closed_while_idle_is_opened_again_silently(port: Port) -> None:
    """A kept-alive connection that the appliance closed is replaced without an error: the request
    never reached it."""
    with port.client() as client:
        assert client.call("GET", "/state", None, StreamState).acked_seq == 9
        port.close_idle_connections()
        assert client.call("GET", "/state", None, StreamState).acked_seq == 9
        assert client.connections == 2


def test_an_appliance_of_another_major_version_is_refused_in_one_line(port: Port) -> None:
    """An answer of a newer major version is a VersionMismatch naming both versions, and it is not
    retried; a newer minor version is served."""
    port.version = "management/2.1"
    with port.client() as client, pytest.raises(VersionMismatch) as caught:
        client.call("GET", "/state", None, StreamState)
    assert "management protocol 2.1" in str(caught.value) and "1.4" in str(caught.value)
    assert "\n" not in str(caught.value) and not retryable(caught.value)
    port.version = "management/1.9"
    with port.client() as client:
        assert client.call("GET", "/state", None, StreamState).epoch == 3


def test_error_answers_become_engine_errors(port: Port) -> None:
    """A refusal is rebuilt from its code; the engine restarting and a proxy's 5xx page are
    retryable unreachability; a refusal of a code this version does not know stays a refusal; a
    non-JSON 4xx says this may not be the appliance."""
    with port.client() as client:
        with pytest.raises(Revoked, match="Refused with registration-revoked"):
            client.call("GET", "/refuse/403/registration-revoked", None, StreamState)
        with pytest.raises(ApplianceUnreachable, match="engine is restarting") as restarting:
            client.call("GET", "/refuse/503/engine-not-running", None, StreamState)
        assert retryable(restarting.value)
        with pytest.raises(ProtocolError, match=r"refused the request \(409 added-in-2-0\)") as unknown:
            client.call("GET", "/refuse/409/added-in-2-0", None, StreamState)
        assert not retryable(unknown.value)
        with pytest.raises(ApplianceUnreachable, match="answered 502"):
            client.call("GET", "/html/502", None, StreamState)
        with pytest.raises(ProtocolError, match="without JSON: is this the appliance's management port"):
            client.call("GET", "/html/404", None, StreamState)
        assert client.call("GET", "/state", None, StreamState).epoch == 3  # still usable


def test_transport_failures_become_engine_errors(port: Port, tmp_path: Path) -> None:
    """A certificate the pinned CA did not issue is a FingerprintMismatch (not retried); a port where
    nothing listens is unreachable (retried), named as the data port for the data port."""
    (tmp_path / "other").mkdir()
    other = pki.AppliancePKI(tmp_path / "other", b"test")
    other.create("another-appliance")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(other.ca_cert_path))
    with management_client("127.0.0.1", port.port, ctx) as client, pytest.raises(FingerprintMismatch) as caught:
        client.request("GET", "/state")
    assert not retryable(caught.value)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    with data_client("127.0.0.1", closed, ctx) as client, pytest.raises(ApplianceUnreachable) as unreachable:
        client.request("GET", "/v1/streams")
    assert f"data port 127.0.0.1:{closed} is unreachable" in str(unreachable.value) and retryable(unreachable.value)


def test_close_from_another_thread_wakes_a_blocked_request_and_stays_closed(port: Port) -> None:
    """Stopping replication while a batch waits on a stalled appliance ends the wait at once, and the
    stopped client never opens a new connection (nothing is sent after the stop)."""
    client = port.client()
    client.call("POST", "/state", {}, StreamState)  # a kept-alive connection exists
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            client.request("GET", "/slow")
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    while len(port.seen) < 2:  # the slow request reached the appliance
        threading.Event().wait(0.02)
    client.close()
    waiter.join(timeout=10)  # below the client's 15 s read timeout: only the close can end it this soon
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ApplianceUnreachable)
    with pytest.raises(ApplianceUnreachable, match="was closed"):
        client.call("POST", "/state", {}, StreamState)
    assert client.connections == 1


def test_the_client_remembers_the_version_the_appliance_answered_with(port: Port) -> None:
    """Each answer's Godwit-Protocol header is kept (an answer without one is 1.0): the replicator keeps several
    batches in flight only with an appliance that answered data 1.1 or later, and packs runs only for 1.2 or
    later."""
    with port.client() as client:
        assert client.peer_version is None
        port.version = "management/1.3"
        client.call("GET", "/state", None, StreamState)
        assert client.peer_version == (1, 3)
        port.version = None
        client.call("GET", "/state", None, StreamState)
        assert client.peer_version == (1, 0)
    replicator = Replicator(host="127.0.0.1", state_dir=Path("/nonexistent"), disks=[],
                            context=ssl.create_default_context(),
                            desired=Desired(data_port=9443, policy=PolicyTerms("p", 60.0, None, 3600.0),
                                            max_mbps=None, disk_sizes=[]))
    for answered, senders, packs in [(None, 1, False), ((1, 0), 1, False), ((1, 1), SENDERS, False),
                                     ((1, 2), SENDERS, True), ((1, 7), SENDERS, True)]:
        replicator.client.peer_version = answered
        assert (replicator._senders(), replicator._packer() is not None) == (senders, packs), answered
