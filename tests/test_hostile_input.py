"""
Hostile and malformed input: odd task ids, query strings, methods, request
sizes and payloads, sent as raw bytes so that no client library cleans them
up first. Every case gets its documented response, sends no Redis command it
should not, and leaves the daemon serving.
"""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
import treq
from twisted.internet import threads
from twisted.logger import formatEvent, globalLogPublisher

from tests.http_clients import (
    get_request,
    read_response,
    response_json,
    send_raw,
    start_watch,
)
from tests.support import ChannelSpy, sleep, wait_until

GOOD = b'{"status": "running", "progress": 1}'


def data_commands(redis_client):
    """
    Return how many GET, PUBLISH and SUBSCRIBE commands Redis has served.
    """
    stats = redis_client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("get", "publish", "subscribe")
    }


async def assert_still_serving(daemon, redis_client):
    """
    Check that a poll of a stored task still succeeds.
    """
    redis_client.set("RA_D_good", GOOD)
    response = await treq.get(daemon.url("/task/good"), persistent=False)
    assert response.code == 200
    assert await response.content() == GOOD


def case(target, status, code, method=b"GET", name=None):
    return pytest.param(method, target, status, code, id=name or target.decode())


REJECTED_REQUESTS = [
    # Control characters, percent-encoded: raw ones never reach raps.
    case(b"/task/abc%0A", 400, "invalid_task_id", name="trailing-newline"),
    case(b"/task/%0Aabc", 400, "invalid_task_id", name="leading-newline"),
    case(b"/task/abc%0D", 400, "invalid_task_id", name="trailing-cr"),
    case(b"/task/a%00b", 400, "invalid_task_id", name="nul"),
    case(b"/task/a%09b", 400, "invalid_task_id", name="tab"),
    case(b"/task/a%1Bb", 400, "invalid_task_id", name="escape"),
    case(b"/task/a%7Fb", 400, "invalid_task_id", name="delete"),
    case(b"/task/%0A", 400, "invalid_task_id", name="only-newline"),
    case(b"/task/a%20b", 400, "invalid_task_id", name="space"),
    # Slashes, encoded or not, and dot segments.
    case(b"/task/a/b", 400, "invalid_task_id"),
    case(b"/task/a%2Fb", 400, "invalid_task_id"),
    case(b"/task/a%2fb", 400, "invalid_task_id"),
    case(b"/task/a/", 400, "invalid_task_id"),
    case(b"/task//a", 400, "invalid_task_id"),
    case(b"/task/%2F", 400, "invalid_task_id"),
    case(b"/task/..", 400, "invalid_task_id"),
    case(b"/task/%2E%2E", 400, "invalid_task_id"),
    case(b"/task/../good", 400, "invalid_task_id"),
    # Non-ASCII letters and digits, and bytes that are not UTF-8.
    case(b"/task/caf%C3%A9", 400, "invalid_task_id", name="e-acute"),
    case(b"/task/%C3%A4", 400, "invalid_task_id", name="a-umlaut"),
    case(b"/task/%D9%A1%D9%A2", 400, "invalid_task_id", name="arabic-indic-digits"),
    case(b"/task/%EF%BC%91", 400, "invalid_task_id", name="fullwidth-digit"),
    case(b"/task/%FF", 400, "invalid_task_id", name="byte-ff"),
    case(b"/task/%ED%A0%80", 400, "invalid_task_id", name="encoded-surrogate"),
    case(b"/task/%C3", 400, "invalid_task_id", name="truncated-utf8"),
    # Broken percent escapes.
    case(b"/task/%zz", 400, "invalid_task_id"),
    case(b"/task/%", 400, "invalid_task_id"),
    case(b"/task/a%2", 400, "invalid_task_id"),
    # Empty and too long ids.
    case(b"/task/", 400, "invalid_task_id"),
    case(b"/task/?watch", 400, "invalid_task_id"),
    case(b"/task", 400, "invalid_task_id"),
    case(b"/task?watch", 400, "invalid_task_id"),
    case(b"/task/" + b"a" * 33, 400, "invalid_task_id", name="33-chars"),
    case(b"/task/" + b"a" * 33 + b"?watch", 400, "invalid_task_id", name="33-watch"),
    case(b"/task/" + b"a" * 8192, 400, "invalid_task_id", name="8-KiB-id"),
    # Query strings other than empty, poll and watch, on a valid id.
    case(b"/task/good?watch&poll", 400, "invalid_mode"),
    case(b"/task/good?poll&watch", 400, "invalid_mode"),
    case(b"/task/good?=", 400, "invalid_mode"),
    case(b"/task/good?watch=", 400, "invalid_mode"),
    case(b"/task/good?watch=1", 400, "invalid_mode"),
    case(b"/task/good?%77atch", 400, "invalid_mode"),
    case(b"/task/good??", 400, "invalid_mode"),
    case(b"/task/good?watch?", 400, "invalid_mode"),
    case(b"/task/good?poll#x", 400, "invalid_mode"),
    case(b"/task/good?WATCH", 400, "invalid_mode"),
    case(b"/task/good?&watch", 400, "invalid_mode"),
    case(b"/task/good?watch%00", 400, "invalid_mode"),
    case(b"/task/good?" + b"w" * 8192, 400, "invalid_mode", name="8-KiB-query"),
    # Methods other than GET and HEAD.
    case(b"/task/good", 405, "method_not_allowed", method=b"POST"),
    case(b"/task/good?watch", 405, "method_not_allowed", method=b"POST"),
    case(b"/task/good", 405, "method_not_allowed", method=b"PUT"),
    case(b"/task/good", 405, "method_not_allowed", method=b"DELETE"),
    case(b"/task/good", 405, "method_not_allowed", method=b"OPTIONS"),
    case(b"/task/good", 405, "method_not_allowed", method=b"PATCH"),
    case(b"/task/good", 405, "method_not_allowed", method=b"TRACE"),
    case(b"/task/good", 405, "method_not_allowed", method=b"BREW"),
    # Paths outside /task/.
    case(b"/", 404, "not_found"),
    case(b"/tasks/good", 404, "not_found"),
    case(b"/task_good", 404, "not_found"),
    case(b"/other/task/good", 404, "not_found"),
    case(b"/TASK/good", 404, "not_found"),
]


