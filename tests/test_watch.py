"""
Watch mode against a real redis-server: what ends a watch and what it
returns.
"""

from __future__ import annotations

import json
import socket

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from tests.support import sleep, wait_until

RUNNING = b'{"status": "running", "progress": 10}'


class PendingRequest:
    """
    An HTTP request in flight: C{done} is true once its response has
    arrived, and awaiting it returns the response.
    """

    def __init__(self, deferred):
        self.done = False
        self._deferred = deferred.addBoth(self._mark_done)

    def _mark_done(self, result):
        self.done = True
        return result

    def __await__(self):
        return self._deferred.__await__()

    def cancel(self):
        """
        Close the connection, as a client that hangs up does.
        """
        self._deferred.addErrback(lambda failure: None)
        self._deferred.cancel()


def watch(daemon, task_id):
    """
    Start a watch request.
    """
    return PendingRequest(
        treq.get(daemon.url(f"/task/{task_id}?watch"), persistent=False)
    )


async def body_json(response):
    return json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_watch_done_returns_at_once(daemon, redis_client):
    """
    A watch of a task whose data key has status done returns it without waiting,
    and leaves no subscription behind.
    """
    stored = b'{"status": "done", "result": 7}'
    redis_client.set("RA_D_t1", stored)

    response = await watch(daemon, "t1")

    assert response.code == 200
    assert await response.content() == stored
    await wait_until(
        lambda: redis_client.pubsub_numsub("RA_SC_t1")[0][1] == 0,
        what="the channel to be unsubscribed",
    )


@pytest_twisted.ensureDeferred
async def test_watch_missing_task_not_found(daemon, redis_client):
    """
    A watch of a task with no data key gets 404 not_found.
    """
    response = await watch(daemon, "nothing")

    assert response.code == 404
    assert (await body_json(response))["error"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_watch_update_returns_data_key(daemon, redis_client, spy):
    """
    An update message without a data field ends the watch with the data
    key's current value, read after the message.
    """
    redis_client.set("RA_D_t2", RUNNING)
    channel_spy = spy("t2")
    pending = watch(daemon, "t2")
    await channel_spy.wait_for_kills(1)

    newer = b'{"status": "running", "progress": 50}'
    redis_client.set("RA_D_t2", newer)
    redis_client.publish("RA_SC_t2", b'{"status": "update"}')
    response = await pending

    assert response.code == 200
    assert await response.content() == newer


@pytest_twisted.ensureDeferred
async def test_watch_message_with_data_relayed(daemon, redis_client, spy):
    """
    A done message that carries a data field is returned verbatim, without
    reading the data key again.
    """
    redis_client.set("RA_D_t3", RUNNING)
    channel_spy = spy("t3")
    pending = watch(daemon, "t3")
    await channel_spy.wait_for_kills(1)

    message = b'{"status":"done","data":{"result":"inline"}}'
    redis_client.publish("RA_SC_t3", message)
    response = await pending

    assert await response.content() == message


@pytest_twisted.ensureDeferred
async def test_watch_ignores_own_kill(daemon, redis_client, spy):
    """
    A watch is not ended by the kill message it published itself: it is
    still waiting afterwards and ends on the next update.
    """
    redis_client.set("RA_D_t4", RUNNING)
    channel_spy = spy("t4")
    pending = watch(daemon, "t4")
    await channel_spy.wait_for_kills(1)
    await sleep(0.2)

    assert not pending.done
    redis_client.publish("RA_SC_t4", b'{"status": "update"}')
    response = await pending
    assert await response.content() == RUNNING


@pytest_twisted.ensureDeferred
async def test_second_watch_kills_first(daemon, redis_client, spy):
    """
    A second watch of a task on the same daemon ends the first with the
    killed error; the second keeps waiting and gets the update.
    """
    redis_client.set("RA_D_t5", RUNNING)
    channel_spy = spy("t5")
    first = watch(daemon, "t5")
    await channel_spy.wait_for_kills(1)
    second = watch(daemon, "t5")
    await channel_spy.wait_for_kills(2)

    killed = await first
    assert killed.code == 409
    assert await body_json(killed) == {
        "status": "error",
        "error_message": "Killed due to another concurrent request for this task",
        "error": "killed",
    }

    assert not second.done
    redis_client.publish("RA_SC_t5", b'{"status": "update"}')
    assert await (await second).content() == RUNNING


@pytest_twisted.ensureDeferred
async def test_watch_on_other_instance_kills(start_daemon, redis_client, spy):
    """
    Two daemons on one Redis keep one live watch per task: a watch on B
    ends the older watch on A with the killed error.
    """
    daemon_a = await start_daemon()
    daemon_b = await start_daemon()
    redis_client.set("RA_D_t6", RUNNING)
    channel_spy = spy("t6")

    on_a = watch(daemon_a, "t6")
    await channel_spy.wait_for_kills(1)
    on_b = watch(daemon_b, "t6")
    await channel_spy.wait_for_kills(2)

    killed = await on_a
    assert (await body_json(killed))["error"] == "killed"
    assert not on_b.done
    redis_client.publish("RA_SC_t6", b'{"status": "done"}')
    assert (await on_b).code == 200


@pytest_twisted.ensureDeferred
async def test_watch_reads_after_subscribing(daemon, redis_client):
    """
    The data key is read only once Redis has confirmed the subscription:
    at the moment of the GET, Redis already counts the daemon as a
    subscriber of the channel.
    """
    redis_client.set("RA_D_t7", b'{"status": "done"}')
    commands = daemon.service.tasks._commands
    real_get = commands.get
    subscribers_at_get = []

    def recording_get(key):
        subscribers_at_get.append(redis_client.pubsub_numsub("RA_SC_t7")[0][1])
        return real_get(key)

    commands.get = recording_get
    response = await watch(daemon, "t7")

    assert response.code == 200
    assert subscribers_at_get == [1]


@pytest_twisted.ensureDeferred
async def test_watch_skips_bad_messages(daemon, redis_client, spy):
    """
    Channel messages that are not JSON objects, or have another status, are
    ignored; the watch still ends on the next valid done.
    """
    redis_client.set("RA_D_t8", RUNNING)
    channel_spy = spy("t8")
    pending = watch(daemon, "t8")
    await channel_spy.wait_for_kills(1)

    for bad in [
        b"not json",
        b'{"status": "done"',
        b"[1, 2]",
        b'"done"',
        b"42",
        b"\xff\xfe\x00",
        b'{"status": "progress"}',
        b'{"no_status": true}',
    ]:
        redis_client.publish("RA_SC_t8", bad)
    await sleep(0.1)
    assert not pending.done

    redis_client.publish("RA_SC_t8", b'{"status": "done"}')
    response = await pending
    assert await response.content() == RUNNING


@pytest_twisted.ensureDeferred
async def test_heartbeats_precede_response(start_daemon, redis_client, spy):
    """
    While a watch waits, a newline goes out every heartbeat interval; the
    response follows them in the same 200 body.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.05})
    redis_client.set("RA_D_t9", RUNNING)
    channel_spy = spy("t9")
    pending = watch(daemon, "t9")
    await channel_spy.wait_for_kills(1)
    await sleep(0.3)

    redis_client.publish("RA_SC_t9", b'{"status": "done", "data": 1}')
    response = await pending
    body = await response.content()

    assert response.code == 200
    assert body.startswith(b"\n\n\n")
    assert body.lstrip(b"\n") == b'{"status": "done", "data": 1}'


@pytest_twisted.ensureDeferred
async def test_heartbeat_zero_sends_none(start_daemon, redis_client, spy):
    """
    heartbeat_interval = 0 turns heartbeats off: the body is the response
    alone.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0})
    redis_client.set("RA_D_t10", RUNNING)
    channel_spy = spy("t10")
    pending = watch(daemon, "t10")
    await channel_spy.wait_for_kills(1)
    await sleep(0.2)

    redis_client.publish("RA_SC_t10", b'{"status": "update"}')
    response = await pending

    assert await response.content() == RUNNING


