"""
The subscriber pool against a real redis-server: channels per connection,
the connection bound, and closing connections that fell idle.
"""

from __future__ import annotations

import math

import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool

from tests.support import wait_until

RUNNING = b'{"status": "running"}'


def daemon_clients(redis_client):
    """
    Return the Redis client connections other than the tests' own, which
    are named.
    """
    return [client for client in redis_client.client_list() if not client["name"]]


def subscribed_channels(redis_client):
    return len(redis_client.pubsub_channels("RA_SC_*"))


@pytest_twisted.ensureDeferred
async def test_channels_spread_over_connections(start_daemon, redis_client):
    """
    With channels_per_connection = 2, five watched tasks use three
    subscriber connections.
    """
    daemon = await start_daemon(redis={"channels_per_connection": 2})
    pending = []
    for number in range(5):
        redis_client.set(f"RA_D_s{number}", RUNNING)
        pending.append(treq.get(daemon.url(f"/task/s{number}?watch"), persistent=False))
    await wait_until(lambda: subscribed_channels(redis_client) == 5)

    pool = daemon.service.redis.pool
    assert len(pool.connections) == 3
    assert sorted(len(c.channels) for c in pool.connections) == [1, 2, 2]

    for number in range(5):
        redis_client.publish(f"RA_SC_s{number}", b'{"status": "done"}')
    responses = await defer.gatherResults(pending)
    assert [response.code for response in responses] == [200] * 5


@pytest_twisted.ensureDeferred
async def test_channel_subscribed_once(daemon, redis_client):
    """
    Two watches of one task on one daemon share a single subscription.
    """
    redis_client.set("RA_D_shared", RUNNING)
    first = treq.get(daemon.url("/task/shared?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_shared")[0][1] == 1)
    second = treq.get(daemon.url("/task/shared?watch"), persistent=False)

    killed = await first
    assert killed.code == 409
    assert redis_client.pubsub_numsub("RA_SC_shared")[0][1] == 1

    redis_client.publish("RA_SC_shared", b'{"status": "done"}')
    assert (await second).code == 200


@pytest_twisted.ensureDeferred
async def test_thousand_watches_bounded(start_daemon, redis_client):
    """
    1,000 concurrent watches at 16 channels per connection use at most 63
    subscriber connections plus the command connection. Once they have
    ended and the idle timeout passed, only the command connection is left.
    """
    count = 1000
    # The default listen backlog of 50 would make most of 1,000 simultaneous
    # connects wait for SYN retries.
    daemon = await start_daemon(
        http={"listen": "tcp:0:interface=127.0.0.1:backlog=1024"},
        redis={"channels_per_connection": 16, "subscriber_idle_timeout": 0.5},
    )
    for number in range(count):
        redis_client.set(f"RA_D_k{number}", RUNNING)
    http_pool = HTTPConnectionPool(reactor, persistent=False)
    pending = [
        treq.get(daemon.url(f"/task/k{number}?watch"), pool=http_pool)
        for number in range(count)
    ]
    await wait_until(
        lambda: subscribed_channels(redis_client) == count,
        timeout=30,
        what="all watches to subscribe",
    )

    assert len(daemon_clients(redis_client)) <= math.ceil(count / 16) + 1

    with redis_client.pipeline(transaction=False) as pipe:
        for number in range(count):
            pipe.publish(f"RA_SC_k{number}", b'{"status": "done", "data": 1}')
        pipe.execute()
    responses = await defer.gatherResults(pending)
    assert {response.code for response in responses} == {200}

    await wait_until(
        lambda: len(daemon_clients(redis_client)) == 1,
        timeout=10,
        what="idle subscriber connections to close",
    )
    assert daemon.service.redis.pool.connections == []
