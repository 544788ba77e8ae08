"""
Round trips from a publisher through a real daemon to an HTTP client:
what a waiting watch, a later watch and a poll return after each kind of
write, with inline data and without, for both publishers.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from redis_ajax_push.follow import parse_response
from redis_ajax_push.publisher import TaskPublisher
from redis_ajax_push.tx_publisher import TxTaskPublisher

# Every HTTP request of these tests gives up after this many seconds.
REQUEST_TIMEOUT = 10


async def fetch(daemon, path):
    """
    Send a GET and return the status code and body.
    """
    response = await treq.get(
        daemon.url(path), persistent=False, timeout=REQUEST_TIMEOUT
    )
    return response.code, await response.content()


async def watch_then(daemon, spy, task_id, write):
    """
    Start a watch of C{task_id}, wait until it waits, call C{write} and
    return the watch's status code and body.
    """
    channel_spy = spy(task_id)
    pending = defer.ensureDeferred(fetch(daemon, f"/task/{task_id}?watch"))
    await channel_spy.wait_for_kills(1)
    write()
    return await pending


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
@pytest_twisted.ensureDeferred
async def test_progress_ends_waiting_watch(daemon, redis_client, spy, inline):
    """
    progress ends a waiting watch with the new state: the data key, or the
    inline message that carries it.
    """
    publisher = TaskPublisher(redis_client, inline=inline)
    publisher.progress("t1", progress=0)

    code, body = await watch_then(
        daemon, spy, "t1", lambda: publisher.progress("t1", progress=60)
    )

    assert code == 200
    state = {"status": "running", "progress": 60}
    assert parse_response(body) == state
    if inline:
        assert json.loads(body) == {"status": "update", "data": state}
    else:
        assert body == redis_client.get("RA_D_t1")


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
@pytest_twisted.ensureDeferred
async def test_done_ends_waiting_watch(daemon, redis_client, spy, inline):
    """
    done ends a waiting watch with the final state.
    """
    publisher = TaskPublisher(redis_client, inline=inline)
    publisher.progress("t1")

    code, body = await watch_then(
        daemon, spy, "t1", lambda: publisher.done("t1", result="report.pdf")
    )

    assert code == 200
    assert parse_response(body) == {"status": "done", "result": "report.pdf"}
    assert json.loads(body)["status"] == "done"


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
@pytest_twisted.ensureDeferred
async def test_fail_ends_waiting_watch(daemon, redis_client, spy, inline):
    """
    fail ends a waiting watch with the failure.
    """
    publisher = TaskPublisher(redis_client, inline=inline)
    publisher.progress("t1")

    code, body = await watch_then(
        daemon, spy, "t1", lambda: publisher.fail("t1", "disk full")
    )

    assert code == 200
    assert parse_response(body) == {
        "status": "done",
        "failed": True,
        "error_message": "disk full",
    }


@pytest.mark.parametrize("final", ["done", "fail"])
@pytest_twisted.ensureDeferred
async def test_later_watch_returns_final_state(daemon, redis_client, spy, final):
    """
    A watch started after done or fail returns the final state at once,
    without publishing a kill.
    """
    publisher = TaskPublisher(redis_client)
    if final == "done":
        publisher.done("t1")
    else:
        publisher.fail("t1", "broken")
    channel_spy = spy("t1")

    code, body = await fetch(daemon, "/task/t1?watch")

    assert code == 200
    assert body == redis_client.get("RA_D_t1")
    assert channel_spy.kills() == []


@pytest_twisted.ensureDeferred
async def test_poll_returns_stored_bytes(daemon, redis_client):
    """
    A poll after a write returns the data key exactly as the publisher
    stored it, also in inline mode.
    """
    TaskPublisher(redis_client, inline=True).progress("t1", progress=5)

    code, body = await fetch(daemon, "/task/t1")

    assert code == 200
    assert body == b'{"status":"running","progress":5}'


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
@pytest_twisted.ensureDeferred
async def test_tx_publisher_round_trip(daemon, redis_server, redis_client, spy, inline):
    """
    TxTaskPublisher's progress, done and get work through a daemon as
    TaskPublisher's do.
    """
    publisher = TxTaskPublisher.from_url(redis_server.url, inline=inline, timeout=5)
    try:
        await publisher.progress("t1", progress=0)

        code, body = await watch_then(
            daemon, spy, "t1", lambda: publisher.progress("t1", progress=70)
        )
        assert parse_response(body) == {"status": "running", "progress": 70}

        code, body = await watch_then(
            daemon, spy, "t1", lambda: publisher.done("t1", result=[1])
        )
        assert parse_response(body) == {"status": "done", "result": [1]}
        assert await publisher.get("t1") == {"status": "done", "result": [1]}
    finally:
        await publisher.close()


@pytest_twisted.ensureDeferred
async def test_tx_publisher_fail_and_get(redis_server, redis_client):
    """
    TxTaskPublisher stores failures like TaskPublisher, returns None for a
    missing task, and gives failed Deferreds for invalid input.
    """
    publisher = TxTaskPublisher.from_url(redis_server.url, ttl=60, timeout=5)
    try:
        assert await publisher.fail("t1", "broken") == 0
        assert await publisher.get("t1") == {
            "status": "done",
            "failed": True,
            "error_message": "broken",
        }
        assert 55 <= redis_client.ttl("RA_D_t1") <= 60
        assert await publisher.get("missing") is None

        with pytest.raises(ValueError, match="invalid task id"):
            await publisher.progress("bad id")
        with pytest.raises(ValueError, match="reserved"):
            await publisher.done("t1", status="x")
        with pytest.raises(ValueError, match="invalid task id"):
            await publisher.get("bad id")
    finally:
        await publisher.close()


@pytest_twisted.ensureDeferred
async def test_tx_publisher_timeout_when_unreachable():
    """
    With a timeout, a write to a Redis that does not listen fails with
    TimeoutError instead of waiting for a reconnection.
    """
    from redis_ajax_push.testing import free_port

    publisher = TxTaskPublisher.from_url(
        f"redis://127.0.0.1:{free_port()}/0", timeout=0.5
    )
    try:
        with pytest.raises(defer.TimeoutError):
            await publisher.progress("t1")
    finally:
        await publisher.close()


@pytest_twisted.ensureDeferred
async def test_tx_publisher_own_connection(redis_server, redis_client):
    """
    TxTaskPublisher works on a txredisapi connection made by the caller,
    which decodes replies to str, and leaves it open on close.
    """
    import txredisapi

    connection = txredisapi.lazyConnection(
        redis_server.host, redis_server.port, convertNumbers=False
    )
    publisher = TxTaskPublisher(connection, prefix="APP_", timeout=5)
    try:
        await publisher.progress("t1", progress=42)
        await publisher.close()

        assert await publisher.get("t1") == {"status": "running", "progress": 42}
        assert redis_client.get("APP_D_t1") == b'{"status":"running","progress":42}'
    finally:
        await connection.disconnect()
