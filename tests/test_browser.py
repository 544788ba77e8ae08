"""
End to end in a browser: the demo page in headless Chromium follows tasks
through a raps daemon, over EventSource and over the long-poll fallback,
across a restart of the daemon and against a second tab.

Playwright's sync API and the Twisted reactor of pytest-twisted cannot run
in one thread, so each daemon runs as a twistd subprocess. The tests
publish with TaskPublisher from this process. They need Debian's chromium
package at /usr/bin/chromium; Playwright never downloads a browser here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_ajax_push.publisher import TaskPublisher
from redis_ajax_push.testing import RedisServer, free_port

CHROMIUM = Path("/usr/bin/chromium")
# Flags that keep Chromium headless and off the network except for the
# daemon under test: no QUIC, no first-run pages, no background requests,
# no component updates and no sync.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Seconds that one expectation on the page waits before it fails.
PAGE_TIMEOUT = 10.0
# Seconds that a daemon gets to start serving or to exit.
DAEMON_TIMEOUT = 20.0

ROOT = Path(__file__).resolve().parent.parent


def require_browser() -> None:
    """
    Skip when Chromium is missing outside CI. In CI (CI=true) fail instead,
    so that a missing install step does not pass as a skip.
    """
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install it with apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """
    One headless Chromium for the module, driven by Playwright's sync API.
    """
    require_browser()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: pip install -e '.[test]'", pytrace=False
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        yield chromium
        chromium.close()


class DaemonProcess:
    """
    A raps daemon run by twistd in a subprocess, listening on 127.0.0.1 and
    a port that stays the same across restarts.
    """

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self.config_path = workdir / "raps.toml"
        # Short intervals make reconnects and heartbeats happen within the
        # test's time bounds.
        self.config_path.write_text(
            f"""\
[http]
listen = "tcp:{self.port}:interface=127.0.0.1"
demo = true

[redis]
url = "{redis_url}"

