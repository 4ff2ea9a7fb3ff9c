"""Authoring tools: keep exercises, solutions and notebook headers in step.

Run from the repository root::

    python -m course_lib.authoring exercises   # regenerate exercises/ from solutions/
    python -m course_lib.authoring headers     # stamp the Colab badge + set-up cell
                                               # (and drop saved widget state)
    python -m course_lib.authoring check       # fail (exit 1) if anything is out of date

(``make exercises`` and ``make headers`` run the first two.)

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

# Metadata that only records a past run (widget state, execution timings).
CELL_METADATA_TO_STRIP = ("widgets", "execution")
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
        choices=("exercises", "headers", "check"),
        help="exercises: regenerate exercises/ from solutions/; headers: stamp the "
        "Colab badge and set-up cell, drop saved widget state; check: exit 1 if "
        "anything is out of date",
    )
    parser.add_argument("--root", default=".", help="repository root (default: current folder)")
    args = parser.parse_args(argv)
    root = Path(args.root)

    try:
        if args.command == "exercises":
            changed = write_exercises(root)
            for path in changed:
                print(f"wrote {path}")
            orphans = [p for p in stale_exercises(root) if not (root / "solutions" / p.name).exists()]
            for path in orphans:
                print(f"warning: {path} has no solutions/{path.name}", file=sys.stderr)
            print(f"{len(changed)} exercise notebook(s) changed")
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