@pytest.mark.parametrize(("method", "target", "status", "code"), REJECTED_REQUESTS)
@pytest_twisted.ensureDeferred
async def test_bad_request_rejected(daemon, redis_client, method, target, status, code):
    """
    A request with a bad task id, query string, method or path gets its
    documented error JSON before any Redis command is sent, and the daemon
    keeps serving.
    """
    before = data_commands(redis_client)

    responses = await send_raw(
        daemon.port,
        get_request(target, b"Content-Length: 0", method=method),
        methods=(method,),
    )

    assert len(responses) == 1
    response = responses[0]
    assert response.status == status
    assert response.header(b"Content-Type") == [b"application/json"]
    assert response.json()["status"] == "error"
    assert response.json()["error"] == code
    assert data_commands(redis_client) == before
    await assert_still_serving(daemon, redis_client)


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS"])
@pytest_twisted.ensureDeferred
async def test_other_method_allow_header(daemon, method):
    """
    A 405 response names the allowed methods in its Allow header.
    """
    responses = await send_raw(
        daemon.port, get_request(b"/task/good", method=method), methods=(method,)
    )

    assert responses[0].status == 405
    assert responses[0].header(b"Allow") == [b"GET, HEAD"]


@pytest_twisted.ensureDeferred
async def test_head_good_task_no_body(daemon, redis_client):
    """
    HEAD of a stored task gets 200 with the JSON content type and no
    body.
    """
    redis_client.set("RA_D_good", GOOD)

    responses = await send_raw(
        daemon.port, get_request(b"/task/good", method=b"HEAD"), methods=(b"HEAD",)
    )

    assert responses[0].status == 200
    assert responses[0].header(b"Content-Type") == [b"application/json"]
    assert responses[0].body == b""


