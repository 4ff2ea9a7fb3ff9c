"""Authoring tools: keep exercises, solutions and notebook headers in step.

Run from the repository root::

    python -m course_lib.authoring exercises   # regenerate exercises/ from solutions/
    python -m course_lib.authoring headers     # stamp the Colab badge + set-up cell
                                               # (and drop saved widget state)
    python -m course_lib.authoring check       # fail (exit 1) if anything is out of date
    python -m course_lib.authoring instructors # regenerate instructors/LESSONS.md
    python -m course_lib.authoring nbgrader-source DEST  # an nbgrader source/ folder

(``make exercises`` and ``make headers`` run the first two; ``exercises`` also
stamps nbgrader's cell metadata into solutions/ and regenerates
instructors/LESSONS.md, so one command brings everything up to date.)

How the pieces fit together
---------------------------
* ``solutions/NN_topic.ipynb`` is the *source*. Inside a code cell, an
  exercise's answer sits between two nbgrader marker lines::

      # Exercise 3.1: the posterior mean
      def posterior_mean(x0, x_t, t, schedule):
          ### BEGIN SOLUTION
          ...the answer...
          ### END SOLUTION

  A markdown answer sits between ``<!-- BEGIN SOLUTION -->`` and
  ``<!-- END SOLUTION -->``.  The markers are nbgrader's, so an instructor can
  also feed the solution notebook to nbgrader unchanged.
* ``exercises/NN_topic.ipynb`` is *generated* (never edit it by hand): every
  marked code block becomes ``raise NotImplementedError("Exercise N.M: title")``
  at the same indentation, marked markdown is removed, and all outputs are
  cleared.  N is the lesson number from the file name, M counts the marked
  blocks of the notebook from 1, and the title comes from the nearest
  ``# Exercise N.M: title`` comment above the block in the same cell.
* ``make exercises`` also stamps nbgrader's cell metadata (schema 3, the one
  nbgrader 0.9 reads) into ``solutions/``: a code cell with marked blocks is an
  "autograded answer" (``grade_id`` ``exercise-N-M``), a markdown cell with a
  marked region a "manually graded answer" (nbgrader requires markdown answer
  cells to be graded; ``answer-N-M``, 1 point), and each check cell -- the code
  cell that calls ``lessonNN.check_...`` -- a locked "autograder tests" cell
  (``check-N-M``, 1 point unless the cell says ``# points: K``).  The metadata
  is derived from the cell contents alone, so it is stable and re-stamping
  changes nothing.  ``exercises/`` does not carry it (see ``make_exercise``).
* Every notebook starts with two header cells: an "Open in Colab" badge and a
  code cell that installs ``course_lib`` -- only when it runs on Google Colab.

Only ``nbformat`` and the standard library are used here, so this module works
without torch.  Output is deterministic: the same solution notebook always
gives a byte-identical exercise notebook (cell ids are kept), so regenerating
causes no git churn.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

import nbformat

# ---------------------------------------------------------------------------
# The single source of truth for where the course lives.  Change these two
# lines for a fork, then run ``make headers exercises``.
# ---------------------------------------------------------------------------
REPO_SLUG = "diffusion-from-scratch/diffusion-models-from-scratch"
BRANCH = "main"

#: the folders whose notebooks carry the header cells
NOTEBOOK_FOLDERS = ("notebooks", "solutions", "exercises")
#: notebooks in these folders must stay small (no giant embedded outputs)
SIZE_CHECKED_FOLDERS = ("notebooks", "solutions")
MAX_NOTEBOOK_BYTES = 2 * 1024 * 1024

# The header cells get fixed ids so that re-stamping never changes a file.
BADGE_CELL_ID = "colab-badge"
SETUP_CELL_ID = "colab-setup"
#: first line of the Colab set-up cell; this line is how the cell is recognised
SETUP_MARKER = "# Colab set-up: installs course_lib only when running on Google Colab"

# nbgrader's markers.  Code markers must be alone on their line (any indentation).
BEGIN_CODE = re.compile(r"^(?P<indent>[ \t]*)###\s*BEGIN SOLUTION\s*$")
END_CODE = re.compile(r"^[ \t]*###\s*END SOLUTION\s*$")
EXERCISE_COMMENT = re.compile(
    r"^[ \t]*#\s*Exercise\s+(?P<n>\d+)\.(?P<m>\d+)\s*:\s*(?P<title>.*?)\s*$"
)
MD_BEGIN = re.compile(r"<!--\s*BEGIN SOLUTION\s*-->")
MD_END = re.compile(r"<!--\s*END SOLUTION\s*-->")
# A markdown solution region, markers included (plus the newline after it).
MD_SOLUTION = re.compile(
    r"<!--\s*BEGIN SOLUTION\s*-->.*?<!--\s*END SOLUTION\s*-->[ \t]*\n?", re.DOTALL
)
DEFAULT_TITLE = "replace this line with your solution"
#: what a markdown cell that was nothing but a solution becomes
MD_PLACEHOLDER = "*Your answer here (double-click this cell to edit it).*"

LESSON_FILE = re.compile(r"^(?P<lesson>\d+)_.*\.ipynb$")

# Metadata that only records a past run (widget state, execution timings), and
# nbgrader's grading metadata, which belongs to the instructor's source only:
# exercises/ is the self-study sheet (no locked cells, no grade ids; nbgrader
# makes its own student version from solutions/ with ``generate_assignment``).
CELL_METADATA_TO_STRIP = ("widgets", "execution", "nbgrader")
NOTEBOOK_METADATA_TO_STRIP = ("widgets",)


class AuthoringError(ValueError):
    """A solution notebook whose markers cannot be turned into an exercise."""


# ---------------------------------------------------------------------------
# Header cells: the Colab badge and the guarded install cell
# ---------------------------------------------------------------------------
def colab_url(folder: str, name: str) -> str:
    """The Colab address of ``folder/name`` (``name`` with or without ``.ipynb``)."""
    stem = name[: -len(".ipynb")] if name.endswith(".ipynb") else name
    return (
        f"https://colab.research.google.com/github/{REPO_SLUG}"
        f"/blob/{BRANCH}/{folder}/{stem}.ipynb"
    )


def badge_source(folder: str, name: str) -> str:
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    return f"[![Open In Colab]({badge})]({colab_url(folder, name)})"


def setup_source() -> str:
    # The ``!pip`` line is IPython syntax; inside an ``if`` block it is still
    # valid in a notebook.  Outside Colab the cell does nothing: locally the
    # course environment (``make lab``) already has course_lib installed.
    return (
        f"{SETUP_MARKER}\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    !pip install -q "course_lib @ git+https://github.com/{REPO_SLUG}@{BRANCH}"'
    )


def _folder_and_name(path) -> tuple[str, str]:
    """``solutions/03_ddpm.ipynb`` -> (``"solutions"``, ``"03_ddpm.ipynb"``)."""
    path = Path(path)
    return path.parent.name, path.name


def _is_badge_cell(cell) -> bool:
    return cell.cell_type == "markdown" and cell.source.lstrip().startswith(
        "[![Open In Colab]"
    )


def _is_setup_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(SETUP_MARKER)


def _ensure_cell_ids(nb) -> None:
    """Give every cell an id (nbformat >= 4.5), deterministically.

    Old notebooks (format 4.0-4.4) have no cell ids; new ones are derived from
    the cell's position and source so that the same input gives the same file.
    """
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        nb.nbformat_minor = 5
    seen = set()
    for index, cell in enumerate(nb.cells):
        cell_id = cell.get("id")
        if not cell_id or cell_id in seen:
            digest = hashlib.sha1(f"{index}\0{cell.source}".encode()).hexdigest()
            cell_id = f"cell-{digest[:12]}"
        cell["id"] = cell_id
        seen.add(cell_id)


def stamp_header(nb, path):
    """Return a copy of ``nb`` whose first two cells are the Colab header.

    ``path`` is where the notebook lives (e.g. ``"exercises/03_ddpm.ipynb"``);
    its folder and file name make the badge's link.  Header cells already in
    the notebook are replaced, never duplicated, so stamping twice gives the
    same notebook as stamping once.
    """
    folder, name = _folder_and_name(path)
    nb = copy.deepcopy(nb)
    body = [c for c in nb.cells if not (_is_badge_cell(c) or _is_setup_cell(c))]
    badge = nbformat.v4.new_markdown_cell(badge_source(folder, name), id=BADGE_CELL_ID)
    setup = nbformat.v4.new_code_cell(setup_source(), id=SETUP_CELL_ID)
    nb.cells = [badge, setup] + body
    _ensure_cell_ids(nb)
    return nb


def has_header(nb, path) -> bool:
    """True when ``nb`` starts with exactly the header cells ``stamp_header`` writes."""
    folder, name = _folder_and_name(path)
    if len(nb.cells) < 2:
        return False
    first, second = nb.cells[0], nb.cells[1]
    return (
        first.cell_type == "markdown"
        and first.source == badge_source(folder, name)
        and second.cell_type == "code"
        and second.source == setup_source()
    )


# ---------------------------------------------------------------------------
# Exercises from solutions
# ---------------------------------------------------------------------------
def lesson_number(path) -> int:
    """``solutions/03_ddpm.ipynb`` -> 3."""
    match = LESSON_FILE.match(Path(path).name)
    if not match:
        raise AuthoringError(f"{path}: expected a file name like 03_topic.ipynb")
    return int(match["lesson"])


def _stub_code(source: str, lesson: int, counter: list, where: str) -> str:
    """Replace each marked block of one code cell's source with a stub.

    ``counter`` is a one-element list holding the number of blocks seen so far
    in the notebook (shared by all cells, so M keeps counting across cells).
    """
    out = []  # lines of the new source, with their line endings
    block_start = 0  # index in ``out`` after the previous block (title search stops there)
    lines = source.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        text = line.rstrip("\r\n")
        if END_CODE.match(text):
            raise AuthoringError(f"{where}: '### END SOLUTION' without a BEGIN")
        begin = BEGIN_CODE.match(text)
        if not begin:
            out.append(line)
            i += 1
            continue

        # Find the matching END line.
        j = i + 1
        while j < len(lines) and not END_CODE.match(lines[j].rstrip("\r\n")):
            if BEGIN_CODE.match(lines[j].rstrip("\r\n")):
                raise AuthoringError(f"{where}: nested '### BEGIN SOLUTION'")
            j += 1
        if j == len(lines):
            raise AuthoringError(f"{where}: '### BEGIN SOLUTION' without an END")

        counter[0] += 1
        number = f"{lesson}.{counter[0]}"
        # The title: the nearest "# Exercise N.M: title" above, within this
        # cell and after the previous block.  Its number must match, so the
        # stub and the lesson text never disagree about which exercise it is.
        title = DEFAULT_TITLE
        for previous in reversed(out[block_start:]):
            comment = EXERCISE_COMMENT.match(previous.rstrip("\r\n"))
            if comment:
                found = f"{int(comment['n'])}.{int(comment['m'])}"
                if found != number:
                    raise AuthoringError(
                        f"{where}: comment says 'Exercise {found}' but this is "
                        f"marked block {number} (lesson {lesson}, block "
                        f"{counter[0]} of the notebook); renumber the comment"
                    )
                title = comment["title"] or DEFAULT_TITLE
                break

        message = json.dumps(f"Exercise {number}: {title}", ensure_ascii=False)
        ending = lines[j][len(lines[j].rstrip("\r\n")) :]  # keep END's newline, if any
        out.append(f"{begin['indent']}raise NotImplementedError({message}){ending}")
        block_start = len(out)
        i = j + 1
    return "".join(out)


def _strip_markdown(source: str, where: str) -> str:
    """Remove ``<!-- BEGIN SOLUTION --> ... <!-- END SOLUTION -->`` regions."""
    stripped = MD_SOLUTION.sub("", source)
    if MD_BEGIN.search(stripped) or MD_END.search(stripped):
        raise AuthoringError(f"{where}: unbalanced <!-- BEGIN/END SOLUTION --> markers")
    if stripped != source and not stripped.strip():
        # The whole cell was an answer: leave the learner a cell to write in.
        return MD_PLACEHOLDER
    return stripped


def _clean_metadata(metadata) -> None:
    for key in CELL_METADATA_TO_STRIP:
        metadata.pop(key, None)


def make_exercise(nb, path):
    """Return the exercise notebook generated from the solution notebook ``nb``.

    ``path`` names the lesson file (``"03_ddpm.ipynb"``, or a path ending in
    it): it gives the lesson number N and the exercise's Colab link.  ``nb``
    itself is not modified.
    """
    lesson = lesson_number(path)
    nb = copy.deepcopy(nb)
    counter = [0]
    for index, cell in enumerate(nb.cells):
        where = f"{Path(path).name}, cell {index}"
        if cell.cell_type == "code":
            cell.source = _stub_code(cell.source, lesson, counter, where)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source = _strip_markdown(cell.source, where)
            # Rendered attachments of removed text would be dead weight; keep
            # attachments only when the cell still refers to them.
            attachments = cell.get("attachments")
            if attachments:
                kept = {k: v for k, v in attachments.items() if f"attachment:{k}" in cell.source}
                if kept:
                    cell.attachments = kept
                else:
                    del cell["attachments"]
        _clean_metadata(cell.metadata)
    for key in NOTEBOOK_METADATA_TO_STRIP:
        nb.metadata.pop(key, None)
    return stamp_header(nb, Path("exercises") / Path(path).name)


# ---------------------------------------------------------------------------
# nbgrader cell metadata for solutions/
# ---------------------------------------------------------------------------
#: the cell-metadata schema nbgrader 0.9 reads and writes (nbgrader.nbgraderformat.v3)
NBGRADER_SCHEMA_VERSION = 3
#: points of a check cell or a written answer unless the cell says otherwise
DEFAULT_POINTS = 1
#: a check cell: a line that calls ``lessonNN.check_...(`` (or ``course_lib.checks.lessonNN...``)
CHECK_CALL = re.compile(r"^[ \t]*(?:[A-Za-z_][\w.]*\.)?lesson\d+\.check_\w+\s*\(", re.MULTILINE)
#: ``# points: 2`` in a check cell, ``<!-- points: 2 -->`` in a written answer
CODE_POINTS = re.compile(r"^[ \t]*#\s*points\s*:\s*(?P<points>\d+(?:\.\d+)?)\s*$", re.MULTILINE | re.IGNORECASE)
MD_POINTS = re.compile(r"<!--\s*points\s*:\s*(?P<points>\d+(?:\.\d+)?)\s*-->", re.IGNORECASE)
#: what nbgrader's ClearSolutions looks for: the delimiter *anywhere* in a line
NBGRADER_DELIMITER = re.compile(r"(BEGIN|END) SOLUTION")


def _points(pattern, source) -> float | int:
    match = pattern.search(source)
    if not match:
        return DEFAULT_POINTS
    value = float(match["points"])
    return int(value) if value.is_integer() else value


def grading_plan(nb, path) -> list[dict]:
    """The graded cells of solution notebook ``nb``, in order, one dict each.

    Keys: ``index`` (cell index), ``kind`` (``"solution"``, ``"answer"`` or
    ``"check"``), ``exercise`` (``"N.M"``: a solution cell's first block; for
    an answer or a check, the last block above it), ``grade_id``, and
    ``points`` (answers and checks only).  Raises :class:`AuthoringError` for
    anything nbgrader would choke on (unbalanced markers, a delimiter that is
    not a marker line).
    """
    lesson = lesson_number(path)
    counter = [0]
    plan, used = [], set()

    def unique(base):
        grade_id, k = base, 1
        while grade_id in used:
            k += 1
            grade_id = f"{base}-{k}"
        used.add(grade_id)
        return grade_id

    for index, cell in enumerate(nb.cells):
        where = f"{Path(path).name}, cell {index}"
        source = cell.source
        if cell.cell_type == "code":
            before = counter[0]
            _stub_code(source, lesson, counter, where)  # validates and counts the blocks
            if counter[0] > before:
                entry = {"kind": "solution", "exercise": f"{lesson}.{before + 1}"}
                entry["grade_id"] = unique(f"exercise-{lesson}-{before + 1}")
            elif CHECK_CALL.search(source):
                entry = {"kind": "check", "exercise": f"{lesson}.{counter[0]}",
                         "points": _points(CODE_POINTS, source)}
                entry["grade_id"] = unique(f"check-{lesson}-{counter[0]}")
            else:
                entry = None
        elif cell.cell_type == "markdown" and MD_SOLUTION.search(source):
            _strip_markdown(source, where)  # validates the markers
            entry = {"kind": "answer", "exercise": f"{lesson}.{counter[0]}",
                     "points": _points(MD_POINTS, source)}
            entry["grade_id"] = unique(f"answer-{lesson}-{counter[0]}")
        else:
            if cell.cell_type == "markdown":
                _strip_markdown(source, where)  # a lone BEGIN or END marker
            entry = None
        if entry is None and NBGRADER_DELIMITER.search(source):
            raise AuthoringError(
                f"{where}: 'BEGIN/END SOLUTION' appears outside a marker line; nbgrader "
                "would take it for a solution region (reword it)"
            )
        if entry is not None:
            entry["index"] = index
            plan.append(entry)
    return plan


def nbgrader_metadata(entry) -> dict:
    """nbgrader's cell metadata for one entry of :func:`grading_plan`."""
    kind = entry["kind"]
    meta = {
        "grade": kind in ("answer", "check"),
        "grade_id": entry["grade_id"],
        "locked": kind == "check",
        "schema_version": NBGRADER_SCHEMA_VERSION,
        "solution": kind in ("solution", "answer"),
        "task": False,
    }
    if meta["grade"]:
        meta["points"] = entry["points"]
    return meta


