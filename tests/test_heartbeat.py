"""
The heartbeat wheel, on a fake clock: when heartbeats are written, and what
stops them.
"""

from __future__ import annotations

from itertools import pairwise

from twisted.internet.task import Clock

from redis_ajax_push.heartbeat import HeartbeatWheel


class RecordingRequest:
    """
    Records what is written to it, or fails every write.
    """

    def __init__(self, clock: Clock, fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.writes: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("connection gone")
        self.writes.append((self.clock.seconds(), data))


def advance(clock: Clock, seconds: float, step: float = 0.5) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_heartbeats_one_interval_apart() -> None:
    """
    A joined response gets its payload once per interval, the first one no
    earlier than 99/100 of an interval after it joined.
    """
    clock = Clock()
    wheel = HeartbeatWheel(10.0, clock)
    advance(clock, 3.5)
    request = RecordingRequest(clock)
    wheel.join(request, b"\n")  # type: ignore[arg-type]

    advance(clock, 35.0)

    times = [when - 3.5 for when, _ in request.writes]
    assert len(times) == 3
    assert 9.9 <= times[0] <= 10.0
    assert [round(b - a, 6) for a, b in pairwise(times)] == [10.0, 10.0]
    assert {data for _, data in request.writes} == {b"\n"}


def test_leave_stops_heartbeats_and_timer() -> None:
    """
    After the last response leaves, nothing more is written and the wheel
    leaves no delayed call in the reactor.
    """
    clock = Clock()
    wheel = HeartbeatWheel(10.0, clock)
    request = RecordingRequest(clock)
    slot = wheel.join(request, b": heartbeat\n\n")  # type: ignore[arg-type]
    advance(clock, 10.0)
    wheel.leave(request, slot)  # type: ignore[arg-type]
    wheel.leave(request, slot)  # type: ignore[arg-type]

    advance(clock, 50.0)

    assert len(request.writes) == 1
    assert clock.getDelayedCalls() == []


def test_failed_write_drops_only_that_response() -> None:
    """
    A response whose write raises leaves the wheel; the others on the same
    slot keep their heartbeats.
    """
    clock = Clock()
    wheel = HeartbeatWheel(10.0, clock)
    broken = RecordingRequest(clock, fail=True)
    healthy = RecordingRequest(clock)
    wheel.join(broken, b"\n")  # type: ignore[arg-type]
    wheel.join(healthy, b"\n")  # type: ignore[arg-type]

    advance(clock, 30.0)

    assert len(healthy.writes) == 3
    assert broken.writes == []


def test_heartbeats_counted() -> None:
    """
    Each written heartbeat calls on_heartbeat once.
    """
    clock = Clock()
    counted = []
    wheel = HeartbeatWheel(10.0, clock, lambda: counted.append(1))
    for _ in range(3):
        wheel.join(RecordingRequest(clock), b"\n")  # type: ignore[arg-type]

    advance(clock, 20.0)

    assert len(counted) == 6


def test_busy_reactor_late_not_skipped() -> None:
    """
    When the reactor is busy for several ticks, every slot passed over gets
    its heartbeats once it runs again: each response on the wheel gets one.
    """
    clock = Clock()
    wheel = HeartbeatWheel(10.0, clock)
    requests = []
    for _ in range(100):
        request = RecordingRequest(clock)
        wheel.join(request, b"\n")  # type: ignore[arg-type]
        requests.append(request)
        clock.advance(0.1)

    clock.advance(15.0)

    assert [len(request.writes) for request in requests] == [1] * 100


def test_short_interval_keeps_ticks_apart() -> None:
    """
    A heartbeat interval too short for a hundred slots gets fewer, so that
    the wheel does not turn more often than every 10 ms, and still writes
    once per interval.
    """
    clock = Clock()
    wheel = HeartbeatWheel(0.05, clock)
    request = RecordingRequest(clock)
    wheel.join(request, b"\n")  # type: ignore[arg-type]

    first_ticks = [round(call.getTime(), 6) for call in clock.getDelayedCalls()]
    clock.advance(0.01)
    clock.advance(0.04)

    assert first_ticks == [0.01]
    assert len(request.writes) == 1
