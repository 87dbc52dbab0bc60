"""The mobility service's one HTTPS client, for the appliance's management port and its data port.

- One keep-alive connection per client. A connection the appliance closed while it idled is opened
  anew once, without a word: the request never reached the appliance.
- Every request carries the link's ``Godwit-Protocol`` header and every answer's is checked: an
  appliance that speaks another major version is a :class:`~engine.errors.VersionMismatch`, one
  line naming both versions (a refusal, never retried).
- One translation of what goes wrong into :class:`~engine.errors.EngineError`: a certificate the
  pinned CA did not issue is a :class:`~engine.errors.FingerprintMismatch`; anything else on the way
  (TLS, sockets, HTTP) is :class:`~engine.errors.ApplianceUnreachable`; an error answer is rebuilt
  from its ``{"code", "message"}``.

Synchronous and used by one thread at a time (the mobility service runs on blocking sockets in
threads); :meth:`ApplianceClient.close` may be called from another thread to unblock a request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.errors import (
    ApplianceUnreachable,
    EngineError,
    EngineNotRunning,
    FingerprintMismatch,
    ProtocolError,
    from_code,
)
from engine.links import HEADER, Link, decode, encode
from engine.links.data import DATA
from engine.links.management import MANAGEMENT

M = TypeVar("M")

#: The appliance's answers are a few KiB; more is not an answer of the appliance's.
MAX_ANSWER = 1024 * 1024
#: Seconds a management request may take (registration signs a certificate).
MANAGEMENT_TIMEOUT = 15.0
#: Seconds a data request may take (a batch is up to 9 MiB, on a slow or capped line).
DATA_TIMEOUT = 120.0


@dataclass(frozen=True)
class Answer:
    """An answer as it came, whatever its status (its protocol version already checked)."""

    status: int
    body: bytes


class ApplianceClient:
    """One of the appliance's ports, over one kept-alive HTTPS connection, speaking ``link``."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, link: Link, port_name: str, where: str,
                 timeout: float) -> None:
        self.host = host
        self.port = port
        self.context = context
        self.link = link
        #: What the port is to the admin ("management port"), for messages.
        self.port_name = port_name
        #: How messages name the far end ("appliance.example.com:443").
        self.where = where
        self.timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None
        #: Guards ``_conn`` and ``_closed``: :meth:`close` may come from another thread.
        self._lock = threading.Lock()
        self._closed = False
        #: Connections opened so far (a kept-alive one is opened once).
        self.connections = 0
        #: The version of the link the appliance said it speaks in its last answer (None: no answer yet).
        self.peer_version: tuple[int, int] | None = None

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None else "idle"
        return f"<ApplianceClient {self.link} {self.host}:{self.port} {state} connections={self.connections}>"

    def __enter__(self) -> ApplianceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client for good. Safe from another thread: a request blocked on the connection
        fails as unreachable (the socket is shut down, which wakes a blocked read), and no request
        opens a new one afterwards."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _connection(self) -> tuple[http.client.HTTPSConnection, bool]:
        """The kept-alive connection, or a new one; and whether it was reused."""
        with self._lock:
            if self._closed:
                raise ApplianceUnreachable(f"The connection to the {self.port_name} {self.where} was closed.")
            if self._conn is not None:
                return self._conn, True
            self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                     timeout=self.timeout)
            self.connections += 1
            return self._conn, False

    def _drop(self, conn: http.client.HTTPSConnection) -> None:
        conn.close()
        with self._lock:
            if self._conn is conn:
                self._conn = None

    # --- requests ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | bytearray | None = None, *, content_type: str | None = None,
                headers: Mapping[str, str] | None = None) -> Answer:
        """Send one request and read its answer, whatever its status. Raises :class:`ApplianceUnreachable`
        or :class:`FingerprintMismatch` when it did not get through, :class:`VersionMismatch` when the
        appliance speaks another major version of the link."""
        sent = {**self.link.headers, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = content_type or "application/octet-stream"
        for last_try in (False, True):
            conn, reused = self._connection()
            try:
                conn.request(method, path, body=body, headers=sent)
                resp = conn.getresponse()
                raw = resp.read(MAX_ANSWER)
                if resp.will_close or not resp.isclosed():  # the appliance closes it, or the answer is too long
                    self._drop(conn)
                break
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                # The appliance closes a keep-alive connection that idled: the request never reached it,
                # so sending it once more on a new connection is not a retry worth a line.
                closed_while_idle = isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError |
                                               BrokenPipeError)
                if reused and closed_while_idle and not last_try and not self._closed:
                    continue
                raise self._transport_error(exc) from exc
        self.peer_version = self.link.check(resp.getheader(HEADER), peer="The appliance")
        return Answer(resp.status, raw)

    def call(self, method: str, path: str, body: Any, answer_type: type[M], *,
             headers: Mapping[str, str] | None = None) -> M:
        """A typed exchange: ``body`` is a message (sent as JSON with :func:`engine.links.encode`),
        ``bytes`` or a ``bytearray`` (sent as they are) or None; the answer is decoded as ``answer_type``. An
        error answer raises its :class:`EngineError`."""
        if body is None or isinstance(body, bytes | bytearray):
            answer = self.request(method, path, body, headers=headers)
        else:
            answer = self.request(method, path, json.dumps(encode(body)).encode(), content_type="application/json",
                                  headers=headers)
        return decode(answer_type, self._json(answer), link=self.link)

    # --- what went wrong ----------------------------------------------------------------------------
    def _transport_error(self, exc: OSError | http.client.HTTPException) -> EngineError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return FingerprintMismatch(f"{self.where} presented a certificate that the pinned CA did not issue: "
                                       "check --appliance and --ca-fingerprint.")
        if isinstance(exc, ssl.SSLError):
            return ApplianceUnreachable(f"TLS with {self.where} failed ({exc.reason}).")
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ApplianceUnreachable(f"{self.where} is unreachable ({reason}).")

    def _json(self, answer: Answer) -> dict[str, Any]:
        """The answer's JSON object, or the error it says (or is)."""
        status = answer.status
        try:
            data = json.loads(answer.body)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if status >= 500:  # e.g. a proxy in between whose upstream is down
                raise ApplianceUnreachable(f"{self.where} answered {status}.") from exc
            raise ProtocolError(f"{self.where} answered {status} without JSON: is this the appliance's "
                                f"{self.port_name}?") from exc
        if status >= 400:
            if status >= 500 and data.get("code") == EngineNotRunning.code:
                raise ApplianceUnreachable("The appliance's engine is restarting.")
            error = from_code(str(data.get("code")), str(data.get("message")))
            if status < 500 and error.status >= 500:  # a refusal this version has no class for: still a refusal
                raise ProtocolError(f"{self.where} refused the request ({status} {data.get('code')}): "
                                    f"{error.message}")
            raise error
        return data


def management_client(host: str, port: int, context: ssl.SSLContext, *,
                      timeout: float = MANAGEMENT_TIMEOUT) -> ApplianceClient:
    """The appliance's management port (registration, heartbeats); a long poll needs a ``timeout`` beyond the
    longest it asks the appliance to wait."""
    return ApplianceClient(host, port, context=context, link=MANAGEMENT, port_name="management port",
                           where=f"{host}:{port}", timeout=timeout)


def data_client(host: str, port: int, context: ssl.SSLContext) -> ApplianceClient:
    """The appliance's data port (stream states, batches); requests add the ``X-Godwit-Epoch`` header."""
    return ApplianceClient(host, port, context=context, link=DATA, port_name="data port",
                           where=f"data port {host}:{port}", timeout=DATA_TIMEOUT)
