"""
Error responses: every error case with its code and HTTP status, against a
real redis-server.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

INVALID_IDS = [
    "a" * 33,
    "abc-def",
    "abc%20def",
    "abc%0A",
    "%0A",
    "abc%00",
    "a%2Fb",
    "a/b",
    "%C3%A9t%C3%A9",
    "%D9%A1%D9%A2",
]


def data_commands(redis_client):
    """
    Return how many GET, PUBLISH and SUBSCRIBE commands Redis has served.
    """
    stats = redis_client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("get", "publish", "subscribe")
    }


async def get_json(url):
    response = await treq.get(url, persistent=False)
    return response.code, json.loads(await response.content())


@pytest.mark.parametrize("task_id", INVALID_IDS)
@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_invalid_id_rejected(daemon, redis_client, task_id, query):
    """
    A task id outside the pattern or too long gets 400 invalid_task_id
    before any Redis command is sent.
    """
    before = data_commands(redis_client)

    code, body = await get_json(daemon.url(f"/task/{task_id}{query}"))

    assert code == 400
    assert body["error"] == "invalid_task_id"
    assert data_commands(redis_client) == before


@pytest_twisted.ensureDeferred
async def test_longest_valid_id_accepted(daemon, redis_client):
    """
    An id of exactly max_length characters is valid.
    """
    task_id = "b" * 32
    redis_client.set(f"RA_D_{task_id}", b'{"status": "queued"}')

    code, body = await get_json(daemon.url(f"/task/{task_id}"))

    assert code == 200
    assert body == {"status": "queued"}


@pytest.mark.parametrize("path", ["/task/", "/task/%FF"])
@pytest_twisted.ensureDeferred
async def test_empty_or_undecodable_id(daemon, path):
    """
    An empty task id, or one whose bytes are not UTF-8, gets 400
    invalid_task_id as JSON.
    """
    code, body = await get_json(daemon.url(path))

    assert code == 400
    assert body["error"] == "invalid_task_id"


@pytest.mark.parametrize(
    "query", ["?bogus", "?watch=1", "?poll&watch", "?WATCH", "?streaming"]
)
@pytest_twisted.ensureDeferred
async def test_invalid_mode_rejected(daemon, redis_client, query):
    """
    A query string other than empty, poll or watch gets 400 with the
    original's "Invalid mode" message.
    """
    redis_client.set("RA_D_m1", b'{"status": "queued"}')

    code, body = await get_json(daemon.url(f"/task/m1{query}"))

    assert code == 400
    assert body == {
        "status": "error",
        "error_message": "Invalid mode",
        "error": "invalid_mode",
    }


BAD_DATA = [
    b"42",
    b'"a string"',
    b"[1, 2, 3]",
    b"null",
    b'{"status": "running"',
    b"not json at all",
    b"\xff\xfe{}",
    b"",
]


@pytest.mark.parametrize("stored", BAD_DATA)
@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_bad_task_data_rejected(daemon, redis_client, stored, query):
    """
    A data key that is not a UTF-8 JSON object gets 502
    invalid_task_data, never the stored bytes.
    """
    redis_client.set("RA_D_bad", stored)

    code, body = await get_json(daemon.url(f"/task/bad{query}"))

    assert code == 502
    assert body["error"] == "invalid_task_data"


@pytest.mark.parametrize("query", ["", "?watch"])
@pytest_twisted.ensureDeferred
async def test_wrong_type_is_redis_error(daemon, redis_client, query):
    """
    A data key of the wrong Redis type gets 502 redis_error, and Redis's
    own error text is not passed through as task data.
    """
    redis_client.rpush("RA_D_list", b"x")

    code, body = await get_json(daemon.url(f"/task/list{query}"))

    assert code == 502
    assert body == {
        "status": "error",
        "error_message": "Redis error",
        "error": "redis_error",
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/task/nothing", "not_found"),
        ("/task/a-b", "invalid_task_id"),
        ("/task/m2?bogus", "invalid_mode"),
        ("/elsewhere", "not_found"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_legacy_mode_answers_200(start_daemon, path, expected):
    """
    With legacy_status_codes the errors answer 200, as the original did,
    with the same error JSON.
    """
    daemon = await start_daemon(http={"legacy_status_codes": True})

    code, body = await get_json(daemon.url(path))

    assert code == 200
    assert body["error"] == expected


@pytest_twisted.ensureDeferred
async def test_unknown_path_not_found(daemon):
    """
    A path outside /task/ answers 404 not_found as JSON.
    """
    code, body = await get_json(daemon.url("/nothing/here"))

    assert code == 404
    assert body["error"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest_twisted.ensureDeferred
async def test_other_methods_rejected(daemon, redis_client, method):
    """
    Methods other than GET and HEAD answer 405 method_not_allowed with an
    Allow header, and send no Redis command.
    """
    before = data_commands(redis_client)

    response = await treq.request(method, daemon.url("/task/m3"), persistent=False)
    body = json.loads(await response.content())

    assert response.code == 405
    assert body["error"] == "method_not_allowed"
    assert response.headers.getRawHeaders("Allow") == ["GET, HEAD"]
    assert data_commands(redis_client) == before
