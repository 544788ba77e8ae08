"""
The browser files: /static/raps.js and /demo, their headers, the config keys
[http] serve_client and demo that switch them, and the hint of `make run`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq

from redis_ajax_push.client_files import read_static
from redis_ajax_push.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


async def fetch(daemon, path, method="GET"):
    """
    Send one request and return the response and its body.
    """
    response = await treq.request(method, daemon.url(path), persistent=False)
    return response, await response.content()


def header(response, name):
    """
    Return the only value of a response header.
    """
    (value,) = response.headers.getRawHeaders(name)
    return value


def assert_not_found(response, body):
    assert response.code == 404
    assert header(response, "Content-Type") == "application/json"
    assert json.loads(body) == {
        "status": "error",
        "error_message": "Not Found",
        "error": "not_found",
    }


@pytest_twisted.ensureDeferred
async def test_client_module_served(daemon):
    """
    By default /static/raps.js returns the packaged client module as
    JavaScript that browsers may cache for a short time.
    """
    response, body = await fetch(daemon, "/static/raps.js")

    assert response.code == 200
    assert body == read_static("raps.js")
    assert b"export function watchTask(" in body
    assert header(response, "Content-Type") == "text/javascript; charset=utf-8"
    assert header(response, "Cache-Control") == "public, max-age=300"
    assert header(response, "X-Content-Type-Options") == "nosniff"


@pytest_twisted.ensureDeferred
async def test_client_module_head(daemon):
    """
    HEAD /static/raps.js returns the headers of GET without a body.
    """
    response, body = await fetch(daemon, "/static/raps.js", method="HEAD")

    assert response.code == 200
    assert header(response, "Content-Type") == "text/javascript; charset=utf-8"
    assert body == b""


@pytest_twisted.ensureDeferred
async def test_client_module_post_rejected(daemon):
    """
    POST /static/raps.js gets method_not_allowed with the Allow header.
    """
    response, body = await fetch(daemon, "/static/raps.js", method="POST")

    assert response.code == 405
    assert header(response, "Allow") == "GET, HEAD"
    assert json.loads(body)["error"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_client_switched_off(start_daemon):
    """
    With serve_client = false, /static/raps.js gets the not_found error.
    """
    daemon = await start_daemon(http={"serve_client": False})

    response, body = await fetch(daemon, "/static/raps.js")

    assert_not_found(response, body)


@pytest_twisted.ensureDeferred
async def test_demo_off_by_default(daemon):
    """
    Without demo = true, /demo gets the not_found error.
    """
    response, body = await fetch(daemon, "/demo")

    assert_not_found(response, body)


@pytest_twisted.ensureDeferred
async def test_demo_off_any_method(daemon):
    """
    Without demo = true, a POST to /demo gets not_found too, not
    method_not_allowed, as for any unknown path.
    """
    response, body = await fetch(daemon, "/demo", method="POST")

    assert_not_found(response, body)


@pytest_twisted.ensureDeferred
async def test_demo_put_rejected(start_daemon):
    """
    With demo = true, a PUT to /demo gets method_not_allowed with the Allow
    header.
    """
    daemon = await start_daemon(http={"demo": True})

    response, body = await fetch(daemon, "/demo", method="PUT")

    assert response.code == 405
    assert header(response, "Allow") == "GET, HEAD"
    assert json.loads(body)["error"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_demo_served_when_on(start_daemon):
    """
    With demo = true, /demo returns the packaged page as uncached HTML.
    """
    daemon = await start_daemon(http={"demo": True})

    response, body = await fetch(daemon, "/demo")

    assert response.code == 200
    assert body == read_static("demo.html")
    assert header(response, "Content-Type") == "text/html; charset=utf-8"
    assert header(response, "Cache-Control") == "no-cache"
    assert b'from "/static/raps.js"' in body


@pytest_twisted.ensureDeferred
async def test_demo_policy_allows_own_script(start_daemon):
    """
    The demo's Content-Security-Policy allows only this origin and the
    page's own inline module, by its SHA-256 hash.
    """
    daemon = await start_daemon(http={"demo": True})

    response, body = await fetch(daemon, "/demo")
    policy = header(response, "Content-Security-Policy")

    (script,) = re.findall(rb'<script type="module">(.*?)</script>', body, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    directives = dict(
        directive.strip().split(" ", 1) for directive in policy.split(";")
    )
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == f"'self' 'sha256-{digest}'"
    assert directives["connect-src"] == "'self'"


@pytest_twisted.ensureDeferred
async def test_demo_trailing_slash_not_found(start_daemon):
    """
    /demo/ is another path than /demo and gets the not_found error.
    """
    daemon = await start_daemon(http={"demo": True})

    response, body = await fetch(daemon, "/demo/")

    assert_not_found(response, body)


def test_demo_page_has_no_external_urls():
    """
    The demo page names no URL of another host, so it works offline and
    loads nothing from outside.
    """
    page = read_static("demo.html").decode("utf-8")

    assert re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+", page) == []


def test_client_keys_default():
    """
    Without the keys, the client is served and the demo is not.
    """
    config = parse_config({})

    assert config.http.serve_client is True
    assert config.http.demo is False


def test_client_keys_parsed():
    """
    serve_client and demo are read from [http].
    """
    config = parse_config({"http": {"serve_client": False, "demo": False}})
    with_demo = parse_config({"http": {"demo": True}})

    assert config.http.serve_client is False
    assert config.http.demo is False
    assert with_demo.http.demo is True


@pytest.mark.parametrize("key", ["serve_client", "demo"])
def test_client_key_wrong_type(key):
    """
    A client key that is not a boolean stops startup with its name.
    """
    with pytest.raises(ConfigError) as caught:
        parse_config({"http": {key: "yes"}})

    assert str(caught.value) == f"http.{key}: expected a boolean, got str"


def test_demo_needs_client():
    """
    demo = true with serve_client = false is rejected, because the demo page
    loads /static/raps.js.
    """
    with pytest.raises(ConfigError) as caught:
        parse_config({"http": {"demo": True, "serve_client": False}})

    assert str(caught.value).startswith("http.demo: ")
    assert "http.serve_client = true" in str(caught.value)


def test_dev_config_turns_demo_on():
    """
    etc/raps-dev.toml, which `make run` uses, is valid and serves the demo
    on port 8888 of 127.0.0.1.
    """
    config = load_config(str(ROOT / "etc" / "raps-dev.toml"))

    assert config.http.demo is True
    assert config.http.serve_client is True
    assert config.http.listen == "tcp:8888:interface=127.0.0.1"


def run_demo_hint(config_path):
    """
    Run scripts/demo-hint on a config file and return its result.
    """
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo-hint"), str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_demo_hint_printed():
    """
    With the dev config, the hint of `make run` is one line with the demo
    URL and raps commands that drive task demo1.
    """
    result = run_demo_hint(ROOT / "etc" / "raps-dev.toml")

    assert result.returncode == 0
    assert result.stdout == (
        "Demo: http://127.0.0.1:8888/demo \u2014 drive it with: "
        ".venv/bin/raps progress demo1 -f progress:=40 ; "
        ".venv/bin/raps done demo1\n"
    )


def test_demo_hint_names_other_redis(tmp_path):
    """
    When the config names another Redis, the hint passes it to the raps
    command with --config.
    """
    config = tmp_path / "other.toml"
    config.write_text(
        '[http]\nlisten = "tcp:9000:interface=127.0.0.1"\ndemo = true\n'
        '[redis]\nurl = "redis://127.0.0.1:6390/0"\n'
    )

    result = run_demo_hint(config)

    assert result.returncode == 0
    assert result.stdout.startswith("Demo: http://127.0.0.1:9000/demo ")
    assert f".venv/bin/raps --config {config} done demo1\n" in result.stdout


def test_demo_hint_silent_without_demo():
    """
    With the demo off, as in etc/raps.toml, the hint prints nothing.
    """
    result = run_demo_hint(ROOT / "etc" / "raps.toml")

    assert result.returncode == 0
    assert result.stdout == ""
