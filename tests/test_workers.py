"""
[http] workers: a real twistd raps process with worker processes that share
its listening socket, against the session's redis-server.

Which process accepted a TCP connection is read from /proc: the server end
of the connection is a socket inode in /proc/net/tcp, and the process that
has that inode among its file descriptors serves it. On a unix: socket the
access log lines tell, because a worker process marks them with worker=N.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.http_clients import get_request, read_response
from tests.redis_processes import make_tls_files
from tests.test_tap import (
    COMMAND_TIMEOUT,
    STOP_TIMEOUT,
    run_twistd,
    write_config,
)
from tests.twistd_process import raps_command

# Bounds in seconds.
READY_TIMEOUT = 20
ACCEPT_TIMEOUT = 5
RESPONSE_TIMEOUT = 10
# A worker process checks its parent every second, then stops.
ORPHAN_EXIT_TIMEOUT = 10
# Fresh connections to make before both processes must have served one.
MAX_CONNECTIONS = 300

RUNNING = b'{"status": "running", "progress": 10}'

_STARTED = re.compile(r"Started worker process (\d+) \(pid (\d+)\)")
_SERVING = re.compile(r"worker=(\d+)\] Serving HTTP on .*inherited from the parent")


def free_port(family: int, host: str) -> int:
    """
    Return a TCP port on C{host} that nothing listens on right now.
    """
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def socket_inodes(pid: int) -> set[int]:
    """
    Return the inodes of the sockets among the open file descriptors of
    process C{pid}; empty when it has exited.
    """
    inodes = set()
    try:
        entries = list(os.scandir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry.path)
        except FileNotFoundError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(int(match[1]))
    return inodes


def tcp_sockets() -> list[tuple[int, int, str, int]]:
    """
    Return the TCP sockets of this network namespace from /proc/net/tcp and
    /proc/net/tcp6 as (local port, remote port, state, inode) tuples.
    """
    sockets = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            for line in list(table)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                sockets.append((local_port, remote_port, fields[3], int(fields[9])))
    return sockets


def listening_inode(port: int) -> int:
    """
    Return the inode of the socket that listens on TCP port C{port}.
    """
    inodes = [
        inode
        for local, _, state, inode in tcp_sockets()
        if local == port and state == "0A"
    ]
    assert len(inodes) == 1, f"expected one socket listening on {port}: {inodes}"
    return inodes[0]


def holders(inode: int, pids: list[int]) -> set[int]:
    """
    Return the processes among C{pids} that hold the socket C{inode}.
    """
    return {pid for pid in pids if inode in socket_inodes(pid)}


def serving_pid(client: socket.socket, server_port: int, pids: list[int]) -> int:
    """
    Wait until one of C{pids} has accepted the connection C{client} made to
    C{server_port}, and return that process.

    @raise AssertionError: when none of them has within ACCEPT_TIMEOUT s.
    """
    client_port = client.getsockname()[1]
    deadline = time.monotonic() + ACCEPT_TIMEOUT
    while time.monotonic() < deadline:
        # The server end has no inode until a process accepts it.
        for local, remote, state, inode in tcp_sockets():
            if (local, remote, state) != (server_port, client_port, "01") or not inode:
                continue
            accepted_by = holders(inode, pids)
            if accepted_by:
                return accepted_by.pop()
        time.sleep(0.01)
    raise AssertionError(
        f"none of {pids} accepted the connection from port {client_port}"
    )


def is_running(pid: int) -> bool:
    """
    Return whether process C{pid} runs; a zombie, which no parent has reaped
    yet, has exited.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            fields = stat_file.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def send_get(client: socket.socket, target: str) -> None:
    """
    Send a GET of C{target} that requests that the server close the connection
    after its response.
    """
    client.sendall(get_request(target.encode()))


def receive(client: socket.socket):
    """
    Read one response from C{client} within RESPONSE_TIMEOUT seconds.
    """
    client.settimeout(RESPONSE_TIMEOUT)
    with client.makefile("rb") as stream:
        response = read_response(stream)
    assert response is not None, "the server closed the connection first"
    return response


def wait_for_subscribers(redis_client, channel: str, count: int) -> None:
    """
    Wait until C{count} connections subscribe C{channel}.
    """
    deadline = time.monotonic() + RESPONSE_TIMEOUT
    while redis_client.pubsub_numsub(channel)[0][1] != count:
        assert time.monotonic() < deadline, f"{channel} has no {count} subscribers"
        time.sleep(0.02)


