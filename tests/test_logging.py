"""
The daemon's logs: the access line of each request, [log] access and
[log] format, and the rate limit on repeated warnings.
"""

from __future__ import annotations

import io
import json
import signal

import pytest
import pytest_twisted
import treq
from twisted.internet import task
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher

from redis_ajax_push.config import ConfigError, parse_config
from redis_ajax_push.logs import RepeatedWarnings, worker_log_observer
from redis_ajax_push.publisher import TaskPublisher
from redis_ajax_push.signing import TaskIdSigner
from redis_ajax_push.testing import free_port
from tests.support import ChannelSpy, wait_until
from tests.test_tap import STOP_TIMEOUT, fetch_when_ready, write_config
from tests.twistd_process import raps_command, running_twistd

SECRET = b"log-secret-0123456789abcdef"


@pytest.fixture
def log_events():
    """
    Every log event emitted during the test.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def access_events(events):
    return [event for event in events if event.get("log_namespace") == "raps.access"]


async def fetch(daemon, path):
    response = await treq.get(daemon.url(path), persistent=False, timeout=10)
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_access_line_fields(daemon, redis_client, log_events):
    """
    A request logs one access event with the method, the path without the
    query, the mode, the outcome, the status and the duration in ms.
    """
    redis_client.set("RA_D_al1", b'{"status": "done"}')

    assert (await fetch(daemon, "/task/al1?poll"))[0] == 200
    assert (await fetch(daemon, "/task/none1?watch"))[0] == 404

    events = access_events(log_events)
    assert len(events) == 2
    poll, watch = events
    assert poll["method"] == "GET"
    assert poll["path"] == "/task/al1"
    assert poll["mode"] == "poll"
    assert poll["outcome"] == "ok"
    assert poll["status"] == 200
    assert 0 <= poll["duration_ms"] < 10000
    assert (watch["mode"], watch["outcome"], watch["status"]) == (
        "watch",
        "not_found",
        404,
    )
    assert formatEvent(poll).startswith("127.0.0.1 GET /task/al1 200 mode=poll")


@pytest_twisted.ensureDeferred
async def test_access_line_replaces_twisted(daemon, redis_client, log_events):
    """
    Twisted's own combined access line is not logged, and a path outside
    /task/ gets an access line with mode "-".
    """
    assert (await fetch(daemon, "/other"))[0] == 404

    texts = [formatEvent(event) for event in log_events]
    assert not any('"GET /other HTTP/1.1"' in text for text in texts)
    (event,) = access_events(log_events)
    assert (event["path"], event["mode"], event["outcome"]) == (
        "/other",
        "-",
        "not_found",
    )


@pytest_twisted.ensureDeferred
async def test_access_log_off(start_daemon, redis_client, log_events):
    """
    With [log] access = false no access line is logged, but requests are
    still counted in the metrics.
    """
    daemon = await start_daemon(log={"access": False})
    redis_client.set("RA_D_al2", b'{"status": "done"}')

    assert (await fetch(daemon, "/task/al2"))[0] == 200

    assert access_events(log_events) == []
    _, body = await fetch(daemon, "/metrics")
    assert b'raps_requests_total{mode="poll",outcome="ok"} 1.0' in body


@pytest_twisted.ensureDeferred
async def test_access_line_redacts_tags(start_daemon, redis_client, log_events):
    """
    The access line shows a signed id's tag as '...', also when the request
    percent-encodes part of it, and escapes control characters.
    """
    daemon = await start_daemon(security={"task_id_secrets": (SECRET,)})
    task_id = TaskIdSigner([SECRET]).sign("job1")
    tag = task_id.rpartition("_")[2]
    TaskPublisher(redis_client).progress(task_id)
    encoded = f"job1_%{ord(tag[0]):02x}{tag[1:]}"

    assert (await fetch(daemon, f"/task/{encoded}"))[0] == 200
    assert (await fetch(daemon, "/task/a%0Ab"))[0] == 400

    texts = [formatEvent(event) for event in access_events(log_events)]
    assert len(texts) == 2
    assert "/task/job1_... 200" in texts[0]
    assert not any(tag in text or tag[1:] in text for text in texts)
    assert "/task/a\\x0ab 400" in texts[1]


@pytest_twisted.ensureDeferred
async def test_access_line_of_hang_up(daemon, redis_client, log_events):
    """
    A watch whose client hangs up gets one access line with the outcome
    disconnected.
    """
    redis_client.set("RA_D_al3", b'{"status": "running"}')
    spy = ChannelSpy(redis_client, "RA_SC_al3")
    watch = treq.get(daemon.url("/task/al3?watch"), persistent=False)
    await spy.wait_for_kills(1)
    # Cancelling makes treq fail the request, which is what this test wants.
    watch.addErrback(lambda failure: None)
    watch.cancel()
    await wait_until(lambda: access_events(log_events))

    (event,) = access_events(log_events)
    assert (event["mode"], event["outcome"]) == ("watch", "disconnected")
    spy.close()


class Recorder:
    """
    A Logger whose events are kept in C{events}.
    """

    def __init__(self):
        self.events = []
        self.log = Logger(namespace="test", observer=self.events.append)

    def texts(self):
        return [formatEvent(event) for event in self.events]


def test_repeats_held_back():
    """
    The same warning and code logged more than the limit within the window
    is held back, and one summary line at the end of the window reports how
    many were.
    """
    clock = task.Clock()
    warnings = RepeatedWarnings(clock, limit=3, window=10)
    recorder = Recorder()

    for index in range(20):
        warnings.warn(
            recorder.log, "Task {task_id} failed", "redis_error", task_id=index
        )
        clock.advance(0.1)

    assert recorder.texts() == ["Task 0 failed", "Task 1 failed", "Task 2 failed"]
    clock.advance(10)
    assert len(recorder.texts()) == 4
    assert recorder.texts()[3] == (
        "Task 19 failed ... repeated 17 more times in the last 10 s"
    )

    warnings.warn(recorder.log, "Task {task_id} failed", "redis_error", task_id=99)
    assert recorder.texts()[4] == "Task 99 failed"


def test_repeats_keyed_by_code():
    """
    Warnings with the same format but another error code have their own
    allowance.
    """
    clock = task.Clock()
    warnings = RepeatedWarnings(clock, limit=1, window=10)
    recorder = Recorder()

    warnings.warn(recorder.log, "Failed: {error}", "redis_error", error="a")
    warnings.warn(recorder.log, "Failed: {error}", "redis_error", error="b")
    warnings.warn(recorder.log, "Failed: {error}", "redis_unavailable", error="c")

    assert recorder.texts() == ["Failed: a", "Failed: c"]


def test_repeats_flushed_on_stop():
    """
    Stopping logs the pending summaries at once and cancels their timers.
    """
    clock = task.Clock()
    warnings = RepeatedWarnings(clock, limit=1, window=10)
    recorder = Recorder()
    for _ in range(3):
        warnings.warn(recorder.log, "Failed", "redis_error")

    warnings.stop()

    assert recorder.texts() == [
        "Failed",
        "Failed ... repeated 2 more times in the last 10 s",
    ]
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_daemon_limits_error_warnings(daemon, redis_client, log_events):
    """
    Twenty polls of a data key of the wrong type log at most five warnings
    of each kind, not twenty.
    """
    redis_client.rpush("RA_D_wrong", b"x")

    for _ in range(20):
        assert (await fetch(daemon, "/task/wrong"))[0] == 502

    texts = [formatEvent(event) for event in log_events]
    assert len([text for text in texts if "Redis rejected GET" in text]) == 5
    assert len([text for text in texts if "Request for task wrong" in text]) == 5


@pytest.mark.parametrize(
    ("event", "system"),
    [
        pytest.param(
            {"log_namespace": "raps.access", "log_level": LogLevel.info},
            "[raps.access#info worker=2]",
            id="namespace",
        ),
        pytest.param({"log_system": "-"}, "[- worker=2]", id="legacy-system"),
    ],
)
def test_worker_text_line_names_worker(event, system):
    """
    A worker process's text log line shows worker=N at the end of its system
    column, after the namespace and level or the legacy system.
    """
    stream = io.StringIO()
    observer = worker_log_observer(2, "text", stream)

    observer({"log_format": "Serving {count}", "count": 3, "log_time": 0, **event})

    assert stream.getvalue().endswith(f" {system} Serving 3\n")


def test_worker_json_line_has_worker():
    """
    A worker process's JSON log line is the event with the field worker
    added, and the event itself is left unchanged.
    """
    stream = io.StringIO()
    observer = worker_log_observer(2, "json", stream)
    event = {"log_format": "Serving {count}", "count": 3, "log_namespace": "x"}

    observer(event)
    written = json.loads(stream.getvalue())

    assert written["worker"] == 2
    assert written["count"] == 3
    assert "worker" not in event
    assert stream.getvalue().count("\n") == 1


def test_log_config_validated():
    """
    [log] format must be "text" or "json" and [log] access a boolean; both
    default to text and true.
    """
    with pytest.raises(ConfigError, match=r"^log\.format: 'xml'"):
        parse_config({"log": {"format": "xml"}})
    with pytest.raises(ConfigError, match=r"^log\.access: expected a boolean"):
        parse_config({"log": {"access": "yes"}})
    config = parse_config({})
    assert (config.log.format, config.log.access) == ("text", True)
    assert parse_config({"log": {"format": "json"}}).log.format == "json"


def test_twistd_json_lines(tmp_path, redis_server, redis_client):
    """
    twistd -n raps with [log] format = "json" writes only JSON objects, one
    per line, among them the access event of a poll.
    """
    redis_client.set("RA_D_js1", b'{"status": "done"}')
    port = free_port()
    config = write_config(tmp_path, '[log]\nformat = "json"\n')
    log_path = tmp_path / "twistd.out"
    command = raps_command(
        "--config",
        config,
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--redis",
        redis_server.url,
    )
    with running_twistd(command, tmp_path, log_path) as process:
        status, _ = fetch_when_ready(
            f"http://127.0.0.1:{port}/task/js1", process, log_path
        )
        assert status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0

    lines = log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    access = [event for event in events if event.get("log_namespace") == "raps.access"]
    assert len(access) == 1
    assert access[0]["path"] == "/task/js1"
    assert access[0]["status"] == 200
    assert any(event.get("log_format") == "Stopped" for event in events)