@pytest_twisted.ensureDeferred
async def test_error_after_heartbeat_in_body(start_daemon, redis_client, spy):
    """
    A watch killed after a heartbeat went out gets 200, because the
    status line is already sent, and carries the error in the body.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.05})
    redis_client.set("RA_D_t11", RUNNING)
    channel_spy = spy("t11")
    first = watch(daemon, "t11")
    await channel_spy.wait_for_kills(1)
    await sleep(0.2)
    second = watch(daemon, "t11")

    killed = await first
    body = await killed.content()
    assert killed.code == 200
    assert json.loads(body)["error"] == "killed"

    redis_client.publish("RA_SC_t11", b'{"status": "done"}')
    await (await second).content()


@pytest_twisted.ensureDeferred
async def test_client_hangup_unsubscribes(daemon, redis_client, spy):
    """
    When the client closes a waiting watch, the daemon unsubscribes from
    the channel.
    """
    redis_client.set("RA_D_t12", RUNNING)
    channel_spy = spy("t12")
    pending = watch(daemon, "t12")
    await channel_spy.wait_for_kills(1)
    # The spy is a subscriber too.
    assert redis_client.pubsub_numsub("RA_SC_t12")[0][1] == 2

    pending.cancel()
    await wait_until(
        lambda: redis_client.pubsub_numsub("RA_SC_t12")[0][1] == 1,
        what="the daemon to unsubscribe",
    )
    assert daemon.service.redis.pool.channel_count == 0


@pytest_twisted.ensureDeferred
async def test_client_hangup_stops_heartbeat(start_daemon, redis_client, spy):
    """
    When the client closes a watch after heartbeats started, its heartbeat
    timer is stopped and the channel unsubscribed.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.05})
    redis_client.set("RA_D_t13", RUNNING)
    channel_spy = spy("t13")
    port = int(daemon.base_url.rsplit(":", 1)[1])
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"GET /task/t13?watch HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await channel_spy.wait_for_kills(1)
    await sleep(0.1)
    assert heartbeat_timers() != []

    client.close()
    await wait_until(
        lambda: daemon.service.redis.pool.channel_count == 0,
        what="the watch to end",
    )
    assert heartbeat_timers() == []


def heartbeat_timers():
    """
    Return the scheduled calls of running LoopingCalls.
    """
    return [
        call for call in reactor.getDelayedCalls() if isinstance(call.func, LoopingCall)
    ]
