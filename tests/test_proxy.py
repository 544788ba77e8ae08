"""
Two in-process raps instances on one Redis behind a real proxy on loopback:
nginx with etc/nginx-raps.conf, the file that docs/deploy.md shows, and
HAProxy with the config block of docs/deploy.md.

A proxy that is not installed is skipped, except in CI (CI=true), where
its tests fail instead; .ci/run installs both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from redis_ajax_push.testing import free_port
from tests.support import ChannelSpy, wait_until

ROOT = Path(__file__).resolve().parent.parent
SITE_CONFIG = ROOT / "etc" / "nginx-raps.conf"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

RUNNING = b'{"status": "running", "progress": 10}'
HEARTBEAT_INTERVAL = 0.2
# Bounds in seconds.
READY_TIMEOUT = 10
STOP_TIMEOUT = 10
REQUEST_TIMEOUT = 10
# Time within which the first heartbeat must reach the client through
# nginx: the interval plus a margin for a loaded machine, far less than a
# buffered response would take, which only arrives once the watch ends.
FIRST_HEARTBEAT_WITHIN = 1.0


def require_program(name: str, package: str) -> str:
    """
    Return the path of the program C{name}. Skip when it is missing outside
    CI. In CI (CI=true) fail instead, so that a missing install step does
    not pass as a skip.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if path is not None:
        return path
    reason = f"{name} is missing: install it with apt-get install {package}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def render_site_config(upstream_ports: tuple[int, int], listen_port: int) -> str:
    """
    Return etc/nginx-raps.conf with the test's instance ports and nginx's
    listen port in place of 8881, 8882 and 8080.
    """
    text = SITE_CONFIG.read_text(encoding="utf-8")
    replacements = [
        ("server 127.0.0.1:8881 ", f"server 127.0.0.1:{upstream_ports[0]} "),
        ("server 127.0.0.1:8882 ", f"server 127.0.0.1:{upstream_ports[1]} "),
        ("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen_port};"),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, f"{SITE_CONFIG} must contain {old!r} once"
        text = text.replace(old, new)
    return text


def render_haproxy_config(upstream_ports: tuple[int, int], listen_port: int) -> str:
    """
    Return the HAProxy config block of docs/deploy.md with the test's
    instance ports and listen port in place of 8881, 8882 and 8080. The
    syslog line goes, because the test host may have no /dev/log, and
    maxconn drops to 1000, because HAProxy exits at startup when it cannot
    raise its file limit to about twice maxconn.
    """
    blocks = re.findall(r"```haproxy\n(.*?)```", DEPLOY_DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1, f"{DEPLOY_DOC} must contain one haproxy block"
    text = blocks[0]
    replacements = [
        ("    log /dev/log local0\n", ""),
        ("    maxconn 20000\n", "    maxconn 1000\n"),
        ("raps1 127.0.0.1:8881 ", f"raps1 127.0.0.1:{upstream_ports[0]} "),
        ("raps2 127.0.0.1:8882 ", f"raps2 127.0.0.1:{upstream_ports[1]} "),
        ("bind 127.0.0.1:8080\n", f"bind 127.0.0.1:{listen_port}\n"),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, f"the haproxy block must contain {old!r} once"
        text = text.replace(old, new)
    return text


def temp_path_lines(nginx: str, directory: Path) -> str:
    """
    Return the *_temp_path directives that put every temporary file of
    nginx in C{directory}, for the modules that this nginx build has.
    """
    build = subprocess.run(
        [nginx, "-V"], capture_output=True, text=True, timeout=READY_TIMEOUT
    ).stderr
    lines = [f"client_body_temp_path {directory / 'client_body'};"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in build:
            lines.append(f"{module}_temp_path {directory / module};")
    return "\n    ".join(lines)


def write_main_config(nginx: str, directory: Path, site_config: str) -> Path:
    """
    Write an nginx.conf that runs in the foreground with one worker, keeps
    its pid, logs and temporary files in C{directory} and includes
    C{site_config}. Return its path.
    """
    site_path = directory / "raps-site.conf"
    site_path.write_text(site_config, encoding="utf-8")
    # A master started as root runs its workers as user nobody by default,
    # and nobody cannot enter pytest's private tmp_path.
    user_line = "user root;" if os.geteuid() == 0 else ""
    main_config = f"""
{user_line}
daemon off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
    access_log {directory / "access.log"};
    {temp_path_lines(nginx, directory)}
    include {site_path};
}}
"""
    path = directory / "nginx.conf"
    path.write_text(main_config, encoding="utf-8")
    return path


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """
    Block until 127.0.0.1:C{port} accepts a TCP connection.

    @raise AssertionError: when the proxy exits or the port is not open
        within READY_TIMEOUT seconds.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"proxy exited with {process.returncode}:\n{read_log(log)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                f"proxy did not listen in {READY_TIMEOUT} s:\n{read_log(log)}"
            )
        time.sleep(0.05)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no log)"


class Proxy:
    """
    A running proxy (nginx or haproxy) in front of two daemons, and its
    base URL.
    """

    def __init__(self, name: str, base_url: str, daemons: list) -> None:
        self.name = name
        self.base_url = base_url
        self.daemons = daemons

    def url(self, path: str) -> str:
        return self.base_url + path

    def open_watches(self) -> list[int]:
        """
        Return the number of open watches and streams of each daemon.
        """
        return [len(daemon.service.tasks.watches) for daemon in self.daemons]


def proxy_command(
    name: str, directory: Path, upstream_ports: tuple[int, int], listen_port: int
) -> tuple[list[str], Path]:
    """
    Write the config of proxy C{name} into C{directory} and return the
    command that runs it in the foreground, and the file of its error log.
    """
    if name == "nginx":
        nginx = require_program("nginx", "nginx-light")
        site = render_site_config(upstream_ports, listen_port)
        config_path = write_main_config(nginx, directory, site)
        command = [nginx, "-p", str(directory), "-c", str(config_path)]
        return command, directory / "error.log"
    haproxy = require_program("haproxy", "haproxy")
    config_path = directory / "haproxy.cfg"
    config_path.write_text(
        render_haproxy_config(upstream_ports, listen_port), encoding="utf-8"
    )
    # -db: stay in the foreground; -W: master-worker mode, stopped by SIGTERM.
    return [haproxy, "-db", "-W", "-f", str(config_path)], directory / "proxy.out"


# The proxies that the tests run, by program name.
PROXIES = ["nginx", "haproxy"]


@asynccontextmanager
async def running_proxy(
    proxy_name: str, start_daemon: Any, tmp_path: Path
) -> AsyncIterator[Proxy]:
    """
    Start two daemons with HEARTBEAT_INTERVAL behind nginx with the config
    of etc/nginx-raps.conf, or behind HAProxy with the config of
    docs/deploy.md, and stop the proxy on exit.
    """
    directory = tmp_path / proxy_name
    directory.mkdir()
    daemons = [
        await start_daemon(watch={"heartbeat_interval": HEARTBEAT_INTERVAL})
        for _ in range(2)
    ]
    listen_port = free_port()
    command, error_log = proxy_command(
        proxy_name, directory, (daemons[0].port, daemons[1].port), listen_port
    )

    with (directory / "proxy.out").open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_port(listen_port, process, error_log)
        yield Proxy(proxy_name, f"http://127.0.0.1:{listen_port}", daemons)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def test_docs_show_nginx_config():
    """
    docs/deploy.md shows etc/nginx-raps.conf word for word, so that the
    tested config is the documented one.
    """
    config = SITE_CONFIG.read_text(encoding="utf-8")
    blocks = re.findall(r"```nginx\n(.*?)```", DEPLOY_DOC.read_text(), re.DOTALL)

    assert config in blocks


@pytest.mark.parametrize("proxy_name", PROXIES)
@pytest_twisted.ensureDeferred
async def test_proxy_serves_poll(proxy_name, start_daemon, redis_client, tmp_path):
    """
    A poll through the proxy returns the data key.
    """
    async with running_proxy(proxy_name, start_daemon, tmp_path) as proxy:
        redis_client.set("RA_D_px1", RUNNING)

        response = await treq.get(
            proxy.url("/task/px1"), persistent=False, timeout=REQUEST_TIMEOUT
        )

        assert response.code == 200
        assert await response.content() == RUNNING


@pytest.mark.parametrize("proxy_name", PROXIES)
@pytest_twisted.ensureDeferred
async def test_proxy_passes_heartbeats(
    proxy_name, start_daemon, redis_client, tmp_path
):
    """
    A watch's first heartbeat reaches the client through the proxy within
    about one heartbeat interval, long before the watch ends, so the proxy
    does not buffer it.
    """
    async with running_proxy(proxy_name, start_daemon, tmp_path) as proxy:
        redis_client.set("RA_D_px2", RUNNING)
        chunks: list[tuple[float, bytes]] = []
        started = time.monotonic()

        response = await treq.get(
            proxy.url("/task/px2?watch"), persistent=False, timeout=REQUEST_TIMEOUT
        )
        collected = treq.collect(
            response, lambda chunk: chunks.append((time.monotonic(), chunk))
        )
        await wait_until(lambda: chunks, timeout=REQUEST_TIMEOUT, what="a heartbeat")
        first_arrival, first_chunk = chunks[0]
        watch_open = sum(proxy.open_watches())
        redis_client.publish("RA_SC_px2", b'{"status": "done"}')
        await collected
        body = b"".join(chunk for _, chunk in chunks)

        assert response.code == 200
        if proxy.name == "nginx":
            # nginx reads X-Accel-Buffering itself and does not pass it on.
            assert response.headers.getRawHeaders("X-Accel-Buffering") is None
        assert first_chunk.startswith(b"\n")
        assert first_arrival - started < FIRST_HEARTBEAT_WITHIN
        assert watch_open == 1
        assert body.lstrip(b"\n") == RUNNING


@pytest.mark.parametrize("proxy_name", PROXIES)
@pytest_twisted.ensureDeferred
async def test_proxy_passes_stream_events(
    proxy_name, start_daemon, redis_client, tmp_path
):
    """
    A stream's first event reaches the client through the proxy while the
    stream stays open.
    """
    async with running_proxy(proxy_name, start_daemon, tmp_path) as proxy:
        redis_client.set("RA_D_px3", RUNNING)
        received = bytearray()

        response = await treq.get(
            proxy.url("/task/px3?stream"), persistent=False, timeout=REQUEST_TIMEOUT
        )
        collected = treq.collect(response, received.extend)
        await wait_until(
            lambda: b"event: update" in received,
            timeout=REQUEST_TIMEOUT,
            what="the first event",
        )
        stream_open = sum(proxy.open_watches())
        redis_client.publish("RA_SC_px3", b'{"status": "done"}')
        await collected

        assert response.code == 200
        assert response.headers.getRawHeaders("Content-Type") == [
            "text/event-stream; charset=utf-8"
        ]
        assert stream_open == 1
        assert b"event: done" in received


@pytest.mark.parametrize("proxy_name", PROXIES)
@pytest_twisted.ensureDeferred
async def test_proxy_kill_across_instances(
    proxy_name, start_daemon, redis_client, tmp_path
):
    """
    The proxy sends two watches of one task to the two instances in turn,
    and the newer watch, on the other instance, kills the older one.
    """
    async with running_proxy(proxy_name, start_daemon, tmp_path) as proxy:
        redis_client.set("RA_D_px4", RUNNING)
        spy = ChannelSpy(redis_client, "RA_SC_px4")
        try:
            first = treq.get(
                proxy.url("/task/px4?watch"), persistent=False, timeout=REQUEST_TIMEOUT
            )
            await spy.wait_for_kills(1)
            first_placement = proxy.open_watches()
            second = treq.get(
                proxy.url("/task/px4?watch"), persistent=False, timeout=REQUEST_TIMEOUT
            )
            await spy.wait_for_kills(2)
            killed = await first
            killed_body = await killed.content()
            await wait_until(lambda: sum(proxy.open_watches()) == 1, what="one watch")
            second_placement = proxy.open_watches()
            redis_client.publish("RA_SC_px4", b'{"status": "done"}')
            survivor = await second
            survivor_body = await survivor.content()
        finally:
            spy.close()

        assert sorted(first_placement) == [0, 1]
        assert sorted(second_placement) == [0, 1]
        assert first_placement != second_placement
        # The kill can come before or after the first heartbeat: status 409, or
        # 200 with the error after the heartbeats.
        assert json.loads(killed_body)["error"] == "killed"
        assert survivor.code == 200
        assert survivor_body.lstrip(b"\n") == RUNNING
