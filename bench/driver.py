"""
The bench's load driver, run by bench/run.py as a process of its own so that
it does not share an interpreter with the daemon it measures.

Subcommands, each printing one JSON object on stdout:

- C{poll}: keep-alive connections that poll random task ids for a while
  (used when wrk is not installed);
- C{watches}: for each size N, hold N watches and measure the daemon's RSS,
  its Redis connections and the time to get them all subscribed (b), then
  publish C{done} to all of them in one burst and time the responses (c);
  with C{--repeat 2} the whole series runs twice, for the leak check (f);
- C{paced}: hold N watches and publish updates at a fixed rate, re-opening
  each watch on its connection once it has returned, and report the
  latency from publish to last byte (d).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from http_load import HTTPConnection, Response
from resp import RedisConnection, encode

# Names of the driver's own Redis connections, so that CLIENT LIST can tell
# them from the daemon's, which have none.
CLIENT_NAME = "raps-bench"

RUNNING = b'{"status":"running","progress":0}'
DONE_MESSAGE = b'{"status":"done","data":{"status":"done","progress":100}}'
UPDATE_MESSAGE = b'{"status":"update","data":{"status":"running","progress":50}}'

# Source addresses for the driver's connections: spreading them over several
# loopback addresses keeps clear of the ephemeral port range when tens of
# thousands of connections open and close in a row.
SOURCES = [f"127.0.0.{n}" for n in range(1, 9)]

# Watches sent but not yet subscribed at any time: enough to keep the
# daemon busy, few enough not to overflow its listen backlog.
OPENING_AT_ONCE = 500


def percentile(values: list[float], fraction: float) -> float:
    """
    Return the C{fraction} percentile (0..1) of C{values}, nearest rank.
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """
    Summarise latencies in milliseconds.
    """
    return {
        "p50_ms": percentile(seconds, 0.50) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
        "max_ms": max(seconds) * 1000 if seconds else float("nan"),
    }


def rss_bytes(pids: list[int]) -> int:
    """
    Return the summed resident set size of processes C{pids}.
    """
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pids: list[int]) -> float:
    """
    Return the CPU time (user and system) that processes C{pids} have used.
    """
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def daemon_redis_clients(redis: RedisConnection) -> int:
    """
    Count the Redis connections that are not the driver's own.
    """
    listing = (await redis.command("CLIENT", "LIST")).decode()
    return sum(1 for line in listing.splitlines() if f"name={CLIENT_NAME}" not in line)


