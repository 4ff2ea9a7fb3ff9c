"""nbgrader round trip: the solution notebooks go through nbgrader 0.9 itself.

For every ``solutions/NN_topic.ipynb`` (lessons added later join automatically), in a throw-away
nbgrader course directory (``generate_assignment`` through nbgrader's Python API, ``autograde`` through its
command line, one process per submission, as an instructor runs it), offline:

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

Execution runs with COURSE_FAST=1 and OMP_NUM_THREADS=1, on every lesson by default. NBGRADER_AUTOGRADE=0
skips the autograde half (``generate_assignment`` still runs everywhere); NBGRADER_LESSONS=1,3 autogrades
lessons 1 and 3 only. Each ``nbgrader autograde`` has a hard limit, RUN_TIMEOUT_S (NBGRADER_RUN_TIMEOUT):
past it the run is killed and the test fails with nbgrader's log instead of hanging CI; a single cell may
take half of it (nbgrader's Execute.timeout) before nbgrader interrupts it itself.

Why every lesson: measured one process, no xdist, COURSE_FAST=1, seconds per ``nbgrader autograde`` run
(solution / blank / half-done submission), at load 0.3-0.8 on the 2-core machine: 01 7.7/7.7/7.7,
02 5.8/6.4/6.5, 03 9.5/9.9/9.6, 04 18.3/9.4/10.4, 05 10.2/6.4/6.6, 06 14.3/7.2/7.0, 07 15.3/8.6/9.7,
08 12.7/6.8/9.3, 09 12.3/6.6/6.2: 225 s for lessons 03-09 including their ``generate_assignment``, about
five minutes for the whole module. As ``make test`` runs it (``-n 2 --dist loadscope``: the module on one
worker) it took 294 s, 327 s and 465 s in three runs at load 1-3 (runs 5.7-18.0 s). At load 5 runs take
twice as long (01: 16-17 s each): the module may take 10 minutes there, on one worker while the other runs
the rest.
The "lesson 03 does not finish in 20 minutes" measured earlier was the stall below, not slowness.

The stall (issue 14). Autograde runs used to hang with the kernel idle, for Execute.timeout (then 900 s) per
occurrence, under ``make test`` and under ``pytest -n 2 tests/test_nbgrader.py`` alike (in-process API or
command line). Observed here with nbgrader 0.9.6, nbclient 0.11.0, jupyter_client 8.10.0, pyzmq 27.3.0,
ipykernel 7.4.0: nbclient waits for a cell's ``execute_reply`` with an asyncio poll on its zmq shell socket,
and that wait misses its wake-up. The kernel had run the cell, sent the reply (its --debug log shows it) and
gone idle; it still answered other clients, and its own queues were empty. nbclient's shell socket held the
reply (zmq.EVENTS: POLLIN) while the poll future stayed pending with the rest of the cell timeout to go;
reading zmq.EVENTS through pyzmq re-armed the socket and the run finished within seconds. When the poll times
out, pyzmq ends it with a zmq_poll of timeout 0, which finds the reply: a stall costs exactly one cell
timeout and leaves no error (seen with 60 s and 150 s). All 5 stalls traced to a cell were at a widget cell
(lesson 01's forward-process explorer, lesson 02's schedule explorer), whose Output widget nbclient mirrors
back to the kernel with comm messages on that same shell socket while it waits. It hit 6 of 30 runs in one
series (load 0.7-1.7), none of 36 in another, none of 14 standalone command-line runs; not CPU starvation
(both processes idle, at load 0.7 too), not stdin (/dev/null; execnet's channel sits on dup'ed descriptors
that are not inherited), not a kernel waiting for input, not an event loop reused in-process (the command
line stalled as well). The course directory therefore gets instructors/nbgrader_config.py (NBGRADER_CONFIG,
the file instructors copy), which makes jupyter_client's channel waits poll in slices of at most a second,
each ending, if it times out, in that zmq_poll: a missed wake-up costs at most a second. The test fails if
nbgrader could not load it (nbgrader only logs a broken config file and carries on). With it: no stall in
60 runs of lessons 01-02 (in 24 of them the delivery lag of every ``execute_reply`` was logged: 6 ms or
less, so the slices did not even have to catch one) nor in the 102 runs of all nine lessons above.
"""

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from course_lib import authoring

nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is in the `test` extra (Python >= 3.11)")

# nbgrader 0.9.6's gradebook trips SQLAlchemy 2's autoflush warnings; they are nbgrader's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = authoring.solution_paths(ROOT)
COURSE_ID = "diffusion-from-scratch"
#: lessons to autograde: None for every lesson (the default); NBGRADER_LESSONS=1,3 picks some,
#: NBGRADER_AUTOGRADE=0 none
AUTOGRADE_LESSONS = (set() if os.environ.get("NBGRADER_AUTOGRADE") == "0" else
                     {int(n) for n in os.environ["NBGRADER_LESSONS"].split(",")} if os.environ.get("NBGRADER_LESSONS")
                     else None)
#: hard limit for one ``nbgrader autograde`` run (one submission, kernel start to gradebook)
RUN_TIMEOUT_S = int(os.environ.get("NBGRADER_RUN_TIMEOUT", 300))
#: per cell, below the run's limit: a cell that really hangs is interrupted and shows up in the autograded
#: notebook and in the scores; nbgrader's default (30 s) is too short for the training cells
CELL_TIMEOUT_S = RUN_TIMEOUT_S // 2
#: the course's nbgrader configuration for instructors, copied into the course directory (where ``nbgrader``
#: reads it): course id, cell timeout and the missed wake-up workaround (see above)
NBGRADER_CONFIG = ROOT / "instructors" / "nbgrader_config.py"

NBGRADER_STUB = re.compile(r"^(?P<indent>[ \t]*)# YOUR CODE HERE\n(?P=indent)raise NotImplementedError\(\)$", re.M)
COURSE_STUB = re.compile(r'^(?P<indent>[ \t]*)raise NotImplementedError\("Exercise \d+\.\d+: [^\n]*"\)$', re.M)


def _lesson(path):
    return authoring.lesson_number(path)


def _autograded(path):
    return AUTOGRADE_LESSONS is None or _lesson(path) in AUTOGRADE_LESSONS


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
    config.Execute.timeout = CELL_TIMEOUT_S
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
    """``nbgrader autograde`` on one submission, in its own process, with a hard time limit.

    stdin is /dev/null and the output goes to a log file in the course directory (not a pipe, which the
    kernel would inherit too). On the time limit the process is killed (its kernel, in a session of its own,
    exits with its parent) and the test fails with the log's tail."""
    root, config = course
    shutil.copyfile(NBGRADER_CONFIG, root / "nbgrader_config.py")
    nbgrader_cli = Path(sys.executable).parent / "nbgrader"
    cmd = [str(nbgrader_cli), "autograde", name, "--student", student, "--force", "--create",
           f"--CourseDirectory.root={root}", f"--CourseDirectory.course_id={COURSE_ID}",
           f"--CourseDirectory.db_url={config.CourseDirectory.db_url}",
           f"--Execute.timeout={config.Execute.timeout}", f"--Execute.kernel_name={config.Execute.kernel_name}"]
    log = root / f"autograde-{student}.log"
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"nbgrader autograde {name} --student {student} took over {RUN_TIMEOUT_S} s "
                        f"(NBGRADER_RUN_TIMEOUT); its log ends:\n{log.read_text(encoding='utf-8')[-4000:]}")
    text = log.read_text(encoding="utf-8")
    assert returncode == 0, text[-8000:]
    assert "Exception while loading config file" not in text, text[:4000]
    return time.monotonic() - start


def _scores(course, solution, students):
    from nbgrader.api import Gradebook

    root, config = course
    seconds = {student: _autograde(course, solution.stem, student) for student in students}
    print(f"autograde {solution.stem}: " + ", ".join(f"{s} {t:.1f} s" for s, t in seconds.items()))
    with Gradebook(config.CourseDirectory.db_url) as gradebook:
        out = {}
        for student in students:
            notebook = gradebook.find_submission_notebook(solution.stem, solution.stem, student)
            out[student] = (notebook.score, notebook.max_score,
                            {g.name: g.score for g in notebook.grades})
        return out


@pytest.mark.parametrize(
    "solution",
    [pytest.param(s, marks=() if _autograded(s) else pytest.mark.skip(
        reason="NBGRADER_AUTOGRADE=0" if AUTOGRADE_LESSONS == set() else "not in NBGRADER_LESSONS"))
     for s in SOLUTIONS],
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
