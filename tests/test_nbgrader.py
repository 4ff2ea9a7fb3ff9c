"""nbgrader round trip: the solution notebooks go through nbgrader 0.9 itself.

For every ``solutions/NN_topic.ipynb`` (lessons added later join automatically), in a throw-away
nbgrader course directory, with nbgrader's Python API (the same code as its command line):

* the notebook is stamped with ``authoring.stamp_nbgrader`` *in memory* (the committed file is never
  written here; ``test_authoring.py`` checks that the committed solutions carry the same metadata)
  and put into ``source/`` by ``authoring.nbgrader_source``;
* ``generate_assignment`` must produce a student version *equivalent* to the generated exercise
  notebook (``authoring.make_exercise``, which the staleness test ties to ``exercises/``).
  Equivalent means: the same cells, in the same order, with the same ids and types; no outputs and
  no execution counts; and the same sources once each stub is written one way -- nbgrader writes
  ``# YOUR CODE HERE`` + ``raise NotImplementedError()`` and ``YOUR ANSWER HERE``, the course writes
  ``raise NotImplementedError("Exercise N.M: title")`` (same indentation) and drops a written answer
  (leaving a placeholder when the whole cell was the answer). Nothing else may differ;
* ``autograde`` scores the solution at full marks, the untouched student version at zero, and a
  half-done student version (the first half of the exercises filled in) at exactly the points of the
  checks it completed.

Execution runs with COURSE_FAST=1 and OMP_NUM_THREADS=1. ``generate_assignment`` runs on every lesson;
``autograde`` (three executions of a notebook each) on the lessons in AUTOGRADE_LESSONS by default, or
on every lesson with NBGRADER_ALL=1 (three executions of each notebook).

Measured on the 2-core CI machine at load 4 (other jobs running), COURSE_FAST=1: generate_assignment
8-11 s per lesson (mostly nbgrader's start-up and gradebook), autograde of lesson 01 63 s and of 02
46 s for its three submissions; the whole module 3 minutes with 7 lessons. Autograding lesson 03's
three submissions did not finish within 20 minutes at that load, hence the default subset.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import authoring

nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is in the `test` extra (Python >= 3.11)")

# nbgrader 0.9.6's gradebook trips SQLAlchemy 2's autoflush warnings; they are nbgrader's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = authoring.solution_paths(ROOT)
#: the lessons autograded by default: the cheapest ones, one with a widget-read answer each
AUTOGRADE_LESSONS = {1, 2}
COURSE_ID = "diffusion-from-scratch"
AUTOGRADE_TIMEOUT_S = 600  # one student's notebook; lesson 01 takes about 20 s, 02 about 15 s on an idle machine

NBGRADER_STUB = re.compile(r"^(?P<indent>[ \t]*)# YOUR CODE HERE\n(?P=indent)raise NotImplementedError\(\)$", re.M)
COURSE_STUB = re.compile(r'^(?P<indent>[ \t]*)raise NotImplementedError\("Exercise \d+\.\d+: [^\n]*"\)$', re.M)


def _lesson(path):
    return authoring.lesson_number(path)


def _autograded(path):
    return os.environ.get("NBGRADER_ALL") == "1" or _lesson(path) in AUTOGRADE_LESSONS


# Opt-in: under `make test` (two xdist workers) on the 2-core CI machine, autograde runs were seen to stall
# with the notebook's kernel idle (once for over ten minutes), both through NbGraderAPI in-process and
# through the `nbgrader autograde` command line; alone they pass (lessons 01 and 02: 63 s and 46 s at load 4).
# Until that stall is understood, run them with NBGRADER_AUTOGRADE=1 (or NBGRADER_ALL=1), e.g.
#   NBGRADER_AUTOGRADE=1 COURSE_FAST=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -p no:xdist tests/test_nbgrader.py
AUTOGRADE_OPT_IN = os.environ.get("NBGRADER_AUTOGRADE") == "1" or os.environ.get("NBGRADER_ALL") == "1"


@pytest.fixture
def course(tmp_path, monkeypatch):
    """An empty nbgrader course directory; nbgrader's helpers (alembic) on PATH; fast, one thread."""
    from traitlets.config import Config

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The kernel inherits the environment; `make test-unit` sets MPLBACKEND=Agg for pytest itself.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.chdir(tmp_path)
    config = Config()
    config.CourseDirectory.root = str(tmp_path)
    config.CourseDirectory.course_id = COURSE_ID
    config.CourseDirectory.db_url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    config.Execute.timeout = 900  # per cell; nbgrader's default (30 s) is too short for training cells
    config.Execute.kernel_name = "python3"
    config.Autograde.create_student = True
    return tmp_path, config


def _api(config):
    from nbgrader.apps import NbGraderAPI

    return NbGraderAPI(config=config)


def _generate(course, solution):
    root, config = course
    name = solution.stem
    source = authoring.nbgrader_source(authoring.read_notebook(solution), solution)
    target = root / "source" / name / solution.name
    target.parent.mkdir(parents=True)
    target.write_text(authoring.notebook_text(source), encoding="utf-8")
    result = _api(config).generate_assignment(name, force=True)
    assert result["success"], result.get("log", "") + result.get("error", "")
    release = root / "release" / name / solution.name
    return source, nbformat.read(release, as_version=4)


