"""
The errors a client can receive, each with a stable code, the sentence shown
to people and the HTTP status used while the status line is still unsent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ErrorKind:
    """
    One kind of client-visible error and its pre-encoded JSON body.
    """

    code: str
    message: str
    http_status: int
    body: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        document = {
            "status": "error",
            "error_message": self.message,
            "error": self.code,
        }
        object.__setattr__(self, "body", json.dumps(document).encode("utf-8"))


# The messages of the first four match the Node.js redis-ajax-push, so that
# pages written for it keep working.
NOT_FOUND = ErrorKind("not_found", "Not Found", 404)
INVALID_MODE = ErrorKind("invalid_mode", "Invalid mode", 400)
KILLED = ErrorKind(
    "killed", "Killed due to another concurrent request for this task", 409
)
REDIS_ERROR = ErrorKind("redis_error", "Redis error", 502)

INVALID_TASK_ID = ErrorKind("invalid_task_id", "Invalid task id", 400)
INVALID_TASK_DATA = ErrorKind(
    "invalid_task_data", "Task data is not a JSON object", 502
)
REDIS_UNAVAILABLE = ErrorKind("redis_unavailable", "Redis unavailable", 503)
TASK_DATA_TOO_LARGE = ErrorKind(
    "task_data_too_large", "Task data is larger than max_message_bytes", 502
)
BUSY = ErrorKind("busy", "Too many open watches, try again later", 503)
TOO_MANY_WATCHES = ErrorKind(
    "too_many_watches", "Too many open watches from this client", 429
)
SHUTTING_DOWN = ErrorKind("shutting_down", "The server is shutting down", 503)
REQUEST_TOO_LARGE = ErrorKind(
    "request_too_large", "Request line or header field is too long", 431
)
METHOD_NOT_ALLOWED = ErrorKind("method_not_allowed", "Method not allowed", 405)
NO_SUCH_PATH = ErrorKind("not_found", "Not Found", 404)
CORS_REJECTED = ErrorKind(
    "cors_rejected", "Origin is not in the http.cors_origins list", 403
)


class TaskError(Exception):
    """
    Ends a request with the error JSON of C{kind}.
    """

    def __init__(self, kind: ErrorKind, detail: str = "") -> None:
        super().__init__(kind.code if not detail else f"{kind.code}: {detail}")
        self.kind = kind
        self.detail = detail
