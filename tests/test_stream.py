"""
Stream mode: GET /task/<id>?stream as Server-Sent Events, against a real
redis-server.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq

from redis_ajax_push.sse import sse_event
from tests.support import ChannelSpy, wait_until

RUNNING = b'{"status": "running", "progress": 10}'


class EventReader:
    """
    Collects a stream's body as it arrives and parses its events.
    """

    def __init__(self) -> None:
        self.data = b""

    def received(self, chunk: bytes) -> None:
        self.data += chunk

    def events(self):
        """
        Return the complete events so far as (name, data) pairs; comment
        lines and the retry hint are skipped.
        """
        parsed = []
        for block in self.data.split(b"\n\n")[:-1]:
            name, data_lines = None, []
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    name = line[len(b"event: ") :].decode()
                elif line.startswith(b"data: "):
                    data_lines.append(line[len(b"data: ") :])
            if name is not None:
                parsed.append((name, b"\n".join(data_lines)))
        return parsed


async def open_stream(daemon, task_id):
    """
    Start a stream; return the response, the reader filled as data arrives,
    and the Deferred that fires when the stream closes.
    """
    response = await treq.get(daemon.url(f"/task/{task_id}?stream"), persistent=False)
    reader = EventReader()
    closed = treq.collect(response, reader.received)
    return response, reader, closed


@pytest_twisted.ensureDeferred
async def test_stream_sends_state_then_updates(daemon, redis_client):
    """
    A stream sends the current data key first, then one update event per
    update message, and closes after the done event.
    """
    redis_client.set("RA_D_s1", RUNNING)
    spy = ChannelSpy(redis_client, "RA_SC_s1")
    try:
        response, reader, closed = await open_stream(daemon, "s1")
        await spy.wait_for_kills(1)

        redis_client.set("RA_D_s1", b'{"status": "running", "progress": 50}')
        redis_client.publish("RA_SC_s1", b'{"status": "update"}')
        await wait_until(lambda: len(reader.events()) == 2, what="the update event")
        redis_client.publish("RA_SC_s1", b'{"status": "done", "data": {"ok": 1}}')
        await closed
    finally:
        spy.close()

    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Type") == [
        "text/event-stream; charset=utf-8"
    ]
    assert reader.data.startswith(b"retry: 2000\n\n")
    assert reader.events() == [
        ("update", RUNNING),
        ("update", b'{"status": "running", "progress": 50}'),
        ("done", b'{"status": "done", "data": {"ok": 1}}'),
    ]


@pytest_twisted.ensureDeferred
async def test_stream_of_done_task_closes(daemon, redis_client):
    """
    A stream of a task that is already done sends one done event and
    closes, so a reconnecting EventSource never misses the final state.
    """
    redis_client.set("RA_D_s2", b'{"status": "done", "result": 3}')

    response, reader, closed = await open_stream(daemon, "s2")
    await closed

    assert reader.events() == [("done", b'{"status": "done", "result": 3}')]


@pytest_twisted.ensureDeferred
async def test_newer_watch_kills_stream(daemon, redis_client):
    """
    A newer watch of the task ends an open stream with an error event
    carrying the killed error JSON.
    """
    redis_client.set("RA_D_s3", RUNNING)
    spy = ChannelSpy(redis_client, "RA_SC_s3")
    try:
        _, reader, closed = await open_stream(daemon, "s3")
        await spy.wait_for_kills(1)
        watch = treq.get(daemon.url("/task/s3?watch"), persistent=False)
        await closed
        redis_client.publish("RA_SC_s3", b'{"status": "done"}')
        await (await watch).content()
    finally:
        spy.close()

    name, data = reader.events()[-1]
    assert name == "error"
    assert json.loads(data)["error"] == "killed"


@pytest_twisted.ensureDeferred
async def test_stream_errors_before_start(daemon):
    """
    An error found before the first event, such as a missing task, gets the
    usual HTTP status and error JSON, not an event stream.
    """
    response = await treq.get(daemon.url("/task/nosuch?stream"), persistent=False)
    body = json.loads(await response.content())

    assert response.code == 404
    assert response.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert body["error"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_stream_heartbeat_is_comment(start_daemon, redis_client):
    """
    Stream heartbeats are SSE comment lines, which EventSource ignores.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.05})
    redis_client.set("RA_D_s4", RUNNING)

    _, reader, closed = await open_stream(daemon, "s4")
    await wait_until(lambda: b": heartbeat\n\n" in reader.data, what="a heartbeat")
    redis_client.publish("RA_SC_s4", b'{"status": "done"}')
    await closed

    assert [name for name, _ in reader.events()] == ["update", "done"]


def test_multiline_data_framed():
    """
    Data with line breaks becomes one data field per line, so no line break
    ends the event early.
    """
    framed = sse_event("update", b'{\n  "status": "running"\r\n}')

    assert framed == (
        b'event: update\ndata: {\ndata:   "status": "running"\ndata: }\n\n'
    )
