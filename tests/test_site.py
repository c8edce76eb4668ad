"""The built documentation site, loaded page by page in headless Chromium.

The site is served on 127.0.0.1 from a thread; any request that leaves 127.0.0.1 is
aborted and counted as a failure (the site must not need the internet). Every page must
load without console errors, failed requests, broken internal links or broken images;
the landing page must show its three benchmark charts. A full-page screenshot of the
landing page is written to ``build/site-screenshots/landing.png`` for a person to look at.
"""
from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "build" / "site-screenshots" / "landing.png"
LANDING_CHARTS = ("#chart-peers", "#chart-1m", "#chart-text")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("the browser test needs Debian's chromium package (apt-get install chromium); .ci/run installs it")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site_url(built_site: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(built_site)))
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = _chromium()
    with playwright_sync.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield launched
        finally:
            launched.close()


def _pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if p.name != "404.html")


def _page_url(base: str, relative: str) -> str:
    if relative.endswith("index.html"):
        relative = relative[: -len("index.html")]
    return urljoin(base, relative)


class _PageProblems:
    """What went wrong while one page loaded: console errors, page errors, failed or refused requests."""

    def __init__(self, page: object, base: str) -> None:
        self.items: list[str] = []
        self.base_host = urlsplit(base).netloc
        page.on("console", lambda msg: self.items.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
        page.on("pageerror", lambda err: self.items.append(f"page error: {err}"))
        page.on("requestfailed", lambda req: self.items.append(f"request failed: {req.url} ({req.failure})"))
        page.on("response", lambda resp: self.items.append(f"HTTP {resp.status}: {resp.url}") if resp.status >= 400 else None)
        page.route("**/*", self._only_local)

    def _only_local(self, route: object) -> None:
        url = route.request.url
        if urlsplit(url).netloc == self.base_host or url.startswith("data:"):
            route.continue_()
        else:
            self.items.append(f"left 127.0.0.1: {url}")
            route.abort()


def _internal_links(page: object, base: str) -> set[str]:
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
    host = urlsplit(base).netloc
    links = set()
    for href in hrefs:
        parts = urlsplit(href)
        if parts.scheme in ("http", "https") and parts.netloc == host:
            links.add(urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, "")))
    return links


def _broken_images(page: object) -> list[str]:
    return page.eval_on_selector_all(
        "img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.currentSrc || e.src)")


def test_every_page_loads_cleanly_with_working_links_and_images(built_site: Path, site_url: str, browser) -> None:
    pages = _pages(built_site)
    assert "index.html" in pages and len(pages) >= 10, pages
    context = browser.new_context()
    checked_links: dict[str, int] = {}
    failures: list[str] = []
    try:
        for relative in pages:
            page = context.new_page()
            problems = _PageProblems(page, site_url)
            url = _page_url(site_url, relative)
            response = page.goto(url, wait_until="load", timeout=30_000)
            if response is None or response.status != 200:
                failures.append(f"{relative}: status {response.status if response else 'none'}")
            failures += [f"{relative}: broken image {src}" for src in _broken_images(page)]
            for link in sorted(_internal_links(page, site_url) - checked_links.keys()):
                checked_links[link] = context.request.get(link, timeout=30_000).status
            failures += [f"{relative}: link {link} -> {checked_links[link]}"
                         for link in sorted(_internal_links(page, site_url)) if checked_links[link] != 200]
            failures += [f"{relative}: {item}" for item in problems.items]
            page.close()
    finally:
        context.close()
    assert not failures, "\n".join(failures)
    assert len(checked_links) >= len(pages), "the pages link to each other"


def test_landing_page_shows_the_charts_and_is_screenshotted(site_url: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = _PageProblems(page, site_url)
    try:
        page.goto(site_url, wait_until="load", timeout=30_000)
        assert "omendb" in page.title().lower()
        for selector in LANDING_CHARTS:
            chart = page.locator(selector)
            assert chart.count() == 1, f"the landing page has no {selector}"
            loaded = chart.evaluate("e => e.complete && e.naturalWidth > 0")
            box = chart.bounding_box()
            assert loaded and box and box["width"] > 200 and box["height"] > 100, (selector, loaded, box)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.unlink(missing_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        page.close()
    assert SCREENSHOT.stat().st_size > 20_000, "the landing screenshot is suspiciously small"
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not problems.items, "\n".join(problems.items)
