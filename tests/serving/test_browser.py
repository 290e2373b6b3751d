"""The web page in headless Chromium: search a title, see similar movies, like two and get
recommendations, look up a user. Saves a screenshot. Skips when Chromium is absent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server_url(bundle_path: Path) -> Iterator[str]:
    """The real app under uvicorn in a thread on a free 127.0.0.1 port."""
    import uvicorn

    from serving.app import create_app
    from serving.settings import Settings

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(model=bundle_path)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server not ready"
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(10)


def test_search_similar_like_and_recommend(server_url: str, bundle_path: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from recommender import HybridRecommender

    model = HybridRecommender.load(bundle_path)
    title = str(model.items["title"].iat[0])
    word = title.split()[-1]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server_url + "/")
            expect(page.locator("#model-version")).to_have_text(model.model_version)

            page.fill("#search-input", word)
            page.click("#search-form button[type=submit]")
            hits = page.locator("#search-results li .title")
            expect(hits.first).to_be_visible()
            assert all(word.lower() in t.lower() for t in hits.all_inner_texts())

            hits.first.click()  # similar movies of the first hit
            expect(page.locator("#similar-results li .title")).to_have_count(10)
            expect(page.locator("#similar-title")).to_contain_text("like")

            page.locator("#search-results li button").first.click()  # + like
            page.locator("#similar-results li button").first.click()
            expect(page.locator("#liked-list li")).to_have_count(2)
            page.click("#liked-go")
            expect(page.locator("#liked-results li .title")).to_have_count(10)
            expect(page.locator("#liked-results li .because").first).to_be_visible()

            page.fill("#user-input", "1")
            page.click("#user-form button[type=submit]")
            expect(page.locator("#user-results li .title")).to_have_count(10)

            page.fill("#user-input", "99999999")
            page.click("#user-form button[type=submit]")
            expect(page.locator("#error")).to_contain_text("unknown user_id")
            page.fill("#user-input", "no-such-user")  # text where ids are integers: said so
            page.click("#user-form button[type=submit]")
            expect(page.locator("#error")).to_contain_text("integers")
            page.fill("#user-input", "1")
            page.click("#user-form button[type=submit]")
            expect(page.locator("#user-results li .title")).to_have_count(10)

            shot = tmp_path / "movierec-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert errors == []
        finally:
            browser.close()