def stamp_nbgrader(nb, path):
    """Return a copy of solution notebook ``nb`` with nbgrader's metadata on exactly its graded cells.

    Any other ``nbgrader`` cell metadata is removed, so the result depends on
    the cells' contents only: stamping twice gives the same notebook.
    """
    nb = copy.deepcopy(nb)
    plan = {entry["index"]: entry for entry in grading_plan(nb, path)}
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("nbgrader", None)
        if index in plan:
            cell.metadata["nbgrader"] = nbgrader_metadata(plan[index])
    return nb


def nbgrader_source(nb, path):
    """The notebook an instructor puts in nbgrader's ``source/``: the stamped solution
    whose Colab badge points at ``exercises/`` (never at the public solution)."""
    return stamp_header(stamp_nbgrader(nb, path), Path("exercises") / Path(path).name)


# ---------------------------------------------------------------------------
# Files: reading, writing, and the repository-wide checks
# ---------------------------------------------------------------------------
def read_notebook(path):
    return nbformat.read(str(path), as_version=4)


def notebook_text(nb) -> str:
    """Serialise like Jupyter does (sorted keys, indent 1, final newline)."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    return True


def solution_paths(root) -> list[Path]:
    """The lesson notebooks in ``root/solutions`` (``NN_topic.ipynb``), sorted."""
    folder = Path(root) / "solutions"
    return sorted(p for p in folder.glob("*.ipynb") if LESSON_FILE.match(p.name))


def notebook_paths(root, folders=NOTEBOOK_FOLDERS) -> list[Path]:
    root = Path(root)
    return sorted(p for folder in folders for p in (root / folder).glob("*.ipynb"))


def expected_exercise_text(solution_path) -> str:
    solution_path = Path(solution_path)
    return notebook_text(make_exercise(read_notebook(solution_path), solution_path))


def expected_solution_text(solution_path) -> str:
    """The solution notebook as ``make exercises`` leaves it: nbgrader metadata stamped."""
    solution_path = Path(solution_path)
    return notebook_text(stamp_nbgrader(read_notebook(solution_path), solution_path))


def write_nbgrader_metadata(root) -> list[Path]:
    """Stamp nbgrader's cell metadata into ``solutions/``; return the files that changed."""
    root = Path(root)
    changed = []
    for solution in solution_paths(root):
        if _write_if_changed(solution, expected_solution_text(solution)):
            changed.append(solution.relative_to(root))
    return changed


