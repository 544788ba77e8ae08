"""
Redis error replies and rejected commands: none of them reaches a client as task
data, and none leaves a watch waiting. The session's redis-server provides
the real errors it can be made to return (WRONGTYPE, MASTERDOWN, NOPERM,
output buffer limits). A fake RESP server sends the replies that a
real one gives only in states hard to reach in a test (LOADING, OOM on a
read).
"""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import protocol, reactor

from redis_ajax_push.redis_url import parse_redis_url
from redis_ajax_push.testing import free_port
from tests.http_clients import response_json, start_watch
from tests.support import wait_until

RUNNING = b'{"status": "running"}'


class ErrorReplyProtocol(protocol.Protocol):
    """
    Replies to every RESP command it receives with the factory's error
    line and records the command's arguments.
    """

    def connectionMade(self):
        self._buffer = b""
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self._buffer += data
        while True:
            parsed = parse_command(self._buffer)
            if parsed is None:
                return
            arguments, length = parsed
            self._buffer = self._buffer[length:]
            self.factory.commands.append(arguments)
            self.transport.write(self.factory.reply)


def parse_command(buffer):
    """
    Parse the first command in C{buffer}: a RESP array of bulk strings, or
    an inline command line. Return its arguments and its length in bytes,
    or C{None} while it is incomplete.
    """
    if not buffer.startswith(b"*"):
        end = buffer.find(b"\r\n")
        return None if end < 0 else (buffer[:end].split(), end + 2)
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    count = int(buffer[1:end])
    position = end + 2
    arguments = []
    for _ in range(count):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return None
        size = int(buffer[position + 1 : end])
        start = end + 2
        if len(buffer) < start + size + 2:
            return None
        arguments.append(buffer[start : start + size])
        position = start + size + 2
    return arguments, position


class ErrorReplyFactory(protocol.ServerFactory):
    protocol = ErrorReplyProtocol

    def __init__(self, reply):
        self.reply = reply
        self.commands = []
        self.connections = []

    def command_names(self):
        return [arguments[0].upper() for arguments in self.commands]


@pytest.fixture
def error_server():
    """
    A function that starts a fake Redis on 127.0.0.1 and a port the system
    picks, which replies to every command with the given error line. The
    function returns the server's factory and redis:// URL, and each server
    is closed after the test.
    """
    ports = []
    factories = []

    def start(error_line):
        factory = ErrorReplyFactory(error_line + b"\r\n")
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        factories.append(factory)
        return factory, f"redis://127.0.0.1:{port.getHost().port}/0"

    yield start
    for factory in factories:
        for connection in factory.connections:
            connection.transport.abortConnection()
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


async def get_response(daemon, path):
    """
    Return the status and the raw body of a GET on the daemon.
    """
    response = await treq.get(daemon.url(path), persistent=False)
    return response.code, await response.content()


WRONG_TYPES = {
    "list": lambda client, key: client.rpush(key, b"x"),
    "hash": lambda client, key: client.hset(key, "status", "done"),
    "set": lambda client, key: client.sadd(key, b"x"),
    "zset": lambda client, key: client.zadd(key, {b"x": 1}),
    "stream": lambda client, key: client.xadd(key, {"status": "done"}),
}


@pytest.mark.parametrize("kind", sorted(WRONG_TYPES))
@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_wrong_type_not_relayed(daemon, redis_client, kind, query):
    """
    A data key of another Redis type gets 502 redis_error; Redis's
    WRONGTYPE text is not passed on as task data.
    """
    WRONG_TYPES[kind](redis_client, "RA_D_typed")

    code, body = await get_response(daemon, f"/task/typed{query}")

    assert code == 502
    assert json.loads(body)["error"] == "redis_error"
    assert b"WRONGTYPE" not in body


@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_stale_replica_unavailable(start_daemon, redis_client, query):
    """
    A replica that lost its master and has replica-serve-stale-data off
    replies to GET with MASTERDOWN, which clients get as 503
    redis_unavailable.
    """
    redis_client.set("RA_D_stale", RUNNING)
    daemon = await start_daemon(redis={"command_timeout": 1.0})
    stale_setting = redis_client.config_get("replica-serve-stale-data")
    try:
        redis_client.config_set("replica-serve-stale-data", "no")
        # Nothing listens on this loopback port, so the master link stays
        # down.
        redis_client.replicaof("127.0.0.1", free_port())
        assert redis_client.info("replication")["role"] == "slave"

        code, body = await get_response(daemon, f"/task/stale{query}")
    finally:
        redis_client.replicaof("NO", "ONE")
        redis_client.config_set(
            "replica-serve-stale-data", stale_setting["replica-serve-stale-data"]
        )

    assert code == 503
    assert json.loads(body)["error"] == "redis_unavailable"
    assert b"MASTERDOWN" not in body


ERROR_REPLIES = [
    pytest.param(
        b"-LOADING Redis is loading the dataset in memory",
        503,
        "redis_unavailable",
        id="loading",
    ),
    pytest.param(
        b"-OOM command not allowed when used memory > 'maxmemory'.",
        502,
        "redis_error",
        id="oom",
    ),
    pytest.param(
        b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data "
        b"is set to 'no'.",
        503,
        "redis_unavailable",
        id="masterdown",
    ),
    pytest.param(
        b"-ERR unknown command 'GET'",
        502,
        "redis_error",
        id="err",
    ),
]


