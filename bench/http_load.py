"""
The bench's HTTP/1.1 client: keep-alive connections that send one GET at a
time and time each response to its last byte.

The parser reads what raps sends: a status line, headers, then a body with
either Content-Length or chunked transfer coding. Heartbeat chunks are
counted and skipped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

HEARTBEAT = b"\n"


@dataclass
class Response:
    """
    One finished response and when its last byte arrived
    (C{time.perf_counter()}).
    """

    status: int
    body: bytes
    finished: float
    heartbeats: int = 0


@dataclass
class _Progress:
    status: int = 0
    chunked: bool = False
    length: int = 0
    body: list[bytes] = field(default_factory=list)
    heartbeats: int = 0


class HTTPConnection(asyncio.Protocol):
    """
    One keep-alive client connection. L{get} sends a request and returns a
    future that gets the L{Response}.
    """

    def __init__(self, host_header: bytes) -> None:
        self._host = host_header
        self._buffer = bytearray()
        self._progress: _Progress | None = None
        self._in_body = False
        self._pending: asyncio.Future[Response] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(
        cls, host: str, port: int, source: str | None = None
    ) -> HTTPConnection:
        loop = asyncio.get_running_loop()
        host_header = f"{host}:{port}".encode()
        local = (source, 0) if source else None
        _, connection = await loop.create_connection(
            lambda: cls(host_header), host, port, local_addr=local
        )
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(
                ConnectionError("the server closed the connection")
            )
        if not self.closed.done():
            self.closed.set_result(None)

    def get(self, path: bytes) -> asyncio.Future[Response]:
        """
        Send C{GET path} and return a future for its response.
        """
        assert self.transport is not None and self._pending is None
        self._pending = asyncio.get_running_loop().create_future()
        self._progress = _Progress()
        self._in_body = False
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, self._host)
        )
        return self._pending

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._progress is None:
            return
        if not self._in_body and not self._read_head():
            return
        self._read_body()

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        assert self._progress is not None
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        self._progress.status = int(head[0].split(" ", 2)[1])
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "transfer-encoding" and "chunked" in value.lower():
                self._progress.chunked = True
            elif name == "content-length":
                self._progress.length = int(value)
        self._in_body = True
        return True

    def _read_body(self) -> None:
        progress = self._progress
        assert progress is not None
        if not progress.chunked:
            if len(self._buffer) < progress.length:
                return
            progress.body.append(bytes(self._buffer[: progress.length]))
            del self._buffer[: progress.length]
            self._finish()
            return
        while True:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self._buffer[:line_end].split(b";")[0], 16)
            chunk_end = line_end + 2 + size + 2
            if len(self._buffer) < chunk_end:
                return
            chunk = bytes(self._buffer[line_end + 2 : chunk_end - 2])
            del self._buffer[:chunk_end]
            if size == 0:
                self._finish()
                return
            if chunk == HEARTBEAT:
                progress.heartbeats += 1
            else:
                progress.body.append(chunk)

    def _finish(self) -> None:
        progress, self._progress = self._progress, None
        pending, self._pending = self._pending, None
        self._in_body = False
        assert progress is not None and pending is not None
        if not pending.done():
            pending.set_result(
                Response(
                    progress.status,
                    b"".join(progress.body),
                    time.perf_counter(),
                    progress.heartbeats,
                )
            )
