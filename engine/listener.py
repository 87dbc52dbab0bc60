"""A TLS port of the appliance that is polite to whatever connects to it.

The supervisor binds the sockets (:mod:`engine.ports`: privilege and "port in use" errors surface
there, before anything changes, and a restarted agent takes over the very same socket); an appliance
agent serves a bound socket with :class:`TlsListener`. Before the TLS handshake it peeks at the first
bytes: plain HTTP gets a 400 that says to use HTTPS, anything else that is not TLS is closed. Every
refusal is one warning line in the log, never a traceback; where a flood could write thousands, the
lines of a kind are summed up (:class:`_Warnings`).

Connection hygiene, so that connections which never authenticate cannot starve the agent of file
descriptors (a :class:`ConnectionGuard` holds the limits, the listener enforces them):

- deadlines: the TLS handshake within :data:`HANDSHAKE_TIMEOUT` of the accept, the first complete
  request (its headers) within :data:`FIRST_REQUEST_TIMEOUT` of the handshake (aiohttp does not
  time out a connection that never sends a request, nor slow headers), and a connection without
  a client certificate is closed after :data:`UNAUTHENTICATED_LIFETIME` whatever it does;
  idle keep-alive connections are closed by aiohttp after :data:`KEEPALIVE_TIMEOUT`;
- caps on connections without a client certificate (before the handshake every connection is one):
  per source address a new one beyond the cap is refused; in total, the oldest one of the address
  holding the most is closed to admit the new one, so that held connections cannot lock out a
  legitimate client, whose handshake takes milliseconds;
- a budget derived from the agent's RLIMIT_NOFILE, leaving a reserve for its own files and
  sockets: beyond it a new connection is accepted and closed at once, before ``accept`` could
  fail with EMFILE.

A connection with a certificate this appliance issued is *authenticated* after the handshake and
counts only against the budget (its requests are still checked by the application).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger(__name__)

#: Seconds a new connection may take from its accept to a finished TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds after the handshake within which a connection must have sent a complete request (headers).
FIRST_REQUEST_TIMEOUT = 10.0
#: Seconds a connection without a client certificate may stay open at all; registration takes far less.
UNAUTHENTICATED_LIFETIME = 60.0
#: Seconds an idle keep-alive connection stays open (``web.AppRunner(keepalive_timeout=...)``).
KEEPALIVE_TIMEOUT = 75.0
#: Seconds a closing connection may take to say goodbye (TLS close_notify) before it is cut.
CLOSE_GRACE = 5.0
#: File descriptors kept for the agent's own files and sockets, plus a sixteenth of the limit: the link to the
#: supervisor (a pool of up to 100 Unix sockets), SQLite, cache segments, logs, the interpreter's own.
FD_RESERVE = 128
#: Connections without a client certificate, in total and per source address, at most.
MAX_UNAUTHENTICATED = 1024
MAX_UNAUTHENTICATED_PER_ADDRESS = 32
#: Connections one client certificate may hold at once: a mobility service needs two (heartbeats and data);
#: a stolen or buggy one must not take the whole budget from the other servers.
MAX_PER_CERTIFICATE = 16
#: How often deadlines are checked and closed connections are counted out.
SWEEP_EVERY = 0.5
#: Warning lines of one kind beyond its burst are summed up in one line per this many seconds.
WARN_EVERY = 5.0
_TLS_HANDSHAKE_RECORD = 0x16


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


def connection_budget(open_files: int) -> int:
    """How many connections an agent with ``open_files`` file descriptors may hold; the rest is its own."""
    return max(16, open_files - FD_RESERVE - open_files // 16)


class ConnectionGuard:
    """The limits of one port's connections, and the middleware that tells which connection sent a request.

    Create it before the aiohttp application, put :attr:`middleware` first among the application's
    middlewares, and hand it to :class:`TlsListener`. The limits are derived from the soft
    RLIMIT_NOFILE when the guard is created (after :func:`engine.agents.raise_open_files_limit`).
    """

    def __init__(self, *, open_files: int | None = None) -> None:
        if open_files is None:
            open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files < 0:  # RLIM_INFINITY
            open_files = 65536
        self.open_files = open_files
        self.budget = connection_budget(open_files)
        self.max_unauthenticated = max(8, min(MAX_UNAUTHENTICATED, self.budget // 2))
        self.max_unauthenticated_per_address = max(2, min(MAX_UNAUTHENTICATED_PER_ADDRESS,
                                                          self.max_unauthenticated // 4))
        self._requested: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self.middleware = self._make_middleware()

    def __repr__(self) -> str:
        return (f"<ConnectionGuard open_files={self.open_files} budget={self.budget} "
                f"unauthenticated={self.max_unauthenticated} per_address={self.max_unauthenticated_per_address}>")

    def _make_middleware(self) -> Middleware:
        requested = self._requested

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.transport is not None:  # its headers are complete: no first-request deadline any more
                requested.add(request.transport)
            return await handler(request)

        return middleware

    def requested(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a complete request arrived on this connection."""
        return transport in self._requested