def write_nbgrader_source(root, dest) -> list[Path]:
    """Write ``dest/NN_topic/NN_topic.ipynb`` (see :func:`nbgrader_source`) for every lesson."""
    written = []
    for solution in solution_paths(root):
        target = Path(dest) / solution.stem / solution.name
        _write_if_changed(target, notebook_text(nbgrader_source(read_notebook(solution), solution)))
        written.append(target)
    return written


def stale_solutions(root) -> list[Path]:
    """Solution notebooks whose nbgrader metadata ``write_nbgrader_metadata`` would change."""
    root = Path(root)
    return [
        s.relative_to(root)
        for s in solution_paths(root)
        if s.read_text(encoding="utf-8") != expected_solution_text(s)
    ]


def write_exercises(root) -> list[Path]:
    """Regenerate ``exercises/`` from ``solutions/``; return the files that changed."""
    root = Path(root)
    changed = []
    for solution in solution_paths(root):
        target = root / "exercises" / solution.name
        if _write_if_changed(target, expected_exercise_text(solution)):
            changed.append(target.relative_to(root))
    return changed


def stale_exercises(root) -> list[Path]:
    """Exercise notebooks (relative to ``root``) that ``write_exercises`` would change.

    That is: missing, different from what the solution generates (e.g. edited
    by hand), or left over with no solution notebook of the same name.
    """
    root = Path(root)
    stale = []
    solutions = solution_paths(root)
    for solution in solutions:
        target = root / "exercises" / solution.name
        text = target.read_text(encoding="utf-8") if target.exists() else None
        if text != expected_exercise_text(solution):
            stale.append(target.relative_to(root))
    names = {s.name for s in solutions}
    for exercise in sorted((root / "exercises").glob("*.ipynb")):
        if exercise.name not in names:
            stale.append(exercise.relative_to(root))
    return sorted(stale)


