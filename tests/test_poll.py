"""
Poll mode: GET /task/<id> and ?poll return the data key as stored.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq


@pytest_twisted.ensureDeferred
async def test_poll_returns_stored_json(daemon, redis_client):
    """
    A poll returns the data key's bytes unchanged, as application/json.
    """
    stored = b'{"status":"running",  "progress": 42}'
    redis_client.set("RA_D_job1", stored)

    response = await treq.get(daemon.url("/task/job1"))

    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert await response.content() == stored


@pytest_twisted.ensureDeferred
async def test_poll_query_equals_plain_get(daemon, redis_client):
    """
    ?poll reads the data key just like a GET with no query string.
    """
    redis_client.set("RA_D_job2", b'{"status":"queued"}')

    response = await treq.get(daemon.url("/task/job2?poll"))

    assert response.code == 200
    assert await response.content() == b'{"status":"queued"}'


@pytest_twisted.ensureDeferred
async def test_poll_missing_key_is_not_found(daemon, redis_client):
    """
    A missing data key gets 404 with the not_found error JSON.
    """
    response = await treq.get(daemon.url("/task/absent"))

    assert response.code == 404
    assert json.loads(await response.content()) == {
        "status": "error",
        "error_message": "Not Found",
        "error": "not_found",
    }
