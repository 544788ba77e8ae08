"""
Clients that close a watch's connection at each step of the watch: every
time, the daemon unsubscribes the channel, stops the heartbeat, removes the
watch and logs no error.

Each test closes a raw socket at a chosen moment. Redis is made slow at
that moment with C{CLIENT PAUSE}, so that the command in flight is still
unanswered when the close arrives. C{DEBUG SLEEP} would be simpler, but
Redis 7 rejects it unless C{enable-debug-command} was set in the config
file, and that setting cannot be changed at run time.
"""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from redis_ajax_push.watch import Watch
from tests.http_clients import get_request
from tests.support import sleep, wait_until

RUNNING = b'{"status": "running"}'

# Long enough for the close to reach the daemon first, short enough to keep
# the suite quick; in milliseconds, as CLIENT PAUSE takes it.
PAUSE_MS = 300


def open_watch(daemon, task_id):
    """
    Send a watch of C{task_id} on a new raw socket and return the socket.
    """
    client = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    client.sendall(get_request(f"/task/{task_id}?watch".encode()))
    return client


def reset(client):
    """
    Close C{client} with a TCP reset instead of a FIN, as a crashed client
    or a proxy timeout does.
    """
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def pause_before(daemon, redis_client, command, mode="ALL"):
    """
    Wrap the daemon's C{command} method (C{"get"} or C{"publish"}) so that
    its first call pauses Redis clients for L{PAUSE_MS} and then sends the
    command, which Redis delays until the pause ends.

    Return a list that contains C{True} once that command is sent.
    """
    commands = daemon.service.redis.commands
    real = getattr(commands, command)
    sent = []

    def paused(*args):
        if sent:
            return real(*args)
        redis_client.client_pause(PAUSE_MS, all=mode == "ALL")
        # The command is written before its Deferred is returned.
        in_flight = real(*args)
        sent.append(True)
        return in_flight

    setattr(commands, command, paused)
    return sent


def subscriber_count(redis_client, task_id):
    return redis_client.pubsub_numsub(f"RA_SC_{task_id}")[0][1]


async def assert_released(daemon, redis_client, task_id, logged_errors, spies=0):
    """
    Wait until the daemon released everything of the closed watch, then
    check that nothing of it is left and no error was logged.
    """
    await wait_until(
        lambda: subscriber_count(redis_client, task_id) == spies,
        what=f"the daemon to unsubscribe RA_SC_{task_id}",
    )
    await wait_until(
        lambda: len(daemon.service.tasks.watches) == 0,
        what="the watch to be removed",
    )
    assert daemon.service.redis.pool.channel_count == 0
    assert len(daemon.service.tasks.watches) == 0
    assert looping_calls() == []
    assert watch_timers() == []
    assert logged_errors.messages() == []


def looping_calls():
    """
    Return the scheduled calls of running LoopingCalls, such as heartbeats.
    """
    return [
        call for call in reactor.getDelayedCalls() if isinstance(call.func, LoopingCall)
    ]


def watch_timers():
    """
    Return the scheduled calls of watches: timeouts and resubscribe timers.
    """
    return [
        call
        for call in reactor.getDelayedCalls()
        if isinstance(getattr(call.func, "__self__", None), Watch)
    ]


@pytest_twisted.ensureDeferred
async def test_close_while_subscribing(daemon, redis_client, logged_errors):
    """
    A watch closed while its SUBSCRIBE waits for Redis is released once the
    confirmation arrives: the channel ends up unsubscribed.
    """
    redis_client.set("RA_D_h1", RUNNING)
    redis_client.client_pause(PAUSE_MS, all=True)
    client = open_watch(daemon, "h1")
    await wait_until(
        lambda: daemon.service.redis.pool.channel_count == 1,
        what="the watch to subscribe",
    )

    client.close()
    await sleep(PAUSE_MS / 1000 + 0.1)

    await assert_released(daemon, redis_client, "h1", logged_errors)


