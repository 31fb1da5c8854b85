"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

A real server over a real store: a text search and file uploads must render every modality's
result (images decoded, audio players, depth/thermal/IMU previews, text snippets).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

import xsearch
from tests.corpus import write_image
from tests.helpers.browser import chromium_or_skip
from tests.helpers.serve import index_corpus, item_id
from xsearch.serve import BackgroundServer
from xsearch.serve.preview import CHANNEL_COLOURS

# The page as a person sees it; `XSEARCH_SCREENSHOT=docs/screenshot.png pytest -k renders_every_modality`
# refreshes the README picture. Tests never write into the checkout by default.
SCREENSHOT_ENV = "XSEARCH_SCREENSHOT"
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


def search_in_tab(driver, url: str, target: str, text: str) -> None:
    """Open the page, pick the target's tab, search for ``text`` (the page's first search)."""
    open_page(driver, url)
    driver.find_element(By.CSS_SELECTOR, f"#tabs button[data-target={target}]").click()
    driver.find_element(By.ID, "q").send_keys(text, Keys.ENTER)
    wait_search(driver, 1)


def test_text_search_renders_every_modality(browser, served, tmp_path):
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
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "screenshot.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
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
    search_in_tab(browser, srv.url, "image", "a car")
    clicked = cards(browser)[0]
    clicked_id = clicked.get_attribute("data-id")
    clicked.find_element(By.CSS_SELECTOR, ".caption").click()
    wait_search(browser, 2)
    assert "more like:" in browser.find_element(By.ID, "inputs").text
    ids = [c.get_attribute("data-id") for c in cards(browser)]
    assert clicked_id not in ids and len(ids) == len(files["image"]) - 1


# --------------------------------------------------------------------------- found by exploratory testing (issue 18)


