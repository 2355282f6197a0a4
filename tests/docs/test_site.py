"""The documentation site as a reader sees it: headless Chromium loads it from a local web server.

`make docs` builds the site (docs/site/build.py) and runs these tests. They need Debian's chromium and
chromium-driver (`make docs-deps` installs them) and fail, never skip, without them. Screenshots are written to
build/docs/screenshots/ for a person to look at.
"""
import functools
import http.server
import os
import shutil
import threading

import pytest

from tests.conftest import REPO_ROOT

SITE = os.environ.get("VIRTFLEET_DOCS_SITE", os.path.join(REPO_ROOT, "build", "docs", "html"))
SHOTS = os.path.join(os.path.dirname(SITE), "screenshots")
CHROMIUM = os.environ.get("VIRTFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VIRTFLEET_CHROMEDRIVER", "/usr/bin/chromedriver")
SERVER_PAGE = "collections/virtfleet/compute/server_module.html"
GUIDE_PAGE = "guides/first-cloud.html"


@pytest.fixture(scope="module")
def site_url():
    if not os.path.exists(os.path.join(SITE, "index.html")):
        pytest.fail("no site in %s: build it with `make docs` (docs/site/build.py)" % SITE)
    handler = functools.partial(_QuietHandler, directory=SITE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail("%s is missing: `make docs-deps` installs Debian's chromium and chromium-driver" % path)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No sandbox: the tests run as root. No GPU, and none of Chromium's own traffic (updates, sync, safe browsing):
    # these machines reach no network but the package registries.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    # The driver is Debian's, given by path: selenium must not try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots():
    shutil.rmtree(SHOTS, ignore_errors=True)
    os.makedirs(SHOTS)
    return SHOTS


def _open(browser, url):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    # The page's styles were applied (the theme's CSS loaded from the site): the body is laid out by the theme.
    assert browser.execute_script(
        "return getComputedStyle(document.querySelector('.wy-nav-side')).position") == "fixed"


def _png(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_server_module_page_shows_its_options_table(browser, site_url, shots):
    from selenium.webdriver.common.by import By

    _open(browser, site_url + SERVER_PAGE)
    assert "virtfleet.compute.server" in browser.title
    section = browser.find_element(By.ID, "parameters")
    table = section.find_element(By.CSS_SELECTOR, "table.ansible-option-table")
    browser.execute_script("arguments[0].scrollIntoView()", section)
    assert table.is_displayed()
    # Laid out as a table a person can read: most of the content column wide, many rows tall.
    assert table.size["width"] > 600, table.size
    assert table.size["height"] > 2000, table.size
    header = [cell.text for cell in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert header == ["Parameter", "Comments"], header
    # Every option of the module is a row, with its anchor, its type and its description rendered.
    anchors = [e.get_attribute("id")[len("parameter-"):]
               for e in table.find_elements(By.CSS_SELECTOR, "div.ansibleOptionAnchor[id^='parameter-']")]
    names = [name for name in anchors if "/" not in name]
    import yaml

    from ansible_collections.virtfleet.compute.plugins.modules import server

    documented = yaml.safe_load(server.DOCUMENTATION)["options"]
    assert set(documented) <= set(names), set(documented) - set(names)
    flavor = table.find_element(By.ID, "ansible-collections-virtfleet-compute-server-module-parameter-flavor")
    assert flavor.is_displayed() and flavor.text == "flavor"
    row = flavor.find_element(By.XPATH, "./ancestor::tr")
    kind = {"str": "string", "raw": "any", "int": "integer", "bool": "boolean"}[documented["flavor"].get("type", "str")]
    assert row.text.split("\n")[1] == kind, row.text
    assert documented["flavor"]["description"][0][:20] in row.text.replace("\u2019", "'"), row.text
    path = os.path.join(shots, "server_module.png")
    assert browser.save_screenshot(path)
    assert _png(path)[0] >= 1000


def test_first_cloud_guide(browser, site_url, shots):
    from selenium.webdriver.common.by import By

    _open(browser, site_url + GUIDE_PAGE)
    heading = browser.find_element(By.TAG_NAME, "h1")
    assert heading.is_displayed() and heading.text.strip()
    # The guide's shell and YAML examples are highlighted code blocks, and its links to the other guides work.
    blocks = browser.find_elements(By.CSS_SELECTOR, "div.highlight pre")
    assert blocks and all(b.size["height"] > 0 for b in blocks[:3])
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "div.rst-content a.reference")]
    assert any(href.endswith("guides/servers.html") for href in links), links
    path = os.path.join(shots, "first_cloud.png")
    assert browser.save_screenshot(path)
    assert _png(path)[0] >= 1000


def test_navigation_reaches_the_server_module(browser, site_url):
    """From the front page, through the collection's index, to the server module, by clicking as a reader does."""
    from selenium.webdriver.common.by import By

    _open(browser, site_url)
    browser.find_element(By.CSS_SELECTOR, "div.rst-content a[href='collections/index.html']").click()
    browser.find_element(By.CSS_SELECTOR, "div.rst-content a[href^='virtfleet/compute/index.html']").click()
    browser.find_element(By.CSS_SELECTOR, "div.rst-content a[href^='server_module.html']").click()
    assert browser.current_url.split("#")[0].endswith(SERVER_PAGE), browser.current_url
    assert browser.find_element(By.CSS_SELECTOR, "#parameters table.ansible-option-table").is_displayed()
