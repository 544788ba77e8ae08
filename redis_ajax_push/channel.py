"""
The HTTP site and channel: Twisted's, answering over-long lines with the
error JSON.
"""

from __future__ import annotations

from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from redis_ajax_push.errors import REQUEST_TOO_LARGE


class RapsHTTPChannel(HTTPChannel):
    """
    An L{HTTPChannel} that answers a request line or header line longer
    than C{MAX_LENGTH} (16,384 bytes) with 431 and the error JSON.

    Twisted's own channel closes the connection without a response, which
    a client cannot tell from a crash.
    """

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


class RapsSite(Site):
    """
    A L{Site} whose connections use L{RapsHTTPChannel}.

    NOTE: Twisted's default channel would also offer HTTP/2 over TLS, which
    this plain HTTP/1.1 channel does not.
    """

    protocol = RapsHTTPChannel  # type: ignore[assignment]