def strip_widget_state(nb):
    """Return a copy of ``nb`` without saved widget state.

    JupyterLab (with "Save Widget State Automatically") and nbclient (its
    default ``store_widget_state=True``) store every widget's state in the
    notebook's metadata: large, and it changes on every run.
    """
    nb = copy.deepcopy(nb)
    for key in NOTEBOOK_METADATA_TO_STRIP:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("widgets", None)
    return nb


def stamp_headers(root) -> list[Path]:
    """Stamp the header cells into every notebook and drop saved widget state.

    Returns the files that changed; the others are not rewritten.
    """
    root = Path(root)
    changed = []
    for path in notebook_paths(root):
        nb = strip_widget_state(read_notebook(path))
        text = notebook_text(stamp_header(nb, path))
        if _write_if_changed(path, text):
            changed.append(path.relative_to(root))
    return changed


def missing_headers(root) -> list[Path]:
    root = Path(root)
    return [
        p.relative_to(root) for p in notebook_paths(root) if not has_header(read_notebook(p), p)
    ]


def has_widget_state(nb) -> bool:
    return "widgets" in nb.metadata or any("widgets" in c.metadata for c in nb.cells)


# ---------------------------------------------------------------------------
# instructors/LESSONS.md: tables generated from the notebooks and the checks
# ---------------------------------------------------------------------------
INSTRUCTORS_TABLES = Path("instructors") / "LESSONS.md"
OBJECTIVES_HEADING = re.compile(r"^#+\s*Learning objectives\s*$", re.IGNORECASE | re.MULTILINE)
RUN_TIME_PARAGRAPH = re.compile(r"(?i)\brun time\b|\bruns in\b")
TIME_AMOUNT = re.compile(
    r"\b\d+(?:[.,]\d+)?(?:\s*(?:to|-|–)\s*\d+(?:[.,]\d+)?)?\s*(?:s|seconds?|min|minutes?|hours?)\b"
    r"|\b(?:a|an|one|two|three|a few|a few tens of|a couple of|one and a half to two)\s+(?:seconds?|minutes?|hours?)\b"
    r"|\bunder a minute\b",
    re.IGNORECASE,
)
TIME_CUE = re.compile(r"(?i)\btakes\b|\babout\b|\bexpected time\b|\brun time\b|\bruns in\b|\bwell under\b")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$]*\$", re.DOTALL)


