"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven by selenium,
for tests whose orchestrator runs in the test's own event loop: every browser call runs in a
thread, so the server keeps answering while the browser waits for it."""
from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps calling out (updates, sync, field
# trials) and the test machine has no network for it.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")
# Screenshots of every page a test opened (gitignored).
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "web"


class Browser:
    """One Chromium with a fresh profile; `close` it (the profile goes too)."""

    def __init__(self) -> None:
        missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} missing: run scripts/system-packages.sh "
                               "as root (or `make services`) to install chromium and chromium-driver")
        self.profile = tempfile.mkdtemp(prefix="solstice-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.driver.set_script_timeout(30)

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def js(self, script: str, *args: Any) -> Any:
        """`script`'s `return` value, run in the page."""
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def until(self, script: str, timeout: float = 15, *args: Any) -> Any:
        """Wait until `script` returns something true; that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout}s: {script}")
            await asyncio.sleep(0.1)

    async def width(self, width: int) -> None:
        await asyncio.to_thread(self.driver.set_window_size, width, 900)

    async def screenshot(self, name: str) -> Path:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        path = OUTPUT / f"{name}.png"
        await asyncio.to_thread(self.driver.save_screenshot, str(path))
        return path
