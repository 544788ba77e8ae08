"""
The buffered text observer that twistd uses for raps when it logs to
stdout: the lines it writes and when it writes them.
"""

from __future__ import annotations

import io
import re
import signal
import time

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEventAsClassicLogText, formatTime

from redis_ajax_push.log_output import (
    ACCESS_LINE_KEY,
    FLUSH_DELAY,
    FLUSH_LINES,
    BufferedTextObserver,
)
from redis_ajax_push.testing import free_port
from tests.test_tap import STOP_TIMEOUT, fetch_when_ready
from tests.twistd_process import raps_command, running_twistd

# twistd's time stamp: local time with its UTC offset.
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"


class RunningClock(Clock):
    """
    A fake reactor clock that reports itself running, as the reactor is
    while the daemon serves.
    """

    running = True


def access_event(line: str, when: float = 1_700_000_000.0) -> dict[str, object]:
    return {
        "log_namespace": "raps.access",
        "log_level": LogLevel.info,
        "log_format": "{line}",
        "line": line,
        "log_time": when,
        ACCESS_LINE_KEY: line,
    }


def test_generic_event_as_twistd_writes_it() -> None:
    """
    An event that is not an access line is written exactly as twistd's own
    text observer formats it.
    """
    output = io.StringIO()
    observer = BufferedTextObserver(output, RunningClock())
    event = {
        "log_namespace": "redis_ajax_push.service.RapsService",
        "log_level": LogLevel.warn,
        "log_format": "Stopping: ending {count} open watches",
        "count": 3,
        "log_time": 1_700_000_123.5,
    }

    observer(event)

    expected = formatEventAsClassicLogText(
        event, formatTime=lambda when: formatTime(when)
    )
    assert output.getvalue() == expected


def test_access_line_format() -> None:
    """
    An access line is written as twistd would write it: time stamp, the
    raps.access namespace at level info, then the ready-made line.
    """
    output = io.StringIO()
    clock = RunningClock()
    observer = BufferedTextObserver(output, clock)

    observer(access_event("127.0.0.1 GET /task/a 200 mode=poll outcome=ok 1.0 ms"))
    clock.advance(FLUSH_DELAY)

    assert re.fullmatch(
        STAMP + r" \[raps\.access#info\] 127\.0\.0\.1 GET /task/a 200 "
        r"mode=poll outcome=ok 1\.0 ms\n",
        output.getvalue(),
    )


def test_access_lines_wait_for_flush_delay() -> None:
    """
    Access lines are held back until FLUSH_DELAY has passed since the first
    of them, then written together.
    """
    output = io.StringIO()
    clock = RunningClock()
    observer = BufferedTextObserver(output, clock)

    observer(access_event("first"))
    observer(access_event("second"))
    clock.advance(FLUSH_DELAY / 2)
    held = output.getvalue()
    clock.advance(FLUSH_DELAY / 2)

    assert held == ""
    assert [line.split("] ", 1)[1] for line in output.getvalue().splitlines()] == [
        "first",
        "second",
    ]


def test_full_buffer_written_at_once() -> None:
    """
    FLUSH_LINES waiting access lines are written without waiting for the
    delay.
    """
    output = io.StringIO()
    observer = BufferedTextObserver(output, RunningClock())

    for number in range(FLUSH_LINES):
        observer(access_event(f"line {number}"))

    assert len(output.getvalue().splitlines()) == FLUSH_LINES


def test_other_event_writes_waiting_lines_in_order() -> None:
    """
    Any other event is written at once, after the access lines that came
    before it, so that the log keeps the order of events.
    """
    output = io.StringIO()
    observer = BufferedTextObserver(output, RunningClock())

    observer(access_event("request"))
    observer(
        {
            "log_namespace": "raps",
            "log_level": LogLevel.error,
            "log_format": "Redis went away",
            "log_time": 1_700_000_000.5,
        }
    )

    lines = output.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["request", "Redis went away"]


def test_twistd_text_access_lines(tmp_path, redis_server, redis_client) -> None:
    """
    twistd -n raps, logging to stdout in the default text format, writes the
    access line of a poll as a twistd text line, also when the daemon stops
    within the flush delay.
    """
    redis_client.set("RA_D_tx1", b'{"status": "running"}')
    port = free_port()
    log_path = tmp_path / "twistd.out"
    listen = f"tcp:{port}:interface=127.0.0.1"
    command = raps_command("--listen", listen, "--redis", redis_server.url)
    with running_twistd(command, tmp_path, log_path) as process:
        status, _ = fetch_when_ready(
            f"http://127.0.0.1:{port}/task/tx1", process, log_path
        )
        assert status == 200
        time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0

    log = log_path.read_text()
    access = [line for line in log.splitlines() if "[raps.access#info]" in line]
    assert len(access) == 1
    assert re.fullmatch(
        STAMP + r" \[raps\.access#info\] 127\.0\.0\.1 GET /task/tx1 200 "
        r"mode=poll outcome=ok [\d.]+ ms",
        access[0],
    )
    assert re.search(STAMP + r" \[[^]]+\] Server Shut Down\.", log)
