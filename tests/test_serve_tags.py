"""Tags and near-duplicates through the HTTP API and on the web page (real server, real Chromium)."""
from __future__ import annotations

import shutil

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

import xsearch
from tests.corpus import write_image
from tests.helpers.browser import WAIT, headless_chromium
from tests.helpers.serve import post_form
from tests.helpers.media import image_variants
from xsearch.serve import BackgroundServer

LABELS = ["dog", "car", "bird", "rain"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, golden_dir, tiny_model):
    root = tmp_path_factory.mktemp("serve_tags")
    media = root / "media"
    image_variants(golden_dir / "media" / "images" / "dog_image.jpg", media)
    for name in ("car_image.jpg", "bird_image.jpg"):
        shutil.copy(golden_dir / "media" / "images" / name, media / name)
    for i in range(3):
        write_image(media / f"gen{i}.png", 30 + i, size=(160, 120))
    store = xsearch.open(root / "store", model=tiny_model, device="cpu")
    store.index([media])
    store.tag(LABELS, name="animals", top=1)
    with BackgroundServer(store) as srv:
        yield srv, store
    store.close()


@pytest.fixture()
def client(served):
    with httpx.Client(base_url=served[0].url, timeout=120) as c:
        yield c


def test_results_carry_their_tags_and_the_tags_filter_keeps_only_tagged_items(client, served):
    _, store = served
    everything = client.post("/api/search", json={"text": "a dog", "target": "image", "k": 50}).json()["results"]
    assert all(len(r["tags"]) == 1 and r["tags"][0]["set"] == "animals" for r in everything)
    label = everything[0]["tags"][0]["label"]
    want = [r["path"] for r in everything if r["tags"][0]["label"] == label]
    r = client.post("/api/search", json={"text": "a dog", "target": "image", "k": 50, "filters": {"tags": [label]}})
    assert r.status_code == 200, r.text
    assert [x["path"] for x in r.json()["results"]] == want
    assert r.json()["query"]["filters"]["tags"] == [label]
    form = post_form(client, {"text": "a dog", "target": "image", "k": "50", "tags": label})
    assert [x["path"] for x in form.json()["results"]] == want
    bad = client.post("/api/search", json={"text": "a dog", "filters": {"tags": [3]}})
    assert bad.status_code == 422 and "tags" in bad.json()["detail"]
    assert store.status()["label_sets"][0]["items"] == len(everything)


def test_duplicates_endpoint_groups_the_variants_with_the_keeper_first(client):
    r = client.get("/api/duplicates", params={"target": "image", "threshold": 0.999})
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert len(groups) == 1
    members = groups[0]["members"]
    assert sorted(m["name"] for m in members) == ["dog_image.jpg", "dog_image_crop.jpg", "dog_image_q60.jpg",
                                                  "dog_image_small.png"]
    assert members[0]["keeper"] and not any(m["keeper"] for m in members[1:])
    assert all(m["media_url"] for m in members)
    assert client.get("/api/duplicates", params={"threshold": 3}).status_code == 422


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


def test_page_shows_tag_chips_filters_by_a_clicked_tag_and_shows_duplicates(browser, served):
    srv, store = served
    browser.get(srv.url + "/")
    WebDriverWait(browser, WAIT).until(lambda d: "image" in d.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "q").send_keys("a dog", Keys.ENTER)
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return document.body.dataset.searches") == "1")
    chips = browser.find_elements(By.CSS_SELECTOR, "#results .result .tag")
    assert len(chips) == len(browser.find_elements(By.CSS_SELECTOR, "#results .result")) == 9
    label = chips[0].get_attribute("data-tag")
    chips[0].click()
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return document.body.dataset.searches") == "2")
    shown = {t.get_attribute("data-tag") for t in browser.find_elements(By.CSS_SELECTOR, "#results .result .tag")}
    assert shown == {label}
    assert browser.find_element(By.CSS_SELECTOR, "#tag-filter .tag-chip").get_attribute("data-tag") == label
    expected = len(store.search(text="a dog", k=50, tags=[label]))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .result")) == expected
    browser.find_element(By.ID, "dups-tab").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "done")
    groups = browser.find_elements(By.CSS_SELECTOR, "#results .dup-group")
    assert len(groups) == 1
    assert len(groups[0].find_elements(By.CSS_SELECTOR, ".result")) == 4
    assert len(groups[0].find_elements(By.CSS_SELECTOR, ".result.keeper")) == 1
