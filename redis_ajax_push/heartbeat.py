"""
Heartbeats: the bytes written to waiting watches and streams so that
clients and proxies see the connection is alive.

One L{HeartbeatWheel} serves every response of a daemon from a single
L{LoopingCall}, rather than a timer per response: tens of thousands of open
watches then cost one dict entry each instead of a LoopingCall, a Deferred
and a delayed call in the reactor.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

# The wheel turns one slot per tick, and a tick is a hundredth of the
# interval. A response's first heartbeat therefore comes between 99/100 of
# the interval and the full interval after it joined. The writes of all
# heartbeats are spread over a hundred moments per interval rather than
# bunched. Ticks are never shorter than MIN_TICK seconds, so short intervals
# get fewer slots.
MAX_SLOTS = 100
MIN_TICK = 0.01


class HeartbeatWheel:
    """
    Writes each joined response's payload once per C{interval} seconds
    until it leaves.

    The wheel turns one slot per tick (see L{MAX_SLOTS}), writing the
    payloads of that slot's responses. A response joins the slot the wheel
    reaches one full turn later. The LoopingCall runs only while a response
    is on the wheel.
    """

    log = Logger()

    def __init__(
        self,
        interval: float,
        reactor: IReactorTime,
        on_heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        slots = max(1, min(MAX_SLOTS, round(interval / MIN_TICK)))
        # Each slot maps its responses to their payloads.
        self._slots: list[dict[Request, bytes]] = [{} for _ in range(slots)]
        self._position = 0
        self._count = 0
        self._on_heartbeat = on_heartbeat
        self._tick = interval / slots
        self._turning = LoopingCall.withCount(self._turn)
        self._turning.clock = reactor

    def join(self, request: Request, payload: bytes) -> int:
        """
        Start writing C{payload} to C{request} every interval, and return
        the slot to give to L{leave}.
        """
        slot = self._position
        self._slots[slot][request] = payload
        self._count += 1
        if not self._turning.running:
            self._turning.start(self._tick, now=False)
        return slot

    def leave(self, request: Request, slot: int) -> None:
        """
        Stop the heartbeats of C{request}, which joined C{slot}; leaving
        twice is harmless.
        """
        if self._slots[slot].pop(request, None) is None:
            return
        self._count -= 1
        if not self._count and self._turning.running:
            self._turning.stop()

    def _turn(self, ticks: int) -> None:
        # After a busy reactor missed ticks, LoopingCall calls once for all
        # of them. Every slot passed over gets its heartbeats, late rather
        # than never.
        for _ in range(min(ticks, len(self._slots))):
            self._position = (self._position + 1) % len(self._slots)
            self._beat(self._position)

    def _beat(self, slot: int) -> None:
        for request, payload in list(self._slots[slot].items()):
            try:
                request.write(payload)
            except Exception:
                # One broken response must not stop the others' heartbeats.
                self.log.failure("Writing a heartbeat failed")
                self.leave(request, slot)
                continue
            self._on_heartbeat()
