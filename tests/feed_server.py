"""An update feed served over HTTP on loopback for tests, with knobs for attacks and failures.

    with FeedServer(feed_dir) as server:
        client = FeedClient(server.url, ...)
        server.replace("targets/agents/...", b"other bytes")   # serve other bytes for one path
        server.slow_bytes_per_second = 1.0                     # send bodies one byte a second
        server.down = True                                     # close every connection at once
        server.fail_status = 503                               # answer every request with this status
        server.requests                                        # the paths asked, in order

``publish_release`` publishes a release of this checkout with ``tools/release.py`` (in-process).
"""

from __future__ import annotations

import functools
import importlib.util
import ssl
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    feed: FeedServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        feed = self.server.feed
        path = unquote(urlsplit(self.path).path).lstrip("/")
        with feed.lock:
            feed.requests.append(path)
            down, slow, replaced = feed.down, feed.slow_bytes_per_second, feed.replacements.get(path)
            status = feed.fail_status
        if down:
            self.close_connection = True  # no answer at all: the client sees the connection closed
            return
        body = replaced if replaced is not None else feed.read(path)
        if body is None or status is not None:
            self.send_response(status or 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if slow is None:
                self.wfile.write(body)
                return
            for i in range(len(body)):
                if feed.stopping.wait(1.0 / slow):
                    break
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the client gave up: expected in the slow tests


class FeedServer:
    """Serves the feed directory ``root`` (``root/metadata``, ``root/targets``) on 127.0.0.1, a free port,
    from a thread; HTTPS when given a server-side ``ssl_context`` (mutual TLS if it requires client
    certificates). A context manager."""

    def __init__(self, root: Path, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        #: If set, bodies are sent one byte every ``1 / slow_bytes_per_second`` seconds.
        self.slow_bytes_per_second: float | None = None
        #: If true, every connection is closed at once without an answer.
        self.down = False
        #: If set, every request is answered with this HTTP status and no body.
        self.fail_status: int | None = None
        #: Paths served with other bytes than the feed holds.
        self.replacements: dict[str, bytes] = {}
        #: Every path asked, in order.
        self.requests: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "stopped" if self._server is None else self.url
        return (f"<FeedServer {self.root} {state} requests={len(self.requests)} down={self.down} "
                f"slow={self.slow_bytes_per_second} replaced={sorted(self.replacements)}>")

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def replace(self, path: str, data: bytes) -> None:
        """Serve ``data`` for ``path`` (relative to the feed root, e.g. ``metadata/timestamp.json``)."""
        with self.lock:
            self.replacements[path] = data

    def restore(self, path: str) -> None:
        with self.lock:
            self.replacements.pop(path, None)

    def read(self, path: str) -> bytes | None:
        """The feed's own bytes for ``path``, or None (outside the feed, or absent)."""
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root.resolve()) or not full.is_file():
            return None
        return full.read_bytes()

    def start(self) -> FeedServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.feed = self
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="feed-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@functools.cache
def release_tool() -> ModuleType:
    """``tools/release.py`` of this checkout, imported once."""
    spec = importlib.util.spec_from_file_location("godwit_tools_release", REPO_ROOT / "tools" / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def publish_release(feed: Path, keys: Path, version: str, *, agents: Sequence[str] | None = None,
                    source: Path = REPO_ROOT, **kw: Any) -> None:
    """Publish ``version`` of ``agents`` (default all) built from ``source`` (default this checkout) to ``feed``,
    signed with ``keys`` (both made if missing): ``tools/release.publish`` with test defaults. ``kw``:
    ``requires``, ``now``, ``timestamp_expires``, ``expires``."""
    from engine.updater import AGENT_ORDER

    release_tool().publish(feed, keys, version=version, agents=list(agents or AGENT_ORDER), source=source, **kw)
