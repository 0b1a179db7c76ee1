"""keyshift report --html: rendered from a real database, opened in headless Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from tests.legacy import make_legacy_db
from toolkit import backfill, phases
from toolkit.resources import checks_dir

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium from the system packages (apt-get install chromium chromium-driver)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("Chromium and chromedriver are needed: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)  # --no-sandbox: CI runs as root, where the sandbox cannot start
    options.add_argument("--window-size=1280,2400")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def insert_run(conn: psycopg.Connection[Any], pair: str, buckets: list[tuple[str, int, int, int]]) -> None:
    """A run as the reconcile engine records it: per-bucket counts in details."""
    src = sum(b[1] for b in buckets)
    tgt = sum(b[2] for b in buckets)
    matched = sum(b[3] for b in buckets)
    bad = sum(1 for b in buckets if not b[1] == b[2] == b[3])
    # The shape toolkit.reconcile records: counts and checksums per bucket, and whether they agree.
    details = {"buckets": [{"bucket": b[0], "source_rows": b[1], "target_rows": b[2], "source_checksum": "1",
                            "target_checksum": "1" if b[1] == b[2] == b[3] else "2",
                            "match": b[1] == b[2] == b[3]} for b in buckets]}  # fmt: skip
    conn.execute(
        "INSERT INTO keyshift.reconcile_runs (pair, source, target, mode, threshold, started_at, finished_at,"
        " duration_ms, rows_source, rows_target, rows_matched, buckets_total, buckets_mismatched, match_ratio,"
        " verdict, details) VALUES (%s, 'market.derived_data_bars', 'market.data_bars', 'strict', 1,"
        " now(), now(), 12, %s, %s, %s, %s, %s, %s::numeric / greatest(%s, %s), %s, %s)",
        (pair, src, tgt, matched, len(buckets), bad, matched, src, tgt, "pass" if bad == 0 else "fail",
         psycopg.types.json.Jsonb(details)),
    )  # fmt: skip


@pytest.fixture
def migrated_dsn(new_db: Callable[..., str]) -> str:
    """Legacy data backfilled (token 999 unmapped), a phase change, two pairs, a hostile reason."""
    dsn = make_legacy_db(new_db, bars_tokens=(101, 102, 999), minutes=120)
    for table in backfill.tables_in_dual(dsn):
        backfill.run(dsn, table)
    phases.change_phase(dsn, "market.subscriptions", "key_primary", "cutover rehearsal <ok>")
    with psycopg.connect(dsn, autocommit=True) as conn:
        insert_run(conn, "dxy_1m_bars", [("2026-01-01", 1440, 1440, 1440), ("2026-01-02", 1440, 1439, 1439)])
        insert_run(conn, "dxy_1m_bars", [("2026-01-01", 1440, 1440, 1440), ("2026-01-02", 1440, 1440, 1440)])
        insert_run(
            conn, "memberships", [("NIFTY", 50, 48, 48), ("NIFTYNEXT", 40, 40, 40), ("BANKNIFTY", 12, 12, 11)]
        )
        conn.execute("SELECT keyshift.dead_letter('memberships', 'INSERT', NULL, '{}', %s)", (HOSTILE,))
    return dsn


def test_report_opens_in_chromium_with_the_numbers(
    cli: Callable,  # type: ignore[type-arg]
    migrated_dsn: str,
    tmp_path: Path,
    browser: webdriver.Chrome,
) -> None:
    page = tmp_path / "report.html"
    out = cli("report", "--html", str(page), dsn=migrated_dsn)
    assert out.exit_code == 0, out.stderr
    assert "NOT READY" in out.stdout  # memberships failed its last run, letters are open
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")

    with psycopg.connect(migrated_dsn) as conn:
        updated = dict(
            conn.execute(
                "SELECT table_schema || '.' || table_name, rows_updated FROM keyshift.backfill_state"
            )
        )
        open_letters = conn.execute(
            "SELECT count(*) FROM keyshift.dead_letters WHERE resolved_at IS NULL"
        ).fetchone()
    assert open_letters is not None and open_letters[0] == 121  # 120 unmapped bars + the hostile one

    browser.get(page.as_uri())
    try:
        alert = browser.switch_to.alert
        pytest.fail(f"the page ran a script: alert {alert.text!r}")
    except NoAlertPresentException:
        pass
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    browser.save_screenshot(str(tmp_path / "report.png"))  # out of the repository, with the test's tmp
    assert (tmp_path / "report.png").stat().st_size > 10_000

    summary = browser.find_element(By.ID, "summary").text
    assert "NOT READY" in summary and "failing: memberships" in summary
    assert browser.find_element(By.ID, "open-letters").text == "121"

    rows = {
        r.find_elements(By.TAG_NAME, "td")[0].text: r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "#backfill tr")[1:]
    }
    assert updated["market.data_bars"] == 240
    for table, n in updated.items():
        assert f"{n:,}" in rows[table] and "done" in rows[table]

    phases_text = browser.find_element(By.ID, "phases").text
    assert "market.subscriptions: key_primary" in phases_text
    assert "dual key_primary" in phases_text and "cutover rehearsal <ok>" in phases_text

    recon = browser.find_element(By.ID, "reconcile").text
    assert "dxy_1m_bars: last run pass, match 100.00 %" in recon
    assert "memberships: last run fail, match 97.06 %" in recon  # 99 of 102
    assert "99.97 %" in recon  # the first dxy run: 2879 of 2880
    # Per-bucket chart of the last memberships run: 48 of 50 rows (red), all (green), a changed row (red).
    charts = browser.find_elements(By.CSS_SELECTOR, "#reconcile svg.chart")
    labels = [c.get_attribute("aria-label") for c in charts]
    assert "match per bucket, last run of memberships" in labels
    dxy_history = charts[labels.index("match ratio per run of dxy_1m_bars")]
    assert len(dxy_history.find_elements(By.TAG_NAME, "rect")) == 2
    bucket_chart = charts[labels.index("match per bucket, last run of memberships")]
    bars = bucket_chart.find_elements(By.TAG_NAME, "rect")
    assert [b.get_attribute("fill") for b in bars] == ["#c62828", "#2e7d32", "#c62828"]
    heights = [float(b.get_attribute("height") or 0) for b in bars]
    assert heights == pytest.approx([0.96 * 160, 160, 160])

    checks = {
        r.find_elements(By.TAG_NAME, "td")[0].text: r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "#preflight tr")[1:]
    }
    assert checks["unmapped_tokens"].startswith("unmapped_tokens error fail")  # token 999 of the bars
    assert len(checks) == len(list(Path(checks_dir()).glob("*.sql")))  # every shipped check ran
    assert "pre-flight: " in summary and "error(s)" in summary

    letters = browser.find_element(By.ID, "dead-letters").text
    assert HOSTILE in letters  # shown as text, not run or rendered as markup
    assert (
        "market.data_bars no instrument_key for instrument_token <n> of broker zerodha at <time> 120 120"
        in letters
    )


def test_report_bad_path_and_bare_database_exit_2(
    cli: Callable, empty_dsn: str, head_dsn: str, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    out = cli("report", "--html", str(tmp_path / "no" / "r.html"), dsn=head_dsn)
    assert out.exit_code == 2 and "does not exist" in out.stderr
    out = cli("report", "--html", str(tmp_path / "r.html"), dsn=empty_dsn)
    assert out.exit_code == 2 and "no keyshift control schema" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_ready_when_everything_passed(cli: Callable, head_dsn: str, tmp_path: Path) -> None:  # type: ignore[type-arg]
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        conn.execute("UPDATE keyshift.backfill_state SET status = 'done'")
        insert_run(conn, "dxy_1m_bars", [("2026-01-01", 10, 10, 10)])
    out = cli("report", "--html", str(tmp_path / "r.html"), "--json", dsn=head_dsn)
    assert out.exit_code == 0, out.stderr
    assert '"ready": true' in out.stdout
