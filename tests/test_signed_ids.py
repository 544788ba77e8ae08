"""
A daemon with task id secrets, fed by a publisher: signed ids work, bad
ones look like missing tasks and cost no Redis command, and neither the
ids' tags nor the secrets reach the logs.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import treq
from twisted.logger import formatEvent, globalLogPublisher

from redis_ajax_push.publisher import TaskPublisher, sign_task_id
from redis_ajax_push.signing import TaskIdSigner

NEW = b"new-secret-0123456789abcdef"
OLD = b"old-secret-0123456789abcdef"

MISSING_BODY = (
    b'{"status": "error", "error_message": "Not Found", "error": "not_found"}'
)


async def fetch(daemon, path):
    response = await treq.get(daemon.url(path), persistent=False, timeout=10)
    return response.code, await response.content()


def with_secrets(*task_id_secrets):
    return {"task_id_secrets": tuple(task_id_secrets)}


def command_calls(redis_client, *names):
    stats = redis_client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names}


def flip_last(text):
    return text[:-1] + ("a" if text[-1] != "a" else "b")


@pytest.mark.parametrize("mode", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_signed_id_served(start_daemon, redis_client, mode):
    """
    A daemon with secrets serves a task whose id is signed with the first.
    """
    daemon = await start_daemon(security=with_secrets(NEW))
    task_id = TaskIdSigner([NEW]).mint()
    TaskPublisher(redis_client).done(task_id, result=1)

    code, body = await fetch(daemon, f"/task/{task_id}{mode}")

    assert code == 200
    assert body == b'{"status":"done","result":1}'


@pytest.mark.parametrize("mode", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_bad_ids_look_missing(start_daemon, redis_client, mode):
    """
    Tampered, unsigned and foreign-signed ids of stored tasks get the same
    404 body as a task that does not exist.
    """
    daemon = await start_daemon(security=with_secrets(NEW))
    signed = TaskIdSigner([NEW]).sign("job1")
    publisher = TaskPublisher(redis_client)
    bad_ids = [flip_last(signed), "job1", TaskIdSigner([OLD]).sign("job1")]
    for task_id in [signed, *bad_ids]:
        publisher.done(task_id)

    for task_id in bad_ids:
        code, body = await fetch(daemon, f"/task/{task_id}{mode}")
        assert (task_id, code) == (task_id, 404)
        assert body == MISSING_BODY

    code, body = await fetch(daemon, f"/task/{TaskIdSigner([NEW]).sign('nojob')}")
    assert (code, body) == (404, MISSING_BODY)


@pytest_twisted.ensureDeferred
async def test_rotation_keeps_old_ids(start_daemon, redis_client):
    """
    With secrets [new, old], ids signed with old still work; with [new]
    alone they get the body of a missing task.
    """
    old_id = sign_task_id("job1", [OLD])
    new_id = sign_task_id("job1", [NEW])
    publisher = TaskPublisher(redis_client)
    publisher.progress(old_id, progress=1)
    publisher.progress(new_id, progress=2)
    rotated = await start_daemon(security=with_secrets(NEW, OLD))
    retired = await start_daemon(security=with_secrets(NEW))

    assert await fetch(rotated, f"/task/{old_id}") == (
        200,
        b'{"status":"running","progress":1}',
    )
    assert await fetch(rotated, f"/task/{new_id}") == (
        200,
        b'{"status":"running","progress":2}',
    )
    assert await fetch(retired, f"/task/{old_id}") == (404, MISSING_BODY)
    assert await fetch(retired, f"/task/{new_id}") == (
        200,
        b'{"status":"running","progress":2}',
    )


@pytest_twisted.ensureDeferred
async def test_bad_ids_send_no_command(start_daemon, redis_client):
    """
    Polls and watches of unsigned, tampered or invalid ids send no GET,
    SUBSCRIBE or PUBLISH to Redis.
    """
    daemon = await start_daemon(security=with_secrets(NEW))
    signed = TaskIdSigner([NEW]).sign("job1")
    TaskPublisher(redis_client).done(signed)
    names = ("get", "subscribe", "publish")
    before = command_calls(redis_client, *names)

    for task_id in ["job1", flip_last(signed), "a%20b", "x" * 40]:
        for mode in ["", "?watch"]:
            code, _ = await fetch(daemon, f"/task/{task_id}{mode}")
            assert code in (400, 404)

    assert command_calls(redis_client, *names) == before
    code, _ = await fetch(daemon, f"/task/{signed}")
    assert code == 200
    assert command_calls(redis_client, *names)["get"] == before["get"] + 1


@pytest.fixture
def log_lines():
    """
    The formatted text of every log event emitted during the test,
    tracebacks included.
    """
    lines = []

    def observe(event):
        lines.append(formatEvent(event))
        failure = event.get("log_failure")
        if failure is not None:
            lines.append(failure.getTraceback())

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def leaks(lines, *secrets):
    """
    Return the log lines that contain any of C{secrets}.
    """
    return [line for line in lines if any(secret in line for secret in secrets)]


@pytest_twisted.ensureDeferred
async def test_logs_hide_tags_and_secrets(start_daemon, redis_client, log_lines):
    """
    Starting a daemon with secrets, serving signed ids and logging errors
    about them leave neither the tags nor the secrets in the log events
    emitted by the daemon's own code.
    """
    daemon = await start_daemon(security=with_secrets(NEW, OLD))
    signer = TaskIdSigner([NEW])
    good, broken = signer.sign("good1"), signer.sign("broken1")
    TaskPublisher(redis_client).progress(good)
    # A data key that is not JSON makes the daemon log a warning naming
    # the task.
    redis_client.set(f"RA_D_{broken}", b"not json")

    assert (await fetch(daemon, f"/task/{good}"))[0] == 200
    assert (await fetch(daemon, f"/task/{broken}"))[0] == 502
    assert (await fetch(daemon, f"/task/{broken}?watch"))[0] == 502

    own_lines = [line for line in log_lines if "GET /task/" not in line]
    tags = [task_id.rpartition("_")[2] for task_id in (good, broken)]
    assert any("broken1_..." in line for line in own_lines)
    assert leaks(own_lines, *tags, NEW.decode(), OLD.decode()) == []


@pytest_twisted.ensureDeferred
async def test_access_log_hides_tags(start_daemon, redis_client, log_lines):
    """
    The access log line of a request for a signed id shows the tag as
    '...'.
    """
    daemon = await start_daemon(security=with_secrets(NEW))
    task_id = TaskIdSigner([NEW]).sign("job1")
    TaskPublisher(redis_client).progress(task_id)

    assert (await fetch(daemon, f"/task/{task_id}"))[0] == 200

    access_lines = [line for line in log_lines if "GET /task/" in line]
    assert access_lines, "no access log line was emitted"
    assert leaks(access_lines, task_id.rpartition("_")[2]) == []
    assert any("/task/job1_..." in line for line in access_lines)
