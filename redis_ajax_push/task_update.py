"""
The worker side of the protocol: the data key value and the channel message
of one task change, checked before anything is sent to Redis.

Every change is written by one Lua script, L{SET_AND_PUBLISH}, which stores
the data key and publishes the message in a single atomic step. A watcher
that receives the message therefore always reads data at least as new as
the message, and concurrent writers cannot interleave their SET and PUBLISH.

State formats, as stored in the data key:

  - progress: C{{"status": <status>, ...fields}}, announced with C{update}.
  - done: C{{"status": "done", ...fields}}, announced with C{done}.
  - failed: C{{"status": "done", "failed": true, "error_message": <text>,
    ...fields}}, announced with C{done}. The status stays C{done} because
    the daemon ends a watch at once only for that status: a watch started
    after the failure would otherwise wait forever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis_ajax_push.config import TaskIdConfig
from redis_ajax_push.errors import NOT_FOUND
from redis_ajax_push.protocol import DONE, UPDATE, TaskKeys
from redis_ajax_push.signing import TaskIdSigner, redact, split_signed_id
from redis_ajax_push.task_id import TaskIdValidator

# Statuses that progress() rejects, each with the reason.
RESERVED_STATUSES = {
    DONE: "a done task is final: use done()",
    "failed": "a failed task is final: use fail(), which stores status done",
    UPDATE: "clients read status update with a data field as an inline message",
    "kill": "kill is the channel message that ends older watches",
    "error": "raps answers errors with status error",
}

# Field names that the publisher sets itself, each with the reason.
RESERVED_FIELDS = {
    "status": "the status is set by progress(status=...), done() or fail()",
    "failed": "failed is set only by fail()",
    "error_message": "error_message is set only by fail()",
    "data": "inline messages carry the task state in their data field",
}

# KEYS[1]: the data key. ARGV[1]: the channel, ARGV[2]: the data key value,
# ARGV[3]: the message, ARGV[4]: the TTL in seconds, "0" for none.
# Returns the number of subscribers that received the message.
SET_AND_PUBLISH = """
if ARGV[4] ~= "0" then
    redis.call("SET", KEYS[1], ARGV[2], "EX", ARGV[4])
else
    redis.call("SET", KEYS[1], ARGV[2])
end
return redis.call("PUBLISH", ARGV[1], ARGV[3])
"""


class PublishError(ValueError):
    """
    A task write was rejected before anything was sent to Redis.
    """


class InvalidTaskIdError(PublishError):
    """
    The task id does not pass the daemon's task id rule, or it is not signed
    with the configured secrets.
    """


class InvalidTaskDataError(PublishError):
    """
    The status, a field name or a field value cannot be stored: a reserved
    name, or a value that JSON cannot encode.
    """


class StoredTaskDataError(ValueError):
    """
    The value stored under a data key is not a UTF-8 JSON object.
    """


@dataclass(frozen=True)
class TaskWrite:
    """
    One task change, ready to send: the arguments of L{SET_AND_PUBLISH}.
    """

    data_key: str
    channel: str
    data: bytes
    message: bytes
    ttl: int | None

    @property
    def script_args(self) -> list[str | bytes]:
        return [self.channel, self.data, self.message, str(self.ttl or 0)]


def _encode(document: Mapping[str, Any]) -> bytes:
    text = json.dumps(
        document, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    return text.encode("utf-8")


def _check_fields(fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        if not isinstance(name, str):
            raise InvalidTaskDataError(
                f"field name {name!r} is not a string; JSON object keys are strings"
            )
        if name in RESERVED_FIELDS:
            raise InvalidTaskDataError(
                f"field {name!r} is reserved: {RESERVED_FIELDS[name]}"
            )
        try:
            _encode({name: value})
        # TypeError: an unsupported type; ValueError: NaN, infinity or a
        # circular reference.
        except (TypeError, ValueError) as error:
            raise InvalidTaskDataError(
                f"field {name!r} cannot be stored as JSON: {error}"
            ) from None


def check_ttl(ttl: int | None) -> int | None:
    """
    Return C{ttl} when it is a valid data key lifetime in seconds.

    @raise PublishError: unless it is C{None} or an integer of 1 or more.
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise PublishError(
            f"ttl must be None or a whole number of seconds, 1 or more, not {ttl!r}"
        )
    return ttl


