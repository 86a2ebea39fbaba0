"""The notebooks in notebooks/ are stored without outputs, linked from the README, and each runs from
top to bottom in a fresh Jupyter kernel (nbclient), in a scratch directory, against this aevb, showing
every figure."""
import asyncio
import os
from pathlib import Path

import pytest

import aevb

nbformat = pytest.importorskip("nbformat", reason="the notebooks run with pip install 'aevb[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="the notebooks run with pip install 'aevb[notebooks]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIGURES = {"applications": 3, "lab": 6, "quickstart": 3, "semi_supervised": 1}  # PNG images each shows


def test_the_notebooks_are_there_stored_without_outputs_and_linked_from_the_readme():
    assert [p.name for p in NOTEBOOKS] == ["applications.ipynb", "lab.ipynb", "quickstart.ipynb", "semi_supervised.ipynb"]
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear its outputs"
        assert f"(notebooks/{path.name})" in readme, f"the README does not link {path.name}"


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict:
    """Every notebook run from top to bottom, all at once (each kernel takes one thread, so two cores run
    two at a time: half the wall time of one after another), each in a fresh kernel and scratch folder:
    {name: (the notebook with its outputs, the CellExecutionError of the cell that raised, or None)}.
    The kernels import the aevb these tests import (its source folder first on PYTHONPATH)."""
    async def execute(path: Path):
        nb = nbformat.read(path, as_version=4)
        folder = tmp_path_factory.mktemp(path.stem)
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(folder)}})
        try:
            await client.async_execute()
        except nbclient.exceptions.CellExecutionError as e:
            return nb, e
        return nb, None

    async def execute_all():
        return await asyncio.gather(*map(execute, NOTEBOOKS))

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join([str(Path(aevb.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
        env.setenv("OMP_NUM_THREADS", "1")
        return dict(zip((p.stem for p in NOTEBOOKS), asyncio.run(execute_all())))


@pytest.mark.parametrize("name", [p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(name, executed):
    """No cell raises (the error names the cell and its traceback), and every figure shows: importing
    aevb.viz leaves Jupyter's inline matplotlib backend alone."""
    nb, error = executed[name]
    if error is not None:
        raise error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == FIGURES[name]
