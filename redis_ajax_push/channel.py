"""
The HTTP site, channel and request: Twisted's, responding to over-long lines
with the error JSON and reporting each finished request once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from redis_ajax_push.errors import REQUEST_TOO_LARGE


class _SharedAddresses(dict):
    """
    The server addresses seen, each kept once; forgotten wholesale past
    C{limit} entries, which only a server on many addresses reaches.
    """

    limit = 256

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if len(self) >= self.limit and key not in self:
            self.clear()
        return super().setdefault(key, default)


_SHARED_ADDRESSES = _SharedAddresses()


class RapsHTTPChannel(HTTPChannel):
    """
    An L{HTTPChannel} that responds to a request line or header line longer
    than C{MAX_LENGTH} (16,384 bytes) with 431 and the error JSON.

    Twisted's own channel closes the connection without a response, which
    a client cannot tell from a crash.
    """

    def getHost(self) -> Any:
        # Every request keeps the server's address, a new object per request
        # in Twisted; requests on one listening address share one instead.
        address = super().getHost()
        return _SHARED_ADDRESSES.setdefault(address, address)

    def lineLengthExceeded(self, line: bytes) -> None:
        body = REQUEST_TOO_LARGE.body
        assert self.transport is not None  # connected: it is receiving data
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Cache-Control: no-store\r\n"
            b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.loseConnection()


class RapsRequest(Request):
    """
    A L{Request} that carries the mode and outcome of a task request, for
    the access log and the metrics.

    C{raps_mode} is C{None} outside C{/task/}. C{raps_outcome} is C{ok}
    until an error sets its code, or C{disconnected} when the client closed
    the connection before the response was finished.
    """

    raps_mode: str | None = None
    raps_outcome = "ok"
    # Cancelled when the client hangs up before the response is finished: a
    # cheaper hook than a notifyFinish Deferred, for requests that wait long.
    raps_cancel_on_hang_up: Deferred[Any] | None = None
    # Headers that the response gets when it starts, unless they were set
    # before: a task request shares one tuple instead of holding its own
    # header entries while it waits, which for a watch is for long.
    raps_lazy_headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raps_started = time.monotonic()
        self._raps_reported = False

    def raps_report(self) -> None:
        """
        Hand the request to the site's C{on_request_done}, once.
        """
        if self._raps_reported:
            return
        self._raps_reported = True
        on_done = getattr(self.site, "on_request_done", None)
        if on_done is not None:
            on_done(self)

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self.raps_lazy_headers:
            headers = self.responseHeaders
            for name, value in self.raps_lazy_headers:
                if not headers.hasHeader(name):
                    headers.setRawHeaders(name, [value])
        super().write(data)

    def connectionLost(self, reason: Any) -> None:
        if not self.finished:
            self.raps_outcome = "disconnected"
            self.raps_report()
        super().connectionLost(reason)
        if not self.finished and self.raps_cancel_on_hang_up is not None:
            responding, self.raps_cancel_on_hang_up = self.raps_cancel_on_hang_up, None
            responding.cancel()

    def gotLength(self, length: int | None) -> None:
        # Twisted gives every request a BytesIO for its body; raps serves
        # only GET, HEAD and OPTIONS, and thousands of watches wait at once.
        if length == 0:
            self.content = _NO_BODY
            return
        super().gotLength(length)


class _NoBody:
    """
    The content of a request without a body: reading it returns nothing.
    """

    def read(self, size: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        raise ValueError("a request without a body got body data")

    def close(self) -> None:
        pass


_NO_BODY = _NoBody()


def set_outcome(request: Any, outcome: str) -> None:
    """
    Record C{outcome} (an error code) as the outcome of C{request}.
    """
    if isinstance(request, RapsRequest):
        request.raps_outcome = outcome


def set_mode(request: Any, mode: str) -> None:
    """
    Record C{mode} (poll, watch, stream or invalid) as the mode of
    C{request}.
    """
    if isinstance(request, RapsRequest):
        request.raps_mode = mode


class RapsSite(Site):
    """
    A L{Site} whose connections use L{RapsHTTPChannel} and whose requests
    are L{RapsRequest}s.

    Twisted's own access log line is off: C{on_request_done}, when set, is
    called once per request instead, and writes raps's own line.

    NOTE: Twisted's default channel would also offer HTTP/2 over TLS, which
    this plain HTTP/1.1 channel does not.
    """

    protocol = RapsHTTPChannel  # type: ignore[assignment]
    requestFactory = RapsRequest

    def __init__(
        self,
        resource: Any,
        on_request_done: Callable[[RapsRequest], None] | None = None,
    ) -> None:
        super().__init__(resource)
        self.on_request_done = on_request_done

    def log(self, request: Any) -> None:
        # Called by Request.finish; requests whose client hung up first
        # report themselves in connectionLost.
        if isinstance(request, RapsRequest):
            request.raps_report()
