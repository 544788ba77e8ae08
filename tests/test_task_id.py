"""
Task id validation: TaskIdValidator with the default pattern and length
from TaskIdConfig, and with configured ones.
"""

from __future__ import annotations

import pytest

from redis_ajax_push.config import TaskIdConfig
from redis_ajax_push.task_id import TaskIdValidator


@pytest.fixture
def default_validator():
    """
    A validator with the shipped defaults: [A-Za-z0-9_]+, at most 32 chars.
    """
    defaults = TaskIdConfig()
    return TaskIdValidator(defaults.pattern, defaults.max_length)


@pytest.mark.parametrize(
    "task_id",
    [
        "a",
        "Z",
        "0",
        "_",
        "job1",
        "ABC_123_xyz",
        "x" * 32,
        "0123456789abcdefABCDEF__0123456_",
    ],
)
def test_default_accepts_ascii_word(default_validator, task_id):
    """
    ASCII letters, digits and underscores, from 1 to 32 of them, are valid.
    """
    assert default_validator.is_valid(task_id)


@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 33, id="33-chars"),
        pytest.param("x" * 1000, id="1000-chars"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param("\nabc", id="leading-newline"),
        pytest.param("abc\r", id="trailing-carriage-return"),
        pytest.param("abc-def", id="hyphen"),
        pytest.param("abc def", id="space"),
        pytest.param(" abc", id="leading-space"),
        pytest.param("abc.def", id="dot"),
        pytest.param("é", id="e-acute"),
        pytest.param("ä", id="a-umlaut"),
        pytest.param("café", id="word-with-e-acute"),
        pytest.param("١٢٣", id="arabic-indic-digits"),
        pytest.param("abc١", id="trailing-arabic-indic-digit"),
        pytest.param("１２３", id="fullwidth-digits"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\x1bb", id="escape"),
        pytest.param("a\x7fb", id="delete"),
        pytest.param("a/b", id="slash"),
        pytest.param("/", id="only-slash"),
        pytest.param("..", id="dot-dot"),
        pytest.param("a*", id="glob-star"),
    ],
)
def test_default_rejects(default_validator, task_id):
    """
    Anything but 1 to 32 ASCII word characters is invalid, including a
    trailing newline, a partial match, non-ASCII letters and digits, control
    characters and path separators.
    """
    assert not default_validator.is_valid(task_id)


@pytest.mark.parametrize(
    "task_id",
    ["é", "ä", "café", "ß", "ǅ", "١٢٣", "abc١", "１２３", "abc\n"],
)
def test_word_pattern_stays_ascii(task_id):
    """
    A configured \\w+ pattern still rejects non-ASCII letters and digits,
    because the validator compiles it with re.ASCII.
    """
    validator = TaskIdValidator(r"\w+", 32)

    assert not validator.is_valid(task_id)


def test_word_pattern_accepts_ascii():
    """
    A configured \\w+ pattern accepts ASCII letters, digits and underscores.
    """
    validator = TaskIdValidator(r"\w+", 32)

    assert validator.is_valid("abc_123")


@pytest.mark.parametrize("task_id", ["١٢٣", "１２３", "٣"])
def test_digit_pattern_stays_ascii(task_id):
    """
    A configured \\d+ pattern rejects non-ASCII digits.
    """
    validator = TaskIdValidator(r"\d+", 32)

    assert not validator.is_valid(task_id)


@pytest.mark.parametrize("task_id", ["\u212a", "\u017f", "k\u212a"])
def test_ignorecase_pattern_stays_ascii(task_id):
    """
    (?i)[a-z]+ rejects the Kelvin sign and the long s, which match [a-z]
    case-insensitively only under Unicode matching.
    """
    validator = TaskIdValidator("(?i)[a-z]+", 32)

    assert not validator.is_valid(task_id)


def test_dollar_pattern_rejects_newline():
    """
    A pattern ending in $ still rejects a trailing newline, because the whole
    id has to match.
    """
    validator = TaskIdValidator("[a-z]+$", 32)

    assert not validator.is_valid("abc\n")
    assert validator.is_valid("abc")


def test_prefix_pattern_rejects_longer():
    """
    An id of which the pattern matches only a prefix is invalid.
    """
    validator = TaskIdValidator("[a-z]{3}", 32)

    assert validator.is_valid("abc")
    assert not validator.is_valid("abcd")


def test_custom_pattern_replaces_default():
    """
    A configured pattern decides alone: a hyphen becomes valid and an
    underscore invalid.
    """
    validator = TaskIdValidator("[a-z0-9-]+", 32)

    assert validator.is_valid("job-42")
    assert not validator.is_valid("job_42")


@pytest.mark.parametrize(
    ("max_length", "task_id", "valid"),
    [
        (4, "abcd", True),
        (4, "abcde", False),
        (1, "a", True),
        (1, "ab", False),
        (64, "a" * 64, True),
        (64, "a" * 65, False),
    ],
)
def test_custom_max_length(max_length, task_id, valid):
    """
    A configured max_length is the longest valid id, counted in characters.
    """
    validator = TaskIdValidator("[a-z]+", max_length)

    assert validator.is_valid(task_id) is valid


def test_empty_matching_pattern_rejects_empty():
    """
    An empty id is invalid even when the pattern would match it.
    """
    validator = TaskIdValidator("[a-z]*", 32)

    assert not validator.is_valid("")