@pytest_twisted.ensureDeferred
async def test_close_during_first_get(daemon, redis_client, logged_errors):
    """
    A watch closed while its first GET of the data key is in flight is
    released, and the late reply is dropped without an error.
    """
    redis_client.set("RA_D_h2", RUNNING)
    get_sent = pause_before(daemon, redis_client, "get")
    client = open_watch(daemon, "h2")
    await wait_until(lambda: get_sent, what="the first GET")

    client.close()
    await sleep(PAUSE_MS / 1000 + 0.1)

    await assert_released(daemon, redis_client, "h2", logged_errors)


@pytest_twisted.ensureDeferred
async def test_close_during_kill_publish(daemon, redis_client, logged_errors):
    """
    A watch closed while its kill PUBLISH is held by Redis (CLIENT PAUSE
    WRITE delays PUBLISH) is released once the reply arrives.
    """
    redis_client.set("RA_D_h3", RUNNING)
    publish_sent = pause_before(daemon, redis_client, "publish", mode="WRITE")
    client = open_watch(daemon, "h3")
    await wait_until(lambda: publish_sent, what="the kill PUBLISH")

    client.close()
    await sleep(PAUSE_MS / 1000 + 0.1)

    await assert_released(daemon, redis_client, "h3", logged_errors)


@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
@pytest_twisted.ensureDeferred
async def test_close_during_heartbeats(
    start_daemon, redis_client, spy, logged_errors, close
):
    """
    A watch closed while heartbeats go out every 10 ms stops its heartbeat
    and is released, whether the client sends a FIN or a reset.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.01})
    redis_client.set("RA_D_h4", RUNNING)
    channel_spy = spy("h4")
    client = open_watch(daemon, "h4")
    await channel_spy.wait_for_kills(1)
    await sleep(0.1)
    assert looping_calls() != []

    close(client)

    await assert_released(daemon, redis_client, "h4", logged_errors, spies=1)


MESSAGES = [
    pytest.param(b'{"status": "done", "data": 1}', id="done-with-data"),
    # Without data, the watch reads the data key again when the message
    # arrives, so the close may also meet that second GET.
    pytest.param(b'{"status": "update"}', id="update"),
]


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
@pytest.mark.parametrize("publish_first", [True, False], ids=["publish", "close"])
@pytest_twisted.ensureDeferred
async def test_close_as_message_arrives(
    start_daemon, redis_client, spy, logged_errors, message, close, publish_first
):
    """
    A watch whose client closes in the same instant as the message that
    ends it arrives is released in either order, with no error logged.
    Several rounds vary which event the daemon handles first.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.01})
    for round_number in range(5):
        task_id = f"h5_{round_number}"
        redis_client.set(f"RA_D_{task_id}", RUNNING)
        channel_spy = spy(task_id)
        client = open_watch(daemon, task_id)
        await channel_spy.wait_for_kills(1)
        await sleep(0.01 * round_number)

        if publish_first:
            redis_client.publish(f"RA_SC_{task_id}", message)
            close(client)
        else:
            close(client)
            redis_client.publish(f"RA_SC_{task_id}", message)

        await assert_released(daemon, redis_client, task_id, logged_errors, spies=1)


@pytest_twisted.ensureDeferred
async def test_close_during_second_get(daemon, redis_client, spy, logged_errors):
    """
    A watch closed while the GET that follows an update without data is in
    flight is released, and the late reply is dropped without an error.
    """
    redis_client.set("RA_D_h6", RUNNING)
    channel_spy = spy("h6")
    client = open_watch(daemon, "h6")
    await channel_spy.wait_for_kills(1)
    get_sent = pause_before(daemon, redis_client, "get")

    redis_client.publish("RA_SC_h6", b'{"status": "update"}')
    await wait_until(lambda: get_sent, what="the GET after the update")
    client.close()
    await sleep(PAUSE_MS / 1000 + 0.1)

    await assert_released(daemon, redis_client, "h6", logged_errors, spies=1)
