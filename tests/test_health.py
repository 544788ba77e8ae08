"""
GET /healthz against a real redis-server: healthy only when the command
connection and every subscriber connection reply.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq

from redis_ajax_push.redis_url import parse_redis_url
from tests.support import wait_until

RUNNING = b'{"status": "running"}'


async def health(daemon):
    response = await treq.get(daemon.url("/healthz"), persistent=False)
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_healthy_daemon_returns_200(daemon, redis_client):
    """
    With Redis up, /healthz responds 200 and probes the subscriber pool even
    when no watch is open, leaving no channel behind.
    """
    code, body = await health(daemon)

    assert code == 200
    assert body == {"status": "ok"}
    assert daemon.service.redis.pool.channel_count == 0


@pytest_twisted.ensureDeferred
async def test_redis_down_is_unhealthy(start_daemon, redis_server):
    """
    With Redis stopped, /healthz responds 503 naming the command connection
    and the subscriber pool.
    """
    daemon = await start_daemon(redis={"command_timeout": 0.3})
    redis_server.stop()

    code, body = await health(daemon)

    assert code == 503
    assert body["error"] == "unhealthy"
    assert any(p.startswith("command connection") for p in body["problems"])
    assert any(p.startswith("subscriber") for p in body["problems"])


@pytest_twisted.ensureDeferred
async def test_lost_subscriber_is_unhealthy(daemon, redis_client):
    """
    A subscriber connection that Redis closed makes /healthz respond 503 even
    though the command connection is fine, and 200 again once it has
    reconnected.
    """
    redis_client.set("RA_D_h1", RUNNING)
    watch = treq.get(daemon.url("/task/h1?watch"), persistent=False)
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_h1")[0][1] == 1)

    redis_client.client_kill_filter(_type="pubsub")
    code, body = await health(daemon)

    assert code == 503
    assert body["problems"] == ["subscriber connection 0: not connected"]

    await wait_until(
        lambda: redis_client.pubsub_numsub("RA_SC_h1")[0][1] == 1,
        timeout=10,
        what="the subscriber to reconnect",
    )
    code, _ = await health(daemon)
    assert code == 200
    redis_client.publish("RA_SC_h1", b'{"status": "done"}')
    await (await watch).content()


@pytest_twisted.ensureDeferred
async def test_refused_subscribe_is_unhealthy(start_daemon, redis_server, redis_client):
    """
    A Redis user without channel permissions makes every /healthz respond
    503 with the Redis refusal, the second one too, when the first probe's
    connection is still open and replies to PING.
    """
    redis_client.acl_setuser(
        "nochannels",
        enabled=True,
        passwords=["+healthcheck-password"],
        keys=["*"],
        commands=["+@all"],
        reset_channels=True,
    )
    try:
        url = (
            f"redis://nochannels:healthcheck-password@{redis_server.host}:"
            f"{redis_server.port}/0"
        )
        daemon = await start_daemon(redis={"url": parse_redis_url(url)})

        first, first_body = await health(daemon)
        second, second_body = await health(daemon)
    finally:
        redis_client.acl_deluser("nochannels")

    assert first == 503
    assert second == 503
    assert "NOPERM" in first_body["error_message"]
    assert "NOPERM" in second_body["error_message"]
    assert len(daemon.service.redis.pool.connections) == 1
