"""
GET /metrics against a real redis-server: the Prometheus text format and
what each raps_ metric counts.
"""

from __future__ import annotations

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from tests.http_clients import start_watch
from tests.support import ChannelSpy, sleep, wait_until

RUNNING = b'{"status": "running"}'


async def scrape(daemon):
    """
    GET /metrics and return the samples as {(name, sorted labels): value}.
    """
    response = await treq.get(daemon.url("/metrics"), persistent=False)
    assert response.code == 200
    text = (await response.content()).decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def fetch(daemon, path):
    response = await treq.get(daemon.url(path), persistent=False, timeout=10)
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_metrics_text_format(daemon, redis_client):
    """
    /metrics responds 200 in the Prometheus text format with every raps_
    metric family and no cache.
    """
    response = await treq.get(daemon.url("/metrics"), persistent=False)
    text = (await response.content()).decode("utf-8")

    assert response.code == 200
    content_type = response.headers.getRawHeaders(b"Content-Type")[0]
    assert content_type.startswith(b"text/plain; version=")
    assert response.headers.getRawHeaders(b"Cache-Control") == [b"no-store"]
    names = {family.name for family in text_string_to_metric_families(text)}
    for name in [
        "raps_open_watches",
        "raps_requests",
        "raps_watch_duration_seconds",
        "raps_delivery_latency_seconds",
        "raps_heartbeats",
        "raps_kills",
        "raps_redis_reconnects",
        "raps_subscriber_connections",
        "raps_subscribed_channels",
    ]:
        assert name in names


@pytest_twisted.ensureDeferred
async def test_requests_by_mode_and_outcome(daemon, redis_client):
    """
    Each request of /task/<task id> is counted once under its mode and its
    outcome: ok or the error code.
    """
    redis_client.set("RA_D_m1", b'{"status": "done"}')

    assert (await fetch(daemon, "/task/m1"))[0] == 200
    assert (await fetch(daemon, "/task/m1?poll"))[0] == 200
    assert (await fetch(daemon, "/task/nothere"))[0] == 404
    assert (await fetch(daemon, "/task/m1?watch"))[0] == 200
    assert (await fetch(daemon, "/task/m1?stream"))[0] == 200
    assert (await fetch(daemon, "/task/m1?bad"))[0] == 400
    assert (await fetch(daemon, "/task/a%20b?watch"))[0] == 400
    samples = await scrape(daemon)

    total = "raps_requests_total"
    assert value(samples, total, mode="poll", outcome="ok") == 2
    assert value(samples, total, mode="poll", outcome="not_found") == 1
    assert value(samples, total, mode="watch", outcome="ok") == 1
    assert value(samples, total, mode="stream", outcome="ok") == 1
    assert value(samples, total, mode="invalid", outcome="invalid_mode") == 1
    assert value(samples, total, mode="watch", outcome="invalid_task_id") == 1


@pytest_twisted.ensureDeferred
async def test_open_watches_and_pool_gauges(start_daemon, redis_client):
    """
    While watches wait, the open watches gauge counts them by mode and the
    pool gauges count their channels and connections; once they end, the
    gauge is back to 0 and the duration histogram has one sample each.
    """
    daemon = await start_daemon(redis={"channels_per_connection": 2})
    for index in range(3):
        redis_client.set(f"RA_D_g{index}", RUNNING)
    spies = [ChannelSpy(redis_client, f"RA_SC_g{index}") for index in range(3)]
    watches = [start_watch(daemon.base_url, f"g{index}") for index in range(2)]
    stream = treq.get(daemon.url("/task/g2?stream"), persistent=False)
    for spy in spies:
        await spy.wait_for_kills(1)

    samples = await scrape(daemon)

    assert value(samples, "raps_open_watches", mode="watch") == 2
    assert value(samples, "raps_open_watches", mode="stream") == 1
    assert value(samples, "raps_subscribed_channels") == 3
    assert value(samples, "raps_subscriber_connections") == 2

    for index in range(3):
        redis_client.publish(f"RA_SC_g{index}", b'{"status": "done", "data": 1}')
    for watch in watches:
        await (await watch).content()
    await (await stream).content()
    samples = await scrape(daemon)

    assert value(samples, "raps_open_watches", mode="watch") == 0
    assert value(samples, "raps_open_watches", mode="stream") == 0
    assert value(samples, "raps_watch_duration_seconds_count", mode="watch") == 2
    assert value(samples, "raps_watch_duration_seconds_count", mode="stream") == 1
    for spy in spies:
        spy.close()


@pytest_twisted.ensureDeferred
async def test_delivery_latency_observed(daemon, redis_client):
    """
    A channel message that ends a watch and one relayed as a stream event
    each add one sample to the delivery latency histogram, of less than a
    second on loopback.
    """
    redis_client.set("RA_D_l1", RUNNING)
    redis_client.set("RA_D_l2", RUNNING)
    spy1, spy2 = (
        ChannelSpy(redis_client, "RA_SC_l1"),
        ChannelSpy(redis_client, "RA_SC_l2"),
    )
    watch = start_watch(daemon.base_url, "l1")
    stream = treq.get(daemon.url("/task/l2?stream"), persistent=False)
    await spy1.wait_for_kills(1)
    await spy2.wait_for_kills(1)

    redis_client.publish("RA_SC_l1", b'{"status": "update"}')
    redis_client.publish("RA_SC_l2", b'{"status": "done", "data": 2}')
    await (await watch).content()
    await (await stream).content()
    samples = await scrape(daemon)

    assert value(samples, "raps_delivery_latency_seconds_count") == 2
    assert 0 < value(samples, "raps_delivery_latency_seconds_sum") < 2
    assert value(samples, "raps_delivery_latency_seconds_bucket", le="1.0") == 2
    spy1.close()
    spy2.close()


