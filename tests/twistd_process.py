"""
C{twistd raps} as a child process of a test: its output goes to a log file,
and a test that fails while it runs does not leave it behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Time in seconds that a stopping twistd gets before it is killed.
STOP_TIMEOUT = 15

# The twistd of the interpreter that runs the tests.
TWISTD = str(Path(sys.executable).with_name("twistd"))


def raps_command(*options: str, twistd: str = TWISTD) -> list[str]:
    """
    Return the command line of C{twistd -n raps} in the foreground with no
    pid file, followed by C{options} of the raps subcommand.
    """
    return [twistd, "-n", "--pidfile=", "raps", *options]


@contextmanager
def running_twistd(
    command: list[str], cwd: Path, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """
    Start C{command} in C{cwd} with stdout and stderr in C{log_path}, and
    kill it on exit from the block unless it has exited by then.
    """
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def stop_twistd(process: subprocess.Popen[bytes]) -> int:
    """
    Send SIGTERM to C{process} and return its exit status.
    """
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=STOP_TIMEOUT)
