"""
Packaging: the built wheel ships the twistd plugin where twistd looks, and
the browser files that the daemon serves.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    """
    The file names in a wheel built from this checkout.
    """
    wheel_dir = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = wheel_dir.glob("raps-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_wheel_ships_plugin(wheel_names):
    """
    The wheel holds twisted/plugins/raps.py and no twisted/__init__.py or
    twisted/plugins/__init__.py, which would shadow Twisted's own package.
    """
    assert "twisted/plugins/raps.py" in wheel_names
    assert "twisted/__init__.py" not in wheel_names
    assert "twisted/plugins/__init__.py" not in wheel_names
    assert "redis_ajax_push/tap.py" in wheel_names


def test_wheel_ships_static_files(wheel_names):
    """
    The wheel holds the browser client and the demo page that the daemon
    serves at /static/raps.js and /demo.
    """
    assert "redis_ajax_push/static/raps.js" in wheel_names
    assert "redis_ajax_push/static/demo.html" in wheel_names
    assert "redis_ajax_push/client_files.py" in wheel_names
