"""Every exercise notebook must run up to its first stub and stop there with NotImplementedError.

(The solutions run clean under nbval; see the Makefile. Together these show that the generated
exercises and their solutions come from one source and that the stubs really are stubs.)
"""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))


def test_every_solution_has_an_exercise_notebook():
    solutions = sorted(p.name for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    assert solutions, "no solution notebooks found"
    assert [p.name for p in EXERCISES] == solutions


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercise_notebook_stops_on_a_stub(path, monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    lesson = int(path.name[:2])
    stubs = [c for c in nb.cells if c.cell_type == "code" and f'NotImplementedError("Exercise {lesson}.' in c.source]
    assert len(stubs) >= 3, f"{path.name} should have at least 3 exercise stubs, found {len(stubs)}"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as info:
        client.execute()
    assert info.value.ename == "NotImplementedError", f"{path.name} stopped on {info.value.ename}, not on a stub"
    assert f"Exercise {lesson}." in str(info.value)
