"""
Redis Sentinel against real processes: a master, a replica and three
Sentinels on free loopback ports. The daemon finds the master through the
Sentinels and follows it through a failover.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import redis
import treq
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from redis_ajax_push.config import parse_config
from redis_ajax_push.sentinel import (
    ReplyError,
    SentinelEndpoint,
    SentinelError,
    _IncompleteReplyError,
    encode_command,
    parse_reply,
)
from redis_ajax_push.testing import RunningDaemon, free_port, start_daemon
from tests.redis_processes import RedisProcess, TLSFiles, make_tls_files
from tests.support import sleep, wait_until

RUNNING = b'{"status": "running"}'
DONE = b'{"status": "done", "after": "failover"}'
SERVICE = "mymaster"


@dataclass
class SentinelSetup:
    """
    The ports of the master, the replica and the Sentinels.
    """

    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    # Master, replica, then the Sentinels, once the fixture started them.
    processes: list[RedisProcess] = field(default_factory=list)
    # Set when the master and replica accept TLS connections only.
    tls: TLSFiles | None = None

    def client(self, port: int, db: int = 0) -> redis.Redis:
        if self.tls is None or port in self.sentinel_ports:
            return redis.Redis(host="127.0.0.1", port=port, db=db, socket_timeout=5)
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            db=db,
            socket_timeout=5,
            ssl=True,
            ssl_ca_certs=str(self.tls.ca),
        )

    def reported_master(self, sentinel_port: int) -> tuple[str, int] | None:
        with self.client(sentinel_port) as sentinel:
            reply = sentinel.execute_command(
                "SENTINEL", "get-master-addr-by-name", SERVICE
            )
        if not reply:
            return None
        return reply[0].decode(), int(reply[1])


def sentinel_conf(
    path: Path, port: int, master_port: int, tls: TLSFiles | None
) -> Path:
    # With tls-replication, Sentinel connects to the servers over TLS; its
    # own port stays plain for raps.
    tls_lines = ""
    if tls is not None:
        tls_lines = (
            "tls-replication yes\n"
            f"tls-cert-file {tls.server_cert}\n"
            f"tls-key-file {tls.server_key}\n"
            f"tls-ca-cert-file {tls.ca}\n"
        )
    path.write_text(
        tls_lines + f"port {port}\n"
        "bind 127.0.0.1\n"
        f"dir {path.parent}\n"
        "sentinel resolve-hostnames no\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 3000\n"
    )
    return path


def sentinel_ready(setup: SentinelSetup) -> bool:
    """
    Check that the replica is in sync and that every Sentinel lists it and
    the two other Sentinels, which a failover needs.
    """
    with setup.client(setup.replica_port) as replica:
        if replica.info("replication").get("master_link_status") != "up":
            return False
    for port in setup.sentinel_ports:
        with setup.client(port) as sentinel:
            replicas = sentinel.execute_command("SENTINEL", "replicas", SERVICE)
            others = sentinel.execute_command("SENTINEL", "sentinels", SERVICE)
        if len(replicas) != 1 or len(others) != 2:
            return False
    return True


@contextmanager
def running_setup(tmp_path: Path, tls: TLSFiles | None) -> Iterator[SentinelSetup]:
    """
    Start a master, its replica and three Sentinels monitoring them as
    mymaster, over TLS when C{tls} is given, and stop them all on exit.
    """
    setup = SentinelSetup(free_port(), free_port(), [free_port() for _ in range(3)])
    setup.tls = tls
    # The replica's first sync starts at once rather than after the
    # default 5 s of repl-diskless-sync-delay.
    common = [
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip
    if tls is not None:
        common += [
            "--tls-cert-file", str(tls.server_cert),
            "--tls-key-file", str(tls.server_key),
            "--tls-ca-cert-file", str(tls.ca),
            "--tls-replication", "yes",
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def port_arguments(port: int) -> list[str]:
        if tls is None:
            return ["--port", str(port)]
        return ["--port", "0", "--tls-port", str(port)]

    processes = [
        RedisProcess(tmp_path, "master", [*port_arguments(setup.master_port), *common]),
        RedisProcess(
            tmp_path,
            "replica",
            [
                *port_arguments(setup.replica_port),
                "--replicaof",
                "127.0.0.1",
                str(setup.master_port),
                *common,
            ],
        ),  # fmt: skip
    ]
    for index, port in enumerate(setup.sentinel_ports):
        conf = sentinel_conf(
            tmp_path / f"sentinel-{index}.conf", port, setup.master_port, tls
        )
        processes.append(
            # Sentinel 7.0 logs no ready line; it monitors once it logs this.
            RedisProcess(
                tmp_path,
                f"sentinel-{index}",
                [str(conf), "--sentinel"],
                ready_text="+monitor master",
            )
        )
    setup.processes = processes
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + 15
        while not sentinel_ready(setup):
            if time.monotonic() > deadline:
                raise AssertionError("Sentinels did not discover each other in 15 s")
            time.sleep(0.1)
        yield setup
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture
def sentinel_setup(tmp_path) -> Iterator[SentinelSetup]:
    """
    A master, its replica and three Sentinels monitoring them as mymaster,
    all stopped after the test.
    """
    with running_setup(tmp_path, None) as setup:
        yield setup


@pytest.fixture
def tls_sentinel_setup(tmp_path) -> Iterator[SentinelSetup]:
    """
    The same as L{sentinel_setup}, with master and replica reachable over
    TLS only.
    """
    with running_setup(tmp_path, make_tls_files(tmp_path)) as setup:
        yield setup


async def start_raps(setup: SentinelSetup, **redis_keys: Any) -> RunningDaemon:
    config = parse_config(
        {
            "http": {"listen": "tcp:0:interface=127.0.0.1"},
            "redis": {
                # Only the database of this URL is used: the master's
                # address comes from the Sentinels.
                "url": "redis://127.0.0.1/0",
                "sentinels": [f"127.0.0.1:{port}" for port in setup.sentinel_ports],
                "sentinel_service": SERVICE,
                "command_timeout": 1,
                **redis_keys,
            },
        }
    )
    return await start_daemon(config)


async def health(daemon: RunningDaemon) -> tuple[int, bytes]:
    response = await treq.get(daemon.url("/healthz"), persistent=False, timeout=10)
    return response.code, await response.content()


def subscribed(client: redis.Redis, channel: str) -> bool:
    return bool(client.pubsub_numsub(channel)[0][1] == 1)


@pytest_twisted.ensureDeferred
async def test_poll_through_sentinel(sentinel_setup):
    """
    A daemon configured with Sentinels reads the data key from the master
    they report, skipping a listed Sentinel that refuses connections.
    """
    master = sentinel_setup.client(sentinel_setup.master_port)
    master.set("RA_D_s0", RUNNING)
    addresses = [f"127.0.0.1:{port}" for port in sentinel_setup.sentinel_ports]
    # Nothing listens on this port: the connection is refused.
    refusing = f"127.0.0.1:{free_port()}"
    daemon = await start_raps(sentinel_setup, sentinels=[refusing, *addresses])
    try:
        response = await treq.get(daemon.url("/task/s0"), persistent=False, timeout=10)
        body = await response.content()
        code, _ = await health(daemon)
    finally:
        await daemon.stop()
        master.close()

    assert response.code == 200, body
    assert body == RUNNING
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_no_sentinel_unhealthy(tmp_path):
    """
    With no Sentinel reachable, /healthz responds 503 within the command
    timeout.
    """
    ports = [free_port(), free_port()]
    setup = SentinelSetup(0, 0, ports)
    daemon = await start_raps(setup, command_timeout=0.5)
    try:
        code, body = await health(daemon)
    finally:
        await daemon.stop()

    assert code == 503
    assert json.loads(body)["error"] == "unhealthy"


@pytest_twisted.ensureDeferred
async def test_watch_survives_failover(sentinel_setup, capsys):
    """
    A watch open during a Sentinel failover is subscribed again on the
    promoted replica and returns the done written there, and /healthz
    responds 200 again afterwards.
    """
    setup = sentinel_setup
    master = setup.client(setup.master_port)
    replica = setup.client(setup.replica_port)
    master.set("RA_D_s1", RUNNING)
    # The state must be on the replica before it is promoted.
    assert master.wait(1, 2000) == 1
    daemon = await start_raps(setup)
    started = time.monotonic()
    try:
        before = await health(daemon)
        pending = treq.get(daemon.url("/task/s1?watch"), persistent=False, timeout=40)
        await wait_until(lambda: subscribed(master, "RA_SC_s1"), timeout=5)

        with setup.client(setup.sentinel_ports[0]) as sentinel:
            assert sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        await wait_until(
            lambda: (
                setup.reported_master(setup.sentinel_ports[0])
                == ("127.0.0.1", setup.replica_port)
            ),
            timeout=10,
            what="the Sentinel to report the replica as master",
        )
        during = await health(daemon)
        await wait_until(
            lambda: subscribed(replica, "RA_SC_s1"),
            timeout=10,
            what="the watch's channel on the new master",
        )
        # Sentinel demotes the old master only seconds later, so this shows
        # that raps itself left it on the switch.
        old_master_channel = subscribed(master, "RA_SC_s1")
        replica.set("RA_D_s1", DONE)
        replica.publish("RA_SC_s1", b'{"status": "done"}')
        response = await pending
        body = await response.content()

        after = await health(daemon)
        deadline = time.monotonic() + 5
        while after[0] != 200 and time.monotonic() < deadline:
            await sleep(0.2)
            after = await health(daemon)
    finally:
        await daemon.stop()
        master.close()
        replica.close()

    with capsys.disabled():
        print(f"\n/healthz before failover: {before}")
        print(f"/healthz during failover: {during}")
        print(f"/healthz after failover: {after}")
        print(f"failover test took {time.monotonic() - started:.1f} s")
    assert before[0] == 200
    assert old_master_channel is False
    assert response.code == 200, body
    assert body == DONE
    assert after == (200, b'{"status": "ok"}')
    assert time.monotonic() - started < 30


@pytest_twisted.ensureDeferred
async def test_watch_survives_master_crash(sentinel_setup):
    """
    When the master process stops, the Sentinels promote the replica and an
    open watch returns the done written on it.
    """
    setup = sentinel_setup
    master = setup.client(setup.master_port)
    replica = setup.client(setup.replica_port)
    master.set("RA_D_s2", RUNNING)
    assert master.wait(1, 2000) == 1
    master.close()
    daemon = await start_raps(setup)
    started = time.monotonic()
    try:
        pending = treq.get(daemon.url("/task/s2?watch"), persistent=False, timeout=40)
        await wait_until(lambda: daemon.service.redis.pool.channel_count == 1)

        setup.processes[0].stop()
        # down-after-milliseconds is 1 s; the election and promotion follow.
        await wait_until(
            lambda: subscribed(replica, "RA_SC_s2"),
            timeout=20,
            what="the watch's channel on the promoted replica",
        )
        replica.set("RA_D_s2", DONE)
        replica.publish("RA_SC_s2", b'{"status": "done"}')
        response = await pending
        body = await response.content()
        code, _ = await health(daemon)
    finally:
        await daemon.stop()
        replica.close()

    assert response.code == 200, body
    assert body == DONE
    assert code == 200
    assert time.monotonic() - started < 30


@pytest_twisted.ensureDeferred
async def test_tls_acl_failover(tls_sentinel_setup):
    """
    Through Sentinel with rediss://, an ACL user and database 3, a watch
    open during a failover returns the done written on the promoted
    replica, and every raps connection there is the ACL user's.
    """
    setup = tls_sentinel_setup
    assert setup.tls is not None
    master = setup.client(setup.master_port, db=3)
    replica = setup.client(setup.replica_port, db=3)
    # ACL users are not replicated: each server gets its own.
    for client in (master, replica):
        client.acl_setuser(
            "raps",
            enabled=True,
            passwords=["+raps-acl-secret"],
            keys=["RA_*"],
            channels=["RA_*"],
            commands=["+get", "+publish", "+subscribe", "+unsubscribe"]
            + ["+ping", "+select", "+role"],
        )
    master.set("RA_D_s3", RUNNING)
    assert master.wait(1, 2000) == 1
    daemon = await start_raps(
        setup,
        url="rediss://raps:raps-acl-secret@127.0.0.1/3",
        tls_ca=str(setup.tls.ca),
    )
    try:
        pending = treq.get(daemon.url("/task/s3?watch"), persistent=False, timeout=40)
        await wait_until(lambda: subscribed(master, "RA_SC_s3"), timeout=5)

        with setup.client(setup.sentinel_ports[0]) as sentinel:
            assert sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        await wait_until(
            lambda: subscribed(replica, "RA_SC_s3"),
            timeout=15,
            what="the watch's channel on the new master",
        )
        replica.set("RA_D_s3", DONE)
        replica.publish("RA_SC_s3", b'{"status": "done"}')
        response = await pending
        body = await response.content()
        raps_connections = [
            entry for entry in replica.client_list() if entry["user"] == "raps"
        ]
    finally:
        await daemon.stop()
        master.close()
        replica.close()

    assert response.code == 200, body
    assert body == DONE
    assert len(raps_connections) == 2
    assert [entry["db"] for entry in raps_connections].count("3") == 1


@pytest_twisted.ensureDeferred
async def test_replica_fails_role_check(sentinel_setup):
    """
    Connecting to an address whose ROLE is not master fails with
    SentinelError and hands no connection over.
    """
    url = parse_config(
        {
            "redis": {
                "sentinels": [f"127.0.0.1:{sentinel_setup.sentinel_ports[0]}"],
                "sentinel_service": SERVICE,
            }
        }
    ).redis.url
    endpoint = SentinelEndpoint(reactor, url, timeout=5)
    factory = Factory.forProtocol(Protocol)

    with pytest.raises(SentinelError) as caught:
        await endpoint._connect_master(
            factory, "127.0.0.1", sentinel_setup.replica_port
        )

    assert "role is slave, not master" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"+OK\r\n", b"OK", id="status"),
        pytest.param(b":42\r\n", 42, id="integer"),
        pytest.param(b"$-1\r\n", None, id="null-bulk"),
        pytest.param(b"*-1\r\n", None, id="null-array"),
        pytest.param(
            b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n",
            [b"127.0.0.1", b"6380"],
            id="address",
        ),
        pytest.param(
            b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n", [b"master", 0, []], id="role"
        ),
    ],
)
def test_parse_reply_values(data, expected):
    """
    parse_reply decodes each RESP2 reply type and returns the offset after
    it.
    """
    reply, offset = parse_reply(data + b"+NEXT\r\n")

    assert reply == expected
    assert offset == len(data)


def test_parse_reply_error():
    """
    An error reply becomes a ReplyError with the server's message.
    """
    reply, _ = parse_reply(b"-NOAUTH Authentication required.\r\n")

    assert isinstance(reply, ReplyError)
    assert str(reply) == "NOAUTH Authentication required."


@pytest.mark.parametrize(
    "data",
    [b"", b"+OK", b"$5\r\nabc", b"*2\r\n$1\r\na\r\n"],
    ids=["empty", "no-line-end", "short-bulk", "short-array"],
)
def test_parse_reply_incomplete(data):
    """
    A buffer that ends inside a reply raises the incomplete-reply error, so
    the caller waits for more data.
    """
    with pytest.raises(_IncompleteReplyError):
        parse_reply(data)


def test_encode_command():
    """
    encode_command writes a RESP array of bulk strings.
    """
    encoded = encode_command("SENTINEL", "get-master-addr-by-name", b"mymaster")

    assert encoded == (
        b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$8\r\nmymaster\r\n"
    )
