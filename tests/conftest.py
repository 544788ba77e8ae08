"""
Fixtures shared by the suite: one real redis-server per session on a free
loopback port, a synchronous client for setting up and inspecting it, and
in-process daemons listening on port 0.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
import redis
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from redis_ajax_push.config import Config, load_config
from redis_ajax_push.service import RapsService
from redis_ajax_push.testing import RedisServer
from tests.support import ChannelSpy


@pytest.fixture(scope="session")
def redis_server(raps_redis: RedisServer) -> RedisServer:
    """
    A redis-server for the whole session, on 127.0.0.1 and a free port: the
    one of the raps pytest plugin's C{raps_redis} fixture.
    """
    return raps_redis


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """
    A redis-py client on an emptied database; the server is started again if
    an earlier test stopped it.
    """
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis(
        host=redis_server.host, port=redis_server.port, client_name="raps-tests"
    )
    client.flushall()
    yield client
    client.close()


class Daemon:
    """
    An in-process raps daemon and the base URL it serves on.
    """

    def __init__(self, service: RapsService, base_url: str) -> None:
        self.service = service
        self.base_url = base_url

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def port(self) -> int:
        """
        The TCP port the daemon listens on, for raw socket clients.
        """
        return int(self.base_url.rsplit(":", 1)[1])


def make_config(redis_server: RedisServer, **sections: dict[str, Any]) -> Config:
    """
    Build a daemon config for tests: loopback port 0, the session's Redis,
    and the given section fields replaced.
    """
    config = load_config(listen="tcp:0:interface=127.0.0.1", redis_url=redis_server.url)
    for name, fields in sections.items():
        section = dataclasses.replace(getattr(config, name), **fields)
        config = dataclasses.replace(config, **{name: section})
    return config


@pytest.fixture
def start_daemon(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Any]:
    """
    A function that starts an in-process daemon with config overrides, as
    in C{await start_daemon(watch={"heartbeat_interval": 0.1})}. Every
    daemon started is stopped after the test.
    """
    started: list[RapsService] = []

    async def start(**sections: dict[str, Any]) -> Daemon:
        service = RapsService(make_config(redis_server, **sections), reactor)
        service.startService()
        started.append(service)
        port = await service.http.listening
        return Daemon(service, f"http://127.0.0.1:{port.getHost().port}")

    yield start

    for service in reversed(started):
        pytest_twisted.blockon(service.stopService())


@pytest_twisted.async_yield_fixture
async def daemon(start_daemon: Any) -> AsyncIterator[Daemon]:
    """
    One in-process daemon with the default config.
    """
    yield await start_daemon()


class ErrorLog:
    """
    The error events logged during one test: failures, legacy C{log.err}
    calls, events at level error or critical, and any text containing
    "Unhandled error".
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def observe(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if (
            event.get("log_failure") is not None
            or event.get("isError")
            or level in (LogLevel.error, LogLevel.critical)
            or "Unhandled error" in formatEvent(event)
        ):
            self.events.append(event)

    def messages(self) -> list[str]:
        """
        Collect garbage first, so that Deferreds dropped with a failure log
        "Unhandled error in Deferred", then return every error event as text
        with its traceback.
        """
        gc.collect()
        texts = []
        for event in self.events:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            texts.append(text)
        return texts

    def release_frames(self) -> None:
        """
        Drop the tracebacks of the logged failures.

        The suite never calls C{globalLogBeginner.beginLoggingTo}, so
        Twisted keeps up to 65536 early events in a history buffer for the
        whole session. pytest-twisted also turns C{Failure.cleanFailure}
        into a no-op, so a failure's traceback there would keep the daemon
        objects of its frames alive for later tests that count them.
        """
        for event in self.events:
            failure = event.get("log_failure")
            if failure is None:
                continue
            failure.tb = None
            failure.__traceback__ = None
            error = failure.value
            seen = set()
            while error is not None and id(error) not in seen:
                seen.add(id(error))
                error.__traceback__ = None
                error = error.__cause__ or error.__context__


@pytest.fixture
def logged_errors() -> Iterator[ErrorLog]:
    """
    An L{ErrorLog} that observes the global Twisted log during the test.
    """
    errors = ErrorLog()
    # Garbage of earlier tests is collected before observing, so that its
    # "Unhandled error in Deferred" is not counted here.
    gc.collect()
    globalLogPublisher.addObserver(errors.observe)
    yield errors
    globalLogPublisher.removeObserver(errors.observe)
    errors.release_frames()


@pytest.fixture
def spy(redis_client: redis.Redis) -> Iterator[Any]:
    """
    A function that subscribes a L{ChannelSpy} to a task's channel, to see
    the kill that a watch publishes once it waits. Every spy is closed after
    the test.
    """
    spies: list[ChannelSpy] = []

    def subscribe(task_id: str) -> ChannelSpy:
        channel_spy = ChannelSpy(redis_client, f"RA_SC_{task_id}")
        spies.append(channel_spy)
        return channel_spy

    yield subscribe
    for channel_spy in spies:
        channel_spy.close()
