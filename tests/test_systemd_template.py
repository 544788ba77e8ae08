"""
The template unit raps@.service that docs/deploy.md builds from
etc/raps.service with sed, to run one instance per port.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.test_systemd import (
    ROOT,
    VERIFY_TIMEOUT,
    read_unit,
    require_systemd_analyze,
    write_local_unit,
)

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
TEMPLATE_NAME = "raps@.service"


def documented_sed_script() -> str:
    """
    Return the sed script of the docs/deploy.md command that writes
    raps@.service.
    """
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    match = re.search(
        r"sed '([^']+)' \\\n\s+etc/raps\.service > /etc/systemd/system/raps@\.service",
        text,
    )
    assert match, f"{DEPLOY_DOC} has no sed command that writes raps@.service"
    return match.group(1)


def write_template(directory: Path) -> Path:
    """
    Run the documented sed command on a copy of etc/raps.service that runs
    this venv's twistd, and return the template unit it writes.
    """
    local_unit = write_local_unit(directory)
    result = subprocess.run(
        ["sed", documented_sed_script(), str(local_unit)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT,
        check=True,
    )
    template = directory / TEMPLATE_NAME
    template.write_text(result.stdout, encoding="utf-8")
    return template


def test_template_listens_on_instance(tmp_path: Path) -> None:
    """
    The template's ExecStart passes the instance name as the port of a
    loopback --listen address.
    """
    template = write_template(tmp_path)
    exec_start = [v for s, k, v in read_unit(template) if k == "ExecStart"]

    assert len(exec_start) == 1
    arguments = shlex.split(exec_start[0])
    plugin_index = arguments.index("raps")
    assert arguments[plugin_index:] == [
        "raps",
        "--config",
        "/etc/raps/raps.toml",
        "--listen",
        "tcp:%i:interface=127.0.0.1",
    ]


def test_verify_accepts_template_instance(tmp_path: Path) -> None:
    """
    systemd-analyze verify accepts the instance raps@8881.service of the
    template without a warning about it.
    """
    write_template(tmp_path)
    result = subprocess.run(
        [
            require_systemd_analyze(),
            "verify",
            "--recursive-errors=no",
            str(tmp_path / "raps@8881.service"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=VERIFY_TIMEOUT,
        check=False,
    )
    about_template = [line for line in result.stdout.splitlines() if "raps@" in line]

    assert about_template == [], result.stdout
    assert result.returncode == 0, result.stdout
