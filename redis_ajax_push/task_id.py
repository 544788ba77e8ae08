"""
Task id validation, done before any Redis command is sent.
"""

from __future__ import annotations

import re


class TaskIdValidator:
    """
    Accepts a task id only when the whole id matches C{pattern} and it has
    at most C{max_length} characters.

    The pattern is compiled with C{re.ASCII}, so C{\\w} and C{\\d} never
    accept non-ASCII letters or digits, and it is applied with
    C{re.fullmatch}, so neither a partial match nor a trailing newline passes.
    """

    def __init__(self, pattern: str, max_length: int) -> None:
        self._pattern = re.compile(pattern, re.ASCII)
        self._max_length = max_length

    def is_valid(self, task_id: str) -> bool:
        if not task_id or len(task_id) > self._max_length:
            return False
        return self._pattern.fullmatch(task_id) is not None
