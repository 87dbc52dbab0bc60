"""What every HTTP server of the engine shares: the one error middleware, JSON bodies, and the
protocol version each link carries.

The TLS ports (management, data) and the local sockets (admin API, agent link) all answer a
refusal as ``{"code", "message"}`` JSON with the error's HTTP status. On a network port every
refusal is one warning line and closes the connection (a peer that sends junk gets no second
chance on it); on a local socket only the engine's own trouble (5xx) is logged. Anything that is
not an :class:`~engine.errors.EngineError` is a bug: logged with its traceback, answered with one
line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.errors import DiskFull, EngineError, ProtocolError
from engine.links import HEADER, Link
from engine.state import is_full

log = logging.getLogger(__name__)

#: Seconds a small (JSON) request body may take to arrive before the connection is dropped.
JSON_BODY_TIMEOUT = 30.0
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware(where: str, *, network: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    """``where`` names the server in messages ("management port", "admin API"); ``network`` is true
    for a port that strangers reach."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EngineError as exc:
            code, message, status = exc.code, exc.message, exc.status
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code, status = f"http-{exc.status}", exc.status
            message = {
                404: f"There is no {request.path} on the {where}.",
                405: f"{request.method} is not allowed on {request.path}.",
                413: f"The request body is larger than the {where} accepts.",
            }.get(exc.status, exc.reason)
        except Exception as exc:
            if isinstance(exc, ConnectionError) and (request.transport is None or request.transport.is_closing()):
                # The peer went away mid-request or mid-answer (a source stopping, a console closing its event
                # stream): one line, nobody to answer.
                log.warning("%s: %s %s from %s: the peer closed the connection", where, request.method,
                            request.path[:100], request.remote)
                raise web.HTTPBadRequest() from None  # aiohttp drops the dead connection quietly
            if is_full(exc):  # a write the state database did not translate itself: a state, not a crash
                code, status = DiskFull.code, DiskFull.status
                message = ("The appliance's state database cannot be written: the data directory's disk is "
                           "full. Free space there; the appliance carries on by itself.")
            else:
                log.exception("%s: internal error on %s %s", where, request.method, request.path[:100])
                code, status = "internal-error", 500
                message = "The engine hit an internal error; its log in the data directory has the details."
        if network:
            log.warning("%s: refused %s %s from %s: %s %s", where, request.method, request.path[:100],
                        request.remote, status, code)
        elif status >= 500:  # the engine's own trouble (e.g. its disk full), not the caller's: one line
            log.warning("%s: %s %s answered %s %s", where, request.method, request.path[:100], status, code)
        resp = web.json_response({"code": code, "message": message}, status=status)
        if network:
            resp.force_close()
        return resp

    return middleware


def speaks(app: web.Application, link: Link, *, peer: str) -> None:
    """Make ``app`` serve ``link``: every request's version is checked (a major version other than ours
    is refused with one line naming both) and every answer carries ours."""

    @web.middleware
    async def check_version(request: web.Request, handler: _Handler) -> web.StreamResponse:
        link.check(request.headers.get(HEADER), peer=peer)
        return await handler(request)

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[HEADER] = str(link)

    app.middlewares.append(check_version)  # inside the error middleware, which answers its refusal
    app.on_response_prepare.append(stamp)


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
