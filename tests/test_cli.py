"""
The raps command, run as a separate process: each subcommand's output,
exit status and error message, against a real Redis and a real daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, utils

from redis_ajax_push.publisher import TaskPublisher, sign_task_id, verify_task_id
from redis_ajax_push.signing import TaskIdSigner
from redis_ajax_push.testing import free_port
from tests.support import ChannelSpy, sleep

SECRET = "cli-test-secret-0123456789abcdef"
OLD_SECRET = "cli-old-secret-0123456789abcdef"

# Each run of the command is killed after this many seconds.
RUN_TIMEOUT = 30

COMMAND = [sys.executable, "-m", "redis_ajax_push.cli"]


def run_raps(*arguments, env=None):
    """
    Run the raps command to completion and return the CompletedProcess.
    """
    return subprocess.run(
        [*COMMAND, *arguments],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, **(env or {})},
    )


async def run_raps_async(*arguments):
    """
    Run the raps command without blocking the reactor, so that it can talk
    to an in-process daemon; return (stdout, stderr, exit status).
    """
    running = utils.getProcessOutputAndValue(
        COMMAND[0], [*COMMAND[1:], *arguments], env=dict(os.environ)
    )
    running.addTimeout(RUN_TIMEOUT, reactor)
    out, err, status = await running
    return out.decode(), err.decode(), status


@pytest.fixture
def redis_url(redis_server, redis_client):
    """
    The URL of the session's Redis, emptied for the test.
    """
    return redis_server.url


@pytest.fixture
def closed_url():
    """
    A Redis URL on a loopback port where nothing listens.
    """
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def secret_config(tmp_path):
    """
    A config file with the secrets [SECRET, OLD_SECRET], the first read
    from an environment variable.
    """
    path = tmp_path / "raps.toml"
    path.write_text(
        f'[security]\ntask_id_secrets = ["env:RAPS_TEST_SECRET", "{OLD_SECRET}"]\n'
    )
    return str(path)


def test_progress_stores_fields(redis_url, redis_client):
    """
    progress stores --status, --json and --field values, NAME=TEXT as a
    string and NAME:=JSON as JSON, and prints nothing.
    """
    result = run_raps(
        "progress",
        "t1",
        "--redis",
        redis_url,
        "--status",
        "queued",
        "--json",
        '{"a": 1, "note": "old"}',
        "-f",
        "note=new",
        "-f",
        "n:=60",
        "-f",
        "list:=[1, 2]",
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert json.loads(redis_client.get("RA_D_t1")) == {
        "status": "queued",
        "a": 1,
        "note": "new",
        "n": 60,
        "list": [1, 2],
    }


def test_done_and_fail_store_final(redis_url, redis_client):
    """
    done stores status done; fail stores the failure with its message.
    """
    done = run_raps("done", "t1", "--redis", redis_url, "-f", "result=ok")
    fail = run_raps("fail", "t2", "disk full", "--redis", redis_url)

    assert (done.returncode, fail.returncode) == (0, 0)
    assert json.loads(redis_client.get("RA_D_t1")) == {
        "status": "done",
        "result": "ok",
    }
    assert json.loads(redis_client.get("RA_D_t2")) == {
        "status": "done",
        "failed": True,
        "error_message": "disk full",
    }


def test_write_options_ttl_inline(redis_url, redis_client):
    """
    --ttl sets the data key's lifetime and --inline puts the state in the
    message.
    """
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("RA_SC_t1")

    result = run_raps("progress", "t1", "--redis", redis_url, "--ttl", "90", "--inline")

    assert result.returncode == 0
    assert 85 <= redis_client.ttl("RA_D_t1") <= 90
    # The first read may return None after consuming the confirmation.
    message = pubsub.get_message(timeout=5) or pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None
    assert json.loads(message["data"]) == {
        "status": "update",
        "data": {"status": "running"},
    }


def test_get_prints_state(redis_url, redis_client):
    """
    get prints the state as one JSON line; global options may follow the
    subcommand.
    """
    TaskPublisher(redis_client).progress("t1", progress=5)

    result = run_raps("get", "t1", "--redis", redis_url)

    assert result.returncode == 0
    assert json.loads(result.stdout) == {"status": "running", "progress": 5}
    assert result.stdout.count("\n") == 1


def test_global_option_before_command(redis_url, redis_client):
    """
    Global options are also accepted before the subcommand.
    """
    TaskPublisher(redis_client).done("t1")

    result = run_raps("--redis", redis_url, "get", "t1")

    assert result.returncode == 0
    assert json.loads(result.stdout) == {"status": "done"}


def test_get_missing_exits_3(redis_url):
    """
    get of a task without a data key exits with 3 and prints why.
    """
    result = run_raps("get", "nothing", "--redis", redis_url)

    assert result.returncode == 3
    assert result.stderr == "raps: task nothing not found\n"
    assert result.stdout == ""


def test_get_non_object_exits_65(redis_url, redis_client):
    """
    get of a data key that is not a JSON object exits with 65.
    """
    redis_client.set("RA_D_t1", b"[1]")

    result = run_raps("get", "t1", "--redis", redis_url)

    assert result.returncode == 65
    assert "not an object" in result.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["get", "t1"],
        ["progress", "t1"],
        ["done", "t1"],
        ["fail", "t1", "broken"],
    ],
)
def test_redis_unreachable_exits_2(closed_url, arguments):
    """
    A Redis that does not listen gives exit status 2 and one line naming
    its URL.
    """
    result = run_raps(*arguments, "--redis", closed_url)

    assert result.returncode == 2
    assert result.stderr.startswith(f"raps: cannot connect to Redis at {closed_url}")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["progress", "t1", "--json", "{bad"], "--json is not valid JSON"),
        (["progress", "t1", "--json", "[1]"], "--json must be a JSON object"),
        (["progress", "t1", "-f", "n:={bad"], "--field n: '{bad' is not valid JSON"),
        (["progress", "t1", "-f", "novalue"], "is not NAME=TEXT or NAME:=JSON"),
        (["progress", "t1", "--status", "done"], "status 'done' is reserved"),
        (["done", "t1", "-f", "failed:=true"], "field 'failed' is reserved"),
        (["progress", "bad id"], "invalid task id 'bad id'"),
        (["progress", "t1", "--ttl", "0"], "ttl must be"),
        (["progress", "t1", "--ttl", "soon"], "invalid int value"),
        (["progress"], "the following arguments are required"),
        (["frobnicate"], "invalid choice"),
        ([], "the following arguments are required"),
    ],
)
def test_usage_errors_exit_64(closed_url, arguments, message):
    """
    Bad command lines exit with 64 before Redis is contacted, so a closed
    Redis port does not change the outcome.
    """
    result = run_raps(*arguments, "--redis", closed_url)

    assert result.returncode == 64
    assert message in result.stderr
    assert "cannot connect" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read config file"),
        ("[http\n", "is not valid TOML"),
        ("[redis]\nprefix = ''\n", "redis.prefix"),
        ('[security]\ntask_id_secrets = ["short"]\n', "shorter than 16 bytes"),
    ],
)
def test_config_errors_exit_78(tmp_path, content, message):
    """
    A missing or invalid config file exits with 78 and the config error.
    """
    path = tmp_path / "raps.toml"
    if content is not None:
        path.write_text(content)

    result = run_raps("mint", "--config", str(path))

    assert result.returncode == 78
    assert message in result.stderr
    assert result.stderr.startswith("raps: ")


def test_mint_unsigned_without_secrets():
    """
    mint without secrets prints a bare random id.
    """
    result = run_raps("mint")

    assert result.returncode == 0
    assert len(result.stdout.strip()) == 26


def test_mint_signed_with_secrets(secret_config):
    """
    mint with secrets prints an id signed with the first one.
    """
    result = run_raps(
        "mint", "--config", secret_config, env={"RAPS_TEST_SECRET": SECRET}
    )

    minted = result.stdout.strip()
    assert result.returncode == 0
    assert verify_task_id(minted, [SECRET])
    assert not verify_task_id(minted, [OLD_SECRET])


def test_sign_matches_helper(secret_config):
    """
    sign prints the id that sign_task_id makes with the first secret.
    """
    result = run_raps(
        "sign", "job1", "--config", secret_config, env={"RAPS_TEST_SECRET": SECRET}
    )

    assert result.returncode == 0
    assert result.stdout == sign_task_id("job1", [SECRET]) + "\n"


def test_sign_without_secrets_exits_78():
    """
    sign without configured secrets exits with 78 and names the setting.
    """
    result = run_raps("sign", "job1")

    assert result.returncode == 78
    assert "no [security] task_id_secrets" in result.stderr


def test_sign_invalid_base_exits_64(secret_config):
    """
    sign rejects an id that the task id rule rejects.
    """
    result = run_raps(
        "sign", "a b", "--config", secret_config, env={"RAPS_TEST_SECRET": SECRET}
    )

    assert result.returncode == 64
    assert "invalid task id" in result.stderr


def test_secret_env_missing_exits_78(secret_config):
    """
    A secret read from an unset environment variable exits with 78.
    """
    env = {key: value for key, value in os.environ.items()}
    env.pop("RAPS_TEST_SECRET", None)
    result = subprocess.run(
        [*COMMAND, "mint", "--config", secret_config],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
    )

    assert result.returncode == 78
    assert "RAPS_TEST_SECRET is not set" in result.stderr


def test_help_lists_exit_statuses():
    """
    raps --help ends with the table of exit statuses.
    """
    result = run_raps("--help")

    assert result.returncode == 0
    for status in ("0", "1", "2", "3", "4", "5", "64", "65", "78"):
        assert f"\n  {status} " in result.stdout


def test_watch_invalid_id_exits_64():
    """
    watch checks the id before contacting the daemon.
    """
    result = run_raps("watch", "bad id", "--url", f"http://127.0.0.1:{free_port()}")

    assert result.returncode == 64
    assert "invalid task id" in result.stderr


def test_watch_daemon_unreachable_exits_4():
    """
    watch exits with 4 when nothing listens at the daemon's URL.
    """
    url = f"http://127.0.0.1:{free_port()}"

    result = run_raps("watch", "t1", "--url", url)

    assert result.returncode == 4
    assert result.stderr.startswith(f"raps: cannot reach raps at {url}")


def write_when_waiting(redis_client, task_id, writes):
    """
    Return a Deferred that performs each of C{writes} once a new watch of
    C{task_id} waits, that is after each new kill message.
    """
    spy = ChannelSpy(redis_client, f"RA_SC_{task_id}")

    async def perform():
        try:
            for count, write in enumerate(writes, start=1):
                await spy.wait_for_kills(count, timeout=10)
                write()
        finally:
            spy.close()

    return defer.ensureDeferred(perform())


@pytest.mark.parametrize("inline", [False, True], ids=["plain", "inline"])
@pytest_twisted.ensureDeferred
async def test_watch_prints_each_state(daemon, redis_client, inline):
    """
    watch prints the current state, then each change as a JSON line, and
    exits with 0 at done.
    """
    publisher = TaskPublisher(redis_client, inline=inline)
    publisher.progress("t1", progress=0)
    writing = write_when_waiting(
        redis_client,
        "t1",
        [
            lambda: publisher.progress("t1", progress=50),
            lambda: publisher.done("t1", result="ok"),
        ],
    )

    out, err, status = await run_raps_async("watch", "t1", "--url", daemon.base_url)
    await writing

    assert (status, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"status": "running", "progress": 0},
        {"status": "running", "progress": 50},
        {"status": "done", "result": "ok"},
    ]


@pytest_twisted.ensureDeferred
async def test_watch_failed_task_exits_1(daemon, redis_client):
    """
    watch of a task that fails prints the failure and exits with 1.
    """
    publisher = TaskPublisher(redis_client)
    publisher.progress("t1")
    writing = write_when_waiting(
        redis_client, "t1", [lambda: publisher.fail("t1", "disk full")]
    )

    out, err, status = await run_raps_async("watch", "t1", "--url", daemon.base_url)
    await writing

    assert status == 1
    assert json.loads(out.splitlines()[-1])["error_message"] == "disk full"


@pytest_twisted.ensureDeferred
async def test_watch_done_task_exits_at_once(daemon, redis_client):
    """
    watch of a task that is done prints its state once and exits with 0.
    """
    TaskPublisher(redis_client).done("t1", result=3)

    out, err, status = await run_raps_async("watch", "t1", "--url", daemon.base_url)

    assert status == 0
    assert out == '{"status": "done", "result": 3}\n'


@pytest_twisted.ensureDeferred
async def test_watch_missing_task_exits_3(daemon):
    """
    watch of a task the daemon does not know exits with 3.
    """
    out, err, status = await run_raps_async(
        "watch", "nothing", "--url", daemon.base_url
    )

    assert status == 3
    assert err == f"raps: task nothing not found at {daemon.base_url}\n"


@pytest_twisted.ensureDeferred
async def test_watch_killed_exits_5(daemon, redis_client):
    """
    watch exits with 5 and the daemon's error when a newer watch of the
    task ends its own.
    """
    TaskPublisher(redis_client).progress("t1")
    spy = ChannelSpy(redis_client, "RA_SC_t1")
    running = defer.ensureDeferred(
        run_raps_async("watch", "t1", "--url", daemon.base_url)
    )
    try:
        await spy.wait_for_kills(1, timeout=10)
        newer = treq.get(daemon.url("/task/t1?watch"), persistent=False, timeout=10)
        out, err, status = await running
        TaskPublisher(redis_client).done("t1")
        await newer
    finally:
        spy.close()

    assert status == 5
    assert "killed" in err
    assert err.startswith(f"raps: raps at {daemon.base_url} responded with an error: ")


@pytest_twisted.ensureDeferred
async def test_watch_skips_heartbeats(start_daemon, redis_client):
    """
    watch reads responses that start with heartbeat newlines.
    """
    daemon = await start_daemon(watch={"heartbeat_interval": 0.05})
    publisher = TaskPublisher(redis_client)
    publisher.progress("t1")

    async def finish_after_heartbeats():
        spy = ChannelSpy(redis_client, "RA_SC_t1")
        try:
            await spy.wait_for_kills(1, timeout=10)
        finally:
            spy.close()
        await sleep(0.3)
        publisher.done("t1")

    finishing = defer.ensureDeferred(finish_after_heartbeats())
    out, err, status = await run_raps_async("watch", "t1", "--url", daemon.base_url)
    await finishing

    assert (status, err) == (0, "")
    assert json.loads(out.splitlines()[-1]) == {"status": "done"}


@pytest_twisted.ensureDeferred
async def test_watch_url_from_config(daemon, redis_client, tmp_path):
    """
    Without --url, watch derives the daemon's URL from [http] listen.
    """
    port = daemon.base_url.rpartition(":")[2]
    config = tmp_path / "raps.toml"
    config.write_text(f'[http]\nlisten = "tcp:{port}:interface=127.0.0.1"\n')
    TaskPublisher(redis_client).done("t1")

    out, err, status = await run_raps_async("watch", "t1", "--config", str(config))

    assert (status, err) == (0, "")
    assert json.loads(out) == {"status": "done"}


@pytest_twisted.ensureDeferred
async def test_watch_signed_id(start_daemon, redis_client, tmp_path):
    """
    watch of a signed id works against a daemon with secrets, and an
    unsigned id is rejected by the command itself.
    """
    daemon = await start_daemon(security={"task_id_secrets": (SECRET.encode(),)})
    config = tmp_path / "raps.toml"
    config.write_text(f'[security]\ntask_id_secrets = ["{SECRET}"]\n')
    task_id = TaskIdSigner([SECRET.encode()]).mint()
    TaskPublisher(redis_client).done(task_id)

    out, err, status = await run_raps_async(
        "watch", task_id, "--config", str(config), "--url", daemon.base_url
    )
    unsigned = await run_raps_async(
        "watch", "job1", "--config", str(config), "--url", daemon.base_url
    )

    assert (status, json.loads(out)) == (0, {"status": "done"})
    assert unsigned[2] == 64
    assert "not signed" in unsigned[1]