class WorkersDaemon:
    """
    A twistd raps process with worker processes, started in C{directory}
    with C{config} as its config file and C{listen} given as --listen.
    """

    def __init__(self, directory: Path, config: str, listen: str) -> None:
        self.log_path = directory / "twistd.out"
        command = raps_command(
            "--config", write_config(directory, config), "--listen", listen
        )
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                command, cwd=directory, stdout=log_file, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """
        Return the pid of the latest start of each worker process number,
        from the parent's log.
        """
        return {int(number): int(pid) for number, pid in _STARTED.findall(self.log())}

    def all_worker_pids(self) -> set[int]:
        """
        Return the pid of every worker process started so far.
        """
        return {int(pid) for _, pid in _STARTED.findall(self.log())}

    def wait_until_serving(self, workers: int, starts: int = 1) -> None:
        """
        Wait until the parent and worker processes 1 to C{workers} - 1 serve,
        each worker process for the C{starts}-th time.

        @raise AssertionError: when twistd exits or READY_TIMEOUT passes.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            log = self.log()
            if self.process.poll() is not None:
                raise AssertionError(
                    f"twistd exited with {self.process.returncode}:\n{log}"
                )
            serving = [int(number) for number in _SERVING.findall(log)]
            parent_serving = "[redis_ajax_push.service.HTTPService#info] Serving" in log
            if parent_serving and all(
                serving.count(number) >= starts for number in range(1, workers)
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"raps did not serve with {workers} processes in "
                    f"{READY_TIMEOUT} s:\n{log}"
                )
            time.sleep(0.05)

    def stop(self) -> int:
        """
        Send SIGTERM to the parent and return its exit status.
        """
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def kill_all(self) -> None:
        """
        Kill the parent and every worker process that still runs.
        """
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        for pid in self.all_worker_pids():
            if not is_running(pid):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"redis_ajax_push.worker_process" not in cmdline.read():
                    continue
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_workers(tmp_path, redis_server, redis_client):
    """
    A function that starts a L{WorkersDaemon} with C{workers} processes on
    the session's Redis and waits until they serve, as in
    C{start_workers(2, listen)}; C{wait=False} returns at once. Every
    process started is killed after the test if it still runs.
    """
    started: list[WorkersDaemon] = []

    def start(
        workers: int, listen: str, extra_config: str = "", wait: bool = True
    ) -> WorkersDaemon:
        config = (
            f"[http]\nworkers = {workers}\n\n"
            f'[redis]\nurl = "{redis_server.url}"\n\n{extra_config}'
        )
        daemon = WorkersDaemon(tmp_path, config, listen)
        started.append(daemon)
        if wait:
            daemon.wait_until_serving(workers)
        return daemon

    yield start

    for daemon in started:
        daemon.kill_all()


def poll_until_both_serve(port: int, family: int, host: str, pids: list[int]) -> set:
    """
    Poll task wk1 on fresh connections until each of C{pids} has accepted
    one, at most MAX_CONNECTIONS times, and return the processes that did.
    """
    served = set()
    for _ in range(MAX_CONNECTIONS):
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.connect((host, port))
            served.add(serving_pid(client, port, pids))
            send_get(client, "/task/wk1")
            response = receive(client)
        assert response.status == 200
        assert response.json() == json.loads(RUNNING)
        if served == set(pids):
            break
    return served


@pytest.mark.parametrize(
    ("family", "host", "interface"),
    [
        pytest.param(socket.AF_INET, "127.0.0.1", "127.0.0.1", id="ipv4"),
        pytest.param(socket.AF_INET6, "::1", "\\:\\:1", id="ipv6"),
    ],
)
def test_workers_share_one_port(start_workers, redis_client, family, host, interface):
    """
    With workers = 2, the parent and one worker process hold the one
    listening socket and both accept connections and respond to polls.
    The worker process's access log lines are marked worker=1.
    """
    redis_client.set("RA_D_wk1", RUNNING)
    port = free_port(family, host)
    daemon = start_workers(2, f"tcp:{port}:interface={interface}")
    worker = daemon.worker_pids()[1]
    pids = [daemon.pid, worker]

    listener = listening_inode(port)
    served = poll_until_both_serve(port, family, host, pids)

    assert holders(listener, pids) == {daemon.pid, worker}
    assert served == {daemon.pid, worker}
    # Access lines wait up to 0.1 s in the log buffer; stopping writes them.
    assert daemon.stop() == 0
    log = daemon.log()
    assert "[raps.access#info worker=1]" in log
    assert "[raps.access#info]" in log


def connect_on(port: int, pid: int, pids: list[int]) -> socket.socket:
    """
    Return a connection to 127.0.0.1:C{port} that process C{pid} accepted;
    connections that another process accepts are closed.
    """
    for _ in range(MAX_CONNECTIONS):
        client = socket.create_connection(("127.0.0.1", port))
        if serving_pid(client, port, pids) == pid:
            return client
        client.close()
    raise AssertionError(f"process {pid} accepted none of {MAX_CONNECTIONS} tries")


def test_watch_killed_across_workers(start_workers, redis_client):
    """
    A watch that the parent serves is killed by a newer watch of the same
    task that the worker process serves, and the newer watch returns the
    state once the task is done.
    """
    redis_client.set("RA_D_wk2", RUNNING)
    port = free_port(socket.AF_INET, "127.0.0.1")
    daemon = start_workers(2, f"tcp:{port}:interface=127.0.0.1")
    worker = daemon.worker_pids()[1]
    pids = [daemon.pid, worker]

    older = connect_on(port, daemon.pid, pids)
    newer = connect_on(port, worker, pids)
    try:
        send_get(older, "/task/wk2?watch")
        wait_for_subscribers(redis_client, "RA_SC_wk2", 1)
        send_get(newer, "/task/wk2?watch")
        killed = receive(older)

        wait_for_subscribers(redis_client, "RA_SC_wk2", 1)
        redis_client.set("RA_D_wk2", b'{"status": "done", "progress": 100}')
        redis_client.publish("RA_SC_wk2", b'{"status": "done"}')
        done = receive(newer)
    finally:
        older.close()
        newer.close()

    assert killed.status == 409
    assert killed.json()["error"] == "killed"
    assert done.status == 200
    assert done.json() == {"status": "done", "progress": 100}


def test_sigterm_stops_every_process(start_workers, redis_client):
    """
    SIGTERM to the parent ends the open watches of the parent and of the
    worker process with 503 shutting_down, stops the worker process, and
    twistd exits with status 0.
    """
    redis_client.set("RA_D_wk3", RUNNING)
    redis_client.set("RA_D_wk4", RUNNING)
    port = free_port(socket.AF_INET, "127.0.0.1")
    daemon = start_workers(2, f"tcp:{port}:interface=127.0.0.1")
    worker = daemon.worker_pids()[1]
    pids = [daemon.pid, worker]

    on_parent = connect_on(port, daemon.pid, pids)
    on_worker = connect_on(port, worker, pids)
    try:
        send_get(on_parent, "/task/wk3?watch")
        send_get(on_worker, "/task/wk4?watch")
        wait_for_subscribers(redis_client, "RA_SC_wk3", 1)
        wait_for_subscribers(redis_client, "RA_SC_wk4", 1)

        exit_status = daemon.stop()
        parent_response = receive(on_parent)
        worker_response = receive(on_worker)
    finally:
        on_parent.close()
        on_worker.close()

    log = daemon.log()
    assert exit_status == 0
    assert not is_running(worker)
    assert parent_response.status == 503
    assert parent_response.json()["error"] == "shutting_down"
    assert worker_response.status == 503
    assert worker_response.json()["error"] == "shutting_down"
    assert f"Worker process 1 (pid {worker}) stopped: exit status 0" in log
    assert "Traceback" not in log


def test_killed_worker_restarts(start_workers, redis_client):
    """
    A worker process killed with SIGKILL is logged and started again, and
    the new worker process serves the port beside the parent.
    """
    redis_client.set("RA_D_wk1", RUNNING)
    port = free_port(socket.AF_INET, "127.0.0.1")
    daemon = start_workers(2, f"tcp:{port}:interface=127.0.0.1")
    killed = daemon.worker_pids()[1]

    os.kill(killed, signal.SIGKILL)
    daemon.wait_until_serving(2, starts=2)
    restarted = daemon.worker_pids()[1]
    pids = [daemon.pid, restarted]
    served = poll_until_both_serve(port, socket.AF_INET, "127.0.0.1", pids)

    log = daemon.log()
    assert restarted != killed
    assert served == {daemon.pid, restarted}
    assert holders(listening_inode(port), pids) == {daemon.pid, restarted}
    assert (
        f"Worker process 1 (pid {killed}) exited unexpectedly: killed by signal 9"
        in log
    )
    assert daemon.stop() == 0


def test_orphaned_worker_exits(start_workers):
    """
    When the parent is killed with SIGKILL, the worker process notices
    that its parent is gone and exits by itself.
    """
    port = free_port(socket.AF_INET, "127.0.0.1")
    daemon = start_workers(2, f"tcp:{port}:interface=127.0.0.1")
    worker = daemon.worker_pids()[1]

    daemon.process.kill()
    daemon.process.wait(timeout=STOP_TIMEOUT)
    deadline = time.monotonic() + ORPHAN_EXIT_TIMEOUT
    while is_running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)

    assert not is_running(worker)
    assert f"The parent process {daemon.pid} has exited; stopping" in daemon.log()


def unix_poll(path: Path, target: str):
    """
    Send a GET of C{target} over the unix socket at C{path} and return the
    response.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        send_get(client, target)
        return receive(client)


