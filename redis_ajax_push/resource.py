"""
The HTTP API: C{GET /task/<task id>} in poll, watch and stream mode, and the
browser client C{/static/raps.js} and demo page C{/demo} when the config
turns them on.

The protocol is described in C{docs/protocol.md}; the Redis side of it in
L{redis_ajax_push.protocol}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

from klein import Klein
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from redis_ajax_push.channel import RapsRequest, set_mode, set_outcome
from redis_ajax_push.client_files import StaticFile, client_file, demo_file
from redis_ajax_push.commands import CommandConnection
from redis_ajax_push.config import Config
from redis_ajax_push.cors import CORSPolicy
from redis_ajax_push.errors import (
    CORS_REJECTED,
    INVALID_MODE,
    INVALID_TASK_ID,
    METHOD_NOT_ALLOWED,
    NO_SUCH_PATH,
    NOT_FOUND,
    TASK_DATA_TOO_LARGE,
    ErrorKind,
    TaskError,
)
from redis_ajax_push.health import HEALTHY_BODY, check_health, unhealthy_body
from redis_ajax_push.logs import RepeatedWarnings
from redis_ajax_push.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from redis_ajax_push.metrics import Metrics
from redis_ajax_push.protocol import TaskKeys, parse_task_json
from redis_ajax_push.signing import redact, signer_for
from redis_ajax_push.subscriber import SubscriberPool
from redis_ajax_push.task_id import TaskIdValidator
from redis_ajax_push.watching import WatchHandler

INTERNAL_ERROR = ErrorKind("internal_error", "Internal server error", 500)

# Task ids that Klein's route would pass on unchanged.
_PLAIN_ID = re.compile(rb"[A-Za-z0-9_.~-]+")

# The headers of every task response, and of watches and streams, set when
# the response starts (see RapsRequest.raps_lazy_headers).
_TASK_HEADERS = (
    (b"Content-Type", b"application/json"),
    (b"Cache-Control", b"no-store"),
)
# X-Accel-Buffering stops nginx from holding heartbeats back.
_FOLLOW_HEADERS = (*_TASK_HEADERS, (b"X-Accel-Buffering", b"no"))

_MODES = {b"": "poll", b"poll": "poll", b"watch": "watch", b"stream": "stream"}


def _task_data(task: tuple[bytes, object]) -> bytes:
    return task[0]


class TaskResource:
    """
    Serves poll and watch requests for tasks.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        config: Config,
        commands: CommandConnection,
        pool: SubscriberPool,
        reactor: IReactorTime,
        metrics: Metrics,
        serve_admin: bool = True,
        warnings: RepeatedWarnings | None = None,
    ) -> None:
        """
        With C{serve_admin} false, C{/healthz} and C{/metrics} get
        C{not_found}, because the admin listener serves them.
        """
        self._commands = commands
        self.metrics = metrics
        self._serve_admin = serve_admin
        self._warnings = warnings or RepeatedWarnings(reactor)
        self._pool = pool
        self._reactor = reactor
        self._keys = TaskKeys(config.redis.prefix)
        self._validator = TaskIdValidator(
            config.task_id.pattern, config.task_id.max_length, signer_for(config)
        )
        self._legacy_status_codes = config.http.legacy_status_codes
        self._health_timeout = config.redis.command_timeout
        self._max_message_bytes = config.limits.max_message_bytes
        self._watching = WatchHandler(
            config,
            commands,
            pool,
            self._read_task,
            self._error,
            reactor,
            metrics,
            self._warnings,
        )
        self.watches = self._watching.watches
        self._client: StaticFile | None = (
            client_file() if config.http.serve_client else None
        )
        self._demo: StaticFile | None = demo_file() if config.http.demo else None
        self._cors = CORSPolicy(config.http.cors_origins)

    def resource(self) -> Resource:
        """
        Return the Twisted Web resource to serve.
        """
        return _UTF8PathGuard(
            self.app.resource(), self._legacy_status_codes, self._cors, self.serve_task
        )

    # These routes take every method, so that a file switched off in the
    # config gets not_found for any method, like an unknown path.
    @app.route("/static/raps.js")
    def client_module(self, request: Request) -> bytes:
        return self._static(request, self._client)

    @app.route("/demo")
    def demo_page(self, request: Request) -> bytes:
        return self._static(request, self._demo)

    def _static(self, request: Request, static: StaticFile | None) -> bytes:
        if static is None:
            return self._error(request, TaskError(NO_SUCH_PATH), "")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return self._error(request, TaskError(METHOD_NOT_ALLOWED), "")
        for name, value in static.headers:
            request.setHeader(name, value)
        return static.body

    @app.route("/healthz", methods=["GET"])
    async def healthz(self, request: Request) -> bytes:
        if not self._serve_admin:
            return self._error(request, TaskError(NO_SUCH_PATH), "")
        return await self.health_response(request)

    @app.route("/metrics", methods=["GET"])
    def metrics_page(self, request: Request) -> bytes:
        if not self._serve_admin:
            return self._error(request, TaskError(NO_SUCH_PATH), "")
        return self.metrics_response(request)

    def metrics_response(self, request: Request) -> bytes:
        """
        Write the headers of C{/metrics} and return its body.
        """
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return self.metrics.render()

    async def health_response(self, request: Request) -> bytes:
        """
        Check every Redis connection, write the headers of C{/healthz} and
        return its body.
        """
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        problems = await check_health(
            self._commands, self._pool, self._health_timeout, self._reactor
        )
        if not problems:
            return HEALTHY_BODY
        self.log.warn("Health check failed: {problems}", problems="; ".join(problems))
        request.setResponseCode(503)
        return unhealthy_body(problems)

    @app.route("/task/", methods=["GET"])
    def empty_task_id(self, request: Request) -> bytes:
        return self._error(
            cast(Request, request), TaskError(INVALID_TASK_ID, "empty"), ""
        )

    @app.route("/task/<path:task_id>", methods=["GET"])
    async def task(self, request: Request, task_id: str) -> bytes:
        return await self._respond(request, task_id)

    def _respond(self, request: Request, task_id: str) -> defer.Deferred[bytes]:
        """
        Respond to C{GET /task/<task id>} in the mode its query string names.
        The Deferred fires with the rest of the body, error JSON included.
        It fails with CancelledError when it is cancelled because the client
        hung up, and with any other error only on a bug.
        """
        _, _, query = request.uri.partition(b"?")
        mode = _MODES.get(query)
        set_mode(request, mode or "invalid")
        if isinstance(request, RapsRequest):
            request.raps_lazy_headers = (
                _TASK_HEADERS if mode == "poll" else _FOLLOW_HEADERS
            )
        else:
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
        rejection = self._validator.check(task_id)
        if rejection is None and mode is None:
            rejection = INVALID_MODE
        if rejection is not None or mode is None:
            error = TaskError(rejection or INVALID_MODE)
            return defer.succeed(self._error(request, error, task_id))
        if mode == "poll":
            return self._read_task(task_id).addCallbacks(
                _task_data, self._task_failed, errbackArgs=(request, task_id)
            )
        follow = self._watching.watch if mode == "watch" else self._watching.stream
        return defer.ensureDeferred(follow(request, task_id))

    def _task_failed(self, failure: Failure, request: Request, task_id: str) -> bytes:
        failure.trap(TaskError)
        return self._error(request, cast(TaskError, failure.value), task_id)

    def serve_task(self, request: Request) -> int | None:
        """
        Serve C{GET /task/<task id>} for a plain task id without Klein, or
        return C{None} to leave the request to Klein's route.

        Task requests are nearly all the daemon serves, and Klein's routing
        costs as much as the rest of a poll. A plain id is one that the
        route would pass on unchanged: no percent-encoding, no slash and not
        a dot segment. The others take the route, which decodes them, and
        get the same response.
        """
        raw_id = request.path[len(b"/task/") :]
        if _PLAIN_ID.fullmatch(raw_id) is None or raw_id in (b".", b".."):
            return None
        # Routed: the path segments, a list kept for the request's whole
        # life, are no longer needed.
        del request.postpath
        responding = self._respond(request, raw_id.decode("ascii"))
        if not responding.called:
            # As Klein does: a client that hangs up cancels the response, which
            # ends its watch.
            if isinstance(request, RapsRequest):
                request.raps_cancel_on_hang_up = responding
            else:
                request.notifyFinish().addErrback(lambda _: responding.cancel())
        responding.addBoth(self._finish, request)
        return NOT_DONE_YET

    def _finish(self, body: bytes | Failure, request: Request) -> None:
        # A client that hung up has been counted as disconnected already.
        if request.channel is None:
            return
        if isinstance(body, Failure):
            body = self.internal_error(request, body)
        if body:
            request.write(body)
        request.finish()

    def _read_task(self, task_id: str) -> defer.Deferred[tuple[bytes, object]]:
        """
        Read a task's data key; the Deferred fires with its bytes and the
        value of the C{status} field of its JSON object.

        It fails with L{TaskError} when the key is missing, too large or not
        a JSON object, or when Redis fails.
        """
        reading = self._commands.get(self._keys.data_key(task_id))
        return reading.addCallback(self._check_task_data)

    def _check_task_data(self, raw: bytes | None) -> tuple[bytes, object]:
        if raw is None:
            raise TaskError(NOT_FOUND)
        if len(raw) > self._max_message_bytes:
            raise TaskError(TASK_DATA_TOO_LARGE, f"data key of {len(raw)} bytes")
        return raw, parse_task_json(raw).get("status")

    def _error(self, request: Request, error: TaskError, task_id: str) -> bytes:
        kind = error.kind
        set_outcome(request, kind.code)
        # Client errors (4xx) are routine; only failures on our side (5xx) need
        # an operator.
        if kind.http_status >= 500:
            self._warnings.warn(
                self.log,
                "Request for task {task_id} failed: {error}",
                kind.code,
                task_id=redact(task_id),
                error=str(error),
            )
        # Once a heartbeat went out the status line is sent, and the body is
        # the only place left for the error.
        if not request.startedWriting:
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            request.setResponseCode(
                200 if self._legacy_status_codes else kind.http_status
            )
        return kind.body

    @app.handle_errors(NotFound, RequestRedirect)
    def no_such_path(self, request: IRequest, failure: Failure) -> bytes:
        # The task id route does not match ids with a newline in them, and
        # werkzeug responds to "/task" and "/task//id" with a redirect, which an
        # API client has no use for.
        if request.path == b"/task" or request.path.startswith(b"/task/"):
            return self._error(cast(Request, request), TaskError(INVALID_TASK_ID), "")
        return self._error(cast(Request, request), TaskError(NO_SUCH_PATH), "")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        request.setHeader(b"Allow", b"GET, HEAD")
        return self._error(cast(Request, request), TaskError(METHOD_NOT_ALLOWED), "")

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure(
            "Unexpected error serving {path}",
            failure,
            path=redact(request.path.decode("utf-8", "replace")),
        )
        return self._error(cast(Request, request), TaskError(INTERNAL_ERROR), "")


