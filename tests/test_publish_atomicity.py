"""
Atomicity of publisher writes under many rapid updates: a subscriber that
reads the data key as soon as a message arrives never finds data older
than the message, and watches through a daemon never go back in time.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import pytest_twisted
import redis
import treq
from twisted.internet import threads

from redis_ajax_push.follow import parse_response
from redis_ajax_push.publisher import TaskPublisher

WRITES = 300

# Upper bound for each loop of these tests, in seconds.
DEADLINE = 20


def new_client(redis_server):
    return redis.Redis(host=redis_server.host, port=redis_server.port)


def check_messages(redis_server, write_all, count):
    """
    Subscribe to task t1, run C{write_all} in a thread, and for each of
    the C{count} messages read the data key at once. Return the list of
    (message number, message seq or None, data key seq) found.
    """
    reader = new_client(redis_server)
    pubsub = reader.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("RA_SC_t1")
    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    observations = []
    deadline = time.monotonic() + DEADLINE
    try:
        while len(observations) < count and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            stored = json.loads(reader.get("RA_D_t1"))
            inline = json.loads(message["data"]).get("data")
            message_seq = inline["seq"] if inline is not None else None
            observations.append((len(observations) + 1, message_seq, stored["seq"]))
    finally:
        writer.join(DEADLINE)
        pubsub.close()
        reader.close()
    assert len(observations) == count, "not every message arrived in time"
    return observations


def older_data(observations):
    """
    Return the observations where the data key was older than the message:
    below the message's own seq, or below its position in the sequence.
    """
    return [
        (number, message_seq, stored_seq)
        for number, message_seq, stored_seq in observations
        if stored_seq < (message_seq if message_seq is not None else number)
    ]


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
def test_message_never_precedes_data(redis_server, redis_client, inline):
    """
    After each of many rapid writes, the data key read on receipt of the
    message is at least as new as the write that the message announces.
    """
    writer_client = new_client(redis_server)
    publisher = TaskPublisher(writer_client, inline=inline)

    def write_all():
        for seq in range(1, WRITES + 1):
            publisher.progress("t1", seq=seq)

    observations = check_messages(redis_server, write_all, WRITES)
    writer_client.close()

    assert older_data(observations) == []
    if inline:
        assert [seq for _, seq, _ in observations] == list(range(1, WRITES + 1))


def test_check_catches_publish_before_set(redis_server, redis_client, monkeypatch):
    """
    The check of the test above finds the fault of a writer that publishes
    before it stores, so that test can fail.
    """
    writer_client = new_client(redis_server)
    writer_client.set("RA_D_t1", json.dumps({"status": "running", "seq": 0}))
    # Set by the reader's loop once it has read the data key for a message.
    read_done = threading.Event()
    original_get = redis.Redis.get

    def publish_then_set():
        for seq in range(1, 4):
            read_done.clear()
            writer_client.publish("RA_SC_t1", b'{"status":"update"}')
            read_done.wait(DEADLINE)
            writer_client.set("RA_D_t1", json.dumps({"status": "running", "seq": seq}))

    def get_and_signal(self, name):
        value = original_get(self, name)
        read_done.set()
        return value

    monkeypatch.setattr(redis.Redis, "get", get_and_signal)
    try:
        observations = check_messages(redis_server, publish_then_set, 3)
    finally:
        writer_client.close()

    assert older_data(observations) == [(1, None, 0), (2, None, 1), (3, None, 2)]


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
@pytest_twisted.ensureDeferred
async def test_watches_never_go_back(daemon, redis_server, redis_client, inline):
    """
    While a thread writes rapidly, each watch of a loop returns a state at
    least as new as the data key read before it started, and no response
    is older than the one before it.
    """
    writer_client = new_client(redis_server)
    publisher = TaskPublisher(writer_client, inline=inline)
    publisher.progress("t1", seq=0)
    stop = threading.Event()

    def write_all():
        seq = 0
        while not stop.is_set() and seq < 100_000:
            seq += 1
            publisher.progress("t1", seq=seq)
            time.sleep(0.001)

    writing = threads.deferToThread(write_all)
    answers = []
    deadline = time.monotonic() + DEADLINE
    try:
        while len(answers) < 40 and time.monotonic() < deadline:
            before = json.loads(redis_client.get("RA_D_t1"))["seq"]
            response = await treq.get(
                daemon.url("/task/t1?watch"), persistent=False, timeout=10
            )
            answer = parse_response(await response.content())["seq"]
            answers.append((before, answer))
    finally:
        stop.set()
        await writing
        writer_client.close()

    assert len(answers) == 40
    assert [pair for pair in answers if pair[1] < pair[0]] == []
    seqs = [answer for _, answer in answers]
    assert seqs == sorted(seqs)
