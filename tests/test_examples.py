"""
The files under examples/: the worker and the Celery task run against a
real Redis, and the example tests pass under pytest and trial.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from redis_ajax_push.publisher import TaskPublisher

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Each example run is killed after this many seconds.
RUN_TIMEOUT = 120


def run_python(*arguments, cwd):
    return subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=cwd,
    )


def test_pytest_example_passes(tmp_path):
    """
    examples/test_example_pytest.py passes with the plugin's fixtures.
    """
    result = run_python(
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        str(EXAMPLES / "test_example_pytest.py"),
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_trial_example_passes(tmp_path):
    """
    examples/test_example_trial.py passes under twisted.trial with
    RapsTrialMixin.
    """
    result = run_python(
        "-m", "twisted.trial", str(EXAMPLES / "test_example_trial.py"), cwd=tmp_path
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (successes=2)" in result.stdout


def test_worker_reports_done(redis_server, redis_client, tmp_path):
    """
    examples/worker.py reports its steps and ends with the done state.
    """
    result = run_python(
        str(EXAMPLES / "worker.py"),
        "job1",
        "--redis",
        redis_server.url,
        "--steps",
        "3",
        "--delay",
        "0",
        "--ttl",
        "60",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(redis_client.get("RA_D_job1")) == {
        "status": "done",
        "progress": 100,
        "result": {"rows": 300},
    }
    assert redis_client.ttl("RA_D_job1") > 0


def test_worker_reports_failure(redis_server, redis_client, tmp_path):
    """
    examples/worker.py stores the failure of a step and exits with 1.
    """
    result = run_python(
        str(EXAMPLES / "worker.py"),
        "job1",
        "--redis",
        redis_server.url,
        "--steps",
        "3",
        "--delay",
        "0",
        "--fail-at",
        "2",
        cwd=tmp_path,
    )

    assert result.returncode == 1
    assert "step 2 failed" in result.stderr
    assert json.loads(redis_client.get("RA_D_job1")) == {
        "status": "done",
        "failed": True,
        "error_message": "step 2 failed",
        "step": 2,
        "steps": 3,
    }


@pytest.fixture
def celery_example(monkeypatch):
    """
    examples/celery_task.py loaded as if Celery were not installed.
    """
    monkeypatch.setitem(sys.modules, "celery", None)
    spec = importlib.util.spec_from_file_location(
        "celery_task_example", EXAMPLES / "celery_task.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_celery_example_without_celery(celery_example, redis_client):
    """
    Without Celery the example loads, defines no app, and its task body
    reports progress and the result.
    """
    publisher = TaskPublisher(redis_client)

    result = celery_example.resize_images(publisher, "job1", ["a.png", "b.png"])

    assert not hasattr(celery_example, "app")
    assert result == {"outputs": ["a.small.png", "b.small.png"]}
    assert json.loads(redis_client.get("RA_D_job1")) == {
        "status": "done",
        "progress": 100,
        "outputs": ["a.small.png", "b.small.png"],
    }


def test_celery_example_stores_failure(celery_example, redis_client):
    """
    The Celery example stores a failure with fail() and raises it again.
    """
    publisher = TaskPublisher(redis_client)

    with pytest.raises(ValueError, match="not a PNG"):
        celery_example.resize_images(publisher, "job1", ["a.png", "b.gif"])

    state = json.loads(redis_client.get("RA_D_job1"))
    assert state["failed"] is True
    assert state["error_message"] == "b.gif is not a PNG image"
