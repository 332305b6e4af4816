#!/usr/bin/env python3
"""A real browser for tests/e2e_suite/http.rs, driven the way a web team
would drive it: Selenium (PyPI) through Debian's chromedriver and headless
Chromium.

  browser_selenium.py CHROMEDRIVER CHROMIUM BASE USER PASSWORD AGENT SHOTDIR PATH...

Chromium answers every HTTP auth challenge (Digest or Basic: whatever the
page's challenge asks for) with USER/PASSWORD through WebDriver BiDi's
network.authRequired (selenium's `driver.network.add_auth_handler`), as a
password manager or a user typing into the prompt would. Each PATH is opened
in turn in one tab; a screenshot of it is saved in SHOTDIR. Printed as TOML,
one [[results]] table per page: path, title, body (document.body.innerText),
screenshot (its file) and url (where the tab ended up).
"""
import os
import sys

import toml_out


def main():
    driver_bin, chromium, base, user, password, agent, shots, *paths = sys.argv[1:]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        sys.exit("browser_selenium.py: the Python package `selenium` (PyPI) is missing: "
                 "tests/run installs it into target/test-venv")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--password-store=basic",
                 f"--user-data-dir={os.path.join(shots, 'profile')}",
                 f"--user-agent={agent}", "--window-size=800,600"]:
        options.add_argument(flag)
    # WebDriver BiDi: the auth handler needs it.
    options.enable_bidi = True
    service = Service(executable_path=driver_bin,
                      log_output=os.path.join(shots, "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    results = []
    try:
        driver.network.add_auth_handler(user, password)
        for i, path in enumerate(paths):
            # BiDi navigation: waits for the load while the handler answers
            # the challenge (a classic command would stall chromedriver
            # until the page loaded, which it cannot before the answer).
            driver.browsing_context.navigate(
                context=driver.current_window_handle, url=base + path, wait="complete")
            shot = os.path.join(shots, f"page-{i}.png")
            if not driver.save_screenshot(shot):
                sys.exit(f"browser_selenium.py: no screenshot of {path}")
            body = driver.execute_script("return document.body ? document.body.innerText : ''")
            results.append({"path": path, "title": driver.title, "body": body,
                            "screenshot": shot, "url": driver.current_url})
    finally:
        driver.quit()
    sys.stdout.write("".join(toml_out.table(r, "results") for r in results))


if __name__ == "__main__":
    main()
