"""
The bench's targets and the table it prints from a run's record.
"""

from __future__ import annotations

import math
from typing import Any

# The targets of the benchmark issue, for one daemon process on the bench
# machine.
MIN_WATCHES = 15000
MAX_RSS_PER_WATCH = 8 * 1024
MAX_BURST_SECONDS = 1.5
BURST_SIZE = 10000
MAX_PACED_P99_MS = 5.0
MIN_POLL_FRACTION_OF_GET = 0.08
# Growth between the two passes that counts as noise: RSS per watch of the
# largest size, and no Redis connection at all.
MAX_LEAK_BYTES_PER_WATCH = 256


def check_targets(results: dict[str, Any], per_connection: int) -> list[dict[str, Any]]:
    """
    Compare a run's results with the targets. Each entry contains the target,
    the measured figure and whether the figure meets the target.
    """
    checks: list[dict[str, Any]] = []

    def check(name: str, measured: str, met: bool) -> None:
        checks.append({"target": name, "measured": measured, "met": met})

    first_pass = results["watches"]["passes"][0]
    largest = max(first_pass, key=lambda row: row["watches"])
    check(
        f"at least {MIN_WATCHES:,} watches",
        f"{largest['watches']:,} held",
        largest["watches"] >= MIN_WATCHES,
    )
    for row in first_pass:
        if row["watches"] >= BURST_SIZE:
            per_watch = row["rss_per_watch_bytes"]
            check(
                f"RSS per watch at {row['watches']:,} <= 8 KB",
                f"{per_watch / 1024:.1f} KB",
                per_watch <= MAX_RSS_PER_WATCH,
            )
    for row in first_pass:
        limit = math.ceil(row["watches"] / per_connection) + 2
        check(
            f"Redis connections at {row['watches']:,} <= {limit}",
            f"{row['redis_clients_held']}",
            row["redis_clients_held"] <= limit,
        )
    for row in first_pass:
        if row["watches"] == BURST_SIZE:
            last = row["fan_out"]["last_response_s"]
            check(
                f"{BURST_SIZE:,} done delivered within {MAX_BURST_SECONDS} s",
                f"{last:.2f} s",
                last <= MAX_BURST_SECONDS,
            )
    paced = results["paced"]
    check(
        f"paced p99 <= {MAX_PACED_P99_MS} ms",
        f"{paced['p99_ms']:.1f} ms",
        paced["p99_ms"] <= MAX_PACED_P99_MS,
    )
    get_rate = results["ceiling"]["get_per_s"]
    single = [row for row in results["poll"] if row["workers"] == 1]
    if single:
        best = max(row["requests_per_s"] for row in single)
        check(
            f"poll >= {MIN_POLL_FRACTION_OF_GET:.0%} of Redis GET",
            f"{best / get_rate:.1%}",
            best >= MIN_POLL_FRACTION_OF_GET * get_rate,
        )
    growth = leak_growth(results["watches"])
    check(
        f"no growth between repeated runs (at most {MAX_LEAK_BYTES_PER_WATCH} B "
        "per watch of the largest size)",
        f"RSS {growth['rss_bytes'] / 1024 / 1024:+.1f} MB, "
        f"Redis connections {growth['redis_clients']:+d}",
        growth["rss_bytes"] <= MAX_LEAK_BYTES_PER_WATCH * largest["watches"]
        and growth["redis_clients"] <= 0,
    )
    return checks


def leak_growth(watches: dict[str, Any]) -> dict[str, int]:
    """
    Return the growth between the ends of the first and the last pass.
    """
    first, last = watches["passes"][0][-1], watches["passes"][-1][-1]
    return {
        "rss_bytes": last["rss_after_bytes"] - first["rss_after_bytes"],
        "redis_clients": last["redis_clients_after"] - first["redis_clients_after"],
    }


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).rjust(width) for cell, width in zip(row, widths)]
        cells[0] = str(row[0]).ljust(widths[0])
        lines.append("  " + "  ".join(cells))
    return lines


def _burst_rate(row: dict[str, Any]) -> float:
    fan_out = row["fan_out"]
    return float(fan_out["watches"] / fan_out["last_response_s"])


