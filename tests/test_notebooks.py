"""Every notebook runs headless, top to bottom, in smoke mode."""

import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

# Each of these starts training processes: the slow tier (`-m slow`).
pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(
    name for name in os.listdir(os.path.join(ROOT, "notebooks")) if name.endswith(".ipynb")
)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    # Run in a copy of the notebooks folder so outputs (runs/) stay out of the tree.
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    (tmp_path / "diffusion_keras").symlink_to(os.path.join(ROOT, "diffusion_keras"))
    start = time.monotonic()
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    print(f"{name}: {time.monotonic() - start:.0f}s headless")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert images, "the notebook shows its plots inline"