@pytest_twisted.ensureDeferred
async def test_head_bad_id_no_redis(daemon, redis_client):
    """
    HEAD of an invalid task id gets 400 without touching Redis.
    """
    before = data_commands(redis_client)

    responses = await send_raw(
        daemon.port, get_request(b"/task/a%0A", method=b"HEAD"), methods=(b"HEAD",)
    )

    assert responses[0].status == 400
    assert responses[0].body == b""
    assert data_commands(redis_client) == before
    await assert_still_serving(daemon, redis_client)


@pytest_twisted.ensureDeferred
async def test_undecodable_id_no_store(daemon):
    """
    The invalid_task_id response for an id that is not UTF-8 has
    Cache-Control: no-store, like every other response under /task/.
    """
    responses = await send_raw(daemon.port, get_request(b"/task/%FF"))

    assert responses[0].status == 400
    assert responses[0].header(b"Cache-Control") == [b"no-store"]


BIG_HEADERS = b"".join(b"X-Filler-%d: " % n + b"f" * 6000 + b"\r\n" for n in range(3))

# Requests that Twisted Web rejects on its own before raps receives them.
# Its HTTPChannel (Twisted 26.10) accepts only printable ASCII without
# spaces in the request target, HTTP/1.0 and HTTP/1.1, at most 500 headers
# and at most 16384 bytes of request line and headers together. It responds
# to anything else with a bare "400 Bad Request" and closes the connection.
TWISTED_REJECTS = [
    pytest.param(b"GET /task/a\x01b HTTP/1.1\r\n\r\n", id="raw-control"),
    pytest.param(b"GET /task/abc\x7f HTTP/1.1\r\n\r\n", id="raw-delete"),
    pytest.param(b"GET /task/caf\xc3\xa9 HTTP/1.1\r\n\r\n", id="raw-utf8"),
    pytest.param(b"GET /task/a b HTTP/1.1\r\n\r\n", id="raw-space"),
    pytest.param(b"GET /task/a\tb HTTP/1.1\r\n\r\n", id="raw-tab"),
    pytest.param(b"GET /task/good HTTP/2.0\r\n\r\n", id="http-2-version"),
    pytest.param(b"GET /task/good\r\n\r\n", id="no-version"),
    pytest.param(
        b"GET /task/good HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 600 + b"\r\n",
        id="600-headers",
    ),
    pytest.param(
        b"GET /task/good HTTP/1.1\r\n" + BIG_HEADERS + b"\r\n",
        id="18-KB-of-headers",
    ),
    pytest.param(
        b"GET /task/good HTTP/1.1\r\nNo colon here\r\n\r\n", id="malformed-header"
    ),
]


@pytest.mark.parametrize("request_bytes", TWISTED_REJECTS)
@pytest_twisted.ensureDeferred
async def test_malformed_request_bad_request(daemon, redis_client, request_bytes):
    """
    A request that breaks HTTP/1.1 syntax or Twisted's header limits gets
    Twisted's bare 400 before any Redis command, and the daemon keeps
    serving.
    """
    before = data_commands(redis_client)

    responses = await send_raw(daemon.port, request_bytes)

    assert len(responses) == 1
    assert responses[0].status == 400
    assert data_commands(redis_client) == before
    await assert_still_serving(daemon, redis_client)


# A single line over LineReceiver.MAX_LENGTH (16384 bytes in Twisted 26.10)
# makes HTTPChannel call lineLengthExceeded, which closes the connection
# without any response.
OVERLONG_LINES = [
    pytest.param(get_request(b"/task/" + b"a" * 20480), id="20-KiB-url"),
    pytest.param(
        get_request(b"/task/good", b"X-Big: " + b"b" * 20480), id="20-KiB-header"
    ),
]