@pytest.mark.parametrize(("reply", "status", "code"), ERROR_REPLIES)
@pytest_twisted.ensureDeferred
async def test_poll_error_reply_mapped(start_daemon, error_server, reply, status, code):
    """
    An error reply to the poll's GET gets the mapped error JSON,
    5xx, without Redis's text.
    """
    factory, url = error_server(reply)
    daemon = await start_daemon(redis={"url": parse_redis_url(url)})

    response_code, body = await get_response(daemon, "/task/e1")
    document = json.loads(body)
    redis_error_code = reply[1:].split(b" ")[0]

    assert response_code == status
    assert document["status"] == "error"
    assert document["error"] == code
    assert redis_error_code not in body
    assert factory.command_names() == [b"GET"]


@pytest_twisted.ensureDeferred
async def test_watch_loading_unavailable(start_daemon, error_server):
    """
    A watch against a Redis that is loading its dataset gets 503
    redis_unavailable as soon as the error reply arrives, well before the
    command timeout.
    """
    factory, url = error_server(b"-LOADING Redis is loading the dataset in memory")
    daemon = await start_daemon(
        redis={"url": parse_redis_url(url), "command_timeout": 3.0}
    )
    started = time.monotonic()

    response = await start_watch(daemon.base_url, "e2")
    body = await response_json(response)

    assert response.code == 503
    assert body["status"] == "error"
    assert body["error"] == "redis_unavailable"
    assert time.monotonic() - started < 2.0
    assert b"SUBSCRIBE" in factory.command_names()


ACL_USER = "raps-no-channels"


@pytest.fixture
def user_without_channels(redis_client, redis_server):
    """
    A Redis ACL user that may run every command on every key but may use
    no Pub/Sub channel. The fixture returns the user's redis:// URL and
    deletes the user after the test.
    """
    redis_client.execute_command(
        "ACL", "SETUSER", ACL_USER, "reset", "on", ">secret", "~*", "+@all"
    )
    try:
        yield (f"redis://{ACL_USER}:secret@{redis_server.host}:{redis_server.port}/0")
    finally:
        redis_client.execute_command("ACL", "DELUSER", ACL_USER)


@pytest_twisted.ensureDeferred
async def test_subscribe_rejected_ends_watch(
    start_daemon, redis_client, user_without_channels
):
    """
    When Redis rejects SUBSCRIBE (NOPERM for the channel), the watch ends
    with an error JSON within the command timeout instead of hanging, while
    polls of the same task still work.
    """
    redis_client.set("RA_D_acl", RUNNING)
    daemon = await start_daemon(
        redis={"url": parse_redis_url(user_without_channels), "command_timeout": 1.0}
    )
    poll_code, poll_body = await get_response(daemon, "/task/acl")
    assert poll_code == 200
    assert poll_body == RUNNING

    started = time.monotonic()
    pending = start_watch(daemon.base_url, "acl")
    await wait_until(lambda: pending.done, timeout=5, what="the watch to end")
    response = await pending
    body = await response.content()

    assert time.monotonic() - started < 2.5
    assert response.code >= 500
    assert json.loads(body)["status"] == "error"
    assert b"NOPERM" not in body
    assert daemon.service.redis.pool.channel_count == 0


def publish_calls(redis_client):
    """
    Return how many PUBLISH commands Redis has served so far.
    """
    stats = redis_client.info("commandstats")
    return stats.get("cmdstat_publish", {}).get("calls", 0)


def pubsub_client_ids(redis_client):
    """
    Return the ids of the clients in Pub/Sub mode other than the tests'.
    """
    clients = redis_client.client_list(_type="pubsub")
    return {client["id"] for client in clients if client["name"] != "raps-tests"}


@pytest_twisted.ensureDeferred
async def test_output_buffer_kill_recovers(start_daemon, redis_client):
    """
    When Redis closes the subscriber connection because a message exceeded
    its output buffer limit, the watch on it does not stay waiting: it
    subscribes again and re-reads the data key, or ends with an error JSON.
    """
    daemon = await start_daemon(watch={"resubscribe_timeout": 5.0})
    redis_client.set("RA_D_ob", RUNNING)
    publishes_before = publish_calls(redis_client)
    pending = start_watch(daemon.base_url, "ob")
    await wait_until(
        lambda: publish_calls(redis_client) > publishes_before,
        what="the watch's kill message",
    )
    subscribers = pubsub_client_ids(redis_client)
    assert len(subscribers) == 1

    buffer_limit = redis_client.config_get("client-output-buffer-limit")
    done = b'{"status": "done", "result": "re-read"}'
    try:
        redis_client.config_set("client-output-buffer-limit", "pubsub 1024 1024 0")
        redis_client.set("RA_D_ob", done)
        # Redis counts a reply against the limit only once it overflows the
        # client's 16 KiB static reply buffer, so the message is far larger
        # than 1024 bytes.
        big = json.dumps({"status": "done", "data": "x" * 65536}).encode()
        redis_client.publish("RA_SC_ob", big)
        await wait_until(
            lambda: not subscribers & pubsub_client_ids(redis_client),
            what="Redis to close the subscriber connection",
        )
    finally:
        redis_client.config_set(
            "client-output-buffer-limit",
            buffer_limit["client-output-buffer-limit"],
        )

    await wait_until(lambda: pending.done, timeout=15, what="the watch to end")
    response = await pending
    body = await response.content()
    if response.code == 200:
        assert body == done
    else:
        assert json.loads(body)["status"] == "error"
