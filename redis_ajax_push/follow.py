"""
Following a task through a running daemon over HTTP, as a web page does:
one poll for the current state, then one watch after another until the
task is done. Used by C{raps watch}; only the standard library is needed.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from redis_ajax_push.protocol import DONE, UPDATE


class DaemonUnreachableError(Exception):
    """
    No HTTP connection to the daemon could be made, or it broke off before
    the response was complete.
    """


class DaemonError(Exception):
    """
    The daemon responded with its error JSON, or with something that is not
    a task state. C{code} is the C{error} field, such as C{not_found}.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


def parse_response(body: bytes) -> dict[str, Any]:
    """
    Decode the body of a poll or watch response into the task state.

    Leading heartbeat newlines are skipped. An inline message, C{update} or
    C{done} with a C{data} field, is unwrapped to that field.

    @raise DaemonError: for the daemon's error JSON, or a body that is not
        a JSON object.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except ValueError:
        raise DaemonError(
            "invalid_response", "the response is not UTF-8 JSON"
        ) from None
    if not isinstance(document, dict):
        raise DaemonError("invalid_response", "the response is not a JSON object")
    if document.get("status") == "error":
        raise DaemonError(
            str(document.get("error", "unknown")),
            str(document.get("error_message", "unknown error")),
        )
    if document.get("status") in (UPDATE, DONE) and "data" in document:
        state = document["data"]
        if not isinstance(state, dict):
            raise DaemonError(
                "invalid_response", "the data field of the message is not a JSON object"
            )
        return state
    return document


class TaskFollower:
    """
    Reads a task's state from the daemon at C{base_url}.

    @param timeout: seconds to wait for the connection and for each read.
        A watch that gets no byte (response or heartbeat) in that time is
        sent again, so a value above the daemon's heartbeat interval (10 s
        by default) avoids needless new watches.
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def task_url(self, task_id: str, mode: str) -> str:
        path = f"{self.base_url}/task/{quote(task_id, safe='')}"
        return f"{path}?{mode}" if mode else path

    def _request(self, url: str) -> bytes:
        """
        Send one GET and return the body of any response, errors included.

        @raise TimeoutError: when no byte of the response came in time.
        @raise DaemonUnreachableError: when no connection can be made within
            the timeout, or it broke off.
        """
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            # 4xx and 5xx answers carry the error JSON.
            with error:
                error_body: bytes = error.read()
                return error_body
        # urllib wraps errors of connecting and sending, timeouts included,
        # in URLError, and lets those of reading the response through.
        except urllib.error.URLError as error:
            raise DaemonUnreachableError(
                f"cannot reach raps at {self.base_url}: {error.reason}"
            ) from None
        except TimeoutError:
            raise
        except (OSError, http.client.HTTPException) as error:
            raise DaemonUnreachableError(
                f"connection to raps at {self.base_url} failed: {error!r}"
            ) from None

    def poll(self, task_id: str) -> dict[str, Any]:
        """
        Return the task's current state.

        @raise DaemonError: for an error answer (C{not_found}, ...).
        @raise DaemonUnreachableError: when the daemon cannot be reached or
            does not answer in time.
        """
        try:
            return parse_response(self._request(self.task_url(task_id, "")))
        except TimeoutError:
            raise DaemonUnreachableError(
                f"raps at {self.base_url} did not respond within {self.timeout} s"
            ) from None

    def watch(self, task_id: str) -> dict[str, Any] | None:
        """
        Wait for the task's next state; return C{None} when no byte came
        within the timeout, so that the caller can watch again.
        """
        try:
            return parse_response(self._request(self.task_url(task_id, "watch")))
        except TimeoutError:
            return None

    def follow(
        self, task_id: str, on_state: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """
        Call C{on_state} with the current state and then with each new one
        until the task is done, and return the final state.

        A state equal to the one before it, such as the answer to a watch
        that the daemon ended after C{watch_timeout}, is not passed on.
        States published between two requests can be missed, as in any
        client of the protocol, but the final state never is: a watch of a
        done task returns at once.
        """
        state = self.poll(task_id)
        on_state(state)
        while state.get("status") != DONE:
            answer = self.watch(task_id)
            if answer is None or answer == state:
                continue
            state = answer
            on_state(state)
        return state
