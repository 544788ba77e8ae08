"""
The listener side of one watch: what ends it and with what.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from redis_ajax_push.errors import (
    KILLED,
    REDIS_UNAVAILABLE,
    TASK_DATA_TOO_LARGE,
    TaskError,
)
from redis_ajax_push.protocol import DONE, KILL, UPDATE, parse_task_json
from redis_ajax_push.signing import redact


class _Recheck:
    """
    The type of L{RECHECK}.
    """

    def __repr__(self) -> str:
        return "RECHECK"


# The subscription was lost and is back: messages may have been missed, so
# the data key must be read again before waiting on.
RECHECK: Final = _Recheck()

# What ends a watch: the message to relay as the answer, None to answer with
# the data key's current value, or the error to answer with.
Outcome = bytes | None | TaskError

_UNSET: Final = object()


class Watch:
    """
    Waits on a task's channel for the message that ends the watch.

    L{wait} returns the next event: a final L{Outcome}, or L{RECHECK}. The
    Deferreds it returns never fail, so an event nobody waits for any more
    is dropped silently.
    """

    log = Logger()

    def __init__(
        self,
        task_id: str,
        watch_id: str,
        reactor: IReactorTime,
        max_message_bytes: int,
        resubscribe_timeout: float,
    ) -> None:
        self.task_id = task_id
        self.watch_id = watch_id
        self._reactor = reactor
        self._max_message_bytes = max_message_bytes
        self._resubscribe_timeout = resubscribe_timeout
        self._final: object = _UNSET
        self._recheck = False
        self._waiter: defer.Deferred[Outcome | _Recheck] | None = None
        self._timers: dict[str, IDelayedCall] = {}

    @property
    def ended(self) -> bool:
        return self._final is not _UNSET

    def _take_event(self) -> Outcome | _Recheck | object:
        """
        Return the final outcome if there is one, else a pending RECHECK
        (consuming it), else L{_UNSET}.
        """
        if self._final is not _UNSET:
            return self._final
        if self._recheck:
            self._recheck = False
            return RECHECK
        return _UNSET

    def wait(self) -> defer.Deferred[Outcome | _Recheck]:
        """
        Return a Deferred that fires with the next event, at once when one
        is already there.
        """
        event = self._take_event()
        if event is not _UNSET:
            return defer.succeed(cast(Outcome | _Recheck, event))
        self._waiter = defer.Deferred()
        return self._waiter

    def end(self, outcome: Outcome) -> None:
        """
        End the watch with C{outcome}, unless it has ended already.
        """
        if self._final is not _UNSET:
            return
        self._final = outcome
        self._cancel_timers()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is None:
            return
        event = self._take_event()
        if event is _UNSET:
            return
        waiter, self._waiter = self._waiter, None
        waiter.callback(cast(Outcome | _Recheck, event))

    def start_timeout(self, seconds: float) -> None:
        """
        End the watch after C{seconds} with the data key's current value,
        as if an update had arrived.
        """
        self._start_timer("watch_timeout", seconds, self.end, None)

    def _start_timer(
        self, name: str, seconds: float, function: Callable[..., object], *args: object
    ) -> None:
        self._timers[name] = self._reactor.callLater(seconds, function, *args)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_timers(self) -> None:
        for name in list(self._timers):
            self._cancel_timer(name)

    def close(self) -> None:
        """
        Release the timers; called when the request is over.
        """
        self._cancel_timers()

    def message_received(self, message: bytes) -> None:
        if self.ended:
            return
        if len(message) > self._max_message_bytes:
            self.log.warn(
                "A channel message for task {task_id} has {size} bytes, more "
                "than max_message_bytes",
                task_id=redact(self.task_id),
                size=len(message),
            )
            self.end(TaskError(TASK_DATA_TOO_LARGE, "channel message"))
            return
        try:
            document = parse_task_json(message)
        except TaskError as error:
            self.log.warn(
                "Ignored a channel message for task {task_id}: {error}",
                task_id=redact(self.task_id),
                error=error.detail,
            )
            return

        status = document.get("status")
        if status == KILL:
            if document.get("src") != self.watch_id:
                self.end(TaskError(KILLED))
        elif status in (UPDATE, DONE):
            self.end(message if "data" in document else None)
        else:
            self.log.warn(
                "Ignored a channel message for task {task_id} with status {status!r}",
                task_id=redact(self.task_id),
                status=status,
            )

    def subscription_lost(self) -> None:
        if self.ended:
            return
        self._start_timer(
            "resubscribe",
            self._resubscribe_timeout,
            self.end,
            TaskError(REDIS_UNAVAILABLE, "not subscribed again in time"),
        )

    def subscription_restored(self) -> None:
        if self.ended:
            return
        self._cancel_timer("resubscribe")
        self._recheck = True
        self._wake()