@dataclass
class _Kind:
    since: float
    summary: str
    logged: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)


class _Warnings:
    """Warning lines about peers: per kind, the first ``burst`` within :data:`WARN_EVERY` seconds one line
    each, the rest counted and summed up in one line when that window ends."""

    def __init__(self, port_name: str) -> None:
        self._port = port_name
        self._kinds: dict[str, _Kind] = {}

    def __repr__(self) -> str:
        pending = {kind: sum(current.suppressed.values()) for kind, current in self._kinds.items()}
        return f"<_Warnings {self._port} pending={pending}>"

    def warn(self, kind: str, summary: str, address: str, msg: str, *args: object, burst: int = 1) -> None:
        now = time.monotonic()
        current = self._kinds.get(kind)
        if current is not None and now - current.since >= WARN_EVERY:
            self._summarise(current, now)
            current = None
        if current is None:
            current = self._kinds[kind] = _Kind(since=now, summary=summary)
        if current.logged < burst:
            current.logged += 1
            log.warning("%s port: " + msg, self._port, *args)
        else:
            current.suppressed[address] += 1

    def flush(self) -> None:
        """Write the summaries whose window has ended."""
        now = time.monotonic()
        for kind, current in list(self._kinds.items()):
            if now - current.since >= WARN_EVERY:
                self._summarise(current, now)
                del self._kinds[kind]

    def _summarise(self, current: _Kind, now: float) -> None:
        count = sum(current.suppressed.values())
        if count:
            top = current.suppressed.most_common(3)
            sources = ", ".join(f"{address} x{n}" for address, n in top)
            if len(current.suppressed) > len(top):
                sources += f" and {len(current.suppressed) - len(top)} more addresses"
            log.warning("%s port: %d more in the last %.0f s: %s (from %s)", self._port, count, now - current.since,
                        current.summary, sources)


@dataclass(eq=False)
class _Connection:
    """One accepted connection, from its accept until its socket is closed."""

    address: str
    peer: str
    sock: socket.socket
    accepted: float
    transport: asyncio.Transport | None = None  # once the TLS handshake is done
    established: float = 0.0
    authenticated: bool = False
    certificate: str | None = None  # the serial number of its client certificate, once authenticated
    requested: bool = False
    counted: bool = False  # among the connections without a client certificate
    dropped: bool = False  # closed by the listener (deadline, eviction)
    closing_since: float | None = None


