"""Headless Chromium for page tests (Debian's chromium + chromium-driver, driven by selenium)."""
from __future__ import annotations

import shutil
from pathlib import Path

WAIT = 60  # seconds; generous for a loaded machine, never hit when things work


def find_binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert Path(path).exists(), f"{name} not found: apt-get install -y chromium chromium-driver"
    return path


def headless_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = find_binary("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(find_binary("chromedriver")), options=opts)
    driver.set_script_timeout(WAIT)
    return driver
