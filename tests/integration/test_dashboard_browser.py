"""The dashboard in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium): it loads with no console error, shows the served models, counts a request made during
the test, cancels a queued job, and asks for an API key where the gateway needs one.

Chromium is installed by the test setup (``tests/browser.py``) where it is missing.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gateway.auth import hash_key
from modelgate.redis_server import free_port
from tests.browser import chrome
from tests.conftest import LIVE_MODELS, ROOT, Stack, gateway_up, paused_worker, process_env
from tests.conftest import wait_until as wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = chrome(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


def loaded(driver: WebDriver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"
    )


def text(driver: WebDriver, selector: str) -> str:
    """An element's text, read in one step: the page redraws its tables every 2 s, so an
    element found in one call may be gone by the next."""
    found = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        selector,
    )
    assert found is not None, f"nothing matches {selector}"
    return str(found)


def field(driver: WebDriver, model: str, name: str) -> str:
    return text(driver, f'#models tr[data-model="{model}"] [data-field="{name}"]')


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    """A wait that retries a step whose element the page replaced meanwhile."""
    return WebDriverWait(
        driver,
        WAIT_S,
        ignored_exceptions=(
            StaleElementReferenceException,
            NoSuchElementException,
            AssertionError,
        ),
    )


def console_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_dashboard_shows_models_and_counts_a_new_request(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    loaded(browser, f"{stack.url}/dashboard")
    for name in LIVE_MODELS:
        assert field(browser, name, "workers").endswith("up"), name
    assert field(browser, "ghost", "workers") == "down"
    assert "models up" in text(browser, "#summary")
    assert "tiny-cls-w0" in text(browser, "#workers tbody")

    # tiny-ner: no test before this one sends it requests, so no count leaves the window
    # (the last 5 minutes) while this one waits for its own.
    before = int(field(browser, "tiny-ner", "requests"))
    r = httpx.post(
        f"{stack.url}/models/tiny-ner/predict", json={"inputs": f"Seen in Paris {uuid.uuid4().hex}"}
    )
    assert r.status_code == 200
    wait(browser).until(lambda d: int(field(d, "tiny-ner", "requests")) > before)
    assert field(browser, "tiny-ner", "latency")[0].isdigit()  # a p50, not the empty mark
    browser.save_screenshot(str(tmp_path / "dashboard.png"))  # for a person; not kept in git
    assert console_errors(browser) == []


def test_a_queued_job_is_canceled_from_the_page(stack: Stack, browser: WebDriver) -> None:
    loaded(browser, f"{stack.url}/dashboard")
    with paused_worker(stack, "victim", "victim-dashboard"):
        jobs = [
            httpx.post(f"{stack.url}/models/victim/jobs", json={"inputs": f"wait {i}"})
            for i in range(2)
        ]
        assert all(r.status_code == 202 for r in jobs), [r.text for r in jobs]
        job_id = jobs[1].json()["job_id"]  # the first may already sit in the worker's hands
        row = f'#jobs tr[data-job="{job_id}"]'

        def click_cancel(d: WebDriver) -> bool:
            d.find_element(By.CSS_SELECTOR, f"{row} button").click()  # stale: found again
            return True

        wait(browser).until(click_cancel)
        wait(browser).until(lambda d: text(d, f'{row} [data-field="status"]') == "canceled")
        assert httpx.get(f"{stack.url}/jobs/{job_id}").json()["status"] == "canceled"
    assert console_errors(browser) == []


@pytest.fixture
def keyed_gateway(stack: Stack) -> Iterator[str]:
    """A second gateway on the session's Redis that needs the key ``dash-key``."""
    port = free_port()
    env = process_env(stack.redis_url, stack.config, MODELGATE_API_KEYS=hash_key("dash-key"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "gateway", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: gateway_up(url), 60, "the keyed gateway")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_page_asks_for_a_key_where_the_gateway_needs_one(
    keyed_gateway: str, browser: WebDriver
) -> None:
    browser.get(f"{keyed_gateway}/dashboard")
    form = wait(browser).until(
        lambda d: (
            d.find_element(By.ID, "key-form")
            if d.find_element(By.ID, "key-form").is_displayed()
            else None
        )
    )
    assert "needs an API key" in text(browser, "#problem")
    browser.find_element(By.ID, "key").send_keys("dash-key")
    form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"
    )
    assert field(browser, "tiny-cls", "workers").endswith("up")
    # The one 401 before the key was given is the page's question, not an error of the page.
    errors = [e for e in console_errors(browser) if "401" not in e]
    assert errors == []
