"""
The admin resource, served on C{[admin] listen} when it is set: only
C{GET /healthz} and C{GET /metrics}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from redis_ajax_push.errors import METHOD_NOT_ALLOWED, NO_SUCH_PATH, ErrorKind

if TYPE_CHECKING:
    from redis_ajax_push.resource import TaskResource


class AdminResource:
    """
    Serves the health check and the metrics of a L{TaskResource} on a
    listener of their own.

    NOTE: unlike the main listener, a path that is not UTF-8 after
    percent-decoding gets Klein's own plain text response here.
    """

    app = Klein()

    def __init__(self, tasks: TaskResource, legacy_status_codes: bool) -> None:
        self._tasks = tasks
        self._legacy_status_codes = legacy_status_codes

    def resource(self) -> Resource:
        """
        Return the Twisted Web resource to serve.
        """
        resource: Resource = self.app.resource()
        return resource

    @app.route("/healthz", methods=["GET"])
    async def healthz(self, request: Request) -> bytes:
        return await self._tasks.health_response(request)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Request) -> bytes:
        return self._tasks.metrics_response(request)

    def _error(self, request: IRequest, kind: ErrorKind) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setResponseCode(200 if self._legacy_status_codes else kind.http_status)
        return kind.body

    @app.handle_errors(NotFound, RequestRedirect)
    def no_such_path(self, request: IRequest, failure: Failure) -> bytes:
        return self._error(request, NO_SUCH_PATH)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        request.setHeader(b"Allow", b"GET, HEAD")
        return self._error(request, METHOD_NOT_ALLOWED)
