"""
The twistd plugin: Options, makeService, and the C{twistd raps} command run
as a subprocess against the session's redis-server.
"""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from redis_ajax_push.config import Config
from redis_ajax_push.redis_url import parse_redis_url
from redis_ajax_push.service import HTTPService, RedisService
from redis_ajax_push.tap import (
    GC_THRESHOLDS,
    Options,
    _CleanExitOnSIGTERM,
    makeService,
)
from redis_ajax_push.testing import free_port
from tests.twistd_process import TWISTD, raps_command, running_twistd, stop_twistd

# Bounds for the subprocess tests, in seconds.
COMMAND_TIMEOUT = 60
READY_TIMEOUT = 20
STOP_TIMEOUT = 15

# No proxy handler: a proxy from the environment must not see these requests.
LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_config(tmp_path, text, name="raps.toml"):
    """
    Write C{text} to a config file in C{tmp_path} and return its path.
    """
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def parse_options(arguments):
    """
    Parse C{twistd raps} arguments and return the Options.
    """
    options = Options()
    options.parseOptions(arguments)
    return options


def test_options_long_flags(tmp_path):
    """
    --config, --listen and --redis are parsed, and the overrides replace the
    file's values in the loaded config.
    """
    path = write_config(tmp_path, "[redis]\nprefix = 'JOBS_'\n")

    options = parse_options(
        [
            "--config",
            path,
            "--listen",
            "tcp:8123:interface=127.0.0.1",
            "--redis",
            "redis://127.0.0.1:6390/2",
        ]
    )

    assert options["config"] == path
    assert options["listen"] == "tcp:8123:interface=127.0.0.1"
    assert options["redis"] == "redis://127.0.0.1:6390/2"
    assert options.config.http.listen == "tcp:8123:interface=127.0.0.1"
    assert options.config.redis.url == parse_redis_url("redis://127.0.0.1:6390/2")
    assert options.config.redis.prefix == "JOBS_"


def test_options_short_flags(tmp_path):
    """
    -c, -l and -r are the short forms of --config, --listen and --redis.
    """
    path = write_config(tmp_path, "[watch]\nheartbeat_interval = 1\n")

    options = parse_options(
        ["-c", path, "-l", "tcp:8123:interface=127.0.0.1", "-r", "redis://[::1]:6390"]
    )

    assert options.config.watch.heartbeat_interval == 1.0
    assert options.config.http.listen == "tcp:8123:interface=127.0.0.1"
    assert options.config.redis.url.host == "::1"


def test_options_without_arguments():
    """
    With no arguments the config is the built-in defaults.
    """
    options = parse_options([])

    assert options["config"] is None
    assert options.config == Config()


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        pytest.param(["--config", "{bad}"], "http.listne", id="unknown-key"),
        pytest.param(["--config", "{missing}"], "absent.toml", id="missing-file"),
        pytest.param(["--listen", "nonsense:1"], "--listen", id="bad-listen"),
        pytest.param(["--redis", "http://127.0.0.1:6390/0"], "--redis", id="bad-url"),
    ],
)
def test_options_bad_config_exits(tmp_path, arguments, name):
    """
    A bad config file or override raises SystemExit with one line that starts
    with "raps:" and names the key, file or option.
    """
    paths = {
        "bad": write_config(tmp_path, "[http]\nlistne = 'tcp:8123'\n"),
        "missing": str(tmp_path / "absent.toml"),
    }
    arguments = [argument.format(**paths) for argument in arguments]

    with pytest.raises(SystemExit) as caught:
        parse_options(arguments)

    message = caught.value.code
    assert isinstance(message, str)
    assert message.startswith("raps: ")
    assert name in message
    assert "\n" not in message


# Endpoints for makeService on a MemoryReactorClock, which only records them.
MEMORY_ARGUMENTS = [
    "--listen",
    "tcp:8123:interface=127.0.0.1",
    "--redis",
    "redis://127.0.0.1:6390",
]


@pytest.fixture(autouse=True)
def restored_gc():
    """
    Undo makeService's garbage collector settings after each test, so that
    the rest of the session runs with the interpreter's defaults.
    """
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


@pytest.mark.skipif(
    platform.python_implementation() != "CPython", reason="CPython's collector"
)
def test_make_service_tunes_gc():
    """
    makeService sets the daemon's garbage collector thresholds and freezes
    the objects alive at startup, the service tree among them.
    """
    gc.unfreeze()

    makeService(parse_options(MEMORY_ARGUMENTS), reactor=MemoryReactorClock())

    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_make_service_children():
    """
    makeService returns a MultiService, not yet running, with the Redis and
    HTTP services as its children, then the SIGTERM handler installer, and
    the options' config.
    """
    options = parse_options(MEMORY_ARGUMENTS)

    service = makeService(options, reactor=MemoryReactorClock())
    children = list(service)

    assert isinstance(service, MultiService)
    assert not service.running
    assert len(children) == 3
    assert isinstance(children[0], RedisService)
    assert isinstance(children[1], HTTPService)
    assert isinstance(children[2], _CleanExitOnSIGTERM)
    assert service.config is options.config


