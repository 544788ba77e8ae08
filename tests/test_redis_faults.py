"""
What clients get while Redis is down or drops a connection. Each test
stops or restricts the session's redis-server itself.
"""

from __future__ import annotations

import json
import time

import pytest_twisted
import treq
from twisted.internet import defer

from redis_ajax_push.errors import REDIS_UNAVAILABLE, TaskError
from tests.support import wait_until

RUNNING = b'{"status": "running"}'


@pytest_twisted.ensureDeferred
async def test_poll_fails_fast_without_redis(start_daemon, redis_server):
    """
    With Redis stopped, a poll gets 503 redis_unavailable within the
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
    With Redis stopped, a watch gets 503 redis_unavailable once the
    subscription is not confirmed within the command timeout.
    """
    daemon = await start_daemon(redis={"command_timeout": 0.5})
    redis_server.stop()

    response = await treq.get(daemon.url("/task/down?watch"), persistent=False)
    body = json.loads(await response.content())

    assert response.code == 503
    assert body["error"] == "redis_unavailable"


@pytest_twisted.ensureDeferred
async def test_killed_subscriber_resubscribes(daemon, redis_client):
    """
    When Redis closes a subscriber connection, the daemon reconnects and
    subscribes the channel again: the open watch still ends on the next
    update.
    """
    redis_client.set("RA_D_f1", RUNNING)
    pending = treq.get(daemon.url("/task/f1?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_f1")[0][1] == 1)

    killed = redis_client.client_kill_filter(_type="pubsub")
    assert killed == 1
    await wait_until(
        lambda: redis_client.pubsub_numsub("RA_SC_f1")[0][1] == 1,
        timeout=10,
        what="the channel to be subscribed again",
    )
    redis_client.publish("RA_SC_f1", b'{"status": "done", "data": 2}')
    response = await pending

    assert response.code == 200
    assert await response.content() == b'{"status": "done", "data": 2}'


@pytest_twisted.ensureDeferred
async def test_done_while_disconnected_delivered(daemon, redis_client):
    """
    A done published while the subscriber connection was down is lost on
    the channel, but the watch reads the data key again after subscribing
    anew and returns it.
    """
    redis_client.set("RA_D_f2", RUNNING)
    pending = treq.get(daemon.url("/task/f2?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_f2")[0][1] == 1)

    redis_client.client_kill_filter(_type="pubsub")
    done = b'{"status": "done", "result": "missed message"}'
    redis_client.set("RA_D_f2", done)
    redis_client.publish("RA_SC_f2", b'{"status": "done"}')
    response = await pending

    assert response.code == 200
    assert await response.content() == done


@pytest_twisted.ensureDeferred
async def test_watch_survives_redis_restart(start_daemon, redis_server, redis_client):
    """
    A watch open while Redis restarts is subscribed again and returns the
    state a worker wrote after the restart.
    """
    daemon = await start_daemon(redis={"command_timeout": 0.5})
    redis_client.set("RA_D_f3", RUNNING)
    pending = treq.get(daemon.url("/task/f3?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_f3")[0][1] == 1)

    redis_server.stop()
    redis_server.start()
    done = b'{"status": "done", "after": "restart"}'
    redis_client.set("RA_D_f3", done)
    response = await pending

    assert response.code == 200
    assert await response.content() == done


@pytest_twisted.ensureDeferred
async def test_long_outage_ends_watch(start_daemon, redis_server, redis_client):
    """
    When Redis stays down past resubscribe_timeout, the open watch ends
    with 503 redis_unavailable instead of hanging.
    """
    daemon = await start_daemon(
        redis={"command_timeout": 0.5}, watch={"resubscribe_timeout": 0.5}
    )
    redis_client.set("RA_D_f4", RUNNING)
    pending = treq.get(daemon.url("/task/f4?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_f4")[0][1] == 1)

    redis_server.stop()
    started = time.monotonic()
    response = await pending
    body = json.loads(await response.content())

    assert response.code == 503
    assert body["error"] == "redis_unavailable"
    assert time.monotonic() - started < 5


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


@pytest_twisted.ensureDeferred
async def test_reread_after_resubscribe_retried(daemon, redis_client):
    """
    When the data key cannot be read right after a resubscription, as while
    the command connection still reconnects, the watch reads it again
    instead of ending with redis_unavailable, and returns the done written
    meanwhile.
    """
    redis_client.set("RA_D_f9", RUNNING)
    pending = treq.get(daemon.url("/task/f9?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_f9")[0][1] == 1)
    commands = daemon.service.redis.commands
    real_get = commands.get
    failed_reads = []

    def get_failing_twice(key):
        if len(failed_reads) < 2:
            failed_reads.append(key)
            return defer.fail(TaskError(REDIS_UNAVAILABLE, "GET: no answer"))
        return real_get(key)

    commands.get = get_failing_twice
    done = b'{"status": "done", "result": "read on the third try"}'
    redis_client.set("RA_D_f9", done)
    redis_client.client_kill_filter(_type="pubsub")
    response = await pending

    assert failed_reads == ["RA_D_f9", "RA_D_f9"]
    assert response.code == 200
    assert await response.content() == done