def _lesson_notebooks(root, folder) -> dict[int, Path]:
    folder = Path(root) / folder
    return {lesson_number(p): p for p in sorted(folder.glob("*.ipynb")) if LESSON_FILE.match(p.name)}


def _cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _lesson_title(nb, path) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown" and not _is_badge_cell(cell):
            match = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if match:
                return re.sub(r"^\d+\s*[·.:-]\s*", "", match[1]).strip()
    return Path(path).stem


def lesson_objectives(nb) -> list[str]:
    """The bullets under the notebook's "Learning objectives" heading (continuation lines joined)."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        match = OBJECTIVES_HEADING.search(cell.source)
        if not match:
            continue
        bullets = []
        for line in cell.source[match.end():].splitlines():
            if re.match(r"^#+\s", line):
                break
            if re.match(r"^\s*[-*]\s+", line):
                bullets.append(re.sub(r"^\s*[-*]\s+", "", line).strip())
            elif bullets and line.startswith((" ", "\t")) and line.strip():
                bullets[-1] += " " + line.strip()
            elif bullets and line.strip():
                break  # the paragraph after the list
        return bullets
    return []


def _sentences(text: str) -> list[str]:
    text = " ".join(text.replace("**", "").split())
    return [s.strip() for s in re.split(r"(?<=[.!?:])\s+(?=[A-Z(*])", text) if s.strip()]


def stated_run_time(nb) -> str:
    """The lesson's own statement of its run time (the paragraph that says "Run time" or "runs in")."""
    for cell in nb.cells[:8]:
        if cell.cell_type != "markdown":
            continue
        for paragraph in re.split(r"\n\s*\n", cell.source):
            if RUN_TIME_PARAGRAPH.search(paragraph) and not OBJECTIVES_HEADING.search(paragraph):
                if not paragraph.lstrip().startswith(("-", "*  ", "#")):
                    return " ".join(paragraph.replace("*", "").split())
    return "not stated in the notebook"