def served_by_worker(daemon: WorkersDaemon, task_id: str) -> bool:
    """
    Wait for the one access log line of task C{task_id} and return whether
    worker process 1 wrote it.
    """
    deadline = time.monotonic() + RESPONSE_TIMEOUT
    while True:
        lines = [
            line
            for line in daemon.log().splitlines()
            if f"GET /task/{task_id} " in line
        ]
        if lines:
            assert len(lines) == 1, lines
            return "[raps.access#info worker=1]" in lines[0]
        assert time.monotonic() < deadline, f"no access line of {task_id}"
        time.sleep(0.01)


def test_unix_socket_shared(start_workers, redis_client, tmp_path):
    """
    On a unix: listen address both processes serve the socket file, and a
    worker process that stops and starts again keeps the file and its mode.
    """
    redis_client.set("RA_D_wk1", RUNNING)
    path = tmp_path / "raps.sock"
    daemon = start_workers(2, f"unix:{path}:mode=600")
    worker = daemon.worker_pids()[1]

    sources = set()
    for index in range(MAX_CONNECTIONS):
        response = unix_poll(path, f"/task/wk1_{index}")
        assert response.status == 404
        sources.add(served_by_worker(daemon, f"wk1_{index}"))
        if sources == {True, False}:
            break

    os.kill(worker, signal.SIGTERM)
    daemon.wait_until_serving(2, starts=2)
    after_restart = unix_poll(path, "/task/wk1")

    assert sources == {True, False}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert after_restart.status == 200
    assert after_restart.json() == json.loads(RUNNING)
    assert daemon.stop() == 0
    assert not path.exists()


