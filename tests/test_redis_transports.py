"""
Redis over TLS (rediss://), over a unix socket, and as an ACL user on a
database other than 0: each against a private redis-server, for both the
command connection and the subscriber pool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import redis
import treq

from redis_ajax_push.config import parse_config
from redis_ajax_push.testing import RunningDaemon, free_port, start_daemon
from tests.redis_processes import RedisProcess, TLSFiles, make_tls_files
from tests.support import wait_until

RUNNING = b'{"status": "running"}'
DONE = b'{"status": "done", "result": 7}'
ACL_USER = "raps"
ACL_PASSWORD = "raps-acl-secret"


@pytest.fixture
def processes() -> Iterator[list[RedisProcess]]:
    """
    A list to put the test's redis-server processes in; all are stopped
    after the test.
    """
    started: list[RedisProcess] = []
    yield started
    for process in reversed(started):
        process.stop()


def start_redis(
    processes: list[RedisProcess], workdir: Path, arguments: list[str]
) -> RedisProcess:
    process = RedisProcess(
        workdir,
        f"redis-{len(processes)}",
        ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *arguments],
    )
    processes.append(process)
    process.start()
    return process


# The commands that docs/redis.md lists for the raps ACL user.
ACL_COMMANDS = [
    "+get", "+publish", "+subscribe", "+unsubscribe", "+ping", "+select", "+role",
]  # fmt: skip


def add_acl_user(client: redis.Redis) -> None:
    """
    Create the raps ACL user as docs/redis.md shows it: its own password,
    RA_ keys and channels, and only the commands raps sends.
    """
    client.acl_setuser(
        ACL_USER,
        enabled=True,
        passwords=[f"+{ACL_PASSWORD}"],
        keys=["RA_*"],
        channels=["RA_*"],
        commands=ACL_COMMANDS,
    )


async def start_raps(redis_keys: dict[str, Any]) -> RunningDaemon:
    config = parse_config(
        {
            "http": {"listen": "tcp:0:interface=127.0.0.1"},
            "redis": {"command_timeout": 2, **redis_keys},
        }
    )
    return await start_daemon(config)


async def poll_then_watch(daemon: RunningDaemon, client: redis.Redis) -> None:
    """
    Check a poll and a watch through C{daemon}: the poll returns the stored
    state, the watch returns the done that a worker writes and publishes.
    """
    client.set("RA_D_t1", RUNNING)
    poll = await treq.get(daemon.url("/task/t1"), persistent=False, timeout=10)
    assert poll.code == 200
    assert await poll.content() == RUNNING

    pending = treq.get(daemon.url("/task/t1?watch"), persistent=False, timeout=10)
    await wait_until(
        lambda: client.pubsub_numsub("RA_SC_t1")[0][1] == 1,
        timeout=10,
        what="the watch's channel to be subscribed",
    )
    client.set("RA_D_t1", DONE)
    client.publish("RA_SC_t1", b'{"status": "done"}')
    watch = await pending
    assert watch.code == 200
    assert await watch.content() == DONE


def raps_clients(client: redis.Redis) -> list[dict[str, Any]]:
    """
    Return the CLIENT LIST entries of the raps ACL user: the command
    connection, which selects the URL's database, and one subscriber
    connection, which stays on database 0 because channels ignore it.
    """
    return [entry for entry in client.client_list() if entry["user"] == ACL_USER]


def tls_client(port: int, files: TLSFiles, db: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        db=db,
        ssl=True,
        ssl_ca_certs=str(files.ca),
        ssl_certfile=str(files.client_cert),
        ssl_keyfile=str(files.client_key),
    )


def tls_server_arguments(port: int, files: TLSFiles) -> list[str]:
    return [
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(files.server_cert),
        "--tls-key-file", str(files.server_key),
        "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "yes",
    ]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_tls_acl_user_and_db(processes, tmp_path):
    """
    Over rediss:// with a client certificate, an ACL user and database 3,
    polls and watches work, and every raps connection is a TLS one of
    that user.
    """
    files = make_tls_files(tmp_path)
    port = free_port()
    start_redis(processes, tmp_path, tls_server_arguments(port, files))
    client = tls_client(port, files, db=3)
    add_acl_user(client)

    daemon = await start_raps(
        {
            "url": f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/3",
            "tls_ca": str(files.ca),
            "tls_cert": str(files.client_cert),
            "tls_key": str(files.client_key),
        }
    )
    try:
        await poll_then_watch(daemon, client)
        connections = raps_clients(client)
    finally:
        await daemon.stop()
        client.close()

    assert len(connections) == 2
    assert [entry["db"] for entry in connections].count("3") == 1


@pytest_twisted.ensureDeferred
async def test_tls_unknown_ca_unhealthy(processes, tmp_path):
    """
    A server certificate that the configured CA did not sign fails the TLS
    handshake: /healthz answers 503.
    """
    files = make_tls_files(tmp_path)
    other = make_tls_files(tmp_path, prefix="other-")
    port = free_port()
    start_redis(processes, tmp_path, tls_server_arguments(port, files))

    daemon = await start_raps(
        {
            "url": f"rediss://127.0.0.1:{port}/0",
            "tls_ca": str(other.ca),
            "tls_cert": str(files.client_cert),
            "tls_key": str(files.client_key),
            "command_timeout": 0.5,
        }
    )
    try:
        response = await treq.get(daemon.url("/healthz"), persistent=False, timeout=10)
        body = json.loads(await response.content())
    finally:
        await daemon.stop()

    assert response.code == 503
    assert body["error"] == "unhealthy"


@pytest_twisted.ensureDeferred
async def test_unix_socket_acl_user_and_db(processes, tmp_path):
    """
    Over a unix:// socket with an ACL user and ?db=2, polls and watches
    work and the command connection uses database 2.
    """
    socket_path = tmp_path / "redis.sock"
    start_redis(
        processes,
        tmp_path,
        ["--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700"],
    )
    client = redis.Redis(unix_socket_path=str(socket_path), db=2)
    add_acl_user(client)

    daemon = await start_raps(
        {"url": f"unix://{ACL_USER}:{ACL_PASSWORD}@{socket_path}?db=2"}
    )
    try:
        await poll_then_watch(daemon, client)
        connections = raps_clients(client)
    finally:
        await daemon.stop()
        client.close()

    assert len(connections) == 2
    assert [entry["db"] for entry in connections].count("2") == 1


@pytest_twisted.ensureDeferred
async def test_tcp_acl_user_and_db(processes, tmp_path):
    """
    Over redis:// with an ACL user and database 3 in the path, polls and
    watches work and the command connection uses database 3.
    """
    port = free_port()
    start_redis(processes, tmp_path, ["--port", str(port)])
    client = redis.Redis(host="127.0.0.1", port=port, db=3)
    add_acl_user(client)

    daemon = await start_raps(
        {"url": f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/3"}
    )
    try:
        await poll_then_watch(daemon, client)
        connections = raps_clients(client)
    finally:
        await daemon.stop()
        client.close()

    assert len(connections) == 2
    assert [entry["db"] for entry in connections].count("3") == 1


@pytest_twisted.ensureDeferred
async def test_wrong_acl_password_unhealthy(processes, tmp_path):
    """
    A wrong ACL password leaves raps without a Redis connection: /healthz
    answers 503.
    """
    port = free_port()
    start_redis(processes, tmp_path, ["--port", str(port)])
    client = redis.Redis(host="127.0.0.1", port=port)
    add_acl_user(client)
    client.close()

    daemon = await start_raps(
        {
            "url": f"redis://{ACL_USER}:wrong-password@127.0.0.1:{port}/0",
            "command_timeout": 0.5,
        }
    )
    try:
        response = await treq.get(daemon.url("/healthz"), persistent=False, timeout=10)
        body = json.loads(await response.content())
    finally:
        await daemon.stop()

    assert response.code == 503
    assert body["error"] == "unhealthy"
