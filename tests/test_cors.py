"""
CORS: the [http] cors_origins allow-list, the headers on every kind of
response and the OPTIONS preflight on /task/..., against a real
redis-server.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from redis_ajax_push.config import ConfigError, parse_config
from tests.support import ChannelSpy

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
RUNNING = b'{"status": "running", "progress": 10}'


def cors_daemon(start_daemon, *origins, **sections):
    """
    Start a daemon whose cors_origins is C{origins}.
    """
    return start_daemon(http={"cors_origins": tuple(origins)}, **sections)


def header(response, name):
    """
    Return the values of header C{name} of a treq response.
    """
    return response.headers.getRawHeaders(name, [])


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com",
        "http://127.0.0.1:8080",
        "https://[::1]:8443",
        "http://localhost:3000",
        "*",
    ],
)
def test_config_accepts_origins(origin):
    """
    An origin written as scheme://host[:port], and "*", are accepted.
    """
    config = parse_config({"http": {"cors_origins": [origin]}})

    assert config.http.cors_origins == (origin,)


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("https://app.example.com/", id="trailing-slash"),
        pytest.param("https://app.example.com/path", id="path"),
        pytest.param("https://app.example.com?q", id="query"),
        pytest.param("app.example.com", id="no-scheme"),
        pytest.param("HTTPS://App.example.com", id="uppercase"),
        pytest.param("https://app.example.com:443", id="default-port"),
        pytest.param("https://app.example.com:99999", id="port-range"),
        pytest.param("https://user@app.example.com", id="user-info"),
        pytest.param("https://", id="no-host"),
        pytest.param("null", id="null"),
    ],
)
def test_config_rejects_bad_origin(origin):
    """
    An entry that a browser never sends as an Origin header stops startup
    with an error naming the entry.
    """
    with pytest.raises(ConfigError) as raised:
        parse_config({"http": {"cors_origins": ["https://ok.example.com", origin]}})

    assert "http.cors_origins[1]" in str(raised.value)
    assert "scheme://host[:port]" in str(raised.value)


def test_config_rejects_non_string_origin():
    """
    A cors_origins entry that is not a string is rejected with its index.
    """
    with pytest.raises(
        ConfigError, match=r"http\.cors_origins\[0\]: expected a string"
    ):
        parse_config({"http": {"cors_origins": [8080]}})


def test_config_cors_off_by_default():
    """
    Without cors_origins the allow-list is empty.
    """
    assert parse_config({}).http.cors_origins == ()


@pytest_twisted.ensureDeferred
async def test_allowed_origin_poll_headers(start_daemon, redis_client):
    """
    A poll from an allowed origin gets Access-Control-Allow-Origin with that
    origin and Vary: Origin.
    """
    daemon = await cors_daemon(start_daemon, APP)
    redis_client.set("RA_D_c1", RUNNING)

    response = await treq.get(
        daemon.url("/task/c1"), headers={"Origin": APP}, persistent=False
    )

    assert response.code == 200
    assert await response.content() == RUNNING
    assert header(response, "Access-Control-Allow-Origin") == [APP]
    assert header(response, "Vary") == ["Origin"]


@pytest_twisted.ensureDeferred
async def test_other_origin_gets_no_cors(start_daemon, redis_client):
    """
    A poll from an origin outside the list is served without
    Access-Control-Allow-Origin, but still with Vary: Origin for caches.
    """
    daemon = await cors_daemon(start_daemon, APP)
    redis_client.set("RA_D_c2", RUNNING)

    response = await treq.get(
        daemon.url("/task/c2"), headers={"Origin": OTHER}, persistent=False
    )

    assert response.code == 200
    assert await response.content() == RUNNING
    assert header(response, "Access-Control-Allow-Origin") == []
    assert header(response, "Vary") == ["Origin"]


@pytest_twisted.ensureDeferred
async def test_no_origin_gets_no_cors(start_daemon, redis_client):
    """
    A request without an Origin header gets no Access-Control-Allow-Origin.
    """
    daemon = await cors_daemon(start_daemon, APP)
    redis_client.set("RA_D_c3", RUNNING)

    response = await treq.get(daemon.url("/task/c3"), persistent=False)
    await response.content()

    assert header(response, "Access-Control-Allow-Origin") == []
    assert header(response, "Vary") == ["Origin"]


@pytest_twisted.ensureDeferred
async def test_cors_off_sends_nothing(daemon, redis_client):
    """
    With an empty cors_origins no response carries a CORS header or Vary.
    """
    redis_client.set("RA_D_c4", RUNNING)

    response = await treq.get(
        daemon.url("/task/c4"), headers={"Origin": APP}, persistent=False
    )
    await response.content()

    assert header(response, "Access-Control-Allow-Origin") == []
    assert header(response, "Vary") == []


@pytest_twisted.ensureDeferred
async def test_wildcard_echoes_origin(start_daemon, redis_client):
    """
    With "*" in the list, every origin is allowed and echoed back.
    """
    daemon = await cors_daemon(start_daemon, "*")
    redis_client.set("RA_D_c5", RUNNING)

    response = await treq.get(
        daemon.url("/task/c5"), headers={"Origin": OTHER}, persistent=False
    )
    await response.content()

    assert header(response, "Access-Control-Allow-Origin") == [OTHER]
    assert header(response, "Vary") == ["Origin"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        pytest.param("/task/missing", 404, "not_found", id="not-found"),
        pytest.param("/task/bad-id", 400, "invalid_task_id", id="invalid-id"),
        pytest.param("/task/c6?nonsense", 400, "invalid_mode", id="invalid-mode"),
        pytest.param("/nowhere", 404, "not_found", id="no-such-path"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_errors_carry_cors(start_daemon, redis_client, path, status, code):
    """
    Error responses to an allowed origin carry the CORS headers, so the page
    can read the error JSON.
    """
    daemon = await cors_daemon(start_daemon, APP)

    response = await treq.get(
        daemon.url(path), headers={"Origin": APP}, persistent=False
    )
    body = json.loads(await response.content())

    assert response.code == status
    assert body["error"] == code
    assert header(response, "Access-Control-Allow-Origin") == [APP]
    assert header(response, "Vary") == ["Origin"]


@pytest_twisted.ensureDeferred
async def test_watch_with_heartbeat_cors(start_daemon, redis_client):
    """
    A watch whose status line went out with its first heartbeat carries the
    CORS headers.
    """
    daemon = await cors_daemon(start_daemon, APP, watch={"heartbeat_interval": 0.05})
    redis_client.set("RA_D_c7", RUNNING)
    spy = ChannelSpy(redis_client, "RA_SC_c7")
    try:
        pending = treq.get(
            daemon.url("/task/c7?watch"), headers={"Origin": APP}, persistent=False
        )
        await spy.wait_for_kills(1)
        # treq fires with the status line, which a heartbeat sends.
        response = await pending
        redis_client.publish("RA_SC_c7", b'{"status": "done"}')
        body = await response.content()
    finally:
        spy.close()

    assert body.startswith(b"\n")
    assert body.endswith(RUNNING)
    assert header(response, "Access-Control-Allow-Origin") == [APP]
    assert header(response, "Vary") == ["Origin"]
    assert header(response, "X-Accel-Buffering") == ["no"]


@pytest_twisted.ensureDeferred
async def test_stream_carries_cors(start_daemon, redis_client):
    """
    An SSE stream to an allowed origin carries the CORS headers.
    """
    daemon = await cors_daemon(start_daemon, APP)
    redis_client.set("RA_D_c8", b'{"status": "done"}')

    response = await treq.get(
        daemon.url("/task/c8?stream"), headers={"Origin": APP}, persistent=False
    )
    body = await response.content()

    assert b"event: done" in body
    assert header(response, "Content-Type") == ["text/event-stream; charset=utf-8"]
    assert header(response, "Access-Control-Allow-Origin") == [APP]
    assert header(response, "Vary") == ["Origin"]


def preflight(daemon, path, origin, request_headers="x-requested-with"):
    """
    Send a CORS preflight for a GET of C{path} from C{origin}.
    """
    headers = {"Access-Control-Request-Method": "GET"}
    if origin is not None:
        headers["Origin"] = origin
    if request_headers is not None:
        headers["Access-Control-Request-Headers"] = request_headers
    return treq.request("OPTIONS", daemon.url(path), headers=headers, persistent=False)


@pytest.mark.parametrize("path", ["/task/c9", "/task/c9?watch", "/task/"])
@pytest_twisted.ensureDeferred
async def test_preflight_allowed_origin(start_daemon, redis_client, path):
    """
    A preflight from an allowed origin returns 204 with the allowed methods,
    headers and max age, without reading Redis.
    """
    daemon = await cors_daemon(start_daemon, APP)
    gets_before = redis_client.info("commandstats").get("cmdstat_get", {})

    response = await preflight(daemon, path, APP)
    body = await response.content()

    assert response.code == 204
    assert body == b""
    assert header(response, "Access-Control-Allow-Origin") == [APP]
    assert header(response, "Access-Control-Allow-Methods") == ["GET, HEAD, OPTIONS"]
    allowed = header(response, "Access-Control-Allow-Headers")[0].lower()
    assert "x-requested-with" in allowed
    assert "last-event-id" in allowed
    assert header(response, "Access-Control-Max-Age") == ["600"]
    assert header(response, "Vary") == ["Origin"]
    assert redis_client.info("commandstats").get("cmdstat_get", {}) == gets_before


@pytest_twisted.ensureDeferred
async def test_preflight_other_origin_rejected(start_daemon):
    """
    A preflight from an origin outside the list returns 403 cors_rejected
    without any Access-Control-Allow-* header.
    """
    daemon = await cors_daemon(start_daemon, APP)

    response = await preflight(daemon, "/task/c10", OTHER)
    body = json.loads(await response.content())

    assert response.code == 403
    assert body == {
        "status": "error",
        "error_message": "Origin is not in the http.cors_origins list",
        "error": "cors_rejected",
    }
    assert header(response, "Access-Control-Allow-Origin") == []
    assert header(response, "Access-Control-Allow-Methods") == []
    assert header(response, "Vary") == ["Origin"]


@pytest_twisted.ensureDeferred
async def test_preflight_cors_off_not_allowed(daemon):
    """
    With an empty cors_origins, OPTIONS is no served method: a preflight
    gets 405 method_not_allowed without CORS headers.
    """
    response = await preflight(daemon, "/task/c11", APP)
    body = json.loads(await response.content())

    assert response.code == 405
    assert body["error"] == "method_not_allowed"
    assert header(response, "Allow") == ["GET, HEAD"]
    assert header(response, "Access-Control-Allow-Origin") == []
    assert header(response, "Access-Control-Allow-Methods") == []


@pytest_twisted.ensureDeferred
async def test_preflight_legacy_status_200(start_daemon):
    """
    With legacy_status_codes a rejected preflight returns 200, like every
    other error.
    """
    daemon = await start_daemon(
        http={"cors_origins": (APP,), "legacy_status_codes": True}
    )

    response = await preflight(daemon, "/task/c12", OTHER)
    body = json.loads(await response.content())

    assert response.code == 200
    assert body["error"] == "cors_rejected"


@pytest_twisted.ensureDeferred
async def test_options_without_origin(start_daemon):
    """
    An OPTIONS request without Origin, which is no preflight, returns 204
    with Allow and no CORS headers.
    """
    daemon = await cors_daemon(start_daemon, APP)

    response = await preflight(daemon, "/task/c13", None, request_headers=None)
    await response.content()

    assert response.code == 204
    assert header(response, "Allow") == ["GET, HEAD, OPTIONS"]
    assert header(response, "Access-Control-Allow-Origin") == []
    assert header(response, "Access-Control-Allow-Methods") == []
