"""The dashboard end to end in headless Chromium (Selenium with the system chromium and
chromedriver), against a real database with jobs a real worker ran: the page loads, a
filter narrows the list, a failed job shows its error, each action changes the database
(checked in SQL and in the page's DOM) and a cross-site POST is refused. Screenshots go
to PGWORKER_TEST_ARTIFACTS (default tests/artifacts/)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_dashboard import FUTURE, build_app, job_row

from pgworker import App
from pgworker.dashboard import StatsPlugin, stats_schema_name

pytest.importorskip("flask", reason="the dashboard extra (flask) is not installed")
pytest.importorskip("selenium", reason="selenium is not installed")

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait
from werkzeug.serving import make_server

from pgworker.dashboard.web import create_dashboard

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(
    os.environ.get("PGWORKER_TEST_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts"
)
Db = psycopg.Connection[tuple[Any, ...]]


def _browser_missing() -> str | None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    return (
        f"no {' or '.join(missing)} (apt-get install chromium chromium-driver)" if missing else None
    )


@pytest.fixture
def driver() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1100")
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def served(
    make_app: Callable[..., App], database_url: str, schema: str
) -> Iterator[tuple[App, str]]:
    """An app whose worker completed 2 jobs and failed 1 for good (with the stats plugin),
    and its dashboard served on a free loopback port."""
    app = build_app(make_app, plugins=[StatsPlugin()])
    with app:
        app.migrate()
        for n in range(2):
            app.defer("ok", {"n": n})
        app.defer("boom", {"n": 7})
        app.run_once(install_signal_handlers=False)
        server = make_server("127.0.0.1", 0, create_dashboard(app), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield app, f"http://127.0.0.1:{server.port}"
        finally:
            server.shutdown()
            thread.join(timeout=10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{stats_schema_name(schema)}" cascade')


@pytest.fixture
def cross_site_page() -> Iterator[Callable[[str], str]]:
    """A page on another origin that posts a form to the dashboard as it loads."""
    target: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (
                f'<form id="f" method="post" action="{target["url"]}">'
                '<input name="job_key" value="victim"><input name="csrf_token" value="x"></form>'
                "<script>document.getElementById('f').submit()</script>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), Handler
    )  # a browser may hold an idle socket open
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def page(url: str) -> str:
        target["url"] = url
        return f"http://localhost:{server.server_port}/"

    yield page
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


def wait(driver: Any, check: Callable[[Any], Any], timeout: float = 15) -> Any:
    """Wait for ``check``; the page's fragments refresh meanwhile, so an element found
    may be replaced before it is read (then ``check`` runs again)."""
    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    ).until(check)


def text_of(driver: Any, css: str) -> str:
    """The text of the first element matching ``css`` ("" if none), read in one step."""
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''"
    return str(driver.execute_script(script, css)).strip()


def attribute_of_all(driver: Any, css: str, name: str) -> list[str]:
    """One attribute of every element matching ``css``, read in one step."""
    script = (
        "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]))"
    )
    return list(driver.execute_script(script, css, name))


def click(driver: Any, css: str) -> None:
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True)


def confirm_and_wait_for(driver: Any, button: str, message: str) -> None:
    """Click ``button``, accept the confirmation, wait for the answer ``message``."""
    click(driver, button)
    wait(driver, expected_conditions.alert_is_present()).accept()
    wait(driver, lambda d: message in text_of(d, "#flash-message"))


def test_dashboard_in_headless_chromium(
    driver: Any, served: tuple[App, str], db: Db, schema: str, cross_site_page: Callable[[str], str]
) -> None:
    app, base = served
    failed = app.admin.jobs(state="permanently_failed")[0].job
    # The page loads, with real counts and the chart of the worker's minute (or two,
    # when the jobs ran across a minute's turn).
    driver.get(base + "/")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#counts-by-task tr[data-task='boom']"))
    completed = attribute_of_all(driver, "#chart g.minute", "data-completed")
    failed_attempts = attribute_of_all(driver, "#chart g.minute", "data-failed")
    assert 1 <= len(completed) <= 2
    assert (sum(map(int, completed)), sum(map(int, failed_attempts))) == (2, 1)
    shot(driver, "01-loaded")

    # A filter narrows the list, without reloading the page.
    scheduled = [app.defer("ok", {"n": n}, run_at=FUTURE).id for n in range(3)]
    driver.execute_script("document.body.dataset.marker = 'same-page'")
    wait(driver, lambda d: len(attribute_of_all(d, "tr.job", "data-job-id")) == 4)
    Select(driver.find_element(By.ID, "filter-state")).select_by_value("permanently_failed")
    wait(
        driver,
        lambda d: (
            [r.get_attribute("data-job-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.job")]
            == [str(failed.id)]
        ),
    )
    assert driver.execute_script("return document.body.dataset.marker") == "same-page"
    shot(driver, "02-filtered")

    # The failed job shows its error.
    click(driver, f"tr.job[data-job-id='{failed.id}'] a")
    wait(driver, lambda d: "ValueError: kaput 7" in text_of(d, "#job-last-error"))
    assert '"n": 7' in text_of(driver, "#job-payload")
    shot(driver, "03-failed-job")

    # Run now: the permanently failed job gets its attempts back and is due now.
    confirm_and_wait_for(driver, "#action-run-now", "will run now")
    wait(driver, lambda d: text_of(d, "#job-state") == "waiting")
    row = job_row(db, schema, failed.id)
    assert row is not None
    assert (row["attempts"], row["run_at"] <= datetime.now(UTC)) == (0, True)
    shot(driver, "04-run-now")

    # Reschedule, then permanently fail, then cancel one scheduled job.
    job_id = scheduled[0]
    driver.get(f"{base}/jobs/{job_id}")
    driver.find_element(By.ID, "reschedule-at").send_keys("+3h")
    confirm_and_wait_for(driver, "#action-reschedule", "rescheduled")
    row = job_row(db, schema, job_id)
    assert row is not None
    assert row["run_at"] < datetime.now(UTC) + timedelta(hours=3, minutes=1)
    assert row["run_at"] > datetime.now(UTC) + timedelta(hours=2, minutes=59)
    expected = row["run_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    wait(driver, lambda d: text_of(d, "#job-run-at").startswith(expected))
    shot(driver, "05-rescheduled")

    driver.find_element(By.ID, "fail-reason").send_keys("not wanted any more")
    confirm_and_wait_for(driver, "#action-fail", "permanently failed")
    wait(driver, lambda d: text_of(d, "#job-state") == "permanently_failed")
    assert text_of(driver, "#job-last-error") == "not wanted any more"
    row = job_row(db, schema, job_id)
    assert row is not None
    assert (row["attempts"], row["last_error"]) == (row["max_attempts"], "not wanted any more")
    shot(driver, "06-failed")

    confirm_and_wait_for(driver, "#action-cancel", "cancelled and removed")
    wait(driver, lambda d: text_of(d, "#job-gone"))
    assert job_row(db, schema, job_id) is None
    shot(driver, "07-cancelled")

    # Remove by key, and unlock a dead worker's job, from the main page.
    keyed = app.defer("ok", {"n": 9}, job_key="by-key", run_at=FUTURE)
    held = scheduled[1]
    db.execute(
        f"update \"{schema}\"._private_jobs set locked_by = 'dead-worker', locked_at = now() "
        "where id = %s",
        (held,),
    )
    driver.get(base + "/")
    assert str(keyed.id) in attribute_of_all(driver, "tr.job", "data-job-id")
    driver.find_element(By.ID, "remove-key-input").send_keys("by-key")
    confirm_and_wait_for(driver, "#remove-key-button", f"Removed job {keyed.id}")
    wait(
        driver, lambda d: not d.find_elements(By.CSS_SELECTOR, f"tr.job[data-job-id='{keyed.id}']")
    )
    assert job_row(db, schema, keyed.id) is None
    shot(driver, "08-removed-by-key")

    dead = "#workers tr[data-worker='dead-worker']"
    assert text_of(driver, f"{dead} .jobs-held") == "1"
    confirm_and_wait_for(driver, f"{dead} button.unlock", "Unlocked 1 job(s) of worker dead-worker")
    wait(driver, lambda d: not attribute_of_all(d, dead, "data-worker"))
    wait(
        driver, lambda d: text_of(d, f"tr.job[data-job-id='{held}'] td:nth-child(4)") == "scheduled"
    )
    row = job_row(db, schema, held)
    assert row is not None
    assert row["locked_by"] is None
    shot(driver, "09-unlocked")

    # A form on another origin posting to the dashboard is refused; nothing changes.
    victim = app.defer("ok", {"n": 10}, job_key="victim", run_at=FUTURE)
    driver.get(cross_site_page(base + "/actions/remove-by-key"))
    wait(driver, lambda d: "cross-site request refused" in text_of(d, "body"))
    assert job_row(db, schema, victim.id) is not None
    shot(driver, "10-cross-site-refused")
