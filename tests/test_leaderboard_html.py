"""The HTML leaderboard (harness.records.html): one self-contained page per benchmark, every record string escaped,
and, in a real headless chromium driven by selenium, every row present and a header click sorting its column (best
first, again: reversed). Without chromium the browser test skips, except under CI (`CI` set), where it fails."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from harness.records.html import columns, render_html
from harness.records.leaderboard import build_leaderboard
from harness.records.leaderboard_files import write_leaderboards
from tests.test_exports import record

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
EVIL = "<script>alert(1)</script>"
# label -> AUROC of its first set, two seeds each; the averages are all distinct
AUROCS = {"alpha": 0.71, "bravo": 0.93, "charlie": 0.62, "delta": 0.88, EVIL: 0.80}


def toy_records():
    return [record(label, seed, auroc + 0.004 * seed, figures=[f"records/toy/x/seed{seed}_scores.png"])
            for label, auroc in AUROCS.items() for seed in (0, 1)]


def test_record_strings_are_escaped_and_the_page_needs_no_network():
    page = render_html(build_leaderboard(toy_records(), "toy"))
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own sorting script
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page) and "<link" not in page
    assert 'href="../records/toy/x/seed0_scores.png"' in page  # figures: linked by relative path, not embedded
    assert "near-OOD" in page and "far-OOD" in page and "Near-OOD" in page


def test_the_html_is_written_next_to_the_markdown(tmp_path):
    for r in toy_records()[:4]:
        r.save(tmp_path)
    written = write_leaderboards(tmp_path)
    assert {fmt: path.name for fmt, path in written["toy"].items()} == {"md": "toy.md", "html": "toy.html"}
    html = written["toy"]["html"].read_text()
    assert "python -m harness leaderboard --out" in html and "--format html" in html


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(path) for path in (CHROMIUM, DRIVER) if not path.is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = f"needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: the HTML leaderboard must be tested in a browser; {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)  # a given driver: nothing downloaded
    yield driver
    driver.quit()


def test_a_browser_shows_every_row_and_a_header_click_sorts_the_column(browser, tmp_path):
    from selenium.webdriver.common.by import By

    records = toy_records()
    board = build_leaderboard(records, "toy")
    page = tmp_path / "leaderboards" / "toy.html"
    page.parent.mkdir()
    page.write_text(render_html(board))
    browser.get(page.as_uri())

    def labels():
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('table.board tbody tr'), r => r.cells[0].textContent)")

    assert labels() == sorted(AUROCS)  # every row, in the summary's order
    assert browser.execute_script("return document.scripts.length") == 1
    (_, part), = board.parts()
    index = {(c.set, c.title): i for i, c in enumerate(columns(board, part))}
    average = {label: np.mean([np.mean([m["auroc"] for m in r.metrics.values()]) for r in records if r.label == label])
               for label in AUROCS}
    best_first = sorted(AUROCS, key=lambda label: -average[label])

    def click(column):
        browser.find_element(By.CSS_SELECTOR, f'table.board th[data-col="{index[column]}"]').click()

    click(("Average", "AUROC ↑"))
    assert labels() == best_first
    click(("Average", "AUROC ↑"))
    assert labels() == best_first[::-1]
    click(("letters", "FPR95 ↓"))  # lower is better: the highest AUROC (lowest FPR) first
    assert labels() == best_first
    click(("", "Method"))
    assert labels() == sorted(AUROCS)
    click(("", "Method"))
    assert labels() == sorted(AUROCS, reverse=True)
    cell = browser.execute_script("return document.querySelector('table.board tbody tr td:nth-child(3)').title")
    assert re.fullmatch(r"seed 0: [\d.]+; seed 1: [\d.]+", cell)  # per-seed values on hover
