"""Headless Chromium (Debian's package, driven by Playwright) on Label Studio pages: log in with a
requests session, hand its cookies to the browser, open a task, screenshot it."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import requests

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def login(url: str, email: str, password: str) -> requests.Session:
    """A logged-in session (Django form login with its CSRF token)."""
    s = requests.Session()
    page = s.get(f"{url}/user/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if token is None:
        raise RuntimeError("Label Studio login page has no CSRF token")
    r = s.post(f"{url}/user/login/", data={"csrfmiddlewaretoken": token.group(1), "email": email,
                                           "password": password}, headers={"Referer": f"{url}/user/login/"},
               timeout=30)
    if "sessionid" not in s.cookies:
        raise RuntimeError(f"Label Studio refused the login (HTTP {r.status_code})")
    return s


def screenshot_task(url: str, email: str, password: str, project_id: int, task_id: int, out: Path,
                    wait_text: str | None = None, timeout_ms: int = 90_000) -> str:
    """Open a task's labeling page and save a PNG; returns the page's visible text (to check what it shows)."""
    from playwright.sync_api import sync_playwright

    session = login(url, email, password)
    host = urlparse(url).hostname
    cookies = [{"name": c.name, "value": c.value, "domain": host, "path": "/"} for c in session.cookies]
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 900})
            ctx.add_cookies(cookies)
            page = ctx.new_page()
            page.goto(f"{url}/projects/{project_id}/data?tab=0&task={task_id}", timeout=timeout_ms)
            page.wait_for_selector("canvas, .lsf-main-view, [class*='main-view']", timeout=timeout_ms)
            if wait_text:
                page.get_by_text(wait_text).first.wait_for(timeout=timeout_ms)
            page.wait_for_timeout(1500)  # let the image and regions paint
            page.screenshot(path=str(out))
            return page.inner_text("body")
        finally:
            browser.close()