def test_json_log_marks_worker(start_workers, redis_client):
    """
    With [log] format = "json", the worker process writes JSON lines to the
    same log, each event with the field worker = 1, and the parent's events
    have no such field.
    """
    port = free_port(socket.AF_INET, "127.0.0.1")
    daemon = start_workers(
        2,
        f"tcp:{port}:interface=127.0.0.1",
        extra_config='[log]\nformat = "json"\n',
        wait=False,
    )
    deadline = time.monotonic() + READY_TIMEOUT
    while "InheritedPortService" not in daemon.log():
        assert daemon.process.poll() is None, daemon.log()
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert daemon.stop() == 0

    events = [json.loads(line) for line in daemon.log().splitlines()]
    from_worker = [event for event in events if "worker" in event]
    serving = [
        event
        for event in from_worker
        if event["log_namespace"] == "redis_ajax_push.service.InheritedPortService"
    ]
    supervisor = [
        event
        for event in events
        if event.get("log_namespace") == "redis_ajax_push.workers.WorkerSupervisor"
    ]
    assert len(serving) == 1
    assert {event["worker"] for event in from_worker} == {1}
    assert supervisor
    assert all("worker" not in event for event in supervisor)


BAD_WORKER_CONFIGS = [
    pytest.param("[http]\nworkers = 0\n", "must be 1 or more", id="zero"),
    pytest.param("[http]\nworkers = 'two'\n", "expected an integer", id="string"),
    pytest.param(
        "[http]\nworkers = 2\nlisten = 'ssl:0:interface=127.0.0.1:"
        "privateKey={key}:certKey={cert}'\n",
        "reverse proxy",
        id="ssl-listen",
    ),
]


@pytest.mark.parametrize(("config", "expected"), BAD_WORKER_CONFIGS)
def test_twistd_bad_workers_one_line(tmp_path, config, expected):
    """
    twistd raps with an invalid [http] workers, or with workers = 2 on an
    ssl: listen address, exits non-zero with one line on stderr that names
    http.workers and the fix.
    """
    tls = make_tls_files(tmp_path)
    text = config.format(key=tls.server_key, cert=tls.server_cert)
    path = write_config(tmp_path, text)

    result = run_twistd(tmp_path, "-n", "--pidfile=", "raps", "--config", path)
    lines = result.stderr.splitlines()

    assert result.returncode != 0
    assert len(lines) == 1
    assert lines[0].startswith("raps: http.workers: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_worker_without_socket_one_line(tmp_path, redis_server):
    """
    A worker process started on a file descriptor that is no socket exits
    with status 1 and one line on stderr that names the descriptor.
    """
    command = [
        sys.executable,
        "-m",
        "redis_ajax_push.worker_process",
        "--worker",
        "1",
        "--socket-fd",
        "0",
        "--parent-pid",
        str(os.getpid()),
        "--redis",
        redis_server.url,
    ]

    result = subprocess.run(
        command,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    lines = result.stderr.splitlines()

    assert result.returncode == 1
    assert len(lines) == 1
    assert lines[0].startswith("raps: cannot serve the listening socket")
    assert "file descriptor 0" in lines[0]
