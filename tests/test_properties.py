"""
Property tests of the HTTP front: whatever path under /task/ and whatever
query string a client sends, the daemon responds with JSON and keeps serving.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http_clients import get_request, send_raw

# A watch of this task returns at once because it is done, so no generated
# request can wait on it.
CHECK_TASK = b'{"status": "done", "check": true}'

percent_escapes = st.integers(min_value=0, max_value=255).map(
    lambda byte: f"%{byte:02X}"
)
broken_escapes = st.sampled_from(["%", "%G0", "%zz", "%1", "%%"])
path_pieces = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="abcXYZ019_", min_size=1, max_size=40),
    percent_escapes,
    broken_escapes,
    st.sampled_from(["/", "//", ".", "..", "?", "#", "watch", "poll"]),
)
task_paths = st.lists(path_pieces, max_size=8).map("".join)
queries = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from(["", "watch", "poll", "watch&poll", "=", "watch=", "%77atch"]),
)


def request_target(path, query):
    """
    Encode a generated path and query as a request target: characters that
    may not appear raw in a request line are percent-encoded, while "/" and
    "%" stay as generated, so that generated escapes reach the daemon.
    """
    target = "/task/" + quote(path, safe="/%")
    if query is not None:
        target += "?" + quote(query, safe="/%?&=")
    return target.encode("ascii")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    # The example database would write .hypothesis/ into the work tree.
    database=None,
)
@given(path=task_paths, query=queries)
@pytest_twisted.ensureDeferred
async def test_any_task_path_gets_json(daemon, redis_client, path, query):
    """
    Any path under /task/ with any query string gets a JSON object with a
    status key and an HTTP status other than 500, and a poll of a stored
    task succeeds right after it.
    """
    redis_client.set("RA_D_propcheck", CHECK_TASK)
    target = request_target(path, query)

    responses = await send_raw(daemon.port, get_request(target))
    check = await send_raw(daemon.port, get_request(b"/task/propcheck"))

    assert len(responses) == 1, target
    assert responses[0].status != 500, target
    assert responses[0].status < 600, target
    body = json.loads(responses[0].body)
    assert isinstance(body, dict), target
    assert "status" in body, target
    assert len(check) == 1
    assert check[0].status == 200
    assert check[0].body == CHECK_TASK