def timed_cells(nb) -> list[tuple[str, str]]:
    """(section, sentence) for every sentence in a markdown cell that states how long something takes."""
    found, section = [], ""
    for cell in nb.cells:
        if cell.cell_type != "markdown" or _is_badge_cell(cell):
            continue
        heading = re.search(r"^#{1,3}\s+(.+)$", cell.source, re.MULTILINE)
        if heading:
            section = heading[1].strip()
        for sentence in _sentences(cell.source):
            plain = MATH.sub("", sentence)
            if TIME_AMOUNT.search(plain) and TIME_CUE.search(plain) and len(sentence) < 400:
                found.append((section, sentence))
    return found


def _literal_text(node) -> str | None:
    """The text of a string-ish AST expression; f-string fields become "…"; None if not text."""
    import ast

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) else "…" for v in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal_text(node.left), _literal_text(node.right)
        if left is not None or right is not None:
            return (left or "…") + (right or "…")
    return None


# the check helpers whose call carries a literal hint, and the position of the hint among their arguments
HINT_POSITION = {"fail": 2, "expect_on_meta": 3}


def check_hints(root, lesson: int, function: str) -> list[str]:
    """The hints that ``course_lib/checks/lessonNN.py``'s ``function`` can give, read from its source.

    The "mistake -> hint" tables (dict literals of strings, in the function or
    module-level ones it names) come as "mistake: hint"; the ``hint`` of each
    ``fail(...)`` call as it is written (f-string fields shown as "…").
    """
    import ast

    path = Path(root) / "course_lib" / "checks" / f"lesson{lesson:02d}.py"
    if not path.exists():
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tables = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    tables[target.id] = node.value
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if func is None:
        return []
    # the function and the module-level helpers it calls (one level deep)
    helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    bodies = [func] + [
        helpers[n.func.id] for n in ast.walk(func)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in helpers
        and n.func.id.startswith("_")
    ]
    hints = []

    def add(text):
        text = " ".join(text.split())
        if len(re.findall(r"[A-Za-z]{2,}", text)) >= 4 and text not in hints:
            hints.append(text)

    def add_table(node):
        for key, value in zip(node.keys, node.values):
            k, v = _literal_text(key) if key is not None else None, _literal_text(value)
            if k is not None and v is not None and " " in v:
                add(f"{k}: {v}")

    for body in bodies:
        for node in ast.walk(body):
            if isinstance(node, ast.Dict):
                add_table(node)
            elif isinstance(node, ast.Name) and node.id in tables:
                add_table(tables.pop(node.id))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in HINT_POSITION:
                pos = HINT_POSITION[node.func.id]
                hint = node.args[pos] if len(node.args) > pos else next(
                    (k.value for k in node.keywords if k.arg == "hint"), None)
                text = _literal_text(hint) if hint is not None else None
                if text is not None:
                    add(text)
    return hints