def test_make_service_uses_endpoints():
    """
    The started service listens on the --listen endpoint and connects to the
    --redis address, on the reactor it was given.
    """
    options = parse_options(MEMORY_ARGUMENTS)
    reactor = MemoryReactorClock()
    service = makeService(options, reactor=reactor)

    service.startService()
    try:
        servers = [(port, host) for port, _, _, host in reactor.tcpServers]
        clients = [(host, port) for host, port, *_ in reactor.tcpClients]

        assert servers == [(8123, "127.0.0.1")]
        assert ("127.0.0.1", 6390) in clients
    finally:
        service.stopService()


def test_make_service_stops():
    """
    A started service stops at once when no connection was made, and its
    stopService Deferred fires without an error.
    """
    service = makeService(parse_options(MEMORY_ARGUMENTS), reactor=MemoryReactorClock())
    service.startService()

    stopped = service.stopService()
    results = []
    stopped.addBoth(results.append)

    assert not service.running
    assert len(results) == 1
    assert not isinstance(results[0], Failure)


def run_twistd(tmp_path, *arguments):
    """
    Run twistd with C{arguments} in C{tmp_path} and return the finished
    process with its text output.
    """
    return subprocess.run(
        [TWISTD, *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def test_twistd_help_lists_raps(tmp_path):
    """
    twistd --help lists the raps plugin among its commands.
    """
    result = run_twistd(tmp_path, "--help")
    commands = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]

    assert result.returncode == 0
    assert "raps" in commands


def test_twistd_raps_help_lists_options(tmp_path):
    """
    twistd raps --help documents --config, --listen and --redis.
    """
    result = run_twistd(tmp_path, "raps", "--help")

    assert result.returncode == 0
    assert "--config=" in result.stdout
    assert "--listen=" in result.stdout
    assert "--redis=" in result.stdout


@pytest.mark.parametrize(
    ("config", "name"),
    [
        pytest.param("[http]\nlistne = 'tcp:8123'\n", "http.listne", id="unknown-key"),
        pytest.param(
            "[task_id]\nmax_length = true\n", "task_id.max_length", id="wrong-type"
        ),
        pytest.param("[redis]\nurl = 'redis://'\n", "redis.url", id="bad-url"),
        pytest.param("[http]\nlisten = 'tcp:'\n", "http.listen", id="bad-endpoint"),
        pytest.param("[http\n", "BAD.toml", id="invalid-toml"),
    ],
)
def test_twistd_bad_config_one_line(tmp_path, config, name):
    """
    twistd raps with a bad config file exits non-zero and writes exactly one
    line to stderr, naming the key or file, and no traceback.
    """
    path = write_config(tmp_path, config, name="BAD.toml")

    result = run_twistd(tmp_path, "-n", "--pidfile=", "raps", "--config", path)
    lines = result.stderr.splitlines()

    assert result.returncode != 0
    assert len(lines) == 1
    assert lines[0].startswith("raps: ")
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def test_twistd_listen_failure_exits(tmp_path):
    """
    When the HTTP port cannot be opened, twistd raps exits non-zero with one
    error line naming the endpoint, instead of running without a listener.
    """
    result = run_twistd(
        tmp_path,
        "-n",
        "--pidfile=",
        "raps",
        "--listen",
        "tcp:99999:interface=127.0.0.1",
    )
    errors = [line for line in result.stdout.splitlines() if "raps: " in line]

    assert result.returncode != 0
    assert len(errors) == 1
    assert "cannot listen on tcp:99999" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


def fetch_when_ready(url, process, log_path):
    """
    GET C{url} once the daemon accepts connections and return the status and
    body.

    @raise AssertionError: when the daemon exits or does not accept a
        connection within READY_TIMEOUT seconds.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise AssertionError(f"twistd exited with {process.returncode}:\n{log}")
        try:
            with LOOPBACK_OPENER.open(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError):
                raise
        if time.monotonic() > deadline:
            log = log_path.read_text(errors="replace")
            raise AssertionError(
                f"twistd did not accept connections in {READY_TIMEOUT} s:\n{log}"
            )
        time.sleep(0.05)


def test_twistd_serves_and_stops(tmp_path, redis_server, redis_client):
    """
    A real twistd raps process serves a stored task over HTTP and shuts down
    cleanly after SIGTERM.
    """
    stored = b'{"status":"running","progress":7}'
    redis_client.set("RA_D_job42", stored)
    port = free_port()
    log_path = tmp_path / "twistd.out"
    command = raps_command(
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", redis_server.url
    )

    with running_twistd(command, tmp_path, log_path) as process:
        status, body = fetch_when_ready(
            f"http://127.0.0.1:{port}/task/job42", process, log_path
        )

        assert status == 200
        assert json.loads(body) == {"status": "running", "progress": 7}

        exit_status = stop_twistd(process)

    # Without raps's own SIGTERM handler, twistd would kill itself with the
    # signal after shutting down and report -SIGTERM.
    log = log_path.read_text(errors="replace")
    assert exit_status == 0
    assert "Server Shut Down." in log
    assert "Traceback" not in log