class _UTF8PathGuard(Resource):
    """
    Responds with the error JSON to requests whose decoded path is not UTF-8.

    Klein responds to them itself, with a plain text body and a logged
    traceback, before any route or error handler of ours runs.
    """

    isLeaf = True

    def __init__(
        self,
        wrapped: Resource,
        legacy_status_codes: bool,
        cors: CORSPolicy,
        serve_task: Callable[[Request], int | None],
    ) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._serve_task = serve_task
        self._legacy_status_codes = legacy_status_codes
        self._cors = cors

    def render(self, request: Request) -> Any:
        # Every response passes here before anything is written, so the CORS
        # headers reach errors and streamed responses too.
        self._cors.add_response_headers(request)
        if request.method == b"GET" and request.path.startswith(b"/task/"):
            served = self._serve_task(request)
            if served is not None:
                return served
        on_task_path = request.path == b"/task" or request.path.startswith(b"/task/")
        # With CORS off, OPTIONS stays a method_not_allowed error.
        if request.method == b"OPTIONS" and on_task_path and self._cors.enabled:
            return self._options(request)
        try:
            b"/".join(request.postpath or []).decode("utf-8")
        except UnicodeDecodeError:
            on_task = request.path.startswith(b"/task/")
            kind = INVALID_TASK_ID if on_task else NO_SUCH_PATH
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            request.setResponseCode(
                200 if self._legacy_status_codes else kind.http_status
            )
            return kind.body
        return self._wrapped.render(request)

    def _options(self, request: Request) -> bytes:
        """
        Respond to an C{OPTIONS} request (a CORS preflight) on C{/task/...}: 204
        with the CORS headers for an allowed origin or a request with no
        C{Origin}, 403 C{cors_rejected} for any other origin.
        """
        if self._cors.is_rejected_preflight(request):
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            request.setResponseCode(
                200 if self._legacy_status_codes else CORS_REJECTED.http_status
            )
            return CORS_REJECTED.body
        self._cors.add_preflight_headers(request)
        request.setResponseCode(204)
        return b""