class TlsListener:
    """Serve an aiohttp application over TLS on an already bound socket, within a :class:`ConnectionGuard`'s
    limits."""

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext, runner: web.AppRunner, *,
                 port_name: str, guard: ConnectionGuard) -> None:
        if guard.middleware not in runner.app.middlewares:
            raise ValueError("The application must use the connection guard's middleware, or every connection "
                             "would be closed at the first-request deadline.")
        self._sock = sock
        self._ssl = ssl_context
        self._runner = runner
        self._port_name = port_name
        self._guard = guard
        self._accepting: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        #: Every connection whose socket may still be open (the budget counts these).
        self._open: set[_Connection] = set()
        #: Connections without a client certificate that are not being closed, oldest first, by address.
        self._unauthenticated: dict[str, dict[_Connection, None]] = {}
        self._unauthenticated_count = 0
        self._refused = 0
        self._warnings = _Warnings(port_name)

    def __repr__(self) -> str:
        return (f"<TlsListener {self._port_name} {self._sock.getsockname()} open={len(self._open)}"
                f"/{self._guard.budget} unauthenticated={self._unauthenticated_count}"
                f"/{self._guard.max_unauthenticated} handshaking={len(self._handshakes)} refused={self._refused}>")

    @staticmethod
    def peer_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
        return _PeerLogger(logging.getLogger("engine.listener.peer"), {})

    def start(self) -> None:
        g = self._guard
        log.info("listener.started port=%s open_files=%d budget=%d unauthenticated=%d per_address=%d",
                 self._port_name, g.open_files, g.budget, g.max_unauthenticated, g.max_unauthenticated_per_address)
        self._accepting = asyncio.create_task(self._accept_loop(), name=f"{self._port_name}-accept")
        self._sweeping = asyncio.create_task(self._sweep_loop(), name=f"{self._port_name}-sweep")

    async def close(self) -> None:
        for task in (self._accepting, self._sweeping):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        self._warnings.flush()
        self._sock.close()

    # --- admission ---------------------------------------------------------------------------------
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and friends (the budget should prevent them): keep serving the others
                self._warnings.warn("accept-failed", "accept failed", exc.strerror or str(exc),
                                    "accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self._admit(conn, addr)

    def _admit(self, conn: socket.socket, addr: Any) -> None:
        address = str(addr[0])
        guard = self._guard
        if len(self._open) >= guard.budget:
            self._refuse(conn)
            self._warnings.warn("budget", "connections refused, all that the file-descriptor limit allows are open",
                                address, "refused a connection from %s: %d connections are open, all that the "
                                "file-descriptor limit (%d) allows", address, len(self._open), guard.open_files)
            return
        mine = self._unauthenticated.get(address)
        if mine is not None and len(mine) >= guard.max_unauthenticated_per_address:
            # connections closed since the last sweep still count: count them out before refusing (a client
            # that opens and closes quickly, one request each, is not holding connections)
            self._sweep(asyncio.get_running_loop().time())
            mine = self._unauthenticated.get(address)
        if mine is not None and len(mine) >= guard.max_unauthenticated_per_address:
            self._refuse(conn)
            self._warnings.warn("per-address", "connections refused, too many without a client certificate from "
                                "one address", address, "refused a connection from %s: it has %d connections "
                                "without a client certificate open, the most allowed", address, len(mine))
            return
        if self._unauthenticated_count >= guard.max_unauthenticated:
            self._evict()
        c = _Connection(address=address, peer=f"{addr[0]}:{addr[1]}", sock=conn,
                        accepted=asyncio.get_running_loop().time())
        self._open.add(c)
        self._index(c)
        task = asyncio.create_task(self._handshake(c))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def _refuse(self, conn: socket.socket) -> None:
        """Accepted and closed at once: the peer sees the connection end, the agent keeps its descriptors."""
        self._refused += 1
        conn.close()

    def _evict(self) -> None:
        """Close the oldest connection without a client certificate of the address that holds the most."""
        address = max(self._unauthenticated, key=lambda a: len(self._unauthenticated[a]))
        victim = next(iter(self._unauthenticated[address]))
        self._warnings.warn("evicted", "connections without a client certificate closed to admit new ones",
                            address, "closed the oldest connection without a client certificate from %s to admit "
                            "a new one: %d such connections are open, the most allowed", address,
                            self._unauthenticated_count)
        self._drop(victim)

    def _index(self, c: _Connection) -> None:
        self._unauthenticated.setdefault(c.address, {})[c] = None
        self._unauthenticated_count += 1
        c.counted = True

    def _unindex(self, c: _Connection) -> None:
        if not c.counted:
            return
        c.counted = False
        self._unauthenticated_count -= 1
        mine = self._unauthenticated[c.address]
        del mine[c]
        if not mine:
            del self._unauthenticated[c.address]

    def _with_certificate(self, certificate: str) -> int:
        """Connections of one client certificate that are open and not closing (closed ones are counted out
        only at the next sweep: a client that opens one per request must not trip the cap)."""
        return sum(1 for o in self._open if o.certificate == certificate and o.transport is not None
                   and not o.transport.is_closing())

    def _forget(self, c: _Connection) -> None:
        self._unindex(c)
        self._open.discard(c)

    def _drop(self, c: _Connection) -> None:
        """Close a connection now; its socket is counted until it is really closed."""
        self._unindex(c)
        c.dropped = True
        if c.transport is not None:
            self._abort(c)
        else:  # still in its handshake task: an EOF ends the peek or the handshake, which closes the socket
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)

    def _abort(self, c: _Connection) -> None:
        assert c.transport is not None
        c.transport.abort()  # closes the socket in a callback it schedules now: count it out right after
        asyncio.get_running_loop().call_soon(self._count_out, c)

    def _count_out(self, c: _Connection) -> None:
        if c.sock.fileno() == -1:
            self._forget(c)

    # --- deadlines ---------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self._sweep(loop.time())
            self._warnings.flush()

    def _sweep(self, now: float) -> None:
        """Count out closed connections; close those past a deadline. (The handshake task keeps the deadline of
        a connection before its handshake.)"""
        for c in list(self._open):
            transport = c.transport
            if transport is None:
                continue
            if c.sock.fileno() == -1:
                self._forget(c)
                continue
            if transport.is_closing():
                self._unindex(c)
                if c.closing_since is None:
                    c.closing_since = now
                elif now - c.closing_since >= CLOSE_GRACE:  # the peer does not answer close_notify
                    self._abort(c)
                continue
            if not c.requested:
                if self._guard.requested(transport):
                    c.requested = True
                elif now - c.established >= FIRST_REQUEST_TIMEOUT:
                    self._warnings.warn("no-request", f"closed, no complete request within "
                                        f"{FIRST_REQUEST_TIMEOUT:.0f} s of the TLS handshake", c.address,
                                        "%s sent no complete request within %.0f s of its TLS handshake; closed",
                                        c.peer, FIRST_REQUEST_TIMEOUT, burst=5)
                    self._drop(c)
                    continue
            if not c.authenticated and now - c.accepted >= UNAUTHENTICATED_LIFETIME:
                self._warnings.warn("lifetime", f"closed, open for {UNAUTHENTICATED_LIFETIME:.0f} s without a "
                                    "client certificate", c.address, "%s kept a connection without a client "
                                    "certificate open for %.0f s; closed", c.peer, UNAUTHENTICATED_LIFETIME, burst=5)
                self._drop(c)

    # --- one connection ----------------------------------------------------------------------------
    async def _handshake(self, c: _Connection) -> None:
        loop = asyncio.get_running_loop()
        conn, peer = c.sock, c.peer
        conn.setblocking(False)
        try:
            first = await _peek(conn, HANDSHAKE_TIMEOUT)
            if not first or c.dropped:  # the peer left, or the listener closed it
                conn.close()
                return
            if first[0] != _TLS_HANDSHAKE_RECORD:
                await self._refuse_plaintext(conn, first, c.address, peer)
                return
            assert self._runner.server is not None
            left = max(1.0, c.accepted + HANDSHAKE_TIMEOUT - loop.time())
            transport, _ = await loop.connect_accepted_socket(self._runner.server, conn, ssl=self._ssl,
                                                              ssl_handshake_timeout=left)
        except TimeoutError:
            self._warnings.warn("no-handshake", f"closed, no TLS handshake within {HANDSHAKE_TIMEOUT:.0f} s",
                                c.address, "%s sent no TLS handshake within %.0f s; closed", peer,
                                HANDSHAKE_TIMEOUT, burst=5)
            conn.close()
        except ssl.SSLError as exc:
            if not c.dropped:
                self._warnings.warn("handshake-failed", "TLS handshakes failed", c.address,
                                    "TLS handshake with %s failed: %s", peer, exc.reason or exc.__class__.__name__,
                                    burst=5)
            conn.close()
        except OSError as exc:
            if not c.dropped:
                self._warnings.warn("connection-failed", "connections failed", c.address,
                                    "connection from %s failed: %s", peer, exc.strerror or exc, burst=5)
            conn.close()
        else:
            c.transport = transport
            c.established = loop.time()
            if c.dropped:
                self._abort(c)
            elif cert := transport.get_extra_info("peercert"):  # verified against our CA by the TLS context
                c.authenticated = True
                self._unindex(c)
                c.certificate = str(cert.get("serialNumber", "?"))
                if self._with_certificate(c.certificate) > MAX_PER_CERTIFICATE:
                    self._warnings.warn("per-certificate", f"closed, more than {MAX_PER_CERTIFICATE} connections "
                                        "with one client certificate", c.address, "%s holds more than %d connections "
                                        "with client certificate %s; closed", peer, MAX_PER_CERTIFICATE,
                                        c.certificate)
                    self._drop(c)
        finally:
            if c.transport is None:  # its socket is closed (or the listener is closing)
                self._forget(c)

    async def _refuse_plaintext(self, conn: socket.socket, first: bytes, address: str, peer: str) -> None:
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
            self._warnings.warn("plain-http", "plain HTTP refused: HTTPS only", address,
                                "plain HTTP from %s refused: HTTPS only", peer, burst=5)
            try:
                async with asyncio.timeout(5):
                    await loop.sock_sendall(conn, head + body)
            except (OSError, TimeoutError):
                pass
        else:
            self._warnings.warn("not-tls", "closed, not TLS", address,
                                "%s sent something that is not TLS (first byte 0x%02x); closed", peer, first[0],
                                burst=5)
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
