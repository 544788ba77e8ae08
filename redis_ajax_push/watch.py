"""
The listener side of one watch or stream: the events that arrive on its
task's channel, queued until the request handler takes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Union

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from redis_ajax_push.errors import (
    INVALID_TASK_DATA,
    KILLED,
    REDIS_UNAVAILABLE,
    TASK_DATA_TOO_LARGE,
    TaskError,
)
from redis_ajax_push.logs import RepeatedWarnings
from redis_ajax_push.protocol import DONE, KILL, UPDATE, parse_task_json
from redis_ajax_push.signing import redact


@dataclass(frozen=True)
class Message:
    """
    An C{update} or C{done} message. C{raw} is the message itself when it
    carries a C{data} field, to relay as it is; otherwise C{None}, and the
    data key contains the new state. C{arrived} is the reactor time
    (C{seconds()}) at which the daemon received it.
    """

    status: str
    raw: bytes | None
    arrived: float = 0.0


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# The subscription was lost and is back: messages may have been missed, so
# the data key must be read again.
RECHECK: Final = _Marker("RECHECK")

# watch_timeout passed: respond with the data key's current value.
TIMEOUT: Final = _Marker("TIMEOUT")

# Python evaluates this alias at import time, where X | Y between classes
# needs Python 3.10. Union keeps the module importable on PyPy 3.9.
Event = Union[Message, _Marker, TaskError]

# More queued events than this, from a client that reads slower than the
# worker publishes, collapse into one RECHECK: the data key has the latest
# state, which is all the client needs.
MAX_QUEUED_EVENTS = 64


class Watch:
    """
    Collects the events of one watch or stream from its channel.

    L{wait} returns the next event. An error (kill, lost subscription,
    shutdown) or a timeout ends the watch: it is returned at once, ahead of
    anything still queued. The Deferreds of L{wait} never fail, so an event
    nobody waits for any more is dropped silently.
    """

    log = Logger()

    # Tens of thousands of watches can be open at once: slots keep each
    # without an instance dict, and the queue and the timers exist only
    # once something needs them.
    __slots__ = (
        "task_id",
        "watch_id",
        "opened_at",
        "_warnings",
        "_reactor",
        "_max_message_bytes",
        "_resubscribe_timeout",
        "_final",
        "_queue",
        "_waiter",
        "_timers",
        "_kills_armed",
    )

    def __init__(
        self,
        task_id: str,
        watch_id: str,
        reactor: IReactorTime,
        max_message_bytes: int,
        resubscribe_timeout: float,
        warnings: RepeatedWarnings | None = None,
    ) -> None:
        self.task_id = task_id
        self._warnings = warnings or RepeatedWarnings(reactor)
        self.watch_id = watch_id
        self._reactor = reactor
        self._max_message_bytes = max_message_bytes
        self._resubscribe_timeout = resubscribe_timeout
        # The reactor time at which the watch was admitted.
        self.opened_at = 0.0
        self._final: TaskError | _Marker | None = None
        self._queue: deque[Event] | None = None
        self._waiter: defer.Deferred[Event] | None = None
        self._timers: dict[str, IDelayedCall] | None = None
        # Kills count only once this watch's own kill came back on the
        # channel: Redis delivers a channel's messages in publish order, so
        # any kill before that echo was published before this watch's and
        # comes from an older watch. Without this, a watch joining the
        # daemon's shared subscription could be ended by an older watch's
        # kill still in flight.
        self._kills_armed = False

    @property
    def ended(self) -> bool:
        return self._final is not None

    @property
    def outcome(self) -> TaskError | _Marker | None:
        """
        The error or L{TIMEOUT} that ended the watch, or C{None}.
        """
        return self._final

    def wait(self) -> defer.Deferred[Event]:
        """
        Return a Deferred that fires with the next event, at once when one
        is already there.
        """
        if self._final is not None:
            return defer.succeed(self._final)
        if self._queue:
            return defer.succeed(self._queue.popleft())
        waiter: defer.Deferred[Event] = defer.Deferred()
        self._waiter = waiter
        return waiter

    def _wake(self) -> None:
        if self._waiter is None:
            return
        if self._final is not None:
            event: Event = self._final
        elif self._queue:
            event = self._queue.popleft()
        else:
            return
        waiter, self._waiter = self._waiter, None
        waiter.callback(event)

    def _push(self, event: Event) -> None:
        if self._waiter is not None and not self._queue and self._final is None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(event)
            return
        if self._queue is None:
            self._queue = deque()
        if len(self._queue) >= MAX_QUEUED_EVENTS:
            self._queue.clear()
            event = RECHECK
        self._queue.append(event)
        self._wake()

    def end(self, outcome: TaskError | _Marker) -> None:
        """
        End the watch with an error or L{TIMEOUT}, unless it has ended
        already.
        """
        if self._final is not None:
            return
        self._final = outcome
        self._cancel_timers()
        self._wake()

    def start_timeout(self, seconds: float) -> None:
        """
        End the watch with L{TIMEOUT} after C{seconds}.
        """
        self._start_timer("watch_timeout", seconds, self.end, TIMEOUT)

    def _start_timer(
        self, name: str, seconds: float, function: Callable[..., object], *args: object
    ) -> None:
        if self._timers is None:
            self._timers = {}
        self._timers[name] = self._reactor.callLater(seconds, function, *args)

    def _cancel_timer(self, name: str) -> None:
        if self._timers is None:
            return
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_timers(self) -> None:
        for name in list(self._timers or ()):
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
            self._warnings.warn(
                self.log,
                "A channel message for task {task_id} has {size} bytes, more "
                "than max_message_bytes",
                TASK_DATA_TOO_LARGE.code,
                task_id=redact(self.task_id),
                size=len(message),
            )
            self.end(TaskError(TASK_DATA_TOO_LARGE, "channel message"))
            return
        try:
            document = parse_task_json(message)
        except TaskError as error:
            self._warnings.warn(
                self.log,
                "Ignored a channel message for task {task_id}: {error}",
                INVALID_TASK_DATA.code,
                task_id=redact(self.task_id),
                error=error.detail,
            )
            return

        status = document.get("status")
        if status == KILL:
            if document.get("src") == self.watch_id:
                self._kills_armed = True
            elif self._kills_armed:
                self.end(TaskError(KILLED))
        elif status in (UPDATE, DONE):
            raw = message if "data" in document else None
            self._push(Message(status, raw, self._reactor.seconds()))
        else:
            self._warnings.warn(
                self.log,
                "Ignored a channel message for task {task_id} with status {status!r}",
                "unknown_status",
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
        # The echo of our own kill may have been lost with the connection;
        # every kill from now on was published after it.
        self._kills_armed = True
        self._push(RECHECK)