@pytest.mark.parametrize("request_bytes", OVERLONG_LINES)
@pytest_twisted.ensureDeferred
async def test_overlong_line_gets_4xx(daemon, redis_client, request_bytes):
    """
    A request line or header line over Twisted's 16384-byte line limit gets
    431 request_too_large as JSON, sends no Redis command, and the daemon
    keeps serving.
    """
    before = data_commands(redis_client)

    responses = await send_raw(daemon.port, request_bytes, timeout=5)

    assert len(responses) == 1
    assert responses[0].status == 431
    assert json.loads(responses[0].body)["error"] == "request_too_large"
    assert data_commands(redis_client) == before
    await assert_still_serving(daemon, redis_client)


BAD_PAYLOADS = [
    pytest.param(b"[]", id="json-array"),
    pytest.param(b'["status", "done"]', id="json-array-of-strings"),
    pytest.param(b'"done"', id="json-string"),
    pytest.param(b"42", id="json-number"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"true", id="json-true"),
    pytest.param(b'{"status": "done"', id="truncated-object"),
    pytest.param(b'{"status": "do', id="truncated-string"),
    pytest.param(b"{", id="only-brace"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   ", id="whitespace"),
    pytest.param(b'{"status": "done"}{"b": 2}', id="two-objects"),
    pytest.param(b'{"status": "done"} x', id="trailing-garbage"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    pytest.param(b'{"status": "done", "name": "\xe9"}', id="latin-1-text"),
    pytest.param('{"status": "done"}'.encode("utf-16"), id="utf-16"),
    pytest.param(b'\xef\xbb\xbf{"status": "done"}', id="utf-8-bom"),
    pytest.param(b"not json at all", id="plain-text"),
]


@pytest.mark.parametrize("stored", BAD_PAYLOADS)
@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_bad_stored_value_rejected(daemon, redis_client, stored, query):
    """
    A data key that is not a UTF-8 JSON object gets 502
    invalid_task_data, never the stored bytes, in poll and watch mode.
    """
    redis_client.set("RA_D_bad", stored)

    response = await treq.get(daemon.url(f"/task/bad{query}"), persistent=False)
    body = await response_json(response)

    assert response.code == 502
    assert body["status"] == "error"
    assert body["error"] == "invalid_task_data"
    await assert_still_serving(daemon, redis_client)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
@pytest_twisted.ensureDeferred
async def test_non_json_constant_rejected(daemon, redis_client, constant):
    """
    A data key that uses NaN or Infinity, which only Python's JSON accepts,
    gets 502 invalid_task_data.
    """
    redis_client.set(
        "RA_D_nan", b'{"status": "running", "progress": ' + constant + b"}"
    )

    response = await treq.get(daemon.url("/task/nan"), persistent=False)
    body = await response_json(response)

    assert response.code == 502
    assert body["error"] == "invalid_task_data"


DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_deeply_nested_value_rejected(daemon, redis_client, logged_errors, query):
    """
    A data key nested 5000 levels deep gets 502 invalid_task_data, as
    other values that cannot be decoded do, not 500 and a logged traceback.
    """
    redis_client.set("RA_D_deep", b'{"status": "done", "data": ' + DEEP + b"}")

    response = await treq.get(daemon.url(f"/task/deep{query}"), persistent=False)
    body = await response_json(response)

    assert response.code == 502
    assert body["error"] == "invalid_task_data"
    assert logged_errors.messages() == []


@pytest.fixture
def ignored_message_log():
    """
    A list that collects the log lines of channel messages that a watch
    ignored, during the test.
    """
    lines = []

    def observe(event):
        text = formatEvent(event)
        if text.startswith("Ignored a channel message"):
            lines.append(text)

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


CHANNEL_BAD_PAYLOADS = [
    *BAD_PAYLOADS,
    pytest.param(b'{"status": "progress"}', id="unknown-status"),
    pytest.param(b'{"status": "DONE"}', id="status-upper-case"),
    pytest.param(b'{"status": null}', id="status-null"),
    pytest.param(b'{"no_status": true}', id="no-status"),
    pytest.param(b'{"status": ["done"]}', id="status-list"),
]


@pytest_twisted.ensureDeferred
async def test_bad_messages_ignored(daemon, redis_client, ignored_message_log):
    """
    Channel messages that are not UTF-8 JSON objects with a known status are
    each logged and ignored by a waiting watch, which still ends on the next
    valid done.
    """
    redis_client.set("RA_D_chan", GOOD)
    channel_spy = ChannelSpy(redis_client, "RA_SC_chan")
    try:
        pending = start_watch(daemon.base_url, "chan")
        await channel_spy.wait_for_kills(1)

        payloads = [param.values[0] for param in CHANNEL_BAD_PAYLOADS]
        # Repeated warnings are held back beyond the limit; this test wants
        # a line for every message.
        daemon.service.warnings.limit = len(payloads)
        for payload in payloads:
            redis_client.publish("RA_SC_chan", payload)
        await wait_until(
            lambda: len(ignored_message_log) >= len(payloads),
            what="a log line for each bad message",
        )
        await sleep(0.05)
        assert not pending.done
        assert len(ignored_message_log) == len(payloads)

        done = b'{"status": "done", "data": "after bad messages"}'
        redis_client.publish("RA_SC_chan", done)
        await wait_until(lambda: pending.done, what="the watch to end")
        response = await pending
    finally:
        channel_spy.close()

    assert response.code == 200
    assert await response.content() == done
    await assert_still_serving(daemon, redis_client)


@pytest_twisted.ensureDeferred
async def test_deep_message_ignored(daemon, redis_client, logged_errors):
    """
    A channel message nested 5000 levels deep is ignored like other
    undecodable messages: the watch ends on the next done, and no error is
    logged.
    """
    redis_client.set("RA_D_deepmsg", GOOD)
    channel_spy = ChannelSpy(redis_client, "RA_SC_deepmsg")
    try:
        pending = start_watch(daemon.base_url, "deepmsg")
        await channel_spy.wait_for_kills(1)

        redis_client.publish("RA_SC_deepmsg", b'{"status": "done", "data": ' + DEEP)
        redis_client.publish("RA_SC_deepmsg", b'{"status": "done", "data": 1}')
        await wait_until(lambda: pending.done, timeout=3, what="the watch to end")
    finally:
        channel_spy.close()

    response = await pending
    assert await response.content() == b'{"status": "done", "data": 1}'
    assert logged_errors.messages() == []


def expect_silence(client, seconds):
    """
    Return the bytes that arrive on C{client} within C{seconds}, or C{b""}
    when none do; blocking, so run it in a thread.
    """
    client.settimeout(seconds)
    try:
        return client.recv(65536, socket.MSG_PEEK)
    except TimeoutError:
        return b""
    finally:
        client.settimeout(5)


def read_two(client):
    with client.makefile("rb") as stream:
        return [read_response(stream), read_response(stream)]


@pytest_twisted.ensureDeferred
async def test_pipelined_poll_waits_for_watch(daemon, redis_client):
    """
    A watch and a poll pipelined on one keep-alive connection get their responses
    in order: nothing arrives while the watch waits, and the poll's response
    follows the watch's once a done message ends the watch.
    """
    redis_client.set("RA_D_pipe1", GOOD)
    polled = b'{"status": "queued", "task": "pipe2"}'
    redis_client.set("RA_D_pipe2", polled)
    channel_spy = ChannelSpy(redis_client, "RA_SC_pipe1")
    watch_request = b"GET /task/pipe1?watch HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    poll_request = get_request(b"/task/pipe2")
    client = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    try:
        client.sendall(watch_request + poll_request)
        await channel_spy.wait_for_kills(1)

        early = await threads.deferToThread(expect_silence, client, 0.3)
        assert early == b""

        done = b'{"status": "done", "data": "pipelined"}'
        redis_client.publish("RA_SC_pipe1", done)
        watch_response, poll_response = await threads.deferToThread(read_two, client)
    finally:
        client.close()
        channel_spy.close()

    assert watch_response.status == 200
    assert watch_response.body == done
    assert poll_response.status == 200
    assert poll_response.body == polled
