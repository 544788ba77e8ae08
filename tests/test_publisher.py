"""
TaskPublisher against a real redis-server: what each write stores and
publishes, TTLs, reads, and the checks made before any Redis command.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from redis_ajax_push.config import TaskIdConfig, load_config
from redis_ajax_push.publisher import (
    InvalidTaskDataError,
    InvalidTaskIdError,
    PublishError,
    StoredTaskDataError,
    TaskPublisher,
    make_signer,
    sign_task_id,
)
from redis_ajax_push.task_update import RESERVED_FIELDS, RESERVED_STATUSES

SECRET = "publisher-test-secret-0123456789"


@pytest.fixture
def channel(redis_client):
    """
    A function that subscribes to a task's channel and returns a function
    that collects the messages published there, waiting at most 2 s for
    the expected count.
    """
    subscriptions = []

    def subscribe(task_id, prefix="RA_"):
        pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"{prefix}SC_{task_id}")
        subscriptions.append(pubsub)
        received = []

        def messages(count):
            deadline = time.monotonic() + 2
            while len(received) < count and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.1)
                if message is not None:
                    received.append(message["data"])
            return received

        return messages

    yield subscribe
    for pubsub in subscriptions:
        pubsub.close()


def command_calls(redis_client, *names):
    """
    Return how many times Redis has run each command, from INFO
    commandstats.
    """
    stats = redis_client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names}


def test_progress_stores_state(redis_client):
    """
    progress stores the status and the fields as compact JSON.
    """
    TaskPublisher(redis_client).progress("t1", progress=10, step="parse")

    assert redis_client.get("RA_D_t1") == (
        b'{"status":"running","progress":10,"step":"parse"}'
    )


def test_progress_custom_status(redis_client):
    """
    progress stores a status other than running when given one.
    """
    TaskPublisher(redis_client).progress("t1", "queued", position=3)

    assert json.loads(redis_client.get("RA_D_t1")) == {
        "status": "queued",
        "position": 3,
    }


def test_progress_publishes_update(redis_client, channel):
    """
    progress announces the change with a bare update message.
    """
    messages = channel("t1")

    TaskPublisher(redis_client).progress("t1", progress=10)

    assert messages(1) == [b'{"status":"update"}']


def test_done_stores_and_publishes_done(redis_client, channel):
    """
    done stores status done with the fields and publishes a done message.
    """
    messages = channel("t1")

    TaskPublisher(redis_client).done("t1", result={"rows": 3})

    assert redis_client.get("RA_D_t1") == b'{"status":"done","result":{"rows":3}}'
    assert messages(1) == [b'{"status":"done"}']


def test_fail_stores_done_with_failure(redis_client, channel):
    """
    fail stores status done, failed true and the error message, and
    publishes a done message, so that every watch ends.
    """
    messages = channel("t1")

    TaskPublisher(redis_client).fail("t1", "disk full", step=4)

    assert json.loads(redis_client.get("RA_D_t1")) == {
        "status": "done",
        "failed": True,
        "error_message": "disk full",
        "step": 4,
    }
    assert messages(1) == [b'{"status":"done"}']


@pytest.mark.parametrize(
    ("method", "arguments", "status"),
    [
        ("progress", ("t1",), b"update"),
        ("done", ("t1",), b"done"),
        ("fail", ("t1", "broken"), b"done"),
    ],
)
def test_inline_message_embeds_data(redis_client, channel, method, arguments, status):
    """
    With inline, the message carries the same bytes as the data key in its
    data field.
    """
    messages = channel("t1")

    getattr(TaskPublisher(redis_client, inline=True), method)(*arguments, n=1)

    stored = redis_client.get("RA_D_t1")
    assert messages(1) == [b'{"status":"' + status + b'","data":' + stored + b"}"]


def test_write_returns_receiver_count(redis_client, channel):
    """
    A write returns how many subscribers received its message.
    """
    publisher = TaskPublisher(redis_client)
    assert publisher.progress("t1") == 0

    channel("t1")
    channel("t1")

    assert publisher.progress("t1") == 2


def test_non_ascii_stored_as_utf8(redis_client):
    """
    Text fields are stored as UTF-8, not as JSON escapes.
    """
    TaskPublisher(redis_client).progress("t1", note="Größe ✓")

    assert redis_client.get("RA_D_t1") == (
        '{"status":"running","note":"Größe ✓"}'.encode()
    )


def test_prefix_changes_names(redis_client, channel):
    """
    A publisher with another prefix writes C{<prefix>D_} and publishes on
    C{<prefix>SC_}.
    """
    messages = channel("t1", prefix="APP_")

    TaskPublisher(redis_client, prefix="APP_").done("t1")

    assert redis_client.exists("APP_D_t1") == 1
    assert redis_client.exists("RA_D_t1") == 0
    assert messages(1) == [b'{"status":"done"}']


def test_ttl_sets_expiry(redis_client):
    """
    A publisher with a TTL stores the data key with that lifetime.
    """
    TaskPublisher(redis_client, ttl=60).progress("t1")

    assert 55 <= redis_client.ttl("RA_D_t1") <= 60


def test_ttl_renewed_by_each_write(redis_client):
    """
    Each write sets the TTL again, so a task that keeps reporting stays.
    """
    publisher = TaskPublisher(redis_client, ttl=100)
    publisher.progress("t1")
    redis_client.expire("RA_D_t1", 5)

    publisher.done("t1")

    assert 95 <= redis_client.ttl("RA_D_t1") <= 100


def test_no_ttl_keeps_key(redis_client):
    """
    Without a TTL the data key has no expiry, even one left by an earlier
    write.
    """
    TaskPublisher(redis_client, ttl=60).progress("t1")

    TaskPublisher(redis_client).progress("t1")

    assert redis_client.ttl("RA_D_t1") == -1


@pytest.mark.parametrize("ttl", [0, -5, 1.5, True, "60"])
def test_invalid_ttl_rejected(redis_client, ttl):
    """
    A TTL that is not a whole number of seconds, 1 or more, raises
    PublishError when the publisher is made.
    """
    with pytest.raises(PublishError, match="ttl must be"):
        TaskPublisher(redis_client, ttl=ttl)


def test_get_returns_state(redis_client):
    """
    get returns the stored state as a dict.
    """
    publisher = TaskPublisher(redis_client)
    publisher.progress("t1", progress=5)

    assert publisher.get("t1") == {"status": "running", "progress": 5}


def test_get_missing_returns_none(redis_client):
    """
    get returns None for a task without a data key.
    """
    assert TaskPublisher(redis_client).get("nothing") is None


@pytest.mark.parametrize("stored", [b"[1, 2]", b"not json", b"\xff\xfe", b"42"])
def test_get_non_object_raises(redis_client, stored):
    """
    get raises StoredTaskDataError when the value is not a UTF-8 JSON
    object.
    """
    redis_client.set("RA_D_t1", stored)

    with pytest.raises(StoredTaskDataError):
        TaskPublisher(redis_client).get("t1")


def test_get_with_decoding_client(redis_server):
    """
    get also works with a client that decodes replies to str.
    """
    import redis

    client = redis.Redis(
        host=redis_server.host, port=redis_server.port, decode_responses=True
    )
    publisher = TaskPublisher(client)
    publisher.progress("t1", progress=5)

    assert publisher.get("t1") == {"status": "running", "progress": 5}
    client.close()


@pytest.mark.parametrize("status", sorted(RESERVED_STATUSES))
def test_reserved_status_rejected(redis_client, status):
    """
    progress rejects the final and protocol statuses before writing.
    """
    with pytest.raises(InvalidTaskDataError, match="reserved"):
        TaskPublisher(redis_client).progress("t1", status)

    assert redis_client.exists("RA_D_t1") == 0


@pytest.mark.parametrize("status", ["", None, 5])
def test_non_text_status_rejected(redis_client, status):
    """
    progress rejects an empty or non-string status.
    """
    with pytest.raises(InvalidTaskDataError, match="status must be"):
        TaskPublisher(redis_client).progress("t1", status)


@pytest.mark.parametrize(
    ("method", "field"),
    # progress takes status as its own argument.
    [("progress", field) for field in sorted(RESERVED_FIELDS) if field != "status"]
    + [("done", field) for field in sorted(RESERVED_FIELDS)],
)
def test_reserved_field_rejected(redis_client, method, field):
    """
    A field named like one the publisher sets itself is rejected.
    """
    with pytest.raises(InvalidTaskDataError, match="reserved"):
        getattr(TaskPublisher(redis_client), method)("t1", **{field: 1})

    assert redis_client.exists("RA_D_t1") == 0


def test_fail_rejects_non_text_message(redis_client):
    """
    fail needs the error message as a string.
    """
    with pytest.raises(InvalidTaskDataError, match="error_message must be"):
        TaskPublisher(redis_client).fail("t1", 42)


def _circular():
    items = []
    items.append(items)
    return items


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, math.nan, math.inf, b"bytes", _circular()],
    ids=["object", "set", "nan", "inf", "bytes", "circular"],
)
def test_unserialisable_field_rejected(redis_client, value):
    """
    A field that JSON cannot encode raises InvalidTaskDataError naming it,
    and nothing is written.
    """
    with pytest.raises(InvalidTaskDataError, match="'bad'"):
        TaskPublisher(redis_client).progress("t1", ok=1, bad=value)

    assert redis_client.exists("RA_D_t1") == 0


@pytest.mark.parametrize(
    "task_id", ["", "a b", "x" * 33, "é", "a\n", "a/b", "a-b", 5, None]
)
def test_invalid_task_id_rejected(redis_client, task_id):
    """
    Ids that the daemon's default rule rejects raise InvalidTaskIdError
    before any Redis command.
    """
    publisher = TaskPublisher(redis_client)
    before = command_calls(redis_client, "evalsha", "eval", "get")

    with pytest.raises(InvalidTaskIdError):
        publisher.progress(task_id)
    with pytest.raises(InvalidTaskIdError):
        publisher.get(task_id)

    assert command_calls(redis_client, "evalsha", "eval", "get") == before


def test_longest_valid_id_accepted(redis_client):
    """
    A 32-character id, the default maximum, is accepted.
    """
    TaskPublisher(redis_client).progress("x" * 32)

    assert redis_client.exists("RA_D_" + "x" * 32) == 1


def test_signed_id_accepted_without_signer(redis_client):
    """
    A signed id longer than 32 characters passes when its base does, so
    workers can write tasks without knowing the secrets.
    """
    task_id = sign_task_id("y" * 32, [SECRET])

    TaskPublisher(redis_client).done(task_id)

    assert redis_client.exists(f"RA_D_{task_id}") == 1


def test_signer_rejects_unsigned_id(redis_client):
    """
    With a signer, unsigned and tampered ids are rejected and signed ones
    accepted.
    """
    publisher = TaskPublisher(redis_client, signer=make_signer([SECRET]))
    signed = sign_task_id("job1", [SECRET])
    tampered = signed[:-1] + ("a" if signed[-1] != "a" else "b")

    publisher.progress(signed)
    with pytest.raises(InvalidTaskIdError, match="not signed"):
        publisher.progress("job1")
    with pytest.raises(InvalidTaskIdError, match="not signed"):
        publisher.progress(tampered)


def test_error_message_redacts_tag(redis_client):
    """
    The message of a rejected signed id shows its tag as '...'.
    """
    signed = sign_task_id("job1", [SECRET])
    publisher = TaskPublisher(redis_client, signer=make_signer(["x" * 16]))

    with pytest.raises(InvalidTaskIdError) as caught:
        publisher.progress(signed)

    assert "job1_..." in str(caught.value)
    assert signed not in str(caught.value)


def test_custom_task_id_rule(redis_client):
    """
    A publisher with the daemon's own task id rule accepts what it allows.
    """
    rule = TaskIdConfig(pattern="[a-z-]+", max_length=8)
    publisher = TaskPublisher(redis_client, task_id_rule=rule)

    publisher.progress("a-b")
    with pytest.raises(InvalidTaskIdError, match="8 characters"):
        publisher.progress("abcdefghi")


def test_from_config_follows_daemon(redis_client, tmp_path):
    """
    from_config takes the prefix, the task id rule and the secrets of a
    daemon config.
    """
    config_file = tmp_path / "raps.toml"
    config_file.write_text(
        '[redis]\nprefix = "X_"\n'
        '[task_id]\npattern = "[a-z]+"\n'
        f'[security]\ntask_id_secrets = ["{SECRET}"]\n'
    )
    publisher = TaskPublisher.from_config(
        load_config(str(config_file)), redis_client, ttl=30
    )
    signed = sign_task_id("abc", [SECRET], TaskIdConfig(pattern="[a-z]+"))

    publisher.progress(signed)

    assert redis_client.exists(f"X_D_{signed}") == 1
    assert redis_client.ttl(f"X_D_{signed}") > 0
    with pytest.raises(InvalidTaskIdError):
        publisher.progress("abc")


def test_from_url_connects(redis_server, redis_client):
    """
    from_url connects a redis-py client to the URL.
    """
    publisher = TaskPublisher.from_url(redis_server.url, inline=True)

    publisher.done("t1")

    assert publisher.inline is True
    assert redis_client.exists("RA_D_t1") == 1
    publisher.redis.close()


def test_write_runs_one_script(redis_client):
    """
    A write is one EVALSHA (or EVAL), with no separate SET or PUBLISH
    command from the client.
    """
    publisher = TaskPublisher(redis_client)
    publisher.progress("t1")
    before = command_calls(redis_client, "evalsha", "eval", "set", "publish")

    publisher.progress("t1")

    after = command_calls(redis_client, "evalsha", "eval", "set", "publish")
    assert after["evalsha"] + after["eval"] == before["evalsha"] + before["eval"] + 1
    # Commands run by a script count too, once each.
    assert after["set"] == before["set"] + 1
    assert after["publish"] == before["publish"] + 1


def test_package_imports_without_redis():
    """
    The package, the publisher module and the raps command load without
    redis-py, and the Redis commands then exit with an install hint.
    """
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import redis_ajax_push.publisher, redis_ajax_push.tx_publisher\n"
        "import redis_ajax_push.pytest_plugin\n"
        "from redis_ajax_push.cli import run\n"
        "print(len(redis_ajax_push.publisher.mint_task_id()))\n"
        "sys.exit(run(['get', 't1', '--redis', 'redis://127.0.0.1:1/0']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )

    assert result.stdout == "26\n"
    assert result.returncode == 64
    assert "needs redis-py" in result.stderr
