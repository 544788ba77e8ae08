"""
Logging helpers: the access log line of each request, the JSON lines
observer for C{[log] format = "json"}, the observer of the worker processes
of C{[http] workers}, and the rate limit on repeated warnings.
"""

from __future__ import annotations

import atexit
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    Logger,
    LogLevel,
    eventAsJSON,
    formatEvent,
    jsonFileLogObserver,
)

from redis_ajax_push.channel import RapsRequest
from redis_ajax_push.log_output import ACCESS_LINE_KEY, BufferedTextObserver
from redis_ajax_push.metrics import Metrics
from redis_ajax_push.signing import redact

# Module level, because a Logger read through an instance takes the class
# name as its namespace.
ACCESS_NAMESPACE = "raps.access"
_access_log = Logger(namespace=ACCESS_NAMESPACE)

_ACCESS_FORMAT = (
    "{client} {method} {path} {status} mode={mode} outcome={outcome} {duration_ms} ms"
)

# Control characters, which would let a request path forge log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _log_path(request: RapsRequest) -> str:
    """
    Return the request path for a log line: percent-decoded, so that an
    encoded signature tag is redacted too, without the query string, and
    with control characters escaped.
    """
    path = unquote_to_bytes(request.path).decode("utf-8", "replace")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", redact(path))


class RequestRecorder:
    """
    Counts each finished request in the metrics and, when C{access_log} is
    true, logs one access line with named fields for it.
    """

    def __init__(self, metrics: Metrics, access_log: bool) -> None:
        self._metrics = metrics
        self._access_log = access_log

    def __call__(self, request: RapsRequest) -> None:
        mode = request.raps_mode
        outcome = request.raps_outcome
        if mode is not None:
            self._metrics.count_request(mode, outcome)
        if not self._access_log:
            return
        client = getattr(request.getClientAddress(), "host", "-")
        fields = {
            "client": client,
            "method": request.method.decode("ascii", "replace"),
            "path": _log_path(request),
            "status": request.code,
            "mode": mode or "-",
            "outcome": outcome,
            "duration_ms": round((time.monotonic() - request.raps_started) * 1000, 1),
        }
        # The event Logger.info would build, without its checks, plus the
        # line ready made for BufferedTextObserver: one of these per request
        # is the busiest log traffic of the daemon.
        _access_log.observer(
            {
                **fields,
                "log_logger": _access_log,
                "log_level": LogLevel.info,
                "log_namespace": ACCESS_NAMESPACE,
                "log_source": None,
                "log_format": _ACCESS_FORMAT,
                "log_time": time.time(),
                ACCESS_LINE_KEY: _ACCESS_FORMAT.format(**fields),
            }
        )


def json_log_observer() -> FileLogObserver:
    """
    Build an observer that writes each log event to stdout as one JSON
    object per line; twistd calls it when C{[log] format = "json"}.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


def worker_log_observer(worker: int, log_format: str, stream: TextIO) -> Any:
    """
    Build the observer of worker process number C{worker}: it writes each
    event to C{stream} in C{log_format} ("text" or "json") as twistd would,
    with the field C{worker} added.

    A text line shows the field at the end of its system column, as in
    C{[raps.access#info worker=1]}.
    """
    if log_format == "json":
        # What jsonFileLogObserver(stream, recordSeparator="") writes.
        return FileLogObserver(
            stream, lambda event: eventAsJSON({**event, "worker": worker}) + "\n"
        )
    observer = BufferedTextObserver(stream, worker=worker)
    atexit.register(observer.flush)
    return observer


# A warning logged more often than this within WARNING_WINDOW seconds is
# held back, and one summary line reports how many were held back.
WARNING_LIMIT = 5
WARNING_WINDOW = 10.0


@dataclass
class _Window:
    log: Logger
    started: float
    count: int = 0
    held: int = 0
    last_text: str = ""
    summary: IDelayedCall | None = None


class RepeatedWarnings:
    """
    Logs warnings through a L{Logger}, but at most C{limit} per C{window}
    seconds for the same format and error code. The others are counted,
    and at the end of the window one line reports how many were held back.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        limit: int = WARNING_LIMIT,
        window: float = WARNING_WINDOW,
    ) -> None:
        self._reactor = reactor
        self.limit = limit
        self._window = window
        self._windows: dict[tuple[str, str], _Window] = {}

    def warn(self, log: Logger, log_format: str, code: str, **fields: Any) -> None:
        """
        Log C{log_format} with C{fields} as a warning on C{log}, unless the
        same format and C{code} were logged C{limit} times in this window.
        """
        key = (log_format, code)
        now = self._reactor.seconds()
        window = self._windows.get(key)
        if window is None or now - window.started >= self._window:
            window = self._windows[key] = _Window(log=log, started=now)
        window.count += 1
        if window.count <= self.limit:
            log.warn(log_format, **fields)
            return
        window.held += 1
        window.last_text = formatEvent({"log_format": log_format, **fields})
        if window.summary is None:
            delay = max(0.0, window.started + self._window - now)
            window.summary = self._reactor.callLater(
                delay, self._summarize, key, window
            )

    def _summarize(self, key: tuple[str, str], window: _Window) -> None:
        if self._windows.get(key) is window:
            del self._windows[key]
        window.log.warn(
            "{warning} ... repeated {count} more times in the last {seconds:g} s",
            warning=window.last_text,
            count=window.held,
            seconds=self._window,
        )

    def stop(self) -> None:
        """
        Cancel the pending summaries and log them at once.
        """
        for key, window in list(self._windows.items()):
            call = window.summary
            if call is not None and call.active():
                call.cancel()
                self._summarize(key, window)
        self._windows.clear()
