"""
The open watches of one daemon: admission against the limits, and ending
them all at shutdown.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from redis_ajax_push.errors import BUSY, SHUTTING_DOWN, TOO_MANY_WATCHES, TaskError
from redis_ajax_push.watch import Watch


class WatchRegistry:
    """
    Counts open watches, in all and per client address, and refuses new ones
    beyond C{max_watches} or C{max_watches_per_client} (0 means no limit).
    """

    def __init__(self, max_watches: int, max_watches_per_client: int) -> None:
        self._max_watches = max_watches
        self._max_per_client = max_watches_per_client
        self._clients: dict[Watch, str] = {}
        self._per_client: Counter[str] = Counter()
        self._closing = False
        self._emptied: list[defer.Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._clients)

    def add(self, watch: Watch, client: str) -> None:
        """
        Register a new watch from C{client}.

        @raise TaskError: L{SHUTTING_DOWN} once L{end_all} was called, L{BUSY}
            at the global limit, L{TOO_MANY_WATCHES} at the client's limit.
        """
        if self._closing:
            raise TaskError(SHUTTING_DOWN)
        if self._max_watches and len(self._clients) >= self._max_watches:
            raise TaskError(BUSY, f"{len(self._clients)} open watches")
        if self._max_per_client and self._per_client[client] >= self._max_per_client:
            raise TaskError(TOO_MANY_WATCHES, f"client {client}")
        self._clients[watch] = client
        self._per_client[client] += 1

    def remove(self, watch: Watch) -> None:
        client = self._clients.pop(watch)
        self._per_client[client] -= 1
        if not self._per_client[client]:
            del self._per_client[client]
        if not self._clients:
            emptied, self._emptied = self._emptied, []
            for waiter in emptied:
                waiter.callback(None)

    def end_all(self, reactor: IReactorTime, grace: float) -> defer.Deferred[None]:
        """
        Refuse new watches, end every open one with L{SHUTTING_DOWN}, and
        return a Deferred that fires when all have responded, or after
        C{grace} seconds at the latest.
        """
        self._closing = True
        for watch in list(self._clients):
            watch.end(TaskError(SHUTTING_DOWN))
        if not self._clients:
            return defer.succeed(None)
        emptied: defer.Deferred[None] = defer.Deferred()
        self._emptied.append(emptied)
        emptied.addTimeout(grace, reactor)
        emptied.addErrback(_ignore_timeout)
        return emptied


def _ignore_timeout(failure: Failure) -> None:
    failure.trap(defer.TimeoutError)
