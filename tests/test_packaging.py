"""
Packaging: the built wheel ships the twistd plugin where twistd looks.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_plugin(tmp_path):
    """
    The wheel holds twisted/plugins/raps.py and no twisted/__init__.py or
    twisted/plugins/__init__.py, which would shadow Twisted's own package.
    """
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("raps-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert "twisted/plugins/raps.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "redis_ajax_push/tap.py" in names
