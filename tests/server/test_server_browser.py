"""The playground in a real browser: Debian's headless Chromium, driven by Selenium.

`.ci/run` installs ``chromium`` and ``chromium-driver`` and sets RNN2GPT_REQUIRE_BROWSER=1, so in
CI this test runs; a developer machine without them skips it, naming what is missing. Selenium
is pointed at /usr/bin/chromedriver, so Selenium Manager never tries to download a driver.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from rnn2gpt.server import ServerSettings, create_app

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser(tmp_path):
    if not CHROMEDRIVER.exists() or not Path(CHROMIUM).exists():
        if os.environ.get("RNN2GPT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromium-driver are required here (apt-get install them)")
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _until(predicate, seconds: float = 30.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _visible_token(driver):
    """A generated token with visible text (a lone newline has no box to hover)."""
    from selenium.webdriver.common.by import By

    tokens = driver.find_elements(By.CSS_SELECTOR, ".column .token")
    return next(t for t in tokens if t.text.strip() and t.get_attribute("data-prob"))


def _set_slider(driver, name: str, value: int) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));",
        name,
        str(value),
    )


def test_generate_stream_hover_stop_and_no_other_host(browser, checkpoints, live):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    app = create_app(
        [str(checkpoints["lstm"]), str(checkpoints["gpt"])],
        settings=ServerSettings(max_tokens=4096),
    )
    # Pace the LSTM (2 ms a step, through a hook) so the 1,000-token request is still streaming
    # when Stop is clicked, however fast this machine decodes.
    pace = app.state.hosts["tiny-lstm"].engine.model.register_forward_pre_hook(
        lambda module, args: time.sleep(0.002)
    )
    server = live(app)
    driver = browser
    driver.get(server.url + "/")
    boxes = _until(lambda: driver.find_elements(By.CSS_SELECTOR, "#models input[type=checkbox]"))
    assert {b.get_attribute("value") for b in boxes} == {"tiny-lstm", "tiny-gpt"}
    for box in boxes:  # pick the LSTM only
        if box.is_selected() != (box.get_attribute("value") == "tiny-lstm"):
            box.click()
    prompt = driver.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("ROMEO:")
    _set_slider(driver, "max_tokens", 1000)
    _set_slider(driver, "temperature", 1)
    driver.find_element(By.ID, "generate").click()

    # Text streams in: the number of token spans grows while the request runs.
    first = len(_until(lambda: driver.find_elements(By.CSS_SELECTOR, ".column .token")))
    later = _until(
        lambda: (n := len(driver.find_elements(By.CSS_SELECTOR, ".column .token"))) > first and n
    )
    assert later > first

    token = _visible_token(driver)
    assert 0 < float(token.get_attribute("data-prob")) <= 1
    ActionChains(driver).move_to_element(token).perform()
    alternatives = _until(lambda: driver.find_elements(By.CSS_SELECTOR, "#alternatives .alt"))
    assert driver.find_element(By.ID, "alternatives").is_displayed()
    assert 1 <= len(alternatives) <= 5

    driver.find_element(By.ID, "stop").click()
    _until(lambda: driver.find_element(By.ID, "status").text == "stopped")
    stopped_at = len(driver.find_elements(By.CSS_SELECTOR, ".column .token"))
    time.sleep(0.5)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".column .token")) == stopped_at
    assert stopped_at < 1000
    _until(lambda: app.state.hosts["tiny-lstm"].engine.busy == 0, 10)  # the slot was freed
    pace.remove()

    # Branch here: clicking an alternative continues from that token.
    token = _visible_token(driver)
    before = driver.execute_script(
        "let t = document.querySelector('.prompt').textContent;"
        "for (const n of document.querySelectorAll('.column .token')) {"
        " if (n === arguments[0]) break; t += n.textContent; } return t;",
        token,
    )
    ActionChains(driver).move_to_element(token).perform()
    choice = _until(lambda: driver.find_elements(By.CSS_SELECTOR, "#alternatives .alt"))[0]
    piece = choice.get_attribute("data-piece")
    choice.click()
    _until(lambda: driver.find_element(By.ID, "prompt").get_attribute("value") == before + piece)

    # Side by side: both models, one column each.
    for box in driver.find_elements(By.CSS_SELECTOR, "#models input[type=checkbox]"):
        if not box.is_selected():
            box.click()
    driver.find_element(By.ID, "stop").click()
    _set_slider(driver, "max_tokens", 100)  # more than fits the GPT's context of 64
    driver.find_element(By.ID, "generate").click()
    _until(lambda: driver.find_element(By.ID, "status").text == "done", 60)
    columns = driver.find_elements(By.CSS_SELECTOR, "#output .column")
    assert {c.get_attribute("data-model") for c in columns} == {"tiny-lstm", "tiny-gpt"}
    for col in columns:  # the GPT was asked for what fits after the prompt, not refused
        assert col.find_elements(By.CSS_SELECTOR, ".error") == [], col.text
        assert col.find_elements(By.CSS_SELECTOR, ".token")

    origin = server.url
    network = [
        u for u in _requested_urls(driver) if u.startswith(("http:", "https:", "ws:", "wss:"))
    ]
    assert any(u.startswith(origin + "/v1/completions") for u in network)  # the log sees requests
    assert [u for u in network if not u.startswith(origin + "/")] == []  # none to another host


def test_the_page_asks_for_the_key_when_the_server_needs_one(browser, checkpoints, live):
    from selenium.webdriver.common.by import By

    server = live(create_app([str(checkpoints["lstm"])], api_key="letmein"))
    driver = browser
    driver.get(server.url + "/")
    panel = driver.find_element(By.ID, "apikey-panel")
    _until(panel.is_displayed)
    driver.find_element(By.ID, "apikey").send_keys("letmein")
    driver.find_element(By.ID, "save-key").click()
    boxes = _until(lambda: driver.find_elements(By.CSS_SELECTOR, "#models input[type=checkbox]"))
    assert [b.get_attribute("value") for b in boxes] == ["tiny-lstm"]
    assert not panel.is_displayed()