def format_table(record: dict[str, Any]) -> str:
    """
    Format a run's record as the text table the bench prints.
    """
    results = record["results"]
    python = record["python"]
    machine = record["machine"]
    lines = [
        f"raps bench, {record['started'][:16]} UTC, git {record['git']}",
        f"daemon: {python['implementation']} {python['version']}; "
        f"machine: {machine['cpus']} x {machine['cpu_model']}, "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}; "
        f"Redis {record['redis']}",
        "",
    ]
    ceiling = results["ceiling"]
    get_rate = ceiling["get_per_s"]
    lines.append(
        f"e. ceiling (redis-benchmark, 50 clients): GET {get_rate:,.0f}/s, "
        f"PUBLISH {ceiling['publish_per_s']:,.0f}/s"
    )
    lines.append("")
    lines.append("a. poll, keep-alive, random ids of 10,000")
    lines += _rows(
        ["client", "workers", "conns", "req/s", "of GET", "p50 ms", "p99 ms",
         "max ms", "errors"],
        [
            [
                row["client"], row["workers"], row["connections"],
                f"{row['requests_per_s']:,.0f}",
                f"{row['requests_per_s'] / get_rate:.1%}",
                f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
                f"{row['max_ms']:.1f}", row["errors"],
            ]
            for row in results["poll"]
        ],
    )  # fmt: skip
    watches = results["watches"]
    publish_rate = ceiling["publish_per_s"]
    for number, rounds in enumerate(watches["passes"], start=1):
        lines.append("")
        lines.append(f"b, c. watch capacity and done burst, pass {number}")
        # RSS per watch only means something in the first pass: later passes
        # reuse the memory the first one kept.
        memory = "RSS/watch" if number == 1 else "RSS held"
        lines += _rows(
            ["watches", memory, "subscribe s", "Redis conns", "burst last s",
             "done/s", "of PUBLISH", "p50 ms", "p99 ms"],
            [
                [
                    f"{row['watches']:,}",
                    f"{row['rss_per_watch_bytes'] / 1024:.1f} KB"
                    if number == 1
                    else f"{row['rss_held_bytes'] / 1024 / 1024:.0f} MB",
                    f"{row['subscribe_s']:.2f}",
                    row["redis_clients_held"],
                    f"{row['fan_out']['last_response_s']:.3f}",
                    f"{_burst_rate(row):,.0f}",
                    f"{_burst_rate(row) / publish_rate:.1%}",
                    f"{row['fan_out']['p50_ms']:.0f}",
                    f"{row['fan_out']['p99_ms']:.0f}",
                ]
                for row in rounds
            ],
        )  # fmt: skip
    growth = leak_growth(watches)
    lines.append("")
    first, last = watches["passes"][0][-1], watches["passes"][-1][-1]
    lines.append(
        f"f. leak check, after the largest size: RSS "
        f"{first['rss_after_bytes'] / 1024 / 1024:.1f} MB after pass 1, "
        f"{last['rss_after_bytes'] / 1024 / 1024:.1f} MB after pass "
        f"{len(watches['passes'])} ({growth['rss_bytes'] / 1024 / 1024:+.1f} MB); "
        f"Redis connections {first['redis_clients_after']} and "
        f"{last['redis_clients_after']} ({growth['redis_clients']:+d})"
    )
    paced = results["paced"]
    lines.append("")
    lines.append(
        f"d. paced: {paced['watches']:,} watches, {paced['rate_per_s']:,.0f} "
        f"updates/s, {paced['measured']:,} measured: p50 {paced['p50_ms']:.1f} ms, "
        f"p99 {paced['p99_ms']:.1f} ms, max {paced['max_ms']:.1f} ms, "
        f"errors {paced['errors']}"
    )
    lines.append("")
    lines.append(
        "targets" if record["targets"] else "targets: not checked in a quick run"
    )
    for target in record["targets"]:
        verdict = "met " if target["met"] else "MISS"
        lines.append(f"  {verdict}  {target['target']}: {target['measured']}")
    return "\n".join(lines)
