"""Take the README's playground screenshot: two trained runs side by side on one prompt and seed,
a token hovered to show its alternatives.

    python docs/serve/screenshot.py RUN_A RUN_B [--out docs/serve/playground.png]

Needs Debian's chromium and chromium-driver and the server and test extras (selenium).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from rnn2gpt.server import create_app


def until(predicate, seconds=60.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("the page did not get there")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs=2)
    parser.add_argument("--out", default="docs/serve/playground.png")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = uvicorn.Server(
        uvicorn.Config(create_app(args.runs), host="127.0.0.1", port=args.port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    until(lambda: server.started)
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,720",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{args.port}/")
        boxes = until(lambda: driver.find_elements(By.CSS_SELECTOR, "#models input[type=checkbox]"))
        for box in boxes:
            if not box.is_selected():
                box.click()
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("ROMEO:\n")
        for name, value in (("max_tokens", 120), ("temperature", 0.8), ("seed", 1)):
            driver.execute_script(
                "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                "e.dispatchEvent(new Event('input'));",
                name,
                str(value),
            )
        driver.find_element(By.ID, "generate").click()
        until(lambda: driver.find_element(By.ID, "status").text == "done", 120)
        first_column = driver.find_elements(By.CSS_SELECTOR, "#output .column")[0]
        tokens = first_column.find_elements(By.CSS_SELECTOR, ".token")
        word = next(t for t in tokens[30:] if t.text.strip().isalpha())
        ActionChains(driver).move_to_element(word).perform()
        until(lambda: driver.find_elements(By.CSS_SELECTOR, "#alternatives .alt"))
        time.sleep(0.3)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
