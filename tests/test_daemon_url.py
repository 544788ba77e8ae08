"""
The daemon URL that the raps command derives from [http] listen, and the
parsing of poll and watch responses.
"""

from __future__ import annotations

import pytest

from redis_ajax_push.daemon_url import FALLBACK_URL, daemon_base_url, split_endpoint
from redis_ajax_push.follow import DaemonError, parse_response


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("tcp:8888:interface=127.0.0.1", "http://127.0.0.1:8888"),
        ("tcp:port=9000:interface=127.0.0.2", "http://127.0.0.2:9000"),
        ("tcp:8080", "http://127.0.0.1:8080"),
        ("tcp:8080:interface=0.0.0.0", "http://127.0.0.1:8080"),
        (r"tcp6:8080:interface=\:\:1", "http://[::1]:8080"),
        (r"tcp6:8080:interface=\:\:", "http://[::1]:8080"),
        ("tcp6:8080", "http://[::1]:8080"),
        ("tcp:8888:interface=192.0.2.10", FALLBACK_URL),
        ("tcp:0:interface=127.0.0.1", FALLBACK_URL),
        ("unix:/run/raps.sock", FALLBACK_URL),
        ("ssl:8443:interface=127.0.0.1", FALLBACK_URL),
        ("tcp:port", FALLBACK_URL),
        ("tcp:8888:interface=localhost", FALLBACK_URL),
    ],
)
def test_base_url_from_listen(listen, expected):
    """
    Loopback and wildcard TCP addresses give a loopback URL, anything else
    the fallback.
    """
    assert daemon_base_url(listen) == expected


def test_split_endpoint_escapes():
    """
    Backslash-escaped colons stay inside their argument.
    """
    assert split_endpoint(r"tcp6:80:interface=\:\:1:backlog=5") == (
        ["tcp6", "80"],
        {"interface": "::1", "backlog": "5"},
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"status":"running","n":1}', {"status": "running", "n": 1}),
        (b'\n\n{"status":"done"}', {"status": "done"}),
        (b'{"status":"update","data":{"status":"running"}}', {"status": "running"}),
        (
            b'\n{"status":"done","data":{"status":"done","r":2}}',
            {"status": "done", "r": 2},
        ),
    ],
)
def test_parse_response_states(body, expected):
    """
    parse_response skips heartbeats and unwraps inline messages.
    """
    assert parse_response(body) == expected


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            b'{"status": "error", "error_message": "Not Found", "error": "not_found"}',
            "not_found",
        ),
        (
            b"\n\n"
            + b'{"status": "error", "error_message": "Killed", "error": "killed"}',
            "killed",
        ),
        (b"not json", "invalid_response"),
        (b"[1]", "invalid_response"),
        (b'{"status":"update","data":[1]}', "invalid_response"),
        (b"", "invalid_response"),
    ],
)
def test_parse_response_errors(body, code):
    """
    parse_response raises DaemonError with the error code of an error
    response, or invalid_response for a body that is no task state.
    """
    with pytest.raises(DaemonError) as caught:
        parse_response(body)

    assert caught.value.code == code
