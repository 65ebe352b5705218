"""Every notebook in experiments/notebooks runs top to bottom on a small budget."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "experiments" / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {
        "posterior_inspection.ipynb", "priors_and_guides.ipynb", "beta_and_conditional.ipynb"
    }  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, mnist_dir, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit notebooks with outputs stripped"
    )
    monkeypatch.setenv("PYROVAE_DATA", str(mnist_dir))
    monkeypatch.setenv("PYROVAE_NB_EPOCHS", "1")
    monkeypatch.setenv("PYROVAE_NB_TRAIN", "3000")
    monkeypatch.setenv("PYROVAE_NB_OUT", str(tmp_path))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream"
    )
    assert "IProgress" not in text and "ipywidgets" not in text  # no warning, no broken progress bar
    assert not re.search(r"\d\.\d{6,}", text), "numbers printed unformatted (e.g. 310.70001220703125)"
