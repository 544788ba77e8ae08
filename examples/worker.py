"""
A plain worker that runs a fake job and reports its progress to raps.

The web application makes the task id with `raps mint`, or `mint_task_id()`
in Python, and hands it to the worker and to the page. The page watches
`/task/<task id>?watch` while the worker runs:

    python examples/worker.py TASK_ID --redis redis://127.0.0.1:6379/0

The worker needs no task id secret: it only writes the task, and the daemon
checks the signature of the id when the page asks for it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from redis_ajax_push.publisher import TaskPublisher


class JobError(Exception):
    """
    The fake job failed, as `--fail-at` requests.
    """


def run_job(
    publisher: TaskPublisher,
    task_id: str,
    steps: int = 5,
    delay: float = 1.0,
    fail_at: int | None = None,
) -> dict[str, Any]:
    """
    Run the fake job: C{steps} steps of C{delay} seconds, each reported as
    progress, then the result stored as the final state, which is returned.

    A step that raises stores the failure with C{fail()}, so that the page
    stops waiting, and re-raises the error.
    """
    publisher.progress(task_id, progress=0, step=0, steps=steps)
    try:
        for step in range(1, steps + 1):
            time.sleep(delay)
            if step == fail_at:
                raise JobError(f"step {step} failed")
            publisher.progress(
                task_id, progress=100 * step // steps, step=step, steps=steps
            )
    except Exception as error:
        publisher.fail(task_id, str(error), step=step, steps=steps)
        raise
    result = {"rows": steps * 100}
    publisher.done(task_id, progress=100, result=result)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task_id", help="task id, signed when the daemon has secrets")
    parser.add_argument(
        "--redis",
        default=os.environ.get("RAPS_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL (default: $RAPS_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument("--steps", type=int, default=5, help="number of steps")
    parser.add_argument(
        "--delay", type=float, default=1.0, help="seconds per step (default: 1)"
    )
    parser.add_argument("--fail-at", type=int, help="fail at this step")
    parser.add_argument(
        "--ttl", type=int, help="lifetime of the task's data in seconds"
    )
    parser.add_argument(
        "--inline", action="store_true", help="send each state in its message"
    )
    arguments = parser.parse_args()

    publisher = TaskPublisher.from_url(
        arguments.redis, ttl=arguments.ttl, inline=arguments.inline
    )
    try:
        result = run_job(
            publisher,
            arguments.task_id,
            arguments.steps,
            arguments.delay,
            arguments.fail_at,
        )
    except JobError as error:
        print(f"worker: task {arguments.task_id} failed: {error}", file=sys.stderr)
        return 1
    print(f"worker: task {arguments.task_id} done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