def _exercise_titles(nb) -> dict[str, str]:
    titles = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                comment = EXERCISE_COMMENT.match(line)
                if comment:
                    titles.setdefault(f"{int(comment['n'])}.{int(comment['m'])}", comment["title"])
    return titles


def instructor_tables(root) -> str:
    """The text of ``instructors/LESSONS.md``, generated from notebooks/, solutions/ and the checks."""
    root = Path(root)
    lessons = _lesson_notebooks(root, "notebooks")
    solutions = _lesson_notebooks(root, "solutions")
    numbers = sorted(set(lessons) | set(solutions))
    read = {n: read_notebook(lessons[n]) for n in lessons}
    sols = {n: read_notebook(solutions[n]) for n in solutions}
    plans = {n: grading_plan(sols[n], solutions[n]) for n in solutions}

    def title(n):
        return _lesson_title(read[n], lessons[n]) if n in read else _lesson_title(sols[n], solutions[n])

    def points(n, kind=None):
        return sum(e.get("points", 0) for e in plans.get(n, []) if kind is None or e["kind"] == kind)

    def fmt(x):
        return f"{x:g}"

    out = [
        "<!-- Generated by `python -m course_lib.authoring instructors` (`make exercises` runs it too) from",
        "     notebooks/, solutions/ and course_lib/checks/. Do not edit by hand: `make check` and",
        "     tests/test_authoring.py fail when this file is out of date. -->",
        "",
        "# Lessons at a glance (generated)",
        "",
        "Everything below is read from the notebooks and the checks, so it cannot drift from them.",
        "The hand-written module plan is in [README.md](README.md).",
        "",
        "## Lessons, run times and points",
        "",
        "Run time: the lesson notebook's own statement (default mode, shipped checkpoints). Points: what",
        "nbgrader's `autograde` awards for the solution notebook (autograded check cells) plus the manually",
        "graded written answers.",
        "",
        "| # | lesson | run time, as the lesson states it | exercises | autograded points | manual points |",
        "|---|---|---|---|---|---|",
    ]
    for n in numbers:
        run_time = stated_run_time(read[n]) if n in read else "no lesson notebook yet"
        exercises = len({e["exercise"] for e in plans.get(n, []) if e["kind"] == "solution"})
        out.append(
            f"| {n:02d} | {_cell(title(n))} | {_cell(run_time)} | {exercises} | "
            f"{fmt(points(n, 'check'))} | {fmt(points(n, 'answer'))} |"
        )
    out += ["", "## Learning objectives", "",
            "From each lesson's \"Learning objectives\" cell in `notebooks/`.", "",
            "| # | lesson | after the lesson a learner can |", "|---|---|---|"]
    for n in numbers:
        objectives = lesson_objectives(read[n]) if n in read else []
        text = "<br>".join(f"• {_cell(o)}" for o in objectives) or "no lesson notebook yet"
        out.append(f"| {n:02d} | {_cell(title(n))} | {text} |")
    out += ["", "## Cells with a stated run time", "",
            "Every sentence in a lesson notebook that says how long something takes (laptop CPU unless it",
            "says otherwise). Colab timings are not measured yet unless a sentence gives one. Use these to",
            "decide which cells to run live in class and which to start before the session.", ""]
    for n in numbers:
        if n not in read:
            continue
        out.append(f"### {n:02d} {title(n)}")
        out.append("")
        rows = timed_cells(read[n])
        out += [f"- *{_cell(section)}*: {_cell(sentence)}" for section, sentence in rows] or ["- none stated"]
        out.append("")
    out += ["## Grading: points per exercise and what the checks catch", "",
            "grade ids are nbgrader's (`exercise-N-M` the answer cell, `check-N-M` its locked test cell,",
            "`answer-N-M` a written answer graded by hand). A check cell scores its points when it runs",
            "without an error; a failed check raises `ExerciseError` with the hint shown to the learner.", ""]
    for n in numbers:
        if n not in plans:
            continue
        nb, plan = sols[n], plans[n]
        titles = _exercise_titles(nb)
        out += [f"### {n:02d} {title(n)}: {fmt(points(n))} points", "",
                "| exercise | title | graded cells | points |", "|---|---|---|---|"]
        for exercise in sorted({e["exercise"] for e in plan}, key=lambda x: int(x.split(".")[1])):
            cells = [e for e in plan if e["exercise"] == exercise]
            ids = ", ".join(f"`{e['grade_id']}`" for e in cells)
            pts = sum(e.get("points", 0) for e in cells)
            out.append(f"| {exercise} | {_cell(titles.get(exercise, ''))} | {ids} | {fmt(pts)} |")
        out.append("")
        for e in plan:
            if e["kind"] != "check":
                continue
            calls = re.findall(r"lesson\d+\.(check_\w+)\s*\(", nb.cells[e["index"]].source)
            for function in calls:
                hints = check_hints(root, n, function)
                out.append(f"**{e['exercise']}** `{function}` can answer:")
                out.append("")
                out += [f"- {_cell(h)}" for h in hints] or ["- (no literal hints found)"]
                out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def write_instructor_tables(root) -> list[Path]:
    root = Path(root)
    if _write_if_changed(root / INSTRUCTORS_TABLES, instructor_tables(root)):
        return [INSTRUCTORS_TABLES]
    return []