def _normalise(nb):
    """(cell_type, id, source) per cell, with every stub and every removed written answer alike."""
    cells = []
    for cell in nb.cells:
        source = cell.source
        if cell.cell_type == "code":
            source = NBGRADER_STUB.sub(r"\g<indent><STUB>", source)
            source = COURSE_STUB.sub(r"\g<indent><STUB>", source)
        else:
            source = source.replace(authoring.MD_PLACEHOLDER, "")
            source = "\n".join(line for line in source.split("\n") if line != "YOUR ANSWER HERE")
            source = source.strip()
        cells.append((cell.cell_type, cell.get("id"), source))
    return cells


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_generate_assignment_matches_the_exercise_notebook(course, solution):
    source, release = _generate(course, solution)
    exercise = authoring.make_exercise(authoring.read_notebook(solution), solution)

    for cell in release.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
    assert _normalise(release) == _normalise(exercise)
    # Both stub styles occur where they should: one per marked block.
    blocks = sum(bool(authoring.BEGIN_CODE.match(line)) for c in source.cells if c.cell_type == "code"
                 for line in c.source.splitlines())
    assert sum(len(NBGRADER_STUB.findall(c.source)) for c in release.cells) == blocks
    assert sum(len(COURSE_STUB.findall(c.source)) for c in exercise.cells) == blocks
    # The graded cells kept their ids and points; check cells are locked (read-only) for the student.
    plan = authoring.grading_plan(source, solution)
    meta = {c.metadata["nbgrader"]["grade_id"]: c for c in release.cells if "nbgrader" in c.metadata}
    assert set(meta) == {e["grade_id"] for e in plan}
    for entry in plan:
        cell = meta[entry["grade_id"]]
        assert cell.metadata["nbgrader"].get("points") == entry.get("points")
        if entry["kind"] == "check":
            assert cell.metadata["nbgrader"]["locked"] and cell.metadata.get("editable") is False


def _submit(course, solution, student, nb):
    root, _ = course
    target = root / "submitted" / student / solution.stem / solution.name
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(target))


def _autograde(course, name, student):
    """``nbgrader autograde`` in its own process, with a hard time limit. In-process (NbGraderAPI) inside a
    pytest-xdist worker, one run was seen to hang with its kernel idle for over ten minutes; a separate
    process gets a fresh event loop and ZMQ context, and a stuck run fails here instead of stalling CI."""
    root, config = course
    nbgrader_cli = Path(sys.executable).parent / "nbgrader"
    cmd = [str(nbgrader_cli), "autograde", name, "--student", student, "--force", "--create",
           f"--CourseDirectory.root={root}", f"--CourseDirectory.course_id={COURSE_ID}",
           f"--CourseDirectory.db_url={config.CourseDirectory.db_url}",
           f"--Execute.timeout={config.Execute.timeout}", f"--Execute.kernel_name={config.Execute.kernel_name}"]
    try:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=AUTOGRADE_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"nbgrader autograde {name} --student {student} took over {AUTOGRADE_TIMEOUT_S} s:\n{err.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr


def _scores(course, solution, students):
    from nbgrader.api import Gradebook

    root, config = course
    for student in students:
        _autograde(course, solution.stem, student)
    with Gradebook(config.CourseDirectory.db_url) as gradebook:
        out = {}
        for student in students:
            notebook = gradebook.find_submission_notebook(solution.stem, solution.stem, student)
            out[student] = (notebook.score, notebook.max_score,
                            {g.name: g.score for g in notebook.grades})
        return out


@pytest.mark.parametrize(
    "solution",
    [pytest.param(s, marks=() if _autograded(s) and AUTOGRADE_OPT_IN else pytest.mark.skip(
        reason="autograde is opt-in (NBGRADER_AUTOGRADE=1: lessons %s; NBGRADER_ALL=1: every lesson)"
        % sorted(AUTOGRADE_LESSONS))) for s in SOLUTIONS],
    ids=lambda p: p.name,
)
def test_autograde_solution_blank_and_half_done(course, solution):
    source, release = _generate(course, solution)
    plan = authoring.grading_plan(source, solution)
    auto = [e for e in plan if e["kind"] == "check"]
    total_auto = sum(e["points"] for e in auto)
    manual = sum(e["points"] for e in plan if e["kind"] == "answer")

    # Half done: the first half of the exercises answered with the solution's own cells.
    exercises = sorted({e["exercise"] for e in plan if e["kind"] == "solution"}, key=lambda x: int(x.split(".")[1]))
    done = set(exercises[: max(1, len(exercises) // 2)])
    half = copy.deepcopy(release)
    by_id = {c.metadata["nbgrader"]["grade_id"]: c for c in source.cells if "nbgrader" in c.metadata}
    for cell in half.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        entry = next((e for e in plan if e["grade_id"] == grade_id), None)
        if entry and entry["kind"] == "solution" and entry["exercise"] in done:
            cell.source = by_id[grade_id].source
    expected_half = sum(e["points"] for e in auto if e["exercise"] in done)

    _submit(course, solution, "solution", source)
    _submit(course, solution, "blank", release)
    _submit(course, solution, "half", half)
    scores = _scores(course, solution, ["solution", "blank", "half"])

    # max_score counts the manually graded answers too; autograde leaves those for a person.
    assert scores["solution"][1] == total_auto + manual
    assert scores["solution"][0] == total_auto, scores["solution"][2]
    assert scores["blank"][0] == 0, scores["blank"][2]
    assert scores["half"][0] == expected_half, scores["half"][2]
    assert 0 < scores["half"][0] < total_auto or len(exercises) == 1