def decode_state(raw: bytes | str) -> dict[str, Any]:
    """
    Decode a data key value read from Redis.

    @raise StoredTaskDataError: when it is not a UTF-8 JSON object.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StoredTaskDataError("the data key value is not UTF-8") from None
    if not isinstance(raw, str):
        raise StoredTaskDataError(
            f"the data key value came back as {type(raw).__name__}; create the "
            "Redis connection without number conversion"
        )
    try:
        document = json.loads(raw)
    except ValueError:
        raise StoredTaskDataError("the data key value is not valid JSON") from None
    if not isinstance(document, dict):
        raise StoredTaskDataError(
            f"the data key value is a JSON {type(document).__name__}, not an object"
        )
    return document


class TaskWriter:
    """
    Builds and checks the writes of task changes under one prefix.

    Task ids must pass the daemon's rule, C{task_id_rule} (the defaults of
    C{[task_id]} when C{None}). A signed id passes when its base does. With
    a C{signer}, every id must also carry a valid tag, as the daemon with
    secrets requires.
    """

    def __init__(
        self,
        prefix: str = "RA_",
        ttl: int | None = None,
        inline: bool = False,
        task_id_rule: TaskIdConfig | None = None,
        signer: TaskIdSigner | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise PublishError(f"prefix must be a non-empty string, not {prefix!r}")
        self.keys = TaskKeys(prefix)
        self.ttl = check_ttl(ttl)
        self.inline = inline
        self._rule = task_id_rule if task_id_rule is not None else TaskIdConfig()
        self._validator = TaskIdValidator(
            self._rule.pattern, self._rule.max_length, signer
        )

    def check_task_id(self, task_id: str) -> None:
        """
        Raise L{InvalidTaskIdError} unless the daemon would accept C{task_id}.
        """
        if not isinstance(task_id, str):
            raise InvalidTaskIdError(
                f"task id must be a string, not {type(task_id).__name__}"
            )
        rejection = self._validator.check(task_id)
        if rejection is None:
            return
        if rejection is NOT_FOUND:
            raise InvalidTaskIdError(
                f"task id {redact(task_id)!r} is not signed, or its tag does not "
                "verify with the configured secrets; sign it with sign_task_id()"
            )
        parts = split_signed_id(task_id)
        if parts is not None and self._validator.check(parts[0]) is None:
            # A signed id; without secrets the publisher cannot verify the
            # tag, and the daemon checks it anyway.
            return
        raise InvalidTaskIdError(
            f"invalid task id {redact(task_id)!r}: it must match "
            f"{self._rule.pattern!r} and have 1 to {self._rule.max_length} "
            "characters (before the tag of a signed id)"
        )

    def data_key(self, task_id: str) -> str:
        """
        Return the data key of C{task_id} after checking the id.
        """
        self.check_task_id(task_id)
        return self.keys.data_key(task_id)

    def progress(
        self, task_id: str, status: str, fields: Mapping[str, Any]
    ) -> TaskWrite:
        """
        Build a non-final change, announced with C{update}.
        """
        if not isinstance(status, str) or not status:
            raise InvalidTaskDataError(
                f"status must be a non-empty string, not {status!r}"
            )
        if status in RESERVED_STATUSES:
            raise InvalidTaskDataError(
                f"status {status!r} is reserved: {RESERVED_STATUSES[status]}"
            )
        return self._build(task_id, {"status": status}, fields, UPDATE)

    def done(self, task_id: str, fields: Mapping[str, Any]) -> TaskWrite:
        """
        Build the final change of a task that succeeded, announced with
        C{done}.
        """
        return self._build(task_id, {"status": DONE}, fields, DONE)

    def fail(
        self, task_id: str, error_message: str, fields: Mapping[str, Any]
    ) -> TaskWrite:
        """
        Build the final change of a task that failed, announced with C{done}.
        """
        if not isinstance(error_message, str):
            raise InvalidTaskDataError(
                f"error_message must be a string, not {type(error_message).__name__}"
            )
        head = {"status": DONE, "failed": True, "error_message": error_message}
        return self._build(task_id, head, fields, DONE)

    def _build(
        self,
        task_id: str,
        head: dict[str, Any],
        fields: Mapping[str, Any],
        announcement: str,
    ) -> TaskWrite:
        self.check_task_id(task_id)
        _check_fields(fields)
        data = _encode({**head, **fields})
        if self.inline:
            # The message embeds the same bytes as the data key, so both
            # always carry the same state.
            message = b'{"status":"%s","data":%s}' % (announcement.encode(), data)
        else:
            message = _encode({"status": announcement})
        return TaskWrite(
            data_key=self.keys.data_key(task_id),
            channel=self.keys.channel(task_id),
            data=data,
            message=message,
            ttl=self.ttl,
        )
