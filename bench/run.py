#!/usr/bin/env python3
"""
Benchmark raps on this machine: start a private redis-server and the daemon
on loopback, drive them from separate processes, print a table and save a
JSON record under bench/results/.

Measured, in this order:

- e. the ceiling: redis-benchmark GET and PUBLISH on the same Redis;
- a. poll throughput and latency at 50 and 500 keep-alive connections over
  10,000 task ids, with wrk when installed (else bench/driver.py), for each
  worker count in --workers;
- b, c, f. watch capacity and fan-out at each size in --sizes, twice in a
  row for the leak check;
- d. paced latency with 10,000 watches held.

Usage: python bench/run.py [--python PATH] [--quick] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from report import check_targets, format_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOOPBACK = "127.0.0.1"

# A task state of a realistic size for the poll bench.
POLL_VALUE = (
    b'{"status":"running","progress":42,"step":"resizing images",'
    b'"started":"2026-12-04T10:00:00Z","eta_s":37}'
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def raise_fd_limit() -> None:
    """
    Let this process and its children (driver, daemon) hold as many
    connections as the hard limit allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Redis:
    """
    A private redis-server on a free loopback port, persistence off.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        log = (workdir / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", LOOPBACK,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--maxclients", "20000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("bench: redis-server did not start")
            time.sleep(0.05)

    def cli(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(
            ["redis-cli", "-h", LOOPBACK, "-p", str(self.port), *args],
            input=stdin,
            capture_output=True,
        )
        return result.stdout.decode().strip()

    def seed_poll_keys(self, tasks: int) -> None:
        """
        Store POLL_VALUE under the data keys of p0 .. p<tasks-1>.
        """
        lines = [b"SET RA_D_p%d '%s'" % (n, POLL_VALUE) for n in range(tasks)]
        self.cli("--pipe", stdin=b"\n".join(lines) + b"\n")

    def version(self) -> str:
        for line in self.cli("INFO", "server").splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1]
        return "unknown"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Daemon:
    """
    C{twistd -n raps} under the interpreter being measured.
    """

    def __init__(
        self, python: Path, workdir: Path, redis_port: int, workers: int
    ) -> None:
        self.port = free_port()
        config = workdir / f"raps-{workers}.toml"
        workers_line = f"workers = {workers}\n" if workers > 1 else ""
        config.write_text(
            "[http]\n"
            f'listen = "tcp:{self.port}:interface={LOOPBACK}:backlog=4096"\n'
            f"{workers_line}"
            "[redis]\n"
            f'url = "redis://{LOOPBACK}:{redis_port}/0"\n'
            "subscriber_idle_timeout = 1.0\n"
            "[limits]\n"
            "max_watches = 0\n"
        )
        self.log_path = workdir / f"daemon-{workers}.log"
        twistd = python.parent / "twistd"
        # Logging to stdout, as under systemd, rather than with --logfile.
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(twistd), "-n", "--pidfile=", "raps", "--config", str(config)],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"bench: the daemon did not start; see {self.log_path}"
                )
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def pids(self) -> list[int]:
        """
        Return the pids of the daemon's process and of its worker processes.
        """
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = [self.process.pid]
        if children.exists():
            found += [int(pid) for pid in children.read_text().split()]
        return found

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def driver(scenario: str, *args: str) -> Any:
    """
    Run one scenario of bench/driver.py and return its JSON result.
    """
    result = subprocess.run(
        [sys.executable, str(HERE / "driver.py"), scenario, *args],
        stdout=subprocess.PIPE,
        check=True,
    )
    return json.loads(result.stdout)


def redis_ceiling(redis: Redis, requests: int) -> dict[str, float]:
    """
    Measure Redis's own GET and PUBLISH rates with redis-benchmark.
    """
    base = ["redis-benchmark", "-h", LOOPBACK, "-p", str(redis.port)]
    base += ["-n", str(requests), "-c", "50", "--csv"]
    redis.cli("SET", "key:__rand_int__", "x" * 100)
    get = subprocess.run([*base, "-t", "get"], capture_output=True, check=True)
    publish = subprocess.run(
        [*base, "PUBLISH", "RA_SC_ceiling", '{"status":"update"}'],
        capture_output=True,
        check=True,
    )
    return {
        "get_per_s": _benchmark_rate(get.stdout),
        "publish_per_s": _benchmark_rate(publish.stdout),
    }


def _benchmark_rate(csv: bytes) -> float:
    # Rows: "test","rps",...; the first row is the header.
    rows = [line.split(",") for line in csv.decode().splitlines() if line]
    return float(rows[1][1].strip('"'))


def poll_bench(
    daemon: Daemon,
    redis: Redis,
    connections: int,
    seconds: float,
    tasks: int,
    client: str,
) -> dict[str, Any]:
    """
    Poll random task ids over keep-alive connections, with wrk when it is
    installed.
    """
    wrk = shutil.which("wrk") if client != "driver" else None
    if wrk is None:
        return driver(
            "poll",
            f"--port={daemon.port}",
            f"--redis-port={redis.port}",
            f"--connections={connections}",
            f"--duration={seconds}",
            f"--tasks={tasks}",
        )
    duration = f"-d{max(1, round(seconds))}s"
    command = [
        wrk, "-t1", f"-c{connections}", duration, "--timeout", "5s",
        "-s", str(HERE / "poll.lua"), daemon.url("/"),
    ]  # fmt: skip
    env = {**os.environ, "RAPS_BENCH_TASKS": str(tasks)}
    output = subprocess.run(
        command, capture_output=True, check=True, env=env
    ).stdout.decode()
    summary = json.loads(output.strip().splitlines()[-1])
    return {
        "client": "wrk",
        "connections": connections,
        "requests": summary["requests"],
        "errors": summary["socket_errors"] + summary["non_2xx"],
        "requests_per_s": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "max_ms": summary["max_us"] / 1000,
    }


def interpreter(python: Path) -> dict[str, str]:
    code = (
        "import json, platform, sys; print(json.dumps({"
        "'implementation': platform.python_implementation(), "
        "'version': platform.python_version(), 'executable': sys.executable}))"
    )
    output = subprocess.run(
        [str(python), "-c", code], capture_output=True, check=True
    ).stdout
    info: dict[str, str] = json.loads(output)
    return info


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "wrk": shutil.which("wrk") is not None,
    }


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no")
    return revision + ("+dirty" if changed else "")


# The sizes and durations of a full run and of a --quick one.
FULL_DEFAULTS = {
    "sizes": "1000,10000,15000",
    "paced_watches": 10000,
    "poll_seconds": 10.0,
}
QUICK_DEFAULTS = {"sizes": "50,200", "paced_watches": 200, "poll_seconds": 2.0}


def positive_counts(text: str) -> str:
    """
    Accept a comma-separated list of positive integers, such as "1000,10000".
    """
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, not {text!r}"
        )
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="interpreter of the daemon; its directory must hold twistd",
    )
    parser.add_argument(
        "--workers",
        type=positive_counts,
        default="1,2",
        help="worker counts to poll with, comma separated",
    )
    parser.add_argument(
        "--sizes",
        type=positive_counts,
        help="numbers of watches to hold, comma separated "
        "(default 1000,10000,15000; 50,200 with --quick)",
    )
    parser.add_argument(
        "--paced-watches",
        type=positive_int,
        help="watches held in the paced run (default 10000; 200 with --quick)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=positive_float,
        help="duration of each poll run (default 10; 2 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and short runs, to check that the bench works; "
        "the targets are not checked",
    )
    parser.add_argument(
        "--poll-client",
        choices=["auto", "wrk", "driver"],
        default="auto",
        help="poll load generator: wrk when installed (auto), or bench/driver.py",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=HERE / "results",
        help="directory for the JSON record (default bench/results)",
    )
    options = parser.parse_args()
    # Absolute but not resolved: a venv's python is a symlink to an
    # interpreter whose own directory has no twistd.
    options.python = options.python.absolute()
    if not (options.python.parent / "twistd").exists():
        parser.error(
            f"--python: no twistd beside {options.python}; give the python of a "
            "venv with raps installed"
        )
    try:
        options.results.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--results: cannot create {options.results}: {error}")
    if not os.access(options.results, os.W_OK):
        parser.error(f"--results: {options.results} is not writable")
    defaults = QUICK_DEFAULTS if options.quick else FULL_DEFAULTS
    for name, value in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    return options


def main() -> None:
    options = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="raps-bench-"))
    try:
        run(options, workdir)
    except subprocess.CalledProcessError as error:
        command = " ".join(str(part) for part in error.cmd[:3])
        raise SystemExit(
            f"bench: {command} ... exited with status {error.returncode}; its "
            f"error output is above, the logs are in {workdir}"
        ) from None
    except BaseException:
        _log(f"stopped; the logs of Redis and the daemon are in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)


def run(options: argparse.Namespace, workdir: Path) -> None:
    raise_fd_limit()
    quick = options.quick
    record: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": machine(),
        "python": interpreter(options.python),
        "git": git_revision(),
        "quick": quick,
    }

    redis = Redis(workdir)
    record["redis"] = redis.version()
    results: dict[str, Any] = {}
    record["results"] = results
    try:
        _log("ceiling: redis-benchmark")
        results["ceiling"] = redis_ceiling(redis, 20000 if quick else 200000)

        tasks = 1000 if quick else 10000
        redis.seed_poll_keys(tasks)
        results["poll"] = []
        for workers in [int(n) for n in options.workers.split(",")]:
            daemon = Daemon(options.python, workdir, redis.port, workers)
            try:
                client = options.poll_client
                poll_bench(daemon, redis, 50, 2, tasks, client)  # warm-up
                for connections in (50, 500):
                    _log(f"poll: {connections} connections, {workers} worker(s)")
                    row = poll_bench(
                        daemon, redis, connections, options.poll_seconds, tasks, client
                    )
                    results["poll"].append({"workers": workers, **row})
            finally:
                daemon.stop()

        daemon = Daemon(options.python, workdir, redis.port, 1)
        try:
            common = [
                f"--port={daemon.port}",
                f"--redis-port={redis.port}",
                f"--pids={daemon.process.pid}",
            ]
            _log(f"watches: sizes {options.sizes}, twice")
            results["watches"] = driver(
                "watches",
                *common,
                f"--sizes={options.sizes}",
                "--repeat=2",
                f"--settle={1.5 if quick else 3}",
            )

            _log(f"paced: {options.paced_watches} watches")
            results["paced"] = driver(
                "paced",
                *common,
                f"--watches={options.paced_watches}",
                f"--rate={100 if quick else 1000}",
                f"--warmup={1 if quick else 3}",
                f"--duration={2 if quick else 10}",
            )
        finally:
            record["daemon_exit_status"] = daemon.stop()
    finally:
        redis.stop()

    # A quick run is too small for the targets to mean anything.
    record["targets"] = (
        [] if quick else check_targets(results, channels_per_connection(options))
    )
    print(format_table(record))

    options.results.mkdir(parents=True, exist_ok=True)
    stamp = record["started"][:19].replace(":", "").replace("-", "")
    name = f"{stamp}-{record['python']['implementation'].lower()}.json"
    (options.results / name).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nsaved {options.results / name}")


def channels_per_connection(options: argparse.Namespace) -> int:
    """
    Return the daemon's channels_per_connection, which the bench config
    leaves at its default.
    """
    sys.path.insert(0, str(ROOT))
    from redis_ajax_push.config import load_config

    return load_config(None).redis.channels_per_connection


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
