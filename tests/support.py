"""
Small async helpers for tests that run on the reactor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis
from twisted.internet import reactor, task


async def sleep(seconds: float) -> None:
    """
    Let the reactor run for C{seconds}.
    """
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_until(
    condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
) -> Any:
    """
    Poll C{condition} every 10 ms while the reactor runs; return its first
    true value.

    @raise AssertionError: when it is still false after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await sleep(0.01)


class ChannelSpy:
    """
    A redis-py subscriber that records what is published on one channel,
    read without blocking the reactor.
    """

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.channel = channel
        self.messages: list[bytes] = []
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)

    def _drain(self) -> None:
        while True:
            message = self._pubsub.get_message(timeout=0)
            if message is None:
                return
            self.messages.append(message["data"])

    def kills(self) -> list[dict[str, Any]]:
        """
        Return the kill messages seen so far, decoded.
        """
        self._drain()
        decoded = [json.loads(message) for message in self.messages]
        return [message for message in decoded if message.get("status") == "kill"]

    async def wait_for_kills(self, count: int, timeout: float = 5.0) -> None:
        """
        Wait until C{count} kill messages were published, that is until as
        many watches are waiting.
        """
        await wait_until(
            lambda: len(self.kills()) >= count,
            timeout,
            f"{count} kill message(s) on {self.channel}",
        )

    def close(self) -> None:
        self._pubsub.close()