class Bench:
    """
    The connections of one driver run: the daemon's address, the daemon
    pids to read RSS from, and the driver's Redis connections.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        self.host = options.host
        self.port = options.port
        self.pids = [int(pid) for pid in options.pids.split(",") if pid]
        self.redis_host = options.redis_host
        self.redis_port = options.redis_port
        self.redis: RedisConnection

    async def start(self) -> None:
        self.redis = await RedisConnection.connect(
            self.redis_host, self.redis_port, CLIENT_NAME
        )

    async def seed(self, task_ids: list[str], value: bytes = RUNNING) -> None:
        """
        Store C{value} under the data key of every task id.
        """
        for start in range(0, len(task_ids), 1000):
            batch = task_ids[start : start + 1000]
            arguments: list[bytes | str | int] = ["MSET"]
            for task_id in batch:
                arguments += [f"RA_D_{task_id}", value]
            await self.redis.command(*arguments)

    async def connections(self, count: int) -> list[HTTPConnection]:
        """
        Open C{count} keep-alive connections to the daemon.
        """
        opened: list[HTTPConnection] = []
        gate = asyncio.Semaphore(OPENING_AT_ONCE)

        async def open_one(index: int) -> None:
            async with gate:
                source = SOURCES[index % len(SOURCES)]
                opened.append(
                    await HTTPConnection.connect(self.host, self.port, source)
                )

        await asyncio.gather(*(open_one(index) for index in range(count)))
        return opened

    async def hold(
        self, connections: list[HTTPConnection], task_ids: list[str]
    ) -> tuple[dict[str, asyncio.Future[Response]], float]:
        """
        Send one watch per connection and wait until every watch has
        announced itself with its kill message, which the daemon publishes
        once the channel is subscribed and the data key read.

        Return the futures of the responses by task id and the seconds it
        took.
        """
        listener = await RedisConnection.connect(
            self.redis_host, self.redis_port, CLIENT_NAME
        )
        prefix = f"RA_SC_{task_ids[0].split('_')[0]}_"
        announced: dict[bytes, asyncio.Future[None]] = {}
        loop = asyncio.get_running_loop()
        for task_id in task_ids:
            announced[f"RA_SC_{task_id}".encode()] = loop.create_future()

        def on_message(channel: bytes, message: bytes) -> None:
            waiter = announced.get(channel)
            if waiter is not None and not waiter.done() and b'"kill"' in message:
                waiter.set_result(None)

        listener.on_message = on_message
        await listener.command("PSUBSCRIBE", prefix + "*")
        gate = asyncio.Semaphore(OPENING_AT_ONCE)
        responses: dict[str, asyncio.Future[Response]] = {}

        async def watch_one(connection: HTTPConnection, task_id: str) -> None:
            async with gate:
                responses[task_id] = connection.get(f"/task/{task_id}?watch".encode())
                waiter = announced[f"RA_SC_{task_id}".encode()]
                await asyncio.wait(
                    [waiter, responses[task_id]], return_when=asyncio.FIRST_COMPLETED
                )

        started = time.perf_counter()
        await asyncio.gather(
            *(watch_one(c, t) for c, t in zip(connections, task_ids, strict=True))
        )
        elapsed = time.perf_counter() - started
        listener.close()
        early = [t for t, response in responses.items() if response.done()]
        if early:
            sample = responses[early[0]]
            detail = sample.exception() or sample.result()
            raise RuntimeError(f"{len(early)} watches returned early, e.g. {detail}")
        return responses, elapsed

    async def burst(
        self, responses: dict[str, asyncio.Future[Response]], message: bytes
    ) -> dict[str, Any]:
        """
        Publish C{message} on every watched channel in one pipelined write
        and time the responses from that write to their last byte.
        """
        commands = [encode("PUBLISH", f"RA_SC_{t}", message) for t in responses]
        published = time.perf_counter()
        replies = self.redis.send_encoded(b"".join(commands), len(commands))
        finished = await asyncio.wait_for(
            asyncio.gather(*responses.values()), timeout=60
        )
        await asyncio.gather(*replies)
        latencies = [response.finished - published for response in finished]
        wrong = sum(1 for r in finished if r.status != 200 or r.body != message)
        if wrong:
            raise RuntimeError(f"{wrong} fan-out responses were not the message")
        return {
            "watches": len(finished),
            "last_response_s": max(latencies),
            **latency_summary(latencies),
        }


async def settle(bench: Bench, seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {
        "rss_bytes": rss_bytes(bench.pids),
        "redis_clients": await daemon_redis_clients(bench.redis),
    }


# Watches held and released once before the baseline is read, so that
# what the first watches allocate for good (a subscriber connection, metric
# series, caches) does not count as the cost of each watch.
WARM_UP_WATCHES = 200


async def hold_and_burst(bench: Bench, task_ids: list[str]) -> dict[str, Any]:
    """
    Hold one watch per task id, read the daemon's figures, end every watch
    with one burst of done messages and close the connections.
    """
    size = len(task_ids)
    await bench.seed(task_ids)
    cpu_before = cpu_seconds(bench.pids)
    connections = await bench.connections(size)
    responses, subscribe_s = await bench.hold(connections, task_ids)
    cpu_held = cpu_seconds(bench.pids)
    held = await settle(bench, 1.0)
    cpu_burst = cpu_seconds(bench.pids)
    fan_out = await bench.burst(responses, DONE_MESSAGE)
    fan_out["cpu_us_per_watch"] = (cpu_seconds(bench.pids) - cpu_burst) / size * 1e6
    for connection in connections:
        connection.close()
    return {
        "watches": size,
        "subscribe_s": subscribe_s,
        "subscribe_cpu_us_per_watch": (cpu_held - cpu_before) / size * 1e6,
        "rss_held_bytes": held["rss_bytes"],
        "redis_clients_held": held["redis_clients"],
        "fan_out": fan_out,
    }


async def run_watches(bench: Bench, options: argparse.Namespace) -> dict[str, Any]:
    """
    Hold and burst each size in turn, the whole series C{options.repeat}
    times, and record the daemon's RSS and Redis connections after each.
    """
    sizes = [int(size) for size in options.sizes.split(",")]
    await hold_and_burst(bench, [f"warm_{i}" for i in range(WARM_UP_WATCHES)])
    await bench.redis.command("FLUSHDB")
    baseline = await settle(bench, options.settle)
    passes = []
    for round_number in range(1, options.repeat + 1):
        rounds = []
        for size in sizes:
            row = await hold_and_burst(
                bench, [f"b{round_number}x{size}_{i}" for i in range(size)]
            )
            # Over the RSS of the daemon before the first size, so that memory
            # kept from a smaller size does not make a larger one look cheap.
            row["rss_per_watch_bytes"] = (
                row["rss_held_bytes"] - baseline["rss_bytes"]
            ) / size
            after = await settle(bench, options.settle)
            row["rss_after_bytes"] = after["rss_bytes"]
            row["redis_clients_after"] = after["redis_clients"]
            rounds.append(row)
            await bench.redis.command("FLUSHDB")
            print(f"driver: pass {round_number}, {size} watches done", file=sys.stderr)
        passes.append(rounds)
    return {"baseline": baseline, "passes": passes}


async def run_paced(bench: Bench, options: argparse.Namespace) -> dict[str, Any]:
    """
    Hold C{options.watches} watches and publish inline updates at
    C{options.rate} per second, each on the next task in turn; every watch
    that returns is sent again on its connection.
    """
    size = options.watches
    task_ids = [f"p_{i}" for i in range(size)]
    await bench.seed(task_ids)
    connections = await bench.connections(size)
    responses, _ = await bench.hold(connections, task_ids)
    by_task = dict(zip(task_ids, connections, strict=True))
    published_at: dict[str, float] = {}
    latencies: list[float] = []
    measuring_from = options.warmup
    started = time.perf_counter()
    errors = 0

    finished = False

    def rearm(task_id: str, future: asyncio.Future[Response]) -> None:
        nonlocal errors
        failed = future.exception() is not None
        if finished:
            return
        if failed:
            errors += 1
            return
        response = future.result()
        sent = published_at.pop(task_id, None)
        if response.status != 200 or sent is None:
            errors += 1
        elif sent - started >= measuring_from:
            latencies.append(response.finished - sent)
        again = by_task[task_id].get(f"/task/{task_id}?watch".encode())
        again.add_done_callback(lambda f: rearm(task_id, f))

    for task_id, future in responses.items():
        future.add_done_callback(lambda f, t=task_id: rearm(t, f))

    # Leave the re-sent watches time to subscribe before their task's turn
    # comes again: one full turn takes size / rate seconds.
    turn = itertools.cycle(task_ids)
    duration = options.warmup + options.duration
    interval = 1.0 / options.rate
    sent = 0
    while True:
        now = time.perf_counter() - started
        if now >= duration:
            break
        due = int(now / interval) + 1 - sent
        for _ in range(due):
            task_id = next(turn)
            published_at[task_id] = time.perf_counter()
            bench.redis.send_encoded(
                encode("PUBLISH", f"RA_SC_{task_id}", UPDATE_MESSAGE), 1
            )
            sent += 1
        await asyncio.sleep(interval / 2)
    await asyncio.sleep(1.0)
    finished = True
    for connection in connections:
        connection.close()
    return {
        "watches": size,
        "rate_per_s": options.rate,
        "published": sent,
        "measured": len(latencies),
        "errors": errors,
        **latency_summary(latencies),
    }


async def run_poll(bench: Bench, options: argparse.Namespace) -> dict[str, Any]:
    """
    Poll random task ids over C{options.connections} keep-alive connections
    for C{options.duration} seconds.
    """
    connections = await bench.connections(options.connections)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + options.duration

    async def poll_loop(connection: HTTPConnection) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            task_id = random.randrange(options.tasks)
            sent = time.perf_counter()
            response = await connection.get(f"/task/p{task_id}".encode())
            latencies.append(response.finished - sent)
            if response.status != 200:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(poll_loop(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return {
        "client": "driver",
        "connections": options.connections,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / elapsed,
        **latency_summary(latencies),
    }


SCENARIOS: dict[str, Callable[[Bench, argparse.Namespace], Awaitable[Any]]] = {
    "poll": run_poll,
    "watches": run_watches,
    "paced": run_paced,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pids", default="", help="daemon pids, comma separated")
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--sizes", default="1000,10000,15000")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--watches", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=10000)
    return parser.parse_args(argv)


async def main(options: argparse.Namespace) -> Any:
    bench = Bench(options)
    await bench.start()
    try:
        return await SCENARIOS[options.scenario](bench, options)
    finally:
        bench.redis.close()


if __name__ == "__main__":
    arguments = parse_args()
    print(json.dumps(asyncio.run(main(arguments))))
