"""
A small asyncio Redis client for the bench driver: pipelined commands and
pattern subscriptions, with no dependency beyond the standard library.

It parses only the replies the bench needs (simple strings, errors,
integers, bulk strings and arrays) and keeps the encoding of commands out of
the timed paths: callers can encode a whole burst first and write it at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

Reply = Any


class RedisReplyError(Exception):
    """
    Redis replied to a command with an error.
    """


def encode(*args: bytes | str | int) -> bytes:
    """
    Encode one command in the RESP protocol.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Parser:
    """
    Splits a byte stream into replies.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies = []
        while True:
            parsed = self._parse(self._offset)
            if parsed is None:
                break
            reply, self._offset = parsed
            replies.append(reply)
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        return replies

    def _parse(self, start: int) -> tuple[Reply, int] | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n", start)
        if end < 0:
            return None
        kind = buffer[start : start + 1]
        line = bytes(buffer[start + 1 : end])
        after = end + 2
        if kind == b"+":
            return line, after
        if kind == b"-":
            return RedisReplyError(line.decode("utf-8", "replace")), after
        if kind == b":":
            return int(line), after
        if kind == b"$":
            size = int(line)
            if size < 0:
                return None, after
            if len(buffer) < after + size + 2:
                return None
            return bytes(buffer[after : after + size]), after + size + 2
        if kind == b"*":
            count = int(line)
            items = []
            position = after
            for _ in range(max(count, 0)):
                parsed = self._parse(position)
                if parsed is None:
                    return None
                item, position = parsed
                items.append(item)
            return items, position
        raise ValueError(f"unexpected RESP reply type {kind!r}")


class RedisConnection(asyncio.Protocol):
    """
    One Redis connection. Replies arrive in the order of the commands. On a
    connection that has pattern-subscribed, messages go to C{on_message}.
    """

    def __init__(self) -> None:
        self._parser = _Parser()
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self.transport: asyncio.Transport | None = None
        self.on_message: Callable[[bytes, bytes], None] | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, name: str | None = None
    ) -> RedisConnection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, host, port)
        if name is not None:
            await connection.command("CLIENT", "SETNAME", name)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for reply in self._parser.feed(data):
            if (
                self.on_message is not None
                and isinstance(reply, list)
                and reply
                and reply[0] == b"pmessage"
            ):
                self.on_message(reply[2], reply[3])
                continue
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("Redis connection lost"))

    def send_encoded(self, data: bytes, count: int) -> list[asyncio.Future[Reply]]:
        """
        Write C{count} already encoded commands and return one future per
        reply.
        """
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        self._waiting.extend(futures)
        self.transport.write(data)
        return futures

    async def command(self, *args: bytes | str | int) -> Reply:
        (future,) = self.send_encoded(encode(*args), 1)
        reply = await future
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: list[bytes]) -> list[Reply]:
        """
        Send encoded commands in one write and wait for every reply.
        """
        futures = self.send_encoded(b"".join(commands), len(commands))
        replies = await asyncio.gather(*futures)
        for reply in replies:
            if isinstance(reply, RedisReplyError):
                raise reply
        return replies

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
