"""
The listener side of one watch: what ends it and with what.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from redis_ajax_push.errors import KILLED, REDIS_UNAVAILABLE, TaskError
from redis_ajax_push.protocol import DONE, KILL, UPDATE, parse_task_json

# What ends a watch: the message to relay as the answer, None to answer with
# the data key's current value, or the error to answer with.
Outcome = bytes | None | TaskError


class Watch:
    """
    Waits on a task's channel for the message that ends the watch.

    L{outcome} fires once, with an L{Outcome}; it never fails, so an outcome
    nobody waits for any more is dropped silently.
    """

    log = Logger()

    def __init__(self, task_id: str, watch_id: str) -> None:
        self.task_id = task_id
        self.watch_id = watch_id
        self.outcome: defer.Deferred[Outcome] = defer.Deferred()

    @property
    def ended(self) -> bool:
        return self.outcome.called

    def _end(self, outcome: Outcome) -> None:
        if not self.outcome.called:
            self.outcome.callback(outcome)

    def message_received(self, message: bytes) -> None:
        if self.outcome.called:
            return
        try:
            document = parse_task_json(message)
        except TaskError as error:
            self.log.warn(
                "Ignored a channel message for task {task_id}: {error}",
                task_id=self.task_id,
                error=error.detail,
            )
            return

        status = document.get("status")
        if status == KILL:
            if document.get("src") != self.watch_id:
                self._end(TaskError(KILLED))
        elif status in (UPDATE, DONE):
            self._end(message if "data" in document else None)
        else:
            self.log.warn(
                "Ignored a channel message for task {task_id} with status {status!r}",
                task_id=self.task_id,
                status=status,
            )

    def subscription_lost(self) -> None:
        self._end(TaskError(REDIS_UNAVAILABLE, "subscriber connection lost"))