@pytest_twisted.ensureDeferred
async def test_heartbeats_counted(start_daemon, redis_client):
    """
    Every heartbeat written to a waiting watch adds one to the heartbeat
    counter.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.05})
    redis_client.set("RA_D_hb", RUNNING)
    spy = ChannelSpy(redis_client, "RA_SC_hb")
    watch = start_watch(daemon.base_url, "hb")
    await spy.wait_for_kills(1)
    await sleep(0.3)
    redis_client.publish("RA_SC_hb", b'{"status": "done", "data": 0}')
    body = await (await watch).content()
    samples = await scrape(daemon)

    newlines = len(body) - len(body.lstrip(b"\n"))
    assert newlines >= 2
    assert value(samples, "raps_heartbeats_total") == newlines
    spy.close()


@pytest_twisted.ensureDeferred
async def test_kills_counted(daemon, redis_client):
    """
    A watch ended by a newer watch of its task adds one to the kill counter;
    the newer watch, ended by a done, adds none.
    """
    redis_client.set("RA_D_k1", RUNNING)
    spy = ChannelSpy(redis_client, "RA_SC_k1")
    older = start_watch(daemon.base_url, "k1")
    await spy.wait_for_kills(1)
    newer = start_watch(daemon.base_url, "k1")
    response = await older
    assert response.code == 409
    await response.content()
    await spy.wait_for_kills(2)
    redis_client.publish("RA_SC_k1", b'{"status": "done", "data": 0}')
    await (await newer).content()
    samples = await scrape(daemon)

    assert value(samples, "raps_kills_total") == 1
    assert value(samples, "raps_requests_total", mode="watch", outcome="killed") == 1
    spy.close()


@pytest_twisted.ensureDeferred
async def test_reconnects_counted(daemon, redis_client):
    """
    Redis closing the command connection and the subscriber connection adds
    one reconnect of each kind once they are back; the first connections
    count none.
    """
    redis_client.set("RA_D_r1", RUNNING)
    watch = start_watch(daemon.base_url, "r1")
    await wait_until(lambda: redis_client.pubsub_numsub("RA_SC_r1")[0][1] == 1)
    samples = await scrape(daemon)
    assert value(samples, "raps_redis_reconnects_total", connection="command") == 0
    assert value(samples, "raps_redis_reconnects_total", connection="subscriber") == 0

    redis_client.client_kill_filter(_type="pubsub")
    redis_client.client_kill_filter(_type="normal", skipme=True)
    await wait_until(
        lambda: redis_client.pubsub_numsub("RA_SC_r1")[0][1] == 1,
        timeout=10,
        what="the subscriber to reconnect",
    )
    # The scrape itself needs no Redis, so poll the command connection to
    # make it reconnect before reading the counter.
    assert (await fetch(daemon, "/task/r1"))[0] == 200
    samples = await scrape(daemon)

    assert value(samples, "raps_redis_reconnects_total", connection="command") == 1
    assert value(samples, "raps_redis_reconnects_total", connection="subscriber") == 1
    redis_client.publish("RA_SC_r1", b'{"status": "done", "data": 0}')
    await (await watch).content()


@pytest_twisted.ensureDeferred
async def test_hang_up_is_disconnected(daemon, redis_client):
    """
    A watch whose client closes the connection is counted with the outcome
    disconnected.
    """
    redis_client.set("RA_D_d1", RUNNING)
    spy = ChannelSpy(redis_client, "RA_SC_d1")
    watch = treq.get(daemon.url("/task/d1?watch"), persistent=False)
    await spy.wait_for_kills(1)
    # Cancelling makes treq fail the request, which is what this test wants.
    watch.addErrback(lambda failure: None)
    watch.cancel()
    await wait_until(lambda: len(daemon.service.tasks.watches) == 0)
    samples = await scrape(daemon)

    total = "raps_requests_total"
    assert value(samples, total, mode="watch", outcome="disconnected") == 1
    assert value(samples, total, mode="watch", outcome="ok") == 0
    spy.close()


@pytest_twisted.ensureDeferred
async def test_daemons_count_separately(start_daemon, redis_client):
    """
    Two daemons in one process have their own registries: a poll of one is
    not counted by the other.
    """
    first = await start_daemon()
    second = await start_daemon()
    redis_client.set("RA_D_s1", RUNNING)

    assert (await fetch(first, "/task/s1"))[0] == 200

    first_samples = await scrape(first)
    second_samples = await scrape(second)
    total = "raps_requests_total"
    assert value(first_samples, total, mode="poll", outcome="ok") == 1
    assert value(second_samples, total, mode="poll", outcome="ok") == 0
