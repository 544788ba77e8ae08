"""
Testing an application that uses raps, with pytest and the fixtures of the
raps pytest plugin, which installing raps registers. The fixtures need
pytest-twisted (for raps_daemon) and redis-py (for raps_publisher).

Run with: python -m pytest examples/test_example_pytest.py
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from worker import run_job


async def get_json(url):
    response = await treq.get(url, persistent=False)
    return json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_poll_shows_progress(raps_daemon, raps_publisher):
    """
    A poll returns the state that the worker stored last.
    """
    raps_publisher.progress("report1", progress=40)

    state = await get_json(raps_daemon.url("/task/report1"))

    assert state == {"status": "running", "progress": 40}


@pytest_twisted.ensureDeferred
async def test_watch_ends_with_job_result(raps_daemon, raps_publisher):
    """
    A page's watch of the example worker's task ends with its final state.
    """
    run_job(raps_publisher, "report2", steps=3, delay=0)

    state = await get_json(raps_daemon.url("/task/report2?watch"))

    assert state["status"] == "done"
    assert state["result"] == {"rows": 300}