def stale_instructor_tables(root) -> list[Path]:
    path = Path(root) / INSTRUCTORS_TABLES
    text = path.read_text(encoding="utf-8") if path.exists() else None
    return [] if text == instructor_tables(root) else [INSTRUCTORS_TABLES]


def check(root) -> list[str]:
    """Every problem in the repository at ``root``, one line each; empty when all is well."""
    root = Path(root)
    problems = []
    for path in stale_exercises(root):
        solution = root / "solutions" / path.name
        if solution.exists():
            problems.append(f"{path}: out of date; run `make exercises`")
        else:
            problems.append(f"{path}: no solutions/{path.name}; delete it or add the solution")
    for path in stale_solutions(root):
        problems.append(f"{path}: nbgrader cell metadata missing or out of date; run `make exercises`")
    if (root / INSTRUCTORS_TABLES.parent).is_dir():
        for path in stale_instructor_tables(root):
            problems.append(f"{path}: out of date; run `make exercises`")
    for path in missing_headers(root):
        problems.append(f"{path}: header cells missing or wrong; run `make headers`")
    for path in notebook_paths(root, SIZE_CHECKED_FOLDERS):
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            problems.append(
                f"{path.relative_to(root)}: {size / 2**20:.1f} MB, over the 2 MB limit; "
                "clear large outputs"
            )
        if has_widget_state(read_notebook(path)):
            problems.append(
                f"{path.relative_to(root)}: widget state saved in metadata; run `make headers`"
            )
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.authoring",
        description="Generate exercises from solutions, stamp notebook headers, check both.",
    )
    parser.add_argument(
        "command",
        choices=("exercises", "headers", "check", "instructors", "nbgrader-source"),
        help="exercises: stamp nbgrader metadata into solutions/, regenerate exercises/ "
        "from solutions/ and instructors/LESSONS.md; headers: stamp the "
        "Colab badge and set-up cell, drop saved widget state; check: exit 1 if "
        "anything is out of date; instructors: regenerate instructors/LESSONS.md only; "
        "nbgrader-source DEST: write DEST/NN_topic/NN_topic.ipynb for every lesson, "
        "ready for `nbgrader generate_assignment NN_topic`",
    )
    parser.add_argument("dest", nargs="?", help="nbgrader-source: the course's source/ folder")
    parser.add_argument("--root", default=".", help="repository root (default: current folder)")
    args = parser.parse_args(argv)
    root = Path(args.root)

    try:
        if args.command == "exercises":
            for path in write_nbgrader_metadata(root):
                print(f"stamped nbgrader metadata into {path}")
            if (root / INSTRUCTORS_TABLES.parent).is_dir():
                for path in write_instructor_tables(root):
                    print(f"wrote {path}")
            changed = write_exercises(root)
            for path in changed:
                print(f"wrote {path}")
            orphans = [p for p in stale_exercises(root) if not (root / "solutions" / p.name).exists()]
            for path in orphans:
                print(f"warning: {path} has no solutions/{path.name}", file=sys.stderr)
            print(f"{len(changed)} exercise notebook(s) changed")
        elif args.command == "instructors":
            changed = write_instructor_tables(root)
            print(f"{INSTRUCTORS_TABLES}: {'written' if changed else 'unchanged'}")
        elif args.command == "nbgrader-source":
            if not args.dest:
                parser.error("nbgrader-source needs DEST, e.g. my-course/source")
            for path in write_nbgrader_source(root, args.dest):
                print(f"wrote {path}")
        elif args.command == "headers":
            changed = stamp_headers(root)
            for path in changed:
                print(f"stamped {path}")
            print(f"{len(changed)} notebook(s) changed")
        else:
            problems = check(root)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                return 1
            print("notebooks OK: exercises up to date, headers present, sizes fine")
    except AuthoringError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
