"""notebooks/explore.ipynb runs headless, top to bottom, on the tiny config (so it never rots)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"
# Papermill-style: a cell after the `parameters` one. Fewer sentences and no test-split evaluation (the notebook does
# not show it) keep the run short; tiny.yaml's two epochs stay, so each curve has two points.
INJECTED = """RUN_DIR = None
CONFIG = "configs/tiny.yaml"
OVERRIDES = ["train.eval_test=false", "data.limit=32"]
LIMIT = 24"""


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def test_committed_notebook_is_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in _tags(c) for c in code) == 1


def _execute(tmp_path, injected: str, folder: Path):
    """The notebook run headless from `folder` (as Jupyter starts a kernel in the notebook's folder), with
    `injected` after its parameters cell; its own run goes to tempfile.mkdtemp() under tmp_path."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in _tags(c))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(folder)}})
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    client.execute(env=env)  # raises CellExecutionError on a failing cell
    return nb


@pytest.mark.slow
def test_notebook_runs_from_its_folder_on_a_run_with_its_own_labels(tmp_path, monkeypatch):
    """Started in notebooks/, on a run trained (from another folder, with a relative data.source) on labels that are
    not CoNLL's: every cell runs and shows the run's labels."""
    from flaxner.config import load_config
    from flaxner.training.train import train

    data = tmp_path / "own"
    data.mkdir()
    own = {"PER": "PERSON", "LOC": "PLACE", "ORG": "COMPANY", "MISC": "OTHER"}
    text = (ROOT / "tests" / "fixtures" / "snippet.txt").read_text()
    for old, new in own.items():
        text = text.replace(f"-{old}\n", f"-{new}\n")
    for name in ("train.txt", "valid.txt"):
        (data / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["data.source=own", "train.eval_test=false",
                                                      f"model.name={ROOT / 'tests/fixtures/tiny-bert'}",
                                                      "train.compilation_cache="])
    run = train(cfg, tmp_path / "run").run_dir
    nb = _execute(tmp_path, f"RUN_DIR = {run!r}\nLIMIT = 0", ROOT / "notebooks")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "PERSON" in text and "B-PER'" not in text  # the stats table's columns are the run's types
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 5


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path):
    nb = _execute(tmp_path, INJECTED, ROOT / "notebooks")  # tiny.yaml's relative model folder found from there

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert len(images) == 5  # dataset bars, length histogram, training curves, per-type bars, confusion matrix
    assert "<mark" in html and "<th>predicted</th>" in html  # highlighted spans in the worst-sentence table
    assert "Reuters" in html  # the tagging output reaches the end of the long text
