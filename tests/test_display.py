"""`flaxner tag --format html` in a real browser (marker `browser`: headless Chromium from the Debian packages,
`apt-get install -y chromium`): the page loads with no console error, shows every entity with its score on hover
and the count per label; Chromium's screenshot of it is a PNG (docs/tagging.md shows one of a trained run's page).
The model card's samples.html (the same renderer) loads there too."""

from __future__ import annotations

import html
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flaxner.data.display import html_page, samples_page

CHROMIUM = os.environ.get("FLAXNER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set FLAXNER_CHROMIUM)")]

RECORDS = [
    {"line": 1, "id": "reuters-1", "text": "EU rejects German call to boycott British lamb . Peter Blackburn BRUSSELS",
     "entities": [{"text": "EU", "label": "ORG", "start": 0, "end": 2, "score": 0.97},
                  {"text": "German", "label": "MISC", "start": 11, "end": 17, "score": 0.88},
                  {"text": "British", "label": "MISC", "start": 34, "end": 41, "score": 0.91},
                  {"text": "Peter Blackburn", "label": "PER", "start": 49, "end": 64, "score": 0.99},
                  {"text": "BRUSSELS", "label": "LOC", "start": 65, "end": 73, "score": 0.95}]},
    {"line": 2, "id": 2, "error": "line 2: not JSON (Expecting value at column 1)"},
    {"line": 3, "id": "<script>alert(1)</script>", "text": "Ünïcödé & <b>tags</b> in Zürich 🗼",
     "entities": [{"text": "Zürich", "label": "LOC", "start": 25, "end": 31, "score": 0.5}]},
]


def _chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=timeout)


def _console_errors(stderr: str) -> list[str]:
    """Chromium's console messages and failed loads, from its log on stderr."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
            or "Failed to load resource" in line or "ERR_FILE_NOT_FOUND" in line]


def _page(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    html_page(iter(RECORDS), buf, "tiny-run")
    path = tmp_path / "page.html"
    path.write_bytes(buf.getvalue())
    return path


def test_the_page_loads_without_console_errors_and_shows_the_entities(tmp_path):
    page = _page(tmp_path)
    run = _chromium("--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    dom = run.stdout
    titles = re.findall(r'<mark [^>]*title="([^"]+)"', dom)
    assert titles == [f"{e['label']} {e['score']:.3f}" for r in RECORDS for e in r.get("entities", [])]
    shown = [html.unescape(m) for m in re.findall(r"<mark [^>]*title=[^>]*>([^<]*)</mark>", dom)]
    assert shown == [e["text"] for r in RECORDS for e in r.get("entities", [])]
    counts = dict(re.findall(r"<mark[^>]*>(\w+)</mark></td><td>(\d+)</td>", dom))
    assert counts == {"LOC": "2", "MISC": "2", "ORG": "1", "PER": "1"}
    assert "<script>" not in dom and "not JSON" in dom  # an id is text, never markup; an error is shown


def test_the_cards_samples_page_loads_without_console_errors_and_shows_gold_and_predicted(tmp_path):
    """samples.html, the model card's sample predictions as a page (flaxner.training.export), in the browser."""
    items = [{"index": 3, "errors": 1, "tokens": ["Peter", "Blackburn", "<b>in</b>", "Zürich"],
              "gold_tags": ["B-PER", "I-PER", "O", "B-LOC"], "pred_tags": ["B-PER", "I-PER", "O", "B-ORG"]}]
    page = tmp_path / "samples.html"
    page.write_text(samples_page(items, "tiny-run: sample predictions", "The first sentence."), encoding="utf-8")
    run = _chromium("--dump-dom", page.as_uri())
    assert run.returncode == 0 and _console_errors(run.stderr) == [], run.stderr[-2000:]
    marks = re.findall(r'<mark [^>]*title="(\w+)"[^>]*>([^<]*)</mark>', run.stdout)
    assert marks == [("PER", "Peter Blackburn"), ("LOC", "Zürich"), ("PER", "Peter Blackburn"), ("ORG", "Zürich")]
    assert "<b>in</b>" not in run.stdout and "&lt;b&gt;in&lt;/b&gt;" in run.stdout


def test_a_broken_page_is_caught(tmp_path):
    """The console check can fail: a page with a script error and a missing image reports both."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="missing.png"><script>nosuch();</script></body></html>')
    run = _chromium("--dump-dom", bad.as_uri())
    assert len(_console_errors(run.stderr)) >= 1


def test_screenshot(tmp_path):
    """A screenshot, as docs/tagging-html.png was taken (docs/tagging.md, "Output formats")."""
    page = _page(tmp_path)
    shot = tmp_path / "page.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=900,520", "--hide-scrollbars", page.as_uri())
    assert run.returncode == 0 and shot.stat().st_size > 5000, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
