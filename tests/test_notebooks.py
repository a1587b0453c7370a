"""Every notebook in notebooks/ runs top to bottom on the quick demo's runs (nbclient, a real kernel)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks need the dev extra (nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there_and_stored_without_outputs():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "spectrum", "capacity", "significance", "paper"}
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in book.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, quick_demo_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERTUNE_RUNS", str(quick_demo_runs))
    monkeypatch.setenv("ADAPTERTUNE_PAPER_OUT", str(tmp_path / "paper"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    book = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()  # raises on any error
    assert not (quick_demo_runs.parent / "paper").exists()
