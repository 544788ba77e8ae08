"""
What clients get while Redis is down or drops a connection. Each test
stops or restricts the session's redis-server itself.
"""

from __future__ import annotations

import json
import time

import pytest_twisted
import treq

from tests.support import wait_until

RUNNING = b'{"status": "running"}'


@pytest_twisted.ensureDeferred
async def test_poll_fails_fast_without_redis(start_daemon, redis_server):
    """
    With Redis stopped, a poll answers 503 redis_unavailable within the
    command timeout instead of waiting for Redis to come back.
    """
    daemon = await start_daemon(redis={"command_timeout": 0.5})
    redis_server.stop()

    started = time.monotonic()
    response = await treq.get(daemon.url("/task/down"), persistent=False)
    elapsed = time.monotonic() - started
    body = json.loads(await response.content())

    assert response.code == 503
    assert body["error"] == "redis_unavailable"
    assert elapsed < 2


@pytest_twisted.ensureDeferred
async def test_watch_fails_fast_without_redis(start_daemon, redis_server):
    """
    With Redis stopped, a watch answers 503 redis_unavailable once the
    subscription is not confirmed within the command timeout.
    """
    daemon = await start_daemon(redis={"command_timeout": 0.5})
    redis_server.stop()

    response = await treq.get(daemon.url("/task/down?watch"), persistent=False)
    body = json.loads(await response.content())

    assert response.code == 503
    assert body["error"] == "redis_unavailable"


@pytest_twisted.ensureDeferred
async def test_killed_subscriber_ends_watch(daemon, redis_client):
    """
    When Redis closes a subscriber connection, the watch on it ends with
    503 redis_unavailable instead of waiting on a dead connection.
    """
    redis_client.set("RA_D_f1", RUNNING)
    pending = treq.get(daemon.url("/task/f1?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_f1")[0][1] == 1)

    killed = redis_client.client_kill_filter(_type="pubsub")
    response = await pending
    body = json.loads(await response.content())

    assert killed == 1
    assert response.code == 503
    assert body["error"] == "redis_unavailable"


@pytest_twisted.ensureDeferred
async def test_poll_recovers_after_restart(start_daemon, redis_server, redis_client):
    """
    After Redis restarts, the command connection reconnects by itself and
    polls succeed again.
    """
    daemon = await start_daemon(redis={"command_timeout": 0.5})
    redis_server.stop()
    redis_server.start()
    redis_client.set("RA_D_back", RUNNING)

    async def poll_code():
        response = await treq.get(daemon.url("/task/back"), persistent=False)
        await response.content()
        return response.code

    codes = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        codes.append(await poll_code())
        if codes[-1] == 200:
            break
    assert codes[-1] == 200
