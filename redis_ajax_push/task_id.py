"""
Task id validation, done before any Redis command is sent.
"""

from __future__ import annotations

import re

from redis_ajax_push.errors import INVALID_TASK_ID, NOT_FOUND, ErrorKind
from redis_ajax_push.signing import TaskIdSigner, split_signed_id


class TaskIdValidator:
    """
    Accepts a task id only when the whole id matches C{pattern} and it has
    at most C{max_length} characters.

    The pattern is compiled with C{re.ASCII}, so C{\\w} and C{\\d} never
    accept non-ASCII letters or digits, and it is applied with
    C{re.fullmatch}, so neither a partial match nor a trailing newline passes.

    With a C{signer}, the id must also be signed: its base must pass the
    checks above and its tag must verify. The length limit applies to the
    base, so signed ids of maximum length still pass.
    """

    def __init__(
        self, pattern: str, max_length: int, signer: TaskIdSigner | None = None
    ) -> None:
        self._pattern = re.compile(pattern, re.ASCII)
        self._max_length = max_length
        self._signer = signer

    def is_valid(self, task_id: str) -> bool:
        return self.check(task_id) is None

    def _matches(self, task_id: str) -> bool:
        if not task_id or len(task_id) > self._max_length:
            return False
        return self._pattern.fullmatch(task_id) is not None

    def check(self, task_id: str) -> ErrorKind | None:
        """
        Return C{None} for a valid id, else the error to respond with.

        An id that is well formed but unsigned or badly signed gets
        L{NOT_FOUND}, the response for a missing task, so that a client cannot
        tell a forged id from an unknown one.
        """
        if self._signer is None:
            return None if self._matches(task_id) else INVALID_TASK_ID
        parts = split_signed_id(task_id)
        if parts is None:
            return NOT_FOUND if self._matches(task_id) else INVALID_TASK_ID
        if not self._matches(parts[0]):
            return INVALID_TASK_ID
        return None if self._signer.verify(task_id) else NOT_FOUND
