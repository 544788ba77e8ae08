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

# The wheel turns SLOTS times per heartbeat interval, so a response's first
# heartbeat comes between 9/10 of the interval and the full interval after
# it joined, and the next ones exactly one interval apart.
SLOTS = 10


class HeartbeatSlot:
    """
    One response's place on the wheel; L{HeartbeatWheel.leave} takes it.
    """

    __slots__ = ("request", "payload", "slot")

    def __init__(self, request: Request, payload: bytes, slot: int) -> None:
        self.request = request
        self.payload = payload
        self.slot = slot


class HeartbeatWheel:
    """
    Writes each joined response's payload once per C{interval} seconds
    until it leaves.

    The wheel has L{SLOTS} slots and turns one slot per tick of
    C{interval / SLOTS} seconds, writing the payloads of that slot's
    responses. A response joins the slot the wheel reaches one full turn
    later. The LoopingCall runs only while a response is on the wheel.
    """

    log = Logger()

    def __init__(
        self,
        interval: float,
        reactor: IReactorTime,
        on_heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self._slots: list[dict[int, HeartbeatSlot]] = [{} for _ in range(SLOTS)]
        self._position = 0
        self._count = 0
        self._on_heartbeat = on_heartbeat
        self._tick = interval / SLOTS
        self._turning = LoopingCall(self._turn)
        self._turning.clock = reactor

    def join(self, request: Request, payload: bytes) -> HeartbeatSlot:
        """
        Start writing C{payload} to C{request} every interval.
        """
        entry = HeartbeatSlot(request, payload, self._position)
        self._slots[self._position][id(entry)] = entry
        self._count += 1
        if not self._turning.running:
            self._turning.start(self._tick, now=False)
        return entry

    def leave(self, entry: HeartbeatSlot) -> None:
        """
        Stop the heartbeats of C{entry}; leaving twice is harmless.
        """
        if self._slots[entry.slot].pop(id(entry), None) is None:
            return
        self._count -= 1
        if not self._count and self._turning.running:
            self._turning.stop()

    def _turn(self) -> None:
        self._position = (self._position + 1) % SLOTS
        for entry in list(self._slots[self._position].values()):
            try:
                entry.request.write(entry.payload)
            except Exception:
                # One broken response must not stop the others' heartbeats.
                self.log.failure("Writing a heartbeat failed")
                self.leave(entry)
                continue
            self._on_heartbeat()