[watch]
heartbeat_interval = 0.2
stream_retry = 0.3
shutdown_grace = 1.0
""",
            encoding="utf-8",
        )

    def start(self) -> None:
        """
        Start twistd and wait until it serves /static/raps.js.
        """
        self._starts += 1
        self.log_path = self._workdir / f"twistd-{self._starts}.log"
        twistd = Path(sys.executable).with_name("twistd")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    str(twistd),
                    "-n",
                    "--pidfile=",
                    "raps",
                    "--config",
                    str(self.config_path),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + DAEMON_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(
                    f"twistd exited with status {self._process.returncode}:\n"
                    + self.log_path.read_text(errors="replace")
                )
            if self._serves():
                return
            time.sleep(0.05)
        self.kill()
        raise AssertionError(
            f"twistd did not serve {self.base_url} within {DAEMON_TIMEOUT} s:\n"
            + self.log_path.read_text(errors="replace")
        )

    def _serves(self) -> bool:
        try:
            with urllib.request.urlopen(
                self.base_url + "/static/raps.js", timeout=1
            ) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> int:
        """
        Stop the daemon with SIGTERM, as a service manager does, and return
        its exit status.
        """
        if self._process is None:
            raise AssertionError("the daemon is not running")
        process, self._process = self._process, None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=DAEMON_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                f"twistd did not exit within {DAEMON_TIMEOUT} s of SIGTERM"
            ) from None

    def kill(self) -> None:
        """
        Kill the daemon if it still runs.
        """
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def raps_process(redis_server: RedisServer, tmp_path: Path) -> Iterator[DaemonProcess]:
    """
    A running twistd daemon with the demo on, bound to the session's Redis,
    killed after the test.
    """
    daemon = DaemonProcess(redis_server.url, tmp_path)
    daemon.start()
    yield daemon
    daemon.kill()


@pytest.fixture
def publisher(redis_client: redis.Redis) -> TaskPublisher:
    """
    A TaskPublisher on the session's emptied Redis.
    """
    return TaskPublisher(redis_client)


class ChannelWatcher:
    """
    A counter of the kill messages on a task's channel. Each one means
    that a stream or watch of the task started waiting.
    """

    def __init__(self, client: redis.Redis, task_id: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(f"RA_SC_{task_id}")
        self.kills = 0

    def wait_for_kills(self, count: int, timeout: float = PAGE_TIMEOUT) -> None:
        """
        Wait until C{count} kill messages were published in all.
        """
        deadline = time.monotonic() + timeout
        while self.kills < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {count} kill "
                    f"message(s), saw {self.kills}"
                )
            message = self._pubsub.get_message(timeout=min(remaining, 0.2))
            if message is not None:
                if json.loads(message["data"]).get("status") == "kill":
                    self.kills += 1

    def close(self) -> None:
        self._pubsub.close()


@pytest.fixture
def channels(redis_client: redis.Redis) -> Iterator[Any]:
    """
    A function that returns a ChannelWatcher for a task id. All of them are
    closed after the test.
    """
    opened: list[ChannelWatcher] = []

    def watch(task_id: str) -> ChannelWatcher:
        watcher = ChannelWatcher(redis_client, task_id)
        opened.append(watcher)
        return watcher

    yield watch
    for watcher in opened:
        watcher.close()


class DemoPage:
    """
    The demo page in its own browser context, with the requests, page
    errors and console errors it produced.
    """

    def __init__(self, browser: Any, base_url: str, long_poll: bool) -> None:
        self.context = browser.new_context(viewport={"width": 900, "height": 700})
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT * 1000)
        self.requests: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("console", self._console)
        query = "?longpoll=1" if long_poll else ""
        self.page.goto(f"{base_url}/demo{query}")

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def start(self, task_id: str) -> None:
        self.page.fill("#task-id", task_id)
        self.page.click("#start")

    def expect_progress(self, value: int) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#percent")).to_have_text(f"{value} %")
        expect(self.page.locator("#progress")).to_have_js_property("value", value)

    def expect_state(self, state: str, text: str) -> None:
        from playwright.sync_api import expect

        box = self.page.locator("#state")
        expect(box).to_have_attribute("data-state", state)
        expect(box).to_have_text(text)

    def log_entries(self, kind: str) -> list[str]:
        return self.page.locator(f"#log li.{kind}").all_text_contents()

    def mode_requests(self, mode: str) -> list[str]:
        return [url for url in self.requests if url.endswith(f"?{mode}")]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_demo(browser: Any) -> Iterator[Any]:
    """
    A function that opens the demo page of a daemon, as in
    C{open_demo(daemon, long_poll=True)}. Every page is closed after the
    test.
    """
    pages: list[DemoPage] = []

    def open_page(daemon: DaemonProcess, long_poll: bool = False) -> DemoPage:
        page = DemoPage(browser, daemon.base_url, long_poll)
        pages.append(page)
        return page

    yield open_page
    for page in pages:
        page.close()


def test_demo_follows_stream(raps_process, publisher, channels, open_demo, tmp_path):
    """
    Through EventSource, the demo shows each progress and then the done
    state of a task.
    """
    channel = channels("web1")
    publisher.progress("web1", progress=10)
    demo = open_demo(raps_process)

    demo.start("web1")
    demo.expect_progress(10)
    channel.wait_for_kills(1)
    publisher.progress("web1", progress=60)
    demo.expect_progress(60)
    publisher.done("web1", progress=100, result="report.pdf")
    demo.expect_state("done", "Done")
    demo.expect_progress(100)

    screenshot = tmp_path / "demo-done.png"
    demo.page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the finished demo: {screenshot}")
    assert demo.page.locator("#transport").text_content() == (
        "Following with an EventSource stream"
    )
    assert len(demo.mode_requests("stream")) == 1
    assert demo.mode_requests("watch") == []
    assert len(demo.log_entries("update")) == 2
    assert len(demo.log_entries("done")) == 1
    assert '"result":"report.pdf"' in demo.log_entries("done")[0]
    assert demo.page_errors == []
    assert demo.console_errors == []


def test_demo_follows_long_poll(
    raps_process, redis_client, publisher, channels, open_demo
):
    """
    Forced onto the long-poll fallback, the demo shows each progress,
    inline messages included, and then the done state of a task.
    """
    inline = TaskPublisher(redis_client, inline=True)
    channel = channels("web2")
    publisher.progress("web2", progress=5)
    demo = open_demo(raps_process, long_poll=True)

    demo.start("web2")
    demo.expect_progress(5)
    channel.wait_for_kills(1)
    inline.progress("web2", progress=45)
    demo.expect_progress(45)
    channel.wait_for_kills(2)
    publisher.progress("web2", progress=80)
    demo.expect_progress(80)
    channel.wait_for_kills(3)
    inline.done("web2")
    demo.expect_state("done", "Done")
    demo.expect_progress(100)

    assert demo.page.locator("#transport").text_content() == (
        "Following with watch requests (long-poll fallback)"
    )
    assert demo.mode_requests("stream") == []
    assert len(demo.mode_requests("watch")) == 3
    assert demo.page_errors == []
    assert demo.console_errors == []


@pytest.mark.parametrize("long_poll", [False, True], ids=["stream", "long_poll"])
def test_demo_shows_failure(raps_process, publisher, channels, open_demo, long_poll):
    """
    A task that the worker ends with fail() shows as failed, with its
    error message.
    """
    channel = channels("web3")
    publisher.progress("web3", progress=30)
    demo = open_demo(raps_process, long_poll=long_poll)

    demo.start("web3")
    demo.expect_progress(30)
    channel.wait_for_kills(1)
    publisher.fail("web3", "disk full")

    demo.expect_state("failed", "Failed: disk full")
    demo.expect_progress(30)
    assert '"failed":true' in demo.log_entries("done")[0]
    assert demo.page_errors == []


@pytest.mark.parametrize("long_poll", [False, True], ids=["stream", "long_poll"])
def test_demo_survives_restart(raps_process, publisher, channels, open_demo, long_poll):
    """
    When the daemon stops and a new one starts on the same port, the page
    reconnects by itself and reaches the done state published afterwards.
    """
    channel = channels("web4")
    publisher.progress("web4", progress=20)
    demo = open_demo(raps_process, long_poll=long_poll)
    demo.start("web4")
    demo.expect_progress(20)
    channel.wait_for_kills(1)
    publisher.progress("web4", progress=30)
    demo.expect_progress(30)

    status = raps_process.stop()
    raps_process.start()
    publisher.done("web4", progress=100)

    assert status == 0
    demo.expect_state("done", "Done")
    demo.expect_progress(100)
    errors = demo.log_entries("error")
    assert errors != []
    assert all("(retrying)" in entry for entry in errors)
    mode = "watch" if long_poll else "stream"
    assert len(demo.mode_requests(mode)) >= 2
    assert demo.page_errors == []


@pytest.mark.parametrize(
    ("older_long_poll", "newer_long_poll"),
    [(False, True), (True, False)],
    ids=["stream_then_watch", "watch_then_stream"],
)
def test_newer_tab_takes_over(
    raps_process, publisher, channels, open_demo, older_long_poll, newer_long_poll
):
    """
    A second tab following the same task ends the first one with killed,
    which the first shows as taken over, and the second reaches done.
    """
    channel = channels("web5")
    publisher.progress("web5", progress=50)
    older = open_demo(raps_process, long_poll=older_long_poll)
    older.start("web5")
    channel.wait_for_kills(1)
    # Heartbeats go out every 0.2 s, so a waiting watch has its 200 status
    # line sent by now and gets the killed error in the body.
    time.sleep(0.5)

    newer = open_demo(raps_process, long_poll=newer_long_poll)
    newer.start("web5")
    channel.wait_for_kills(2)
    older.expect_state("error", "Another tab or client took over this task")
    publisher.done("web5", progress=100)

    newer.expect_state("done", "Done")
    killed = [entry for entry in older.log_entries("error") if "killed" in entry]
    assert len(killed) == 1
    assert "(retrying)" not in killed[0]
    assert older.page_errors == []
    assert newer.page_errors == []


def test_stop_button_aborts(raps_process, publisher, channels, open_demo):
    """
    The Stop button aborts the watchTask signal, so the page ignores later
    states and sends no further requests.
    """
    channel = channels("web6")
    publisher.progress("web6", progress=40)
    demo = open_demo(raps_process)
    demo.start("web6")
    demo.expect_progress(40)
    channel.wait_for_kills(1)

    demo.page.click("#stop")
    demo.expect_state("idle", "Stopped")
    requests_after_stop = len(demo.requests)
    publisher.done("web6", progress=100)
    demo.page.wait_for_timeout(1000)

    demo.expect_progress(40)
    assert demo.log_entries("done") == []
    assert len(demo.requests) == requests_after_stop


def test_missing_task_retried(raps_process, publisher, open_demo):
    """
    A task that does not exist yet gets not_found, which the client retries
    with backoff until the worker writes the task.
    """
    demo = open_demo(raps_process)
    demo.start("web7")
    demo.page.locator("#log li.error").first.wait_for()

    publisher.done("web7", progress=100)

    demo.expect_state("done", "Done")
    errors = demo.log_entries("error")
    assert "not_found: Not Found (retrying)" in errors[0]


# Response bodies and events that the client's parseBody decodes, with the
# outcome expected: state and done, or the error code.
RUNNING_5 = {"status": "running", "progress": 5}
RUNNING_9 = {"status": "running", "progress": 9}
FAILED = {"status": "done", "failed": True, "error_message": "x"}
NOT_FOUND = {"status": "error", "error_message": "Not Found", "error": "not_found"}
PARSE_CASES = [
    ("\n\n" + json.dumps(RUNNING_5), {"state": RUNNING_5, "done": False}),
    (json.dumps(FAILED), {"state": FAILED, "done": True}),
    (
        json.dumps({"status": "update", "data": RUNNING_9}),
        {"state": RUNNING_9, "done": False},
    ),
    (
        json.dumps({"status": "done", "data": {"result": 1}}),
        {"state": {"result": 1}, "done": True},
    ),
    (
        json.dumps({"status": "update", "data": {"status": "done"}}),
        {"state": {"status": "done"}, "done": True},
    ),
    ("\n" + json.dumps(NOT_FOUND), {"error": "not_found"}),
    ("\n\n", {"error": "invalid_response"}),
    ("<html>Bad Gateway</html>", {"error": "invalid_response"}),
    ("[1, 2]", {"error": "invalid_response"}),
    ("null", {"error": "invalid_response"}),
]


def test_client_parses_bodies(raps_process, open_demo):
    """
    The client's parseBody decodes each body of PARSE_CASES into its
    expected state or error code.
    """
    demo = open_demo(raps_process)
    bodies = [body for body, _ in PARSE_CASES]

    outcomes = demo.page.evaluate(
        """async (bodies) => {
            const client = await import("/static/raps.js");
            return bodies.map((body) => {
                const outcome = client.parseBody(body);
                return outcome.error ? { error: outcome.error.error } : outcome;
            });
        }""",
        bodies,
    )

    for (body, expected), outcome in zip(PARSE_CASES, outcomes, strict=True):
        assert outcome == expected, body


def test_missing_chromium_skips_locally(monkeypatch, tmp_path):
    """
    Outside CI, a missing /usr/bin/chromium skips the browser tests with
    the install command as the reason.
    """
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "chromium")
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception) as caught:
        require_browser()

    assert "apt-get install chromium" in str(caught.value)


def test_missing_chromium_fails_in_ci(monkeypatch, tmp_path):
    """
    In CI (CI=true), a missing /usr/bin/chromium fails instead of skipping.
    """
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception) as caught:
        require_browser()

    assert "is missing" in str(caught.value)
