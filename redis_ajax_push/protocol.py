"""
The wire protocol shared with workers and with other raps instances.

A worker stores a task's state as a JSON object under the data key
C{<prefix>D_<task id>} and announces changes on the channel
C{<prefix>SC_<task id>}. A channel message is a JSON object whose C{status}
is one of:

  - C{update} or C{done}: the task changed. When the message has a C{data}
    field it is the whole response and is relayed as it is; otherwise the
    watcher reads the data key again.
  - C{kill}: a newer watch of the task started; C{src} is that watch's id.
    Every older watch of the task ends with the C{killed} error, on any
    instance sharing the Redis.

Any other message is logged and ignored. The data key's own C{status} is
free-form except for C{done}, which ends a watch at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis_ajax_push.errors import INVALID_TASK_DATA, TaskError

UPDATE = "update"
DONE = "done"
KILL = "kill"


@dataclass(frozen=True)
class TaskKeys:
    """
    Builds the Redis names for task ids under one prefix.
    """

    prefix: str = "RA_"

    def data_key(self, task_id: str) -> str:
        return f"{self.prefix}D_{task_id}"

    def channel(self, task_id: str) -> str:
        return f"{self.prefix}SC_{task_id}"


def _reject_constant(name: str) -> None:
    # Python's json module accepts NaN and Infinity, which are not JSON
    # (RFC 8259): a browser's JSON.parse would fail on the relayed bytes.
    raise ValueError(f"{name} is not JSON")


def parse_task_json(raw: bytes) -> dict[str, Any]:
    """
    Decode a data key value or channel message, which must be a UTF-8 JSON
    object.

    @raise TaskError: with L{INVALID_TASK_DATA} for anything else: bytes that
        are not UTF-8, truncated JSON, or JSON that is not an object.
    """
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise TaskError(INVALID_TASK_DATA, "not UTF-8") from None
    except ValueError:
        raise TaskError(INVALID_TASK_DATA, "not valid JSON") from None
    except RecursionError:
        raise TaskError(INVALID_TASK_DATA, "nested too deeply") from None
    if not isinstance(document, dict):
        raise TaskError(
            INVALID_TASK_DATA, f"JSON {type(document).__name__}, not an object"
        )
    return document


def kill_message(watch_id: str) -> bytes:
    """
    Build the message that ends every other watch of a task.
    """
    return json.dumps({"status": KILL, "src": watch_id}).encode("utf-8")
