"""What receiving TLS costs the process server: asyncio's SSL layer (how the data port receives today,
through aiohttp) against a blocking TLS socket in a thread, for the same bytes on loopback.

A sender process writes ``--gib`` GiB in 8 MiB writes over TLS 1.3 (AES-256-GCM, the data port's
cipher); the receiver copies what arrives into one reused 8 MiB buffer (as ``read_body`` does) and
prints its own CPU seconds (the sender's are not counted) and the wall time. The receiver's allocator
is set as the process server sets it (:func:`engine.codec.keep_freed_memory`): without it the first
transfer in a process costs twice the CPU (asyncio's per-read buffers are fresh pages each time).

- ``asyncio``: ``loop.connect_accepted_socket(..., ssl=...)`` with a plain ``asyncio.Protocol``, as
  aiohttp's server protocol is: asyncio's SSL layer reads each 16 KiB TLS record in Python and joins
  them before ``data_received``;
- ``thread``: ``SSLContext.wrap_socket`` on a blocking socket, ``recv_into`` the buffer, in a thread
  (OpenSSL reads from the socket itself; the GIL is released while it does).

    .venv/bin/python benchmarks/tls_receive.py --gib 1 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.codec import keep_freed_memory  # noqa: E402
from engine.process_server.service import KEEP_FREED  # noqa: E402

CHUNK = 8 * 1024 * 1024


def _server_context(tmp: Path) -> ssl.SSLContext:
    if not (tmp / "key.pem").exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"), "-days", "1",
                        "-subj", "/CN=tls-receive"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return context


def send(port: int, total: int) -> None:
    """The sender (its own process): ``total`` bytes in 8 MiB writes, then wait for the receiver's byte."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as tls:
        block = os.urandom(CHUNK)
        for _ in range(total // CHUNK):
            tls.sendall(block)
        tls.recv(1)


class _Sink(asyncio.Protocol):
    def __init__(self, total: int, done: asyncio.Future[None]) -> None:
        self.total, self.done, self.got, self.pos = total, done, 0, 0
        self.buffer = bytearray(CHUNK)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.pos + len(data) > CHUNK:
            self.pos = 0
        self.buffer[self.pos:self.pos + len(data)] = data
        self.pos += len(data)
        self.got += len(data)
        if self.got >= self.total and not self.done.done():
            assert self.transport is not None
            self.transport.write(b"x")
            self.done.set_result(None)


def _receive_in_thread(conn: socket.socket, context: ssl.SSLContext, total: int) -> None:
    conn.setblocking(True)
    with context.wrap_socket(conn, server_side=True) as tls:
        view = memoryview(bytearray(CHUNK))
        got = pos = 0
        while got < total:
            if pos >= CHUNK:
                pos = 0
            n = tls.recv_into(view[pos:])
            if not n:
                raise ConnectionError("the sender left early")
            got += n
            pos += n
        tls.sendall(b"x")


async def receive(mode: str, total: int, context: ssl.SSLContext) -> tuple[float, float]:
    """One transfer: (receiver CPU seconds, wall seconds)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        sender = subprocess.Popen([sys.executable, __file__, "--send", str(listener.getsockname()[1]),
                                   "--bytes", str(total)])
        conn, _ = await loop.sock_accept(listener)
    cpu, wall = time.process_time(), time.perf_counter()
    if mode == "asyncio":
        done: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.connect_accepted_socket(lambda: _Sink(total, done), conn, ssl=context)
        await done
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        transport.close()
    else:
        thread = threading.Thread(target=_receive_in_thread, args=(conn, context, total))
        thread.start()
        await loop.run_in_executor(None, thread.join)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if sender.wait(timeout=60) != 0:
        raise SystemExit("the sender failed")
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--send", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        send(args.send, args.bytes)
        return
    total = int(args.gib * 1024**3) // CHUNK * CHUNK
    keep_freed_memory(KEEP_FREED)
    with tempfile.TemporaryDirectory(prefix="godwit-tls-") as tmp:
        context = _server_context(Path(tmp))
        figures: dict[str, list[tuple[float, float]]] = {"asyncio": [], "thread": []}
        for _ in range(args.runs):
            for mode in figures:  # alternated, so that a busy moment does not favour one
                figures[mode].append(asyncio.run(receive(mode, total, context)))
    gib = total / 1024**3
    print(f"median of {args.runs} runs, {gib:g} GiB over TLS on loopback, receiver only")
    print("| receiver | CPU-s per GiB | wall s per GiB |")
    print("|---|---|---|")
    for mode, runs in figures.items():
        print(f"| {mode} | {statistics.median(c for c, _ in runs) / gib:.2f} | "
              f"{statistics.median(w for _, w in runs) / gib:.2f} |")


if __name__ == "__main__":
    main()
