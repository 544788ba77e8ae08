"""
The daemon on PyPy: every module of the package imports, and C{twistd raps}
from a PyPy venv serves a poll and a watch and exits with status 0 on
SIGTERM, against the session's redis-server.

The suite itself runs on CPython. These tests use the PyPy venv that
C{make venv-pypy3} builds in .venv-pypy3, or the venv that the environment
variable RAPS_PYPY_VENV names. Without one they are skipped, except in CI
(CI=true), where C{make test} builds it and they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from redis_ajax_push.testing import free_port
from tests.test_tap import LOOPBACK_OPENER, fetch_when_ready
from tests.test_workers import listening_inode
from tests.twistd_process import raps_command, running_twistd, stop_twistd

ROOT = Path(__file__).resolve().parent.parent

# Bounds, in seconds. PyPy starts more slowly than CPython, and its JIT
# warms up during the first requests.
COMMAND_TIMEOUT = 60
SUBSCRIBE_TIMEOUT = 10
WATCH_TIMEOUT = 15
STOP_TIMEOUT = 15

# Imports every module of the package and prints the interpreter's name.
# pytest_plugin is left out because pytest is not installed in the PyPy venv.
IMPORT_ALL = """
import importlib, pkgutil, sys
import redis_ajax_push
for module in pkgutil.iter_modules(redis_ajax_push.__path__):
    if module.name != "pytest_plugin":
        importlib.import_module("redis_ajax_push." + module.name)
print(sys.implementation.name)
"""


@pytest.fixture(scope="module")
def pypy_venv() -> Path:
    """
    The PyPy venv to run the daemon from: RAPS_PYPY_VENV, or .venv-pypy3 in
    the checkout.
    """
    venv = Path(os.environ.get("RAPS_PYPY_VENV", ROOT / ".venv-pypy3"))
    if (venv / "bin" / "twistd").exists():
        return venv
    reason = f"no PyPy venv with twistd at {venv}: build it with make venv-pypy3"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def test_pypy_imports_every_module(pypy_venv, tmp_path):
    """
    Every module of redis_ajax_push imports on the venv's interpreter, and
    that interpreter is PyPy.
    """
    result = subprocess.run(
        [str(pypy_venv / "bin" / "python"), "-c", IMPORT_ALL],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pypy"


def wait_for_subscriber(redis_client, channel):
    """
    Wait until one client is subscribed to C{channel}.

    @raise AssertionError: when there is none after SUBSCRIBE_TIMEOUT seconds.
    """
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
    while redis_client.pubsub_numsub(channel)[0][1] != 1:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no subscriber on {channel} after {SUBSCRIBE_TIMEOUT} s"
            )
        time.sleep(0.05)


def read_response(url):
    """
    GET C{url} and return the status and body.
    """
    with LOOPBACK_OPENER.open(url, timeout=WATCH_TIMEOUT) as response:
        return response.status, response.read()


def test_pypy_twistd_poll_watch_stop(pypy_venv, tmp_path, redis_server, redis_client):
    """
    twistd raps on PyPy returns a stored task to a poll, delivers the done
    message that a worker publishes to a waiting watch, and exits with
    status 0 after SIGTERM.
    """
    redis_client.set("RA_D_pypy1", b'{"status":"running","progress":5}')
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/task/pypy1"
    log_path = tmp_path / "twistd.out"
    command = raps_command(
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--redis",
        redis_server.url,
        twistd=str(pypy_venv / "bin" / "twistd"),
    )

    with running_twistd(command, tmp_path, log_path) as process:
        poll_status, poll_body = fetch_when_ready(base_url, process, log_path)

        with ThreadPoolExecutor(max_workers=1) as executor:
            watch = executor.submit(read_response, base_url + "?watch")
            wait_for_subscriber(redis_client, "RA_SC_pypy1")
            redis_client.set("RA_D_pypy1", b'{"status":"done","progress":100}')
            redis_client.publish("RA_SC_pypy1", b'{"status":"done"}')
            watch_status, watch_body = watch.result(timeout=WATCH_TIMEOUT)

        exit_status = stop_twistd(process)

    log = log_path.read_text(errors="replace")
    assert poll_status == 200
    assert json.loads(poll_body) == {"status": "running", "progress": 5}
    assert watch_status == 200
    assert json.loads(watch_body) == {"status": "done", "progress": 100}
    assert exit_status == 0, log
    assert "Server Shut Down." in log
    assert "Traceback" not in log


def listening_socket_flags(pid: int, port: int, log_path: Path) -> int:
    """
    Return the file status flags of the socket that process C{pid} listens
    on TCP port C{port} with, once its worker process serves it too.
    """
    inode = listening_inode(port)
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
    while "inherited from the parent process" not in log_path.read_text():
        assert time.monotonic() < deadline, "the worker process did not start"
        time.sleep(0.05)
    for entry in os.scandir(f"/proc/{pid}/fd"):
        if os.readlink(entry.path) == f"socket:[{inode}]":
            fdinfo = Path(f"/proc/{pid}/fdinfo/{entry.name}").read_text()
            (flags,) = re.findall(r"^flags:\s+([0-7]+)$", fdinfo, re.MULTILINE)
            return int(flags, 8)
    raise AssertionError(f"process {pid} holds no socket listening on {port}")


def test_pypy_workers_serve_and_stop(pypy_venv, tmp_path, redis_server, redis_client):
    """
    With workers = 2 on PyPy, the shared listening socket stays
    non-blocking, 200 polls on fresh connections all get status 200, and
    twistd exits with status 0 after SIGTERM. A blocking socket left a
    process that lost the race for a connection stuck in accept().
    """
    redis_client.set("RA_D_pypy2", b'{"status":"running"}')
    port = free_port()
    config = tmp_path / "raps.toml"
    config.write_text(
        f'[http]\nlisten = "tcp:{port}:interface=127.0.0.1"\nworkers = 2\n'
        f'[redis]\nurl = "{redis_server.url}"\n'
    )
    url = f"http://127.0.0.1:{port}/task/pypy2"
    log_path = tmp_path / "twistd.out"
    command = raps_command(
        "--config", str(config), twistd=str(pypy_venv / "bin" / "twistd")
    )
    with running_twistd(command, tmp_path, log_path) as process:
        fetch_when_ready(url, process, log_path)
        flags = listening_socket_flags(process.pid, port, log_path)
        with ThreadPoolExecutor(max_workers=8) as executor:
            statuses = list(executor.map(lambda _: read_response(url)[0], range(200)))
        exit_status = stop_twistd(process)

    log = log_path.read_text(errors="replace")
    assert flags & os.O_NONBLOCK, oct(flags)
    assert statuses == [200] * 200
    assert exit_status == 0, log
    assert "Traceback" not in log
