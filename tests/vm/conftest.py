"""The Debian golden image for real VM tests: built by images/linux/build.py, or reused from
its cache (a few minutes the first time, instant after)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.backends.qemu import QemuLabel

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 1800


@pytest.fixture(scope="session")
def linux_image() -> QemuLabel:
    """The `linux` label's image, kernel and initrd; the test fails (never skips) when the
    host lacks what builds or boots it, because CI must run it."""
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "debootstrap", "socat")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run scripts/system-packages.sh as root")
    if os.geteuid() != 0:
        pytest.fail("building the golden image needs root (debootstrap, chroot)")
    built = subprocess.run([sys.executable, str(REPO / "images/linux/build.py")],
                           capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT)
    if built.returncode != 0:
        pytest.fail(f"images/linux/build.py failed:\n{built.stderr[-4000:]}")
    return QemuLabel(**json.loads(built.stdout))
