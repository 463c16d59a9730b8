"""The web console (`/ui`) in headless Chromium, through WebDriver (Debian's chromium and
chromium-driver, installed by scripts/setup.sh): the job list, a running job's progress
rising, a job's failed records paged, and a stop by keyboard on the Stop button until the job
shows Stopped. Screenshots go to `test-artifacts/console/` (gitignored)."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import FAIL_MARKER, REPO, SLOW_MODEL, converse_line, create_job, job_id_of, records, unique, wait_for_status

ARTIFACTS = REPO / "test-artifacts" / "console"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are missing: scripts/setup.sh installs them (BATCHD_SETUP_BROWSER=1)")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    # Both paths given: Selenium Manager never looks for (or downloads) a browser or driver.
    d = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    d.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()


def shot(d, name: str) -> None:
    d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def replaced_mid_read(e: WebDriverException) -> bool:
    """The page refreshed itself between finding an element and reading it. ChromeDriver
    says so as a stale reference, or (when the refresh lands inside the read) as this
    inspector error."""
    return isinstance(e, (NoSuchElementException, StaleElementReferenceException)) or (
        "does not belong to the document" in (e.msg or "")
    )


def reading(what, timeout: float = 10):
    """`what()`, again while the page refreshing itself (every second or two while a job
    runs) replaces what it was reading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return what()
        except WebDriverException as e:
            if not replaced_mid_read(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def text_of(d, css: str) -> str | None:
    """The text of `css` on the page now; None while the page reloads."""
    try:
        return d.find_element(By.CSS_SELECTOR, css).text
    except WebDriverException as e:
        if replaced_mid_read(e):
            return None
        raise


def wait_text(d, css: str, pred, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = text_of(d, css)
        if t is not None and pred(t):
            return t
        time.sleep(0.1)
    raise AssertionError(f"{css}: last text {text_of(d, css)!r}")


def status_of(d) -> str | None:
    try:
        return d.find_element(By.CSS_SELECTOR, "h1 .status").get_attribute("data-status")
    except WebDriverException as e:
        if replaced_mid_read(e):
            return None
        raise


def test_the_console_shows_progress_failures_and_stops_a_job(start_server, browser, bucket_name):
    d = browser
    server = start_server("local")
    b = server.buckets
    b.create(bucket_name)
    out = f"s3://{bucket_name}/out/"
    # A job with failed records (25: two pages), a slow one to watch, a slow one to stop.
    lines = [converse_line(f"rec-{i:03d}", f"{FAIL_MARKER} {i}" if i % 4 == 0 else f"hello {i}") for i in range(100)]
    failing = create_job(server.bedrock, unique("with-failures"), b.put(bucket_name, "f/in.jsonl", "\n".join(lines) + "\n"), out)
    body, _ = records(60)
    watched = create_job(server.bedrock, unique("watched"), b.put(bucket_name, "w/in.jsonl", body), out, model=SLOW_MODEL)
    body, _ = records(400)
    to_stop = create_job(server.bedrock, unique("to-stop"), b.put(bucket_name, "s/in.jsonl", body), out, model=SLOW_MODEL)
    wait_for_status(server.bedrock, failing, {"Completed"})

    # The list: every job, a progress bar each.
    d.get(f"{server.url}/ui")
    listed = reading(lambda: {r.get_attribute("data-job-id") for r in d.find_elements(By.CSS_SELECTOR, "tbody tr[data-job-id]")})
    assert listed == {job_id_of(a) for a in (failing, watched, to_stop)}
    assert len(d.find_elements(By.CSS_SELECTOR, "tbody [role=progressbar]")) == 3
    shot(d, "1-job-list")
    # Filters: Completed jobs only.
    d.get(f"{server.url}/ui?status=Completed")
    assert [r.get_attribute("data-job-id") for r in d.find_elements(By.CSS_SELECTOR, "tbody tr[data-job-id]")] == [job_id_of(failing)]
    # The keyboard's first stop is the skip link (on this page, which nothing running
    # refreshes under the key press).
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert d.switch_to.active_element.text == "Skip to content"

    # A running job's page: its processed count rises as the page refreshes itself.
    d.get(f"{server.url}/ui/jobs/{job_id_of(watched)}")
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set(seen)) < 4:
        t = text_of(d, "#processed")
        if t is not None and status_of(d) == "InProgress" and (not seen or int(t) != seen[-1]):
            seen.append(int(t))
        time.sleep(0.2)
    assert len(set(seen)) >= 4 and seen == sorted(seen), seen
    wait_text(d, "#rate", lambda t: float(t) > 0)
    shot(d, "2-running-job")

    # The failed records, paged: 20, then the other 5.
    d.get(f"{server.url}/ui/jobs/{job_id_of(failing)}")
    assert status_of(d) == "Completed"
    cells = d.find_elements(By.CSS_SELECTOR, "#failed-table tbody tr td:nth-child(3)")
    assert len(cells) == 20 and {c.text for c in cells} == {"400"}
    ids = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#failed-table tbody tr td:first-child")]
    assert ids[:3] == ["rec-000", "rec-004", "rec-008"], ids
    assert d.find_element(By.CSS_SELECTOR, "#failed-table td.msg").text
    assert d.find_element(By.ID, "analysis").text.startswith("{")
    shot(d, "3-failed-records")
    d.find_element(By.ID, "next-failed").click()
    rows = d.find_elements(By.CSS_SELECTOR, "#failed-table tbody tr")
    assert len(rows) == 5
    shot(d, "4-failed-records-page-2")

    # Stop by keyboard: focus the button, press Enter, watch Stopping → Stopped.
    wait_for_status(server.bedrock, watched, {"Completed"}, timeout=60)
    wait_for_status(server.bedrock, to_stop, {"InProgress"}, timeout=60)
    d.get(f"{server.url}/ui/jobs/{job_id_of(to_stop)}")
    wait_text(d, "#processed", lambda t: int(t) > 0)
    reading(lambda: d.find_element(By.ID, "stop").send_keys(Keys.ENTER))
    deadline = time.monotonic() + 60
    while status_of(d) != "Stopped":
        assert time.monotonic() < deadline, status_of(d)
        time.sleep(0.2)
    assert not d.find_elements(By.ID, "stop")
    shot(d, "5-stopped-job")
    job = server.bedrock.get_model_invocation_job(jobIdentifier=to_stop)
    assert job["status"] == "Stopped" and 0 < job["processedRecordCount"] < 400
    assert os.path.getsize(ARTIFACTS / "5-stopped-job.png") > 10_000
