"""The UI in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright).

Never skipped: without a working Chromium this test fails, so CI must install it
(`apt-get install -y chromium`; `playwright install` is not used).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from deepshield.engine import Engine
from server.settings import Settings
from bench.copies import Sharing
from tests.conftest import REPO
from tests.live_server import build_app, running

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXAMPLE = REPO / "examples" / "synthetic-portrait.png"
SCREENSHOTS = REPO / "test-output" / "browser"  # git-ignored; kept for a look after the run
RESULT_TIMEOUT_MS = 180_000
RESULT_IMAGES = ["#protected-image", "#deepfake-original", "#deepfake-protected", "#perturbation-image"]


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def app_url() -> Iterator[str]:
    engine = Engine(device="cpu")
    with running(build_app(engine, Settings(log_level="WARNING"))) as url:
        yield url


def wait_for_image(page: Page, selector: str) -> None:
    """The component shows a decoded, non-empty image."""
    image = page.locator(f"{selector} img").first
    expect(image).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function(
        "el => el.complete && el.naturalWidth > 0 && el.naturalHeight > 0", arg=image.element_handle(), timeout=RESULT_TIMEOUT_MS
    )


def set_slider(page: Page, selector: str, value: int) -> None:
    """Type into a slider's number box; retried, as the box can still be re-rendering when it
    first appears (right after its accordion opens)."""
    box = page.locator(f"{selector} input[type=number]")
    slider = page.locator(f"{selector} input[type=range]")
    expect(box).to_be_editable()
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        try:
            expect(slider).to_have_value(str(value), timeout=1_000)
            return
        except AssertionError:
            continue
    expect(slider).to_have_value(str(value))


def fail_on_error_toast(page: Page) -> None:
    toast = page.locator(".toast-body.error, [data-testid='toast-body']").filter(has_text=re.compile("error", re.I))
    if toast.count():
        pytest.fail(f"the UI showed an error: {toast.first.inner_text()}")


def open_app(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(url)
    expect(page.locator("#protect-button")).to_be_visible(timeout=60_000)
    return page


def test_protect_a_photo_in_the_browser(browser, app_url, tmp_path):
    page = open_app(browser, app_url)

    page.locator("#original-image input[type=file]").set_input_files(str(EXAMPLE))
    expect(page.locator("#original-image img").first).to_be_visible(timeout=30_000)
    # issue 16: the faces found are drawn on the original, one ticked checkbox each
    wait_for_image(page, "#faces-found")
    expect(page.locator("#faces-choice input[type=checkbox]")).to_have_count(1, timeout=30_000)
    expect(page.locator("#faces-choice input[type=checkbox]").first).to_be_checked()
    expect(page.locator("#faces-choice")).to_contain_text("face 0:")

    page.locator("#protect-model input").click()
    page.get_by_role("option", name=re.compile(r"^cyclegan-vintage \(")).click()
    expect(page.locator("#protect-model input")).to_have_value(re.compile(r"^cyclegan-vintage"))

    page.locator("#protect-check-robustness input").check()
    page.locator("#protect-advanced").get_by_text("Advanced").click()
    set_slider(page, "#protect-iterations", 2)

    page.locator("#protect-button").click()
    for selector in RESULT_IMAGES:
        fail_on_error_toast(page)
        wait_for_image(page, selector)
    table = page.locator("#metrics-table")
    expect(table).to_contain_text("disruption mse", timeout=RESULT_TIMEOUT_MS)
    expect(table).to_contain_text("PSNR (dB)")
    expect(page.locator("#protected-download a").first).to_have_attribute("href", re.compile(r"/synthetic-portrait\.protected\.png$"), timeout=30_000)
    fail_on_error_toast(page)
    assert re.search(r"iterations / step size\s+2 / 0\.0100", table.inner_text())
    for label in ("JPEG 90", "JPEG 75", "JPEG 50", "resize to 1/2 and back", "Gaussian blur 1 px", "crop shifted 4 px"):
        assert re.search(rf"after {re.escape(label)}: mse\s+0\.\d{{4}} \((NOT )?disrupted\)", table.inner_text()), label
    assert re.search(r"8 unseen framings: share disrupted\s+\d+%", table.inner_text())  # the default mode is framing
    assert re.search(r"\.\.\. after a colour correction of the deepfake\s+\d+% \(mean mse 0\.\d{4}\)", table.inner_text())
    assert re.search(r"share of the photo perturbed\s+(0\.9\d\d|1\.000)", table.inner_text())  # the whole photo, not a square
    grid = page.locator("#framings-gallery img")
    expect(grid).to_have_count(4, timeout=30_000)
    for index in range(4):  # each framing's pair of deepfakes, side by side, decoded by the browser
        expect(grid.nth(index)).to_have_js_property("complete", True)
        assert grid.nth(index).evaluate("img => img.naturalWidth") > 2 * grid.nth(index).evaluate("img => img.naturalHeight")

    screenshot = tmp_path / "protect-tab.png"
    page.screenshot(path=str(screenshot), full_page=True)
    with Image.open(screenshot) as image:
        image.verify()
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.width >= 1440 and image.height >= 1000
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, SCREENSHOTS / screenshot.name)

    page.get_by_role("tab", name="Models").click()
    models = page.locator("#models-table")
    expect(models).to_contain_text("cyclegan-vintage", timeout=30_000)
    expect(models).to_contain_text("loaded")
    page.screenshot(path=str(SCREENSHOTS / "models-tab.png"), full_page=True)


def test_the_example_fills_the_photo_and_the_offline_model(browser, app_url):
    page = open_app(browser, app_url)
    page.locator("#protect-examples tbody tr").first.click()
    wait_for_image(page, "#original-image")
    expect(page.locator("#protect-model input")).to_have_value(re.compile(r"^cyclegan-vintage \("))
    expect(page.locator("#protect-targets")).to_be_hidden()
    page.locator("#protect-model input").click()
    page.get_by_role("option", name=re.compile(r"^stargan-celeba-128 \(")).click()
    expect(page.locator("#protect-targets")).to_be_visible()
    expect(page.locator("#protect-targets")).to_contain_text("Blond_Hair")


def test_verify_a_shared_copy_in_the_browser(browser, app_url, tmp_path):
    shared = tmp_path / "from-the-site.jpg"
    with Image.open(EXAMPLE) as image:  # never protected; cropped, turned, halved, recompressed
        shared.write_bytes(Sharing(box=(32, 48, 352, 432), rotation=90, scale=0.5, quality=70).apply(image))
    page = open_app(browser, app_url)
    page.get_by_role("tab", name="Verify").click()
    page.locator("#verify-original input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#verify-shared input[type=file]").set_input_files(str(shared))
    expect(page.locator("#verify-shared img").first).to_be_visible(timeout=30_000)
    page.locator("#verify-button").click()
    verdict = page.locator("#verify-verdict")
    expect(verdict).to_contain_text("Protection lost against: cyclegan-vintage", timeout=RESULT_TIMEOUT_MS)
    expect(verdict).to_contain_text("JPEG quality about 70")
    expect(verdict).to_contain_text("shows (32, 48)-(352, 432) of the original at scale 0.5, turned 90 deg")
    expect(page.locator("#verify-located img")).to_be_visible(timeout=30_000)
    fail_on_error_toast(page)
    expect(page.locator("#verify-gallery img")).to_have_count(2, timeout=30_000)
    expect(page.locator("#verify-table")).to_contain_text("cyclegan-vintage")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "verify-tab.png"), full_page=True)


def test_a_batch_job_in_the_browser(browser, app_url, tmp_path):
    broken = tmp_path / "scan.png"
    broken.write_bytes(b"not a photo")
    second = tmp_path / "portrait-small.jpg"
    with Image.open(EXAMPLE) as image:
        image.convert("RGB").resize((image.width // 2, image.height // 2)).save(second, quality=90)
    page = open_app(browser, app_url)
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-files input[type=file]").set_input_files([str(EXAMPLE), str(second), str(broken)])
    expect(page.locator("#batch-files")).to_contain_text("11.0 B", timeout=30_000)  # all three uploaded (the last, scan.png, is 11 bytes)
    page.locator("#batch-advanced").get_by_text("Advanced").click()
    set_slider(page, "#batch-iterations", 2)
    page.locator("#batch-button").click()
    expect(page.locator("#batch-gallery img")).to_have_count(2, timeout=RESULT_TIMEOUT_MS)
    table = page.locator("#batch-table")
    expect(table).to_contain_text("synthetic-portrait.png", timeout=30_000)
    expect(table).to_contain_text("portrait-small.png")
    expect(table).to_contain_text("error: scan.png: not a recognised image format")  # the bad photo, by name; the others done
    expect(page.locator("#batch-zip a").first).to_have_attribute("href", re.compile(r"deepshield-protected\.zip$"), timeout=30_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "batch-tab.png"), full_page=True)
