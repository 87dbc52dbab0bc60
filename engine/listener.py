"""A TLS port of the appliance that is polite to whatever connects to it.

The supervisor binds the sockets (so privilege and "port in use" errors surface once, at start,
and a restarted agent takes over the very same socket); an appliance agent serves a bound socket
with :class:`TlsListener`. Before the TLS handshake it peeks at the first bytes: plain HTTP gets a
400 that says to use HTTPS, anything else that is not TLS is closed. Every refusal is one warning
line in the log, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.errors import EngineError, PortError, ProtocolError

log = logging.getLogger(__name__)

#: Seconds a new connection may take to start and finish the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
_TLS_HANDSHAKE_RECORD = 0x16


def bind_port(host: str, port: int, *, what: str, flag: str) -> socket.socket:
    """Bind a listening TCP socket, or raise a one-line :class:`PortError` that says what to do."""
    if not 1 <= port <= 65535:
        raise PortError(f"The {what} port must be between 1 and 65535, not {port}.")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except PermissionError as exc:
        sock.close()
        raise PortError(
            f"Binding the {what} port {port} needs privileges: run the engine as root, grant it "
            f"CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep' on the Python binary), "
            f"or choose a port above 1023 with {flag}."
        ) from exc
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortError(
                f"The {what} port {port} is in use by another program. Stop that program or choose "
                f"another port with {flag}."
            ) from exc
        raise PortError(f"The {what} port {port} cannot be opened ({exc.strerror}).") from exc
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class _PeerLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp logs malformed requests with a traceback (or, for a bad first method, at debug
    level); a malformed request is peer input, worth exactly one warning line."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        detail = exc_info if isinstance(exc_info, BaseException) else None
        text = f"{type(detail).__name__}: {detail}" if detail else "error"
        self.logger.warning(f"{msg}: %s", *args, text.splitlines()[0][:200])

    def debug(self, msg: object, *args: object, exc_info: Any = None, **kwargs: Any) -> None:
        if isinstance(exc_info, BaseException):
            self.exception(msg, *args, exc_info=exc_info)
        else:
            self.logger.debug(msg, *args, **kwargs)


def error_middleware(port_name: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Turn every refusal into ``{"code", "message"}`` JSON, one warning line, and a closed connection."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        try:
            return await handler(request)
        except EngineError as exc:
            code, message, status = exc.code, exc.message, exc.status
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code, status = f"http-{exc.status}", exc.status
            message = {
                404: f"There is no {request.path} on the {port_name} port.",
                405: f"{request.method} is not allowed on {request.path}.",
                413: f"The request body is larger than the {port_name} port accepts.",
            }.get(exc.status, exc.reason)
        log.warning("%s port: refused %s %s from %s: %s %s", port_name, request.method, request.path[:100],
                    request.remote, status, code)
        resp = web.json_response({"code": code, "message": message}, status=status)
        resp.force_close()
        return resp

    return middleware


#: Seconds a small (JSON) request body may take to arrive before the connection is dropped.
JSON_BODY_TIMEOUT = 30.0


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a :class:`ProtocolError` that names the problem."""
    try:
        async with asyncio.timeout(JSON_BODY_TIMEOUT):
            body = await request.read()
    except TimeoutError as exc:
        raise ProtocolError(f"The request body did not arrive within {JSON_BODY_TIMEOUT:.0f} s.") from exc
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("The request body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise ProtocolError("The request body must be a JSON object.")
    return data


class TlsListener:
    """Serve an aiohttp application over TLS on an already bound socket."""

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext, runner: web.AppRunner, *,
                 port_name: str) -> None:
        self._sock = sock
        self._ssl = ssl_context
        self._runner = runner
        self._port_name = port_name
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<TlsListener {self._port_name} {self._sock.getsockname()} pending={len(self._connections)}>"

    @staticmethod
    def peer_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
        return _PeerLogger(logging.getLogger("engine.listener.peer"), {})

    def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept_loop(), name=f"{self._port_name}-accept")

    async def close(self) -> None:
        if self._accepting:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and friends: keep serving the others
                log.warning("%s port: accept failed: %s", self._port_name, exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._handshake(conn, addr))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _handshake(self, conn: socket.socket, addr: Any) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            first = await _peek(conn, HANDSHAKE_TIMEOUT)
            if not first:
                conn.close()
                return
            if first[0] != _TLS_HANDSHAKE_RECORD:
                await self._refuse_plaintext(conn, first, peer)
                return
            assert self._runner.server is not None
            await loop.connect_accepted_socket(self._runner.server, conn, ssl=self._ssl,
                                               ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except TimeoutError:
            log.warning("%s port: %s sent no TLS handshake within %.0f s; closed", self._port_name, peer,
                        HANDSHAKE_TIMEOUT)
            conn.close()
        except ssl.SSLError as exc:
            log.warning("%s port: TLS handshake with %s failed: %s", self._port_name, peer,
                        exc.reason or exc.__class__.__name__)
            conn.close()
        except OSError as exc:
            log.warning("%s port: connection from %s failed: %s", self._port_name, peer, exc.strerror or exc)
            conn.close()

    async def _refuse_plaintext(self, conn: socket.socket, first: bytes, peer: str) -> None:
        loop = asyncio.get_running_loop()
        # Read what the peer already sent: closing with unread data would reset the connection
        # and could destroy our answer before the peer reads it.
        with contextlib.suppress(OSError):
            conn.recv(65536)
        if first[:1].isalpha() and first[:1].isupper():
            body = (f"This is the Godwit appliance's {self._port_name} port; it speaks HTTPS only. "
                    "Use https:// and the appliance's CA.\n").encode()
            head = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            log.warning("%s port: plain HTTP from %s refused: HTTPS only", self._port_name, peer)
            try:
                async with asyncio.timeout(5):
                    await loop.sock_sendall(conn, head + body)
            except (OSError, TimeoutError):
                pass
        else:
            log.warning("%s port: %s sent something that is not TLS (first byte 0x%02x); closed",
                        self._port_name, peer, first[0])
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()


async def _peek(conn: socket.socket, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = conn.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(timeout):
            await ready
    finally:
        loop.remove_reader(fd)
    return conn.recv(8, socket.MSG_PEEK)