@pytest.fixture()
def small_served(tmp_path, tiny_model):
    """A server of its own (a test may stop it) over three photos: no other modality."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        write_image(photos / f"p{i}.png", i)
    store = xsearch.open(tmp_path / "store", model=tiny_model)
    store.index([photos])
    srv = BackgroundServer(store).start()
    yield srv, tmp_path
    srv.stop()
    store.close()


def wait_searches(driver, n: int) -> str:
    """Until the page has ended its n-th search (done, failed or cancelled); the message it shows."""
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.body.dataset.searches") == str(n))
    return driver.find_element(By.ID, "message").text


def test_a_slower_older_search_never_overwrites_a_newer_one(browser, served, tmp_path):
    srv, _store, files = served
    open_page(browser, srv.url)
    # A photo of noise, uploaded through the browser's own network throttling: a real upload taking seconds.
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(noise)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions",
                            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 60_000})
    try:
        browser.find_element(By.ID, "file").send_keys(str(noise))  # search 1: the slow upload, still going
        browser.find_element(By.CSS_SELECTOR, ".file-chip button").click()
        browser.find_element(By.ID, "q").send_keys("rain")
        browser.find_element(By.CSS_SELECTOR, "#tabs button[data-target=audio]").click()  # search 2
        wait_searches(browser, 2)
    finally:
        browser.execute_cdp_cmd("Network.emulateNetworkConditions",
                                {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    assert [c.get_attribute("data-modality") for c in cards(browser)] == ["audio"] * len(files["audio"])
    assert browser.find_element(By.ID, "message").text.startswith(f"{len(files['audio'])} results")


def test_keyboard_and_screen_reader_users_reach_everything(browser, served):
    srv, _store, files = served
    open_page(browser, srv.url)
    tabs = browser.find_elements(By.CSS_SELECTOR, "#tabs button")
    assert {t.get_attribute("role") for t in tabs} == {"tab"}
    assert [t.get_attribute("aria-selected") for t in tabs] == ["true"] + ["false"] * (len(tabs) - 1)
    box = browser.find_element(By.ID, "q")
    assert box.accessible_name
    box.send_keys("a dog barking", Keys.ENTER)
    wait_search(browser, 1)
    players = browser.find_elements(By.CSS_SELECTOR, "#results audio, #results video")
    assert len(players) == len(files["audio"]) + len(files["video"])
    for player in players:
        name = player.find_element(By.XPATH, "ancestor::article").find_element(By.CSS_SELECTOR, ".caption .name").text
        assert player.get_attribute("aria-label") == f"play {name}"
        if player.tag_name == "audio":  # (a video this Chromium cannot decode is named by its error message)
            assert player.accessible_name == f"play {name}"
    # Tab from the search box to the first card's "more like this", and Enter: a search like that card.
    box.click()
    for _ in range(60):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        if "more" in (active.get_attribute("class") or "").split():
            break
    else:
        pytest.fail("no result could be reached with the Tab key")
    card = active.find_element(By.XPATH, "ancestor::article")
    name, like_id = card.find_element(By.CSS_SELECTOR, ".caption .name").text, card.get_attribute("data-id")
    active.send_keys(Keys.ENTER)
    wait_search(browser, 2)
    assert f"more like: {name}" in browser.find_element(By.ID, "inputs").text
    assert like_id not in [c.get_attribute("data-id") for c in cards(browser)]
    # Arrow keys move between tabs, and select.
    browser.find_element(By.CSS_SELECTOR, "#tabs [aria-selected=true]").send_keys(Keys.ARROW_RIGHT)
    wait_search(browser, 3)
    selected = browser.find_element(By.CSS_SELECTOR, "#tabs [aria-selected=true]")
    assert selected.get_attribute("data-target") == "image" and browser.switch_to.active_element == selected
    assert {c.get_attribute("data-modality") for c in cards(browser)} == {"image"}


def test_a_failed_search_says_why_and_dims_the_old_results(browser, small_served):
    srv, tmp = small_served
    open_page(browser, srv.url)
    browser.find_element(By.ID, "q").send_keys("a photo", Keys.ENTER)
    wait_search(browser, 1)
    assert len(cards(browser)) == 3
    broken = tmp / "broken.png"
    broken.write_bytes(b"not a picture at all")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    message = wait_searches(browser, 2)
    assert "broken.png" in message and "previous search" in message
    grid = browser.find_element(By.ID, "results")
    assert grid.get_attribute("data-state") == "error"
    assert float(grid.value_of_css_property("opacity")) < 0.5 and len(cards(browser)) == 3
    browser.find_element(By.CSS_SELECTOR, ".file-chip button").click()
    srv.stop()  # the server goes away
    browser.find_element(By.ID, "q").send_keys(Keys.ENTER)
    message = wait_searches(browser, 3)
    assert "Cannot reach the xsearch server" in message and "Failed to fetch" not in message
    assert float(grid.value_of_css_property("opacity")) < 0.5


def test_a_text_file_becomes_a_text_input(browser, served):
    srv, store, files = served
    open_page(browser, srv.url)
    note = files["text"][0]
    browser.find_element(By.ID, "file").send_keys(str(note))
    wait_search(browser, 1)
    chip = browser.find_element(By.CSS_SELECTOR, ".file-chip select.modality")
    assert Select(chip).first_selected_option.get_attribute("value") == "text"
    top = cards(browser)[0]
    assert top.get_attribute("data-id") == str(item_id(store, note)) and top.find_element(By.CSS_SELECTOR, ".score").text == "1.000"


def test_the_page_on_a_phone(browser, served, tmp_path):
    srv, _store, _files = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        open_page(browser, srv.url)
        width = browser.execute_script("return innerWidth")
        assert width == 390
        box = browser.find_element(By.ID, "q").rect["width"]
        assert box >= 0.8 * width, box  # the buttons wrap below rather than squeeze it
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scroll
        browser.find_element(By.ID, "q").send_keys("rain", Keys.ENTER)
        wait_search(browser, 1)
        browser.save_screenshot(str(tmp_path / "phone.png"))  # for a person to look at
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_imu_plots_have_a_legend_in_their_colours(browser, served):
    srv, _store, files = served
    search_in_tab(browser, srv.url, "imu", "walking")
    imu_cards = cards(browser)
    assert len(imu_cards) == len(files["imu"])
    for card in imu_cards:
        keys = card.find_elements(By.CSS_SELECTOR, ".legend .axis")
        assert [k.text for k in keys] == ["x", "y", "z"]
        assert [k.value_of_css_property("color") for k in keys] == [f"rgba({r}, {g}, {b}, 1)" for r, g, b in CHANNEL_COLOURS]


def test_zero_results_say_why(browser, small_served):
    srv, _tmp = small_served
    search_in_tab(browser, srv.url, "audio", "rain")
    assert cards(browser) == []
    assert "no audio items" in browser.find_element(By.ID, "message").text


def test_a_weight_that_is_not_a_number_is_refused(browser, small_served):
    srv, tmp = small_served
    open_page(browser, srv.url)
    photo = tmp / "photos" / "p0.png"
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_search(browser, 1)
    # "-" leaves the number input's value "" (and fires no input event); a tab click searches too.
    for typed, start in (("-", "#tabs button[data-target=image]"), ("", "#search-btn")):
        weight = browser.find_element(By.CSS_SELECTOR, ".file-chip input.weight")
        weight.clear()
        weight.send_keys(typed or Keys.BACKSPACE)
        browser.find_element(By.CSS_SELECTOR, start).click()
        WebDriverWait(browser, WAIT).until(lambda d: "not a number" in d.find_element(By.ID, "message").text)
        assert weight.get_attribute("aria-invalid") == "true"
        assert browser.execute_script("return document.body.dataset.searches") == "1"  # nothing was sent
    weight.send_keys("2")
    browser.find_element(By.ID, "search-btn").click()
    wait_search(browser, 2)


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
