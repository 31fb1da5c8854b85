"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

A real server over a real store: a text search and file uploads must render every modality's
result (images decoded, audio players, depth/thermal/IMU previews, text snippets).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.helpers.browser import chromium_or_skip
from tests.test_serve_api import index_corpus, item_id
from xsearch.serve import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
WAIT = 60  # seconds; generous for a loaded CI machine, never hit when things work

IMAGES_LOADED = """
const imgs = [...document.querySelectorAll('#results img')];
return imgs.every(i => i.complete && i.naturalWidth > 0);
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, golden_dir, tiny_model):
    store, files = index_corpus(tmp_path_factory.mktemp("browser"), golden_dir, tiny_model)
    with BackgroundServer(store) as srv:
        yield srv, store, files
    store.close()


@pytest.fixture(scope="module")
def browser():
    programs = chromium_or_skip()  # outside CI a missing browser skips, with how to install it
    opts = webdriver.ChromeOptions()
    opts.binary_location = programs["chromium"]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1800", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(programs["chromedriver"]), options=opts)
    driver.set_script_timeout(WAIT)
    yield driver
    driver.quit()


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, WAIT).until(lambda d: "image" in d.find_element(By.ID, "status").text)


def wait_search(driver, n: int) -> None:
    """Until the page has finished its n-th search, its results rendered and their images decoded."""
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.body.dataset.searches") == str(n))
    state = driver.find_element(By.ID, "results").get_attribute("data-state")
    assert state == "done", driver.find_element(By.ID, "message").text
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images below the fold
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(IMAGES_LOADED))
    driver.execute_script("window.scrollTo(0, 0)")


def cards(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#results .result")


def test_text_search_renders_every_modality(browser, served):
    srv, _store, files = served
    open_page(browser, srv.url)
    box = browser.find_element(By.ID, "q")
    box.send_keys("a dog barking", Keys.ENTER)
    wait_search(browser, 1)
    found = [c.get_attribute("data-modality") for c in cards(browser)]
    assert sorted(found) == sorted(m for m, paths in files.items() for _ in paths)  # k=24 > corpus: all of it
    q = browser.find_elements
    assert len(q(By.CSS_SELECTOR, ".result[data-modality=image] .media img")) == len(files["image"])
    assert len(q(By.CSS_SELECTOR, ".result[data-modality=audio] audio")) == len(files["audio"])
    videos = q(By.CSS_SELECTOR, ".result[data-modality=video] video")
    assert len(videos) == len(files["video"]) and all("/preview.png" in v.get_attribute("poster") for v in videos)
    for m in ("depth", "thermal", "imu"):
        previews = q(By.CSS_SELECTOR, f".result[data-modality={m}] img")
        assert len(previews) == len(files[m])
        assert all("/preview.png" in p.get_attribute("src") for p in previews)
    snippets = {s.text for s in q(By.CSS_SELECTOR, ".result[data-modality=text] .snippet")}
    assert "a dog barking at the mailman" in snippets
    # audio served with a type the browser accepts: its metadata (duration) loads
    WebDriverWait(browser, WAIT).until(
        lambda d: d.execute_script("return [...document.querySelectorAll('audio')].every(a => a.readyState >= 1)"))
    assert browser.execute_script("return document.querySelector('audio').duration") > 0
    # the whole page, for docs/ (and for a person to look at)
    height = browser.execute_script(
        "return document.querySelector('footer').getBoundingClientRect().bottom + scrollY"
        " + (window.outerHeight - window.innerHeight)")  # the window's size includes its (hidden) chrome
    browser.set_window_size(1280, min(max(int(height) + 24, 800), 3000))
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    browser.set_window_size(1280, 1800)


def test_tabs_restrict_the_target(browser, served):
    srv, _store, files = served
    open_page(browser, srv.url)
    browser.find_element(By.ID, "q").send_keys("rain", Keys.ENTER)
    wait_search(browser, 1)
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-target=audio]").click()
    wait_search(browser, 2)
    assert {c.get_attribute("data-modality") for c in cards(browser)} == {"audio"}
    assert len(cards(browser)) == len(files["audio"])


def test_file_upload_search(browser, served):
    srv, store, files = served
    open_page(browser, srv.url)
    image = files["image"][0]
    browser.find_element(By.ID, "file").send_keys(str(image))  # the input behind "+ File" and drag-and-drop
    wait_search(browser, 1)
    first = cards(browser)[0]
    assert first.get_attribute("data-id") == str(item_id(store, image))
    assert image.name in browser.find_element(By.ID, "inputs").text
    # a thermal frame is a PNG like any photo: the chip's select says what it is
    browser.find_element(By.CSS_SELECTOR, ".file-chip button").click()
    thermal = files["thermal"][1]
    browser.find_element(By.ID, "file").send_keys(str(thermal))
    wait_search(browser, 2)
    Select(browser.find_element(By.CSS_SELECTOR, ".file-chip select.modality")).select_by_value("thermal")
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-target=thermal]").click()
    wait_search(browser, 3)
    top = cards(browser)[0]
    assert top.get_attribute("data-id") == str(item_id(store, thermal))
    assert top.get_attribute("data-modality") == "thermal"
    assert top.find_element(By.CSS_SELECTOR, ".score").text == "1.000"  # embedded as thermal, not as a photo


def test_clicking_a_result_searches_like_it(browser, served):
    srv, store, files = served
    open_page(browser, srv.url)
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-target=image]").click()
    browser.find_element(By.ID, "q").send_keys("a car", Keys.ENTER)
    wait_search(browser, 1)
    clicked = cards(browser)[0]
    clicked_id = clicked.get_attribute("data-id")
    clicked.find_element(By.CSS_SELECTOR, ".caption").click()
    wait_search(browser, 2)
    assert "more like:" in browser.find_element(By.ID, "inputs").text
    ids = [c.get_attribute("data-id") for c in cards(browser)]
    assert clicked_id not in ids and len(ids) == len(files["image"]) - 1


def test_a_missing_browser_skips_with_how_to_install_it_outside_ci(tmp_path):
    with pytest.raises(pytest.skip.Exception) as caught:
        chromium_or_skip(path=str(tmp_path), env={"PATH": str(tmp_path)})
    line = str(caught.value)
    assert "\n" not in line and "apt-get install -y chromium chromium-driver" in line


def test_a_missing_browser_fails_under_ci(tmp_path):
    for ci in ("true", "1"):
        with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium chromium-driver"):
            chromium_or_skip(path=str(tmp_path), env={"PATH": str(tmp_path), "CI": ci})


def test_ci_set_to_false_still_skips(tmp_path):
    with pytest.raises(pytest.skip.Exception):
        chromium_or_skip(path=str(tmp_path), env={"CI": "false"})


def test_a_browser_on_the_path_is_found_whatever_ci_says(tmp_path):
    for name in ("chromium", "chromedriver"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    for env in ({}, {"CI": "true"}):
        assert chromium_or_skip(path=str(tmp_path), env=env) == {
            "chromium": str(tmp_path / "chromium"), "chromedriver": str(tmp_path / "chromedriver")}
