"""
A Celery task that reports its progress to raps.

The web view makes the task id, starts the task and returns the id to the
page, which then watches `/task/<task id>?watch`:

    from redis_ajax_push.publisher import mint_task_id

    task_id = mint_task_id(TASK_ID_SECRETS)  # the daemon's secrets, if any
    resize_images_task.delay(task_id, ["a.png", "b.png"])
    return {"task_id": task_id}

Celery is not a dependency of raps. Without it this module still imports,
and `resize_images` can run alone, as the tests of raps do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from redis_ajax_push.publisher import TaskPublisher

try:
    from celery import Celery
except ImportError:
    Celery = None

REDIS_URL = os.environ.get("RAPS_REDIS_URL", "redis://127.0.0.1:6379/0")

_publisher: TaskPublisher | None = None


def publisher() -> TaskPublisher:
    """
    Return this process's publisher, connecting on the first call: Celery
    forks its worker processes, and a Redis connection must not cross a
    fork.
    """
    global _publisher
    if _publisher is None:
        # A TTL of a day lets Redis drop tasks that no page reads any more.
        _publisher = TaskPublisher.from_url(REDIS_URL, ttl=24 * 3600)
    return _publisher


def resize_images(
    publisher: TaskPublisher, task_id: str, paths: Sequence[str]
) -> dict[str, Any]:
    """
    Resize each image (here: pretend to), reporting progress after each one,
    and store the list of outputs as the final state.

    An error is stored with C{fail()} and raised again, so that Celery
    records the task as failed too.
    """
    outputs = []
    try:
        for index, path in enumerate(paths, start=1):
            if not path.endswith(".png"):
                raise ValueError(f"{path} is not a PNG image")
            outputs.append(path.removesuffix(".png") + ".small.png")
            publisher.progress(
                task_id, progress=100 * index // len(paths), current=path
            )
    except Exception as error:
        publisher.fail(task_id, str(error))
        raise
    publisher.done(task_id, progress=100, outputs=outputs)
    return {"outputs": outputs}


if Celery is not None:
    app = Celery("raps_example", broker=os.environ.get("CELERY_BROKER_URL", REDIS_URL))

    @app.task(name="raps_example.resize_images")
    def resize_images_task(task_id: str, paths: list[str]) -> dict[str, Any]:
        return resize_images(publisher(), task_id, paths)
