"""Finding the Chromium the browser tests drive, and what to do when it is not installed.

Outside CI a missing browser skips those tests with one line saying how to install it, so the README's
test command passes on a fresh machine; under CI (``CI`` set to anything but "", "0" or "false") it is a
failure, so CI still proves the web page.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

import pytest

PROGRAMS = ("chromium", "chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"


def in_ci(env: Mapping[str, str]) -> bool:
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def chromium_or_skip(path: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """{program: path} for chromium and chromedriver found on ``path`` (default: $PATH, then /usr/bin).

    Missing: pytest.skip with the install line, or pytest.fail when ``env`` (default os.environ) says CI.
    """
    env = os.environ if env is None else env
    if path is None:
        path = os.pathsep.join(p for p in (env.get("PATH", ""), "/usr/bin") if p)
    found = {name: shutil.which(name, path=path) for name in PROGRAMS}
    missing = [name for name, where in found.items() if where is None]
    if not missing:
        return found  # type: ignore[return-value]
    line = f"browser tests need {' and '.join(missing)}, not found on PATH: {INSTALL} (Debian/Ubuntu)"
    if in_ci(env):
        pytest.fail(f"{line}; CI is set, so a missing browser is a failure", pytrace=False)
    pytest.skip(line)


WAIT = 60  # seconds; generous for a loaded machine, never hit when things work


def headless_chromium():
    """A headless Chromium driven by selenium (skips or fails as ``chromium_or_skip`` says when missing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    programs = chromium_or_skip()
    opts = webdriver.ChromeOptions()
    opts.binary_location = programs["chromium"]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(programs["chromedriver"]), options=opts)
    driver.set_script_timeout(WAIT)
    return driver
