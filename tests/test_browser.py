"""The HTML report in a real browser (Debian's chromium and chromium-driver, driven by
selenium; no browser is downloaded): at a laptop and a phone width, what a reader meets.
No console errors; a click on a header sorts the rows by that column (again: reversed);
every plot image loads; nothing but the table boxes scrolls sideways; a cell's hover text
holds the interval its number rests on. Skipped where the browser or its driver is absent
(`.ci/run` installs them)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_report import make_run

from lmcollapse.report import write as report

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="pip install selenium (the test extra)")
pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER), reason="needs Debian's chromium "
                                "and chromium-driver (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = make_run(root, stop={("accumulate", 2): 2})
    report.write_report([run], out=root / "out", lineage_prompts=1)
    return root / "out" / "leaderboard.html"


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield d
    d.quit()


def _rows(driver) -> list[list[str]]:
    """The leaderboard's rows (the page's first sortable table), each cell's text."""
    return driver.execute_script(
        "return [...document.querySelector('table.sortable').tBodies[0].rows].map("
        "tr => [...tr.cells].map(td => td.textContent))")


def _mean(text: str) -> float | None:
    """A value cell's mean (its leading number), None for a cell without one."""
    m = re.match(r"\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    return float(m.group(1)) if m else None


@pytest.mark.parametrize("width", [1280, 390])
def test_what_a_reader_meets(page, driver, width):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.set_window_size(width, 900)
    driver.get(page.as_uri())
    # every plot image loads
    images = driver.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src'), i.complete, "
        "i.naturalWidth])")
    assert images and all(ok and w > 0 for _, ok, w in images), images
    # nothing but the scrolling table boxes is wider than the window
    inner, scroll = driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]")
    assert scroll <= inner, (width, inner, scroll)
    # a click on a value column sorts by it; a second click reverses
    board = driver.find_element(By.CSS_SELECTOR, "table.sortable")  # the leaderboard
    headers = board.find_elements(By.CSS_SELECTOR, "thead th")
    names = [h.text.lower() for h in headers]
    col = next(i for i, n in enumerate(names) if n.startswith("mauve"))
    before = sorted(r[1] for r in _rows(driver))
    driver.execute_script("arguments[0].scrollIntoView()", headers[col])
    headers[col].click()
    up = [_mean(r[col]) for r in _rows(driver) if _mean(r[col]) is not None]
    assert len(up) >= 3 and up == sorted(up)
    headers[col].click()
    down = [_mean(r[col]) for r in _rows(driver) if _mean(r[col]) is not None]
    assert down == sorted(up, reverse=True)
    assert sorted(r[1] for r in _rows(driver)) == before  # the same rows, reordered
    # a cell's hover text: the 95% interval of its mean, which holds the mean shown
    cell = board.find_element(By.CSS_SELECTOR, "tbody td[title*='95% interval']")
    ActionChains(driver).move_to_element(cell).perform()
    title = cell.get_attribute("title")
    lo, hi = map(float, re.search(r"over \d+ seeds: \[([-\d.e]+), ([-\d.e]+)\]",
                                  title).groups())
    mean = _mean(cell.text)
    assert lo <= mean <= hi, (title, cell.text)
    # and the console stayed clean
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A static site of two protocols' results files (a run exported, and the same results
    resealed under another protocol)."""
    import json

    from lmcollapse.publish.export import export
    from lmcollapse.report.results import protocol_hash, seal
    from lmcollapse.report.site import write_site

    root = tmp_path_factory.mktemp("site")
    first = export(make_run(root))
    doc = json.loads(first.read_text())
    doc["protocol"]["train"] = {"lr": 0.5}
    doc["protocol_sha256"] = protocol_hash(doc["protocol"])
    other = root / "other.json"
    other.write_text(json.dumps(seal(doc)))
    pages = write_site([first, other], root / "site")
    return root / "site", pages


@pytest.mark.parametrize("width", [1280, 390])
def test_the_static_site_in_a_browser(site, driver, width):
    """From the index (no server: file:// URLs) every link resolves inside the site, each
    protocol's page opens with its leaderboard and plots, nothing scrolls sideways but the
    table boxes, and the console stays clean."""
    from selenium.webdriver.common.by import By

    folder, pages = site
    driver.set_window_size(width, 900)
    driver.get(pages[0].as_uri())
    inner, scroll = driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]")
    assert scroll <= inner, (width, inner, scroll)
    hrefs = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a")]
    assert hrefs and all(h.startswith(folder.as_uri() + "/") for h in hrefs), hrefs
    from urllib.parse import unquote, urlparse

    assert all(Path(unquote(urlparse(h).path)).is_file() for h in hrefs), hrefs
    boards = sorted({h for h in hrefs if h.endswith("/leaderboard.html")})
    assert len(boards) == 2
    for board in boards:
        driver.get(board)
        assert driver.find_elements(By.CSS_SELECTOR, "table.sortable")
        images = driver.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth])")
        assert images and all(ok and w > 0 for ok, w in images)
        inner, scroll = driver.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]")
        assert scroll <= inner, (board, width, inner, scroll)
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a")
                 if (a.get_attribute("href") or "").startswith("file:")]
        assert all(Path(unquote(urlparse(h).path)).exists() for h in links), links
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
