"""
The systemd unit etc/raps.service: systemd-analyze verify accepts it, and
its command line, limits and sandbox match the daemon's defaults.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from redis_ajax_push.config import LimitsConfig, RedisConfig, WatchConfig

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "etc" / "raps.service"
UNIT_NAME = "raps.service"

# Where README.md ("Install as a service") installs twistd. systemd-analyze
# verify rejects a unit whose ExecStart binary is missing, so the verify
# tests point ExecStart at the twistd of the running venv instead.
INSTALLED_TWISTD = "/opt/raps/venv/bin/twistd"
LOCAL_TWISTD = Path(sys.executable).with_name("twistd")

# File descriptors that the daemon needs besides client sockets and
# subscriber connections: the Redis command connection, the listening
# socket, epoll, log output, and polls and rejected requests in flight.
FD_MARGIN = 1000

VERIFY_TIMEOUT = 60


def read_unit(path: Path) -> list[tuple[str, str, str]]:
    """
    Parse a unit file into (section, key, value) entries in file order.

    Repeated keys stay separate entries, as systemd reads them. A line
    ending with a backslash continues on the next line.
    """
    entries = []
    section = ""
    pending = ""
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw_line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, separator, value = line.partition("=")
        assert separator, f"{path}: line without '=' in [{section}]: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_value(section: str, key: str) -> str:
    """
    Return the last value of a key in etc/raps.service, which is the one
    that systemd uses for a key that takes one value.
    """
    values = [v for s, k, v in read_unit(UNIT) if s == section and k == key]
    assert values, f"{UNIT} sets no {key}= in [{section}]"
    return values[-1]


def parse_seconds(text: str) -> float:
    """
    Convert a systemd time span with one unit, such as "30s", "2min" or
    "90", to seconds.
    """
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "ms": 0.001}
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = text[len(number) :]
    assert suffix in units, f"unsupported time span {text!r}"
    return float(number) * units[suffix]


def require_systemd_analyze() -> str:
    """
    Return the path of systemd-analyze. Skip when it is missing outside
    CI. In CI (CI=true) fail instead, so that a missing install step does
    not pass as a skip.
    """
    path = shutil.which("systemd-analyze")
    if path is not None:
        return path
    reason = "systemd-analyze is missing: install it with apt-get install systemd"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def write_local_unit(directory: Path, extra_lines: str = "") -> Path:
    """
    Write a copy of etc/raps.service into C{directory} whose ExecStart
    runs the twistd of this venv, with C{extra_lines} added to [Service].
    """
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED_TWISTD in text, f"{UNIT} does not run {INSTALLED_TWISTD}"
    assert LOCAL_TWISTD.exists(), f"{LOCAL_TWISTD} is missing: run make venv"
    text = text.replace(INSTALLED_TWISTD, str(LOCAL_TWISTD))
    text = text.replace("[Service]\n", "[Service]\n" + extra_lines, 1)
    copy = directory / UNIT_NAME
    copy.write_text(text, encoding="utf-8")
    return copy


def verify(unit: Path) -> tuple[int, str, list[str]]:
    """
    Run systemd-analyze verify on C{unit}. Return its exit status, its
    whole output and the output lines that name the unit.
    """
    command = [
        require_systemd_analyze(),
        "verify",
        # The exit status then counts warnings about this unit only, not
        # about the system units that it depends on, such as
        # network-online.target.
        "--recursive-errors=no",
        str(unit),
    ]
    result = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=VERIFY_TIMEOUT,
        check=False,
    )
    about_unit = [line for line in result.stdout.splitlines() if UNIT_NAME in line]
    return result.returncode, result.stdout, about_unit


def test_verify_accepts_unit(tmp_path: Path) -> None:
    status, output, about_unit = verify(write_local_unit(tmp_path))

    assert about_unit == [], output
    assert status == 0, output


def test_verify_reports_unknown_key(tmp_path: Path) -> None:
    # Shows that the checks above can fail: systemd-analyze warns about an
    # unknown key and exits with a non-zero status.
    unit = write_local_unit(tmp_path, extra_lines="NoSuchSetting=yes\n")

    status, output, about_unit = verify(unit)

    assert any("NoSuchSetting" in line for line in about_unit), output
    assert status != 0, output


def test_exec_start_runs_twistd() -> None:
    arguments = shlex.split(unit_value("Service", "ExecStart"))
    assert arguments[0] == INSTALLED_TWISTD

    assert "raps" in arguments, arguments
    plugin_index = arguments.index("raps")
    twistd_options = arguments[1:plugin_index]
    assert "--nodaemon" in twistd_options
    assert "--pidfile=" in twistd_options
    assert arguments[plugin_index:] == ["raps", "--config", "/etc/raps/raps.toml"]


def test_limit_nofile_covers_max_watches() -> None:
    max_watches = LimitsConfig().max_watches
    subscriber_connections = math.ceil(
        max_watches / RedisConfig().channels_per_connection
    )
    needed = max_watches + subscriber_connections + FD_MARGIN

    # "soft:hard" sets the two limits apart, and the soft one applies.
    soft_limit = unit_value("Service", "LimitNOFILE").partition(":")[0]

    assert soft_limit.isdigit(), f"LimitNOFILE={soft_limit} is not a number"
    assert int(soft_limit) > needed


def test_stop_timeout_exceeds_shutdown_grace() -> None:
    timeout = parse_seconds(unit_value("Service", "TimeoutStopSec"))

    assert unit_value("Service", "KillSignal") == "SIGTERM"
    assert timeout > WatchConfig().shutdown_grace


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("Unit", "After", "network-online.target redis-server.service"),
        ("Unit", "Wants", "network-online.target"),
        ("Service", "EnvironmentFile", "-/etc/raps/raps.env"),
        ("Service", "Restart", "on-failure"),
        ("Service", "KillMode", "mixed"),
        ("Service", "DynamicUser", "yes"),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "ProtectSystem", "strict"),
        ("Service", "ProtectHome", "yes"),
        ("Service", "PrivateTmp", "yes"),
        ("Service", "PrivateDevices", "yes"),
        ("Service", "RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Service", "CapabilityBoundingSet", ""),
        ("Service", "AmbientCapabilities", ""),
        ("Install", "WantedBy", "multi-user.target"),
    ],
)
def test_unit_setting(section: str, key: str, expected: str) -> None:
    assert unit_value(section, key) == expected
