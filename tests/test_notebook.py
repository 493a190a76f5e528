"""notebooks/explore.ipynb runs headless, top to bottom, on the tiny config (so it never rots)."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in _tags(c))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(INJECTED, metadata={"tags": ["injected-parameters"]}))
    has_tagger = importlib.util.find_spec("flaxner.tagging.tagger") is not None
    if not has_tagger:
        nb.cells = [c for c in nb.cells if "tagging" not in _tags(c)]
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(ROOT)}})
    # The notebook's own run goes to tempfile.mkdtemp(): keep it under tmp_path.
    client.execute(env={**os.environ, "TMPDIR": str(tmp_path)})  # raises CellExecutionError on a failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert len(images) == 5  # dataset bars, length histogram, training curves, per-type bars, confusion matrix
    assert "<mark" in html and "<th>predicted</th>" in html  # highlighted spans in the worst-sentence table
    if not has_tagger:
        pytest.skip("flaxner.tagging.tagger is not there yet: every cell but the tagging ones ran")
    assert "Reuters" in html  # the tagging output reaches the end of the long text
