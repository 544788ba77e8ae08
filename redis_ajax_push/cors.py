"""
Cross-origin resource sharing (CORS): the response headers that let pages
on the origins in C{[http] cors_origins} read raps responses, and the
response to C{OPTIONS} preflight requests on C{/task/...}.
"""

from __future__ import annotations

from twisted.web.server import Request

# The methods that /task/... serves; OPTIONS is the preflight itself.
ALLOWED_METHODS = b"GET, HEAD, OPTIONS"

# Request headers that a page may add to a cross-origin request. Browsers
# send Accept without a preflight; Last-Event-ID is the header an
# EventSource client sets when it reconnects.
ALLOWED_HEADERS = b"Accept, Cache-Control, Last-Event-ID, X-Requested-With"

# Time in seconds that a browser may cache a preflight response. Chromium caps
# it at 7200 and Firefox at 86400 (MDN, Access-Control-Max-Age).
PREFLIGHT_MAX_AGE = b"600"


class CORSPolicy:
    """
    The allow-list of origins from C{[http] cors_origins}; C{"*"} in it
    allows every origin.
    """

    def __init__(self, origins: tuple[str, ...]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(
            origin.encode("ascii") for origin in origins if origin != "*"
        )
        self.enabled = bool(origins)

    def allowed_origin(self, request: Request) -> bytes | None:
        """
        Return the request's C{Origin} header when the allow-list contains
        it, else C{None}.
        """
        origin = request.getHeader(b"Origin")
        if origin is None or not self.enabled:
            return None
        if self._any or origin in self._origins:
            return origin
        return None

    def add_response_headers(self, request: Request) -> None:
        """
        Set C{Vary: Origin} on every response while CORS is on, and
        C{Access-Control-Allow-Origin} when the request's origin is allowed.

        Call it before anything is written, because streamed responses send
        their headers with the first heartbeat.
        """
        if not self.enabled:
            return
        # Caches must not serve a response with one origin's header to a
        # request from another origin, or with none to an allowed origin.
        request.responseHeaders.addRawHeader(b"Vary", b"Origin")
        origin = self.allowed_origin(request)
        if origin is not None:
            request.setHeader(b"Access-Control-Allow-Origin", origin)

    def is_rejected_preflight(self, request: Request) -> bool:
        """
        Return true for an C{OPTIONS} request from an origin that is not
        allowed, which raps rejects with 403 C{cors_rejected}.
        """
        origin = request.getHeader(b"Origin")
        return origin is not None and self.allowed_origin(request) is None

    def add_preflight_headers(self, request: Request) -> None:
        """
        Set the headers of a 204 response to an C{OPTIONS} request: C{Allow}
        for every client, and the C{Access-Control-Allow-*} headers for an
        allowed origin.
        """
        request.setHeader(b"Allow", ALLOWED_METHODS)
        if self.allowed_origin(request) is None:
            return
        request.setHeader(b"Access-Control-Allow-Methods", ALLOWED_METHODS)
        request.setHeader(b"Access-Control-Allow-Headers", ALLOWED_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
