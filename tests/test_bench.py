"""
The benchmark, bench/run.py, in its quick setting: it runs end to end with
its own redis-server and daemon and records every section of the issue.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The quick run takes about 30 s on two cores.
BENCH_TIMEOUT = 300


def test_quick_bench_records_every_section(tmp_path):
    """
    bench/run.py --quick with one and two workers exits 0 and prints the
    table. Its JSON record has the ceiling, the polls (bench client) for
    both worker counts, two passes of watch capacity and fan-out, the paced
    latency and the machine, and no targets, which a quick run does not
    check.
    """
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--workers=1,2",
            "--poll-client=driver",
            f"--results={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "targets" in result.stdout
    (saved,) = tmp_path.glob("*.json")
    record = json.loads(saved.read_text())
    results = record["results"]
    assert record["machine"]["cpus"] >= 1
    assert record["python"]["implementation"]
    assert results["ceiling"]["get_per_s"] > 0
    assert results["ceiling"]["publish_per_s"] > 0
    polls = {(row["workers"], row["connections"]) for row in results["poll"]}
    assert polls == {(1, 50), (1, 500), (2, 50), (2, 500)}
    assert all(row["requests"] > 0 and row["errors"] == 0 for row in results["poll"])
    passes = results["watches"]["passes"]
    assert [[row["watches"] for row in rounds] for rounds in passes] == [
        [50, 200],
        [50, 200],
    ]
    for rounds in passes:
        for row in rounds:
            assert row["fan_out"]["watches"] == row["watches"]
            assert row["redis_clients_held"] >= 2
    paced = results["paced"]
    assert paced["measured"] > 0
    assert paced["errors"] == 0
    assert record["targets"] == []
    assert record["daemon_exit_status"] == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--sizes=abc"], "argument --sizes: expected positive integers"),
        (["--workers=1,0"], "argument --workers: expected positive integers"),
        (["--poll-seconds=-1"], "argument --poll-seconds: expected a positive"),
        (["--python=/nonexistent/python"], "--python: no twistd beside"),
    ],
)
def test_bench_rejects_bad_options(arguments, message):
    """
    bench/run.py stops with status 2 and a one-line usage error naming the
    option, before starting anything, for invalid options.
    """
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
