"""Headless Chromium for page tests (importable as `browser`: tests/ is on pytest's path), driven by its own flags
only: `--dump-dom` (the DOM after the page's scripts ran) and `--screenshot`. No driver package, no network.

`chromium_or_skip()` returns the browser's path; when it is missing the test is skipped, or FAILS when CI=1 or
VIDEOKTR_REQUIRE_BROWSER=1 (.ci/run installs Debian's `chromium` and sets the latter)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# this machine's network is closed: nothing may try to reach it
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_or_skip() -> str:
    path = find_chromium()
    if path:
        return path
    required = os.environ.get("CI") == "1" or os.environ.get("VIDEOKTR_REQUIRE_BROWSER") == "1"
    message = ("headless Chromium not found (install Debian's package: apt-get install -y --no-install-recommends "
               "chromium)")
    if required:
        pytest.fail(message + "; CI=1 / VIDEOKTR_REQUIRE_BROWSER=1 require the browser tests to run")
    pytest.skip(message)


def _run(chromium: str, args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def dump_dom(chromium: str, page: Path, profile: Path, fragment: str = "") -> str:
    """The serialized DOM of `page` (with `#fragment`) after its scripts ran."""
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return _run(chromium, ["--dump-dom", url], profile).stdout


def screenshot(chromium: str, page: Path, out: Path, profile: Path, fragment: str = "",
               size: tuple[int, int] = (1200, 900)) -> Path:
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    _run(chromium, [f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url], profile)
    if not Path(out).is_file():
        raise AssertionError(f"chromium wrote no screenshot to {out}")
    return Path(out)


def selftest_result(dom: str) -> dict:
    """The JSON the page's #selftest wrote into <pre id="selftest-result">."""
    import html

    m = re.search(r'<pre id="selftest-result">(.*?)</pre>', dom, re.S)
    if not m:
        raise AssertionError("the page wrote no self-test result (did its script run?)")
    return json.loads(html.unescape(m.group(1)))
