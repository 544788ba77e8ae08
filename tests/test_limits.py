"""
The [limits] section: admission of watches (max_watches,
max_watches_per_client), watch_timeout and max_message_bytes, against a real
redis-server.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import threads

from tests.http_clients import get_request, read_response, response_json, start_watch
from tests.support import sleep

RUNNING = b'{"status": "running"}'


def subscribe_calls(redis_client):
    """
    Return how many SUBSCRIBE commands Redis has served so far.
    """
    stats = redis_client.info("commandstats")
    return stats.get("cmdstat_subscribe", {}).get("calls", 0)


def document_of_size(size, status="done"):
    """
    Return a JSON object of exactly C{size} bytes with C{status} and a
    C{data} string that pads it.
    """
    empty = json.dumps({"status": status, "data": ""}).encode()
    document = json.dumps({"status": status, "data": "x" * (size - len(empty))})
    encoded = document.encode()
    assert len(encoded) == size
    return encoded


async def open_waiting_watch(daemon, redis_client, spy, task_id):
    """
    Start a watch of a running task and return it once it waits, that is
    once its kill message was published.
    """
    redis_client.set(f"RA_D_{task_id}", RUNNING)
    channel_spy = spy(task_id)
    pending = start_watch(daemon.base_url, task_id)
    await channel_spy.wait_for_kills(1)
    return pending


async def finish(pending, redis_client, task_id):
    """
    End a waiting watch with a done message and return its response.
    """
    redis_client.publish(f"RA_SC_{task_id}", b'{"status": "done", "data": 1}')
    return await pending


@pytest_twisted.ensureDeferred
async def test_max_watches_rejects_busy(start_daemon, redis_client, spy):
    """
    With max_watches open, a new watch gets 503 busy at once, without
    subscribing, and the open watches keep waiting.
    """
    daemon = await start_daemon(limits={"max_watches": 2})
    first = await open_waiting_watch(daemon, redis_client, spy, "l1")
    second = await open_waiting_watch(daemon, redis_client, spy, "l2")
    redis_client.set("RA_D_l3", RUNNING)
    subscribes_before = subscribe_calls(redis_client)

    rejected = await start_watch(daemon.base_url, "l3")
    body = await response_json(rejected)

    assert rejected.code == 503
    assert body["status"] == "error"
    assert body["error"] == "busy"
    assert subscribe_calls(redis_client) == subscribes_before
    assert not first.done
    assert not second.done
    assert len(daemon.service.tasks.watches) == 2

    assert (await finish(first, redis_client, "l1")).code == 200
    assert (await finish(second, redis_client, "l2")).code == 200


@pytest_twisted.ensureDeferred
async def test_max_watches_admits_after_end(start_daemon, redis_client, spy):
    """
    Once one of max_watches open watches ends, the next watch is admitted
    and waits like any other.
    """
    daemon = await start_daemon(limits={"max_watches": 1})
    first = await open_waiting_watch(daemon, redis_client, spy, "l4")
    redis_client.set("RA_D_l5", RUNNING)
    rejected = await start_watch(daemon.base_url, "l5")
    assert rejected.code == 503

    ended = await finish(first, redis_client, "l4")
    assert ended.code == 200
    admitted = await open_waiting_watch(daemon, redis_client, spy, "l5")

    assert not admitted.done
    response = await finish(admitted, redis_client, "l5")
    assert response.code == 200
    assert await response.content() == b'{"status": "done", "data": 1}'


@pytest_twisted.ensureDeferred
async def test_max_watches_spares_polls(start_daemon, redis_client, spy):
    """
    max_watches counts watches only: a poll is served while the limit is
    reached.
    """
    daemon = await start_daemon(limits={"max_watches": 1})
    pending = await open_waiting_watch(daemon, redis_client, spy, "l6")

    response = await treq.get(daemon.url("/task/l6"), persistent=False)

    assert response.code == 200
    assert await response.content() == RUNNING
    assert not pending.done
    await finish(pending, redis_client, "l6")


def open_watch_from(address, port, task_id):
    """
    Open a connection from the loopback C{address} and send a watch of
    C{task_id} on it; return the socket.
    """
    client = socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=(address, 0)
    )
    client.sendall(get_request(f"/task/{task_id}?watch".encode()))
    return client


async def read_response_on(client):
    """
    Read the one response on C{client} in a thread and close the socket.
    """
    stream = client.makefile("rb")
    try:
        return await threads.deferToThread(read_response, stream)
    finally:
        stream.close()
        client.close()


@pytest_twisted.ensureDeferred
async def test_per_client_limit_rejects(start_daemon, redis_client, spy):
    """
    A client address with max_watches_per_client open watches gets 429
    too_many_watches for the next one, while another address is admitted.
    """
    daemon = await start_daemon(limits={"max_watches_per_client": 1})
    first = await open_waiting_watch(daemon, redis_client, spy, "c1")
    redis_client.set("RA_D_c2", RUNNING)

    rejected = await start_watch(daemon.base_url, "c2")
    body = await response_json(rejected)
    assert rejected.code == 429
    assert body["status"] == "error"
    assert body["error"] == "too_many_watches"
    assert not first.done

    other_spy = spy("c2")
    other_client = open_watch_from("127.0.0.2", daemon.port, "c2")
    await other_spy.wait_for_kills(1)
    assert len(daemon.service.tasks.watches) == 2

    redis_client.publish("RA_SC_c2", b'{"status": "done", "data": 2}')
    other_response = await read_response_on(other_client)
    assert other_response.status == 200
    assert other_response.body == b'{"status": "done", "data": 2}'
    assert (await finish(first, redis_client, "c1")).code == 200


@pytest_twisted.ensureDeferred
async def test_per_client_limit_frees_slot(start_daemon, redis_client, spy):
    """
    After a client's watch ends, the same client may open a new one.
    """
    daemon = await start_daemon(limits={"max_watches_per_client": 1})
    first = await open_waiting_watch(daemon, redis_client, spy, "c3")
    assert (await finish(first, redis_client, "c3")).code == 200

    second = await open_waiting_watch(daemon, redis_client, spy, "c4")

    assert not second.done
    assert (await finish(second, redis_client, "c4")).code == 200


@pytest_twisted.ensureDeferred
async def test_watch_timeout_returns_data(start_daemon, redis_client, spy):
    """
    With watch_timeout > 0, a watch that hears nothing ends after about that
    time with 200 and the data key's value at that moment.
    """
    daemon = await start_daemon(limits={"watch_timeout": 0.5})
    started = time.monotonic()
    pending = await open_waiting_watch(daemon, redis_client, spy, "w1")
    newer = b'{"status": "running", "progress": 30}'
    redis_client.set("RA_D_w1", newer)

    response = await pending
    elapsed = time.monotonic() - started

    assert response.code == 200
    assert await response.content() == newer
    assert elapsed >= 0.45
    assert elapsed < 3


@pytest_twisted.ensureDeferred
async def test_watch_timeout_zero_waits(start_daemon, redis_client, spy):
    """
    watch_timeout = 0 never ends a watch by itself: it is still waiting
    after a second, and ends on the next done.
    """
    daemon = await start_daemon(limits={"watch_timeout": 0})
    pending = await open_waiting_watch(daemon, redis_client, spy, "w2")

    await sleep(1.0)

    assert not pending.done
    assert (await finish(pending, redis_client, "w2")).code == 200


LIMIT = 100


@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_large_data_key_rejected(start_daemon, redis_client, query):
    """
    A data key one byte over max_message_bytes gets 502
    task_data_too_large, in poll and watch mode.
    """
    daemon = await start_daemon(limits={"max_message_bytes": LIMIT})
    redis_client.set("RA_D_big", document_of_size(LIMIT + 1))

    response = await treq.get(daemon.url(f"/task/big{query}"), persistent=False)
    body = await response_json(response)

    assert response.code == 502
    assert body["status"] == "error"
    assert body["error"] == "task_data_too_large"


@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_data_key_at_limit_served(start_daemon, redis_client, query):
    """
    A data key of exactly max_message_bytes is served as stored.
    """
    daemon = await start_daemon(limits={"max_message_bytes": LIMIT})
    stored = document_of_size(LIMIT)
    redis_client.set("RA_D_edge", stored)

    response = await treq.get(daemon.url(f"/task/edge{query}"), persistent=False)

    assert response.code == 200
    assert await response.content() == stored


@pytest_twisted.ensureDeferred
async def test_large_message_ends_watch(start_daemon, redis_client, spy):
    """
    A channel message one byte over max_message_bytes ends the waiting watch
    with 502 task_data_too_large instead of relaying it.
    """
    daemon = await start_daemon(limits={"max_message_bytes": LIMIT})
    pending = await open_waiting_watch(daemon, redis_client, spy, "m1")

    redis_client.publish("RA_SC_m1", document_of_size(LIMIT + 1))
    response = await pending
    body = await response_json(response)

    assert response.code == 502
    assert body["status"] == "error"
    assert body["error"] == "task_data_too_large"


@pytest_twisted.ensureDeferred
async def test_message_at_limit_relayed(start_daemon, redis_client, spy):
    """
    A channel message of exactly max_message_bytes is relayed as the response body.
    """
    daemon = await start_daemon(limits={"max_message_bytes": LIMIT})
    pending = await open_waiting_watch(daemon, redis_client, spy, "m2")
    message = document_of_size(LIMIT)

    redis_client.publish("RA_SC_m2", message)
    response = await pending

    assert response.code == 200
    assert await response.content() == message
