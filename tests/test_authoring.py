"""Tests for course_lib.authoring and the environment files.

The unit tests build small notebooks in memory with ``nbformat.v4``; the
repository tests at the end check the real notebooks/, solutions/ and
exercises/ folders (which may still be empty).
"""

import re
import shlex
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_lib import authoring

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib
from course_lib.authoring import (
    BRANCH,
    REPO_SLUG,
    SETUP_MARKER,
    AuthoringError,
    check,
    has_header,
    make_exercise,
    missing_headers,
    notebook_text,
    stale_exercises,
    stamp_header,
    write_exercises,
)

REPO = Path(__file__).resolve().parents[1]

SOLUTION_CODE = '''\
import torch

# Exercise 3.1: the posterior mean
def posterior_mean(x0, x_t, coef0, coef_t):
    """mu_tilde, Ho et al. (2020) eq. 7"""
    ### BEGIN SOLUTION
    mean = coef0 * x0 + coef_t * x_t
    return mean
    ### END SOLUTION

helper = 42  # untouched
'''

SECOND_CELL = """\
class Model:
    def forward(self, x):
        # Exercise 3.2: the forward pass
        ### BEGIN SOLUTION
        return x * 2
        ### END SOLUTION

    def extra(self):
        ### BEGIN SOLUTION
        return 0
        ### END SOLUTION
"""

TOP_LEVEL = """\
### BEGIN SOLUTION
answer = 17
### END SOLUTION
print(answer)"""


def solution_notebook():
    """A small solution notebook: code with markers, a markdown answer, outputs."""
    code = new_code_cell(SOLUTION_CODE, id="code-1", execution_count=3)
    code.outputs = [new_output("stream", name="stdout", text="secret output\n")]
    code.metadata["widgets"] = {"state": {}}
    code.metadata["execution"] = {"iopub.execute_input": "2024-01-01T00:00:00Z"}
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Lesson 3: DDPM", id="title"),
            code,
            new_code_cell(SECOND_CELL, id="code-2", execution_count=4),
            new_markdown_cell(
                "Why does the variance shrink?\n"
                "<!-- BEGIN SOLUTION -->\nBecause beta_t is small.\n<!-- END SOLUTION -->\n"
                "Keep this line.",
                id="md-answer",
            ),
            new_markdown_cell(
                "<!-- BEGIN SOLUTION -->\nA whole-cell answer.\n<!-- END SOLUTION -->",
                id="md-whole",
            ),
            new_code_cell(TOP_LEVEL, id="code-3", execution_count=5),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def cell(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id)


# ---------------------------------------------------------------------------
# make_exercise
# ---------------------------------------------------------------------------
def test_blocks_become_numbered_stubs_with_indentation_and_titles():
    ex = make_exercise(solution_notebook(), "solutions/03_ddpm.ipynb")
    first = cell(ex, "code-1").source
    assert '    raise NotImplementedError("Exercise 3.1: the posterior mean")\n' in first
    second = cell(ex, "code-2").source
    assert '        raise NotImplementedError("Exercise 3.2: the forward pass")\n' in second
    # No comment of its own: the default title, and not the previous block's title.
    assert (
        '        raise NotImplementedError("Exercise 3.3: replace this line with your solution")\n'
        in second
    )
    third = cell(ex, "code-3").source
    assert third.startswith(
        'raise NotImplementedError("Exercise 3.4: replace this line with your solution")\n'
    )
    for c in ex.cells:
        assert "BEGIN SOLUTION" not in c.source and "END SOLUTION" not in c.source
    assert "coef0 * x0" not in first and "x * 2" not in second and "answer = 17" not in third


def test_lesson_number_comes_from_the_file_name():
    nb = new_notebook(cells=[new_code_cell(TOP_LEVEL)])
    ex = make_exercise(nb, "solutions/12_later.ipynb")
    assert ex.cells[-1].source.startswith('raise NotImplementedError("Exercise 12.1: replace this')
    with pytest.raises(AuthoringError, match="03_topic"):
        make_exercise(nb, "no_number.ipynb")
    # A title comment whose lesson number disagrees with the file name is an error.
    with pytest.raises(AuthoringError, match="Exercise 3.1"):
        make_exercise(solution_notebook(), "12_later.ipynb")


def test_code_outside_markers_is_untouched():
    ex = make_exercise(solution_notebook(), "03_ddpm.ipynb")
    stub = '    raise NotImplementedError("Exercise 3.1: the posterior mean")\n'
    start = SOLUTION_CODE.index("    ### BEGIN SOLUTION")
    end = SOLUTION_CODE.index("    ### END SOLUTION\n") + len("    ### END SOLUTION\n")
    assert cell(ex, "code-1").source == SOLUTION_CODE[:start] + stub + SOLUTION_CODE[end:]
    assert cell(ex, "code-3").source.endswith("\nprint(answer)")
    assert cell(ex, "title").source == "# Lesson 3: DDPM"


def test_markdown_solutions_are_removed():
    ex = make_exercise(solution_notebook(), "03_ddpm.ipynb")
    md = cell(ex, "md-answer").source
    assert "Because beta_t is small" not in md and "SOLUTION" not in md
    assert md == "Why does the variance shrink?\nKeep this line."
    whole = cell(ex, "md-whole").source
    assert "whole-cell answer" not in whole and whole.strip()  # a place to answer remains


def test_outputs_execution_counts_and_widget_state_are_cleared():
    nb = solution_notebook()
    ex = make_exercise(nb, "03_ddpm.ipynb")
    for c in ex.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
        assert "widgets" not in c.metadata and "execution" not in c.metadata
    assert "widgets" not in ex.metadata
    assert ex.metadata["kernelspec"]["name"] == "python3"
    assert "secret output" not in notebook_text(ex)
    # The solution itself is not modified.
    assert cell(nb, "code-1").outputs and "widgets" in nb.metadata


def test_exercise_is_deterministic_and_keeps_cell_ids():
    a = notebook_text(make_exercise(solution_notebook(), "03_ddpm.ipynb"))
    b = notebook_text(make_exercise(solution_notebook(), "03_ddpm.ipynb"))
    assert a == b
    ex = nbformat.reads(a, as_version=4)
    ids = [c.id for c in ex.cells]
    assert ids[:2] == ["colab-badge", "colab-setup"]
    assert ids[2:] == [c.id for c in solution_notebook().cells]
    nbformat.validate(ex)


def test_exercise_of_an_exercise_is_unchanged():
    once = make_exercise(solution_notebook(), "03_ddpm.ipynb")
    twice = make_exercise(once, "03_ddpm.ipynb")
    assert notebook_text(once) == notebook_text(twice)


def test_exercise_gets_a_header_pointing_to_exercises():
    ex = make_exercise(stamp_header(solution_notebook(), "solutions/03_ddpm.ipynb"),
                       "solutions/03_ddpm.ipynb")
    assert has_header(ex, "exercises/03_ddpm.ipynb")
    assert "/blob/main/exercises/03_ddpm.ipynb" in ex.cells[0].source
    assert sum(SETUP_MARKER in c.source for c in ex.cells) == 1


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1\n", "without an END"),
        ("x = 1\n### END SOLUTION\n", "without a BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested"),
        ("# Exercise 3.2: wrong number\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n",
         "Exercise 3.2"),
    ],
)
def test_bad_markers_raise(source, message):
    nb = new_notebook(cells=[new_code_cell(source)])
    with pytest.raises(AuthoringError, match=message):
        make_exercise(nb, "03_ddpm.ipynb")


def test_unbalanced_markdown_markers_raise():
    nb = new_notebook(cells=[new_markdown_cell("<!-- BEGIN SOLUTION -->\nhidden")])
    with pytest.raises(AuthoringError, match="unbalanced"):
        make_exercise(nb, "03_ddpm.ipynb")


def test_title_with_quotes_makes_valid_python():
    source = '# Exercise 1.1: the "closed form" \\ q\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n'
    ex = make_exercise(new_notebook(cells=[new_code_cell(source)]), "01_forward.ipynb")
    code = ex.cells[-1].source
    with pytest.raises(NotImplementedError, match=r'Exercise 1\.1: the "closed form" \\ q'):
        exec(compile(code, "<exercise>", "exec"), {})


# ---------------------------------------------------------------------------
# stamp_header
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["notebooks", "solutions", "exercises"])
def test_header_links_to_the_notebook_itself(folder):
    nb = stamp_header(new_notebook(cells=[new_markdown_cell("# Title")]), f"{folder}/02_x.ipynb")
    badge, setup, title = nb.cells
    url = (f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{BRANCH}"
           f"/{folder}/02_x.ipynb")
    assert badge.cell_type == "markdown" and f"]({url})" in badge.source
    assert "colab-badge.svg" in badge.source
    assert setup.cell_type == "code" and setup.source.splitlines()[0] == SETUP_MARKER
    assert 'if "google.colab" in sys.modules:' in setup.source
    assert f'!pip install -q "course_lib @ git+https://github.com/{REPO_SLUG}@{BRANCH}"' in setup.source
    assert title.source == "# Title"
    assert has_header(nb, f"{folder}/02_x.ipynb")
    other = "solutions" if folder != "solutions" else "notebooks"
    assert not has_header(nb, f"{other}/02_x.ipynb")


def test_header_stamping_is_idempotent_and_replaces_old_headers():
    nb = new_notebook(cells=[new_markdown_cell("# Title"), new_code_cell("x = 1")])
    once = stamp_header(nb, "notebooks/01_a.ipynb")
    twice = stamp_header(once, "notebooks/01_a.ipynb")
    assert notebook_text(once) == notebook_text(twice)
    assert len(twice.cells) == 4
    moved = stamp_header(once, "solutions/01_a.ipynb")  # e.g. a copied notebook
    assert len(moved.cells) == 4 and "/solutions/01_a.ipynb" in moved.cells[0].source
    assert [c.source for c in moved.cells[2:]] == ["# Title", "x = 1"]


def test_setup_cell_is_valid_ipython():
    from IPython.core.inputtransformer2 import TransformerManager

    nb = stamp_header(new_notebook(), "notebooks/01_a.ipynb")
    python = TransformerManager().transform_cell(nb.cells[1].source)
    compile(python, "<setup>", "exec")  # the !pip line became get_ipython().system(...)
    assert "get_ipython().system" in python


def test_header_upgrades_old_notebooks_with_cell_ids():
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nb.nbformat_minor = 4
    del nb.cells[0]["id"]
    stamped = stamp_header(nb, "notebooks/01_a.ipynb")
    nbformat.validate(stamped)
    assert stamped.cells[2].id == stamp_header(nb, "notebooks/01_a.ipynb").cells[2].id


# ---------------------------------------------------------------------------
# Repository-level functions on a throw-away repository
# ---------------------------------------------------------------------------
def write_nb(path, nb):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(notebook_text(nb), encoding="utf-8")


@pytest.fixture
def repo(tmp_path):
    solution = solution_notebook()
    del solution.metadata["widgets"], cell(solution, "code-1").metadata["widgets"]
    write_nb(tmp_path / "solutions" / "03_ddpm.ipynb",
             stamp_header(solution, "solutions/03_ddpm.ipynb"))
    write_nb(tmp_path / "notebooks" / "03_ddpm.ipynb",
             stamp_header(new_notebook(cells=[new_markdown_cell("# DDPM")]), "notebooks/03_ddpm.ipynb"))
    return tmp_path


def test_generated_exercises_are_fresh_and_regeneration_is_stable(repo):
    assert stale_exercises(repo) == [Path("exercises/03_ddpm.ipynb")]  # missing
    assert write_exercises(repo) == [Path("exercises/03_ddpm.ipynb")]
    assert stale_exercises(repo) == []
    before = (repo / "exercises" / "03_ddpm.ipynb").read_bytes()
    assert write_exercises(repo) == []
    assert (repo / "exercises" / "03_ddpm.ipynb").read_bytes() == before


def test_stale_exercises_reports_a_hand_edited_exercise(repo):
    write_exercises(repo)
    path = repo / "exercises" / "03_ddpm.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell(nb, "code-3").source = "answer = 17\nprint(answer)"  # a learner's answer saved in place
    write_nb(path, nb)
    assert stale_exercises(repo) == [Path("exercises/03_ddpm.ipynb")]


def test_stale_exercises_reports_an_exercise_without_a_solution(repo):
    write_exercises(repo)
    write_nb(repo / "exercises" / "04_ddim.ipynb", stamp_header(new_notebook(), "exercises/04_ddim.ipynb"))
    assert stale_exercises(repo) == [Path("exercises/04_ddim.ipynb")]


def test_stale_exercises_reports_a_changed_solution(repo):
    write_exercises(repo)
    path = repo / "solutions" / "03_ddpm.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell(nb, "code-3").source = TOP_LEVEL.replace("print(answer)", "print(answer + 1)")
    write_nb(path, nb)
    assert stale_exercises(repo) == [Path("exercises/03_ddpm.ipynb")]


def test_check_passes_on_a_clean_repo_and_flags_each_problem(repo):
    assert authoring.main(["exercises", "--root", str(repo)]) == 0
    assert check(repo) == []
    assert authoring.main(["check", "--root", str(repo)]) == 0

    # A notebook without header cells.
    write_nb(repo / "notebooks" / "04_ddim.ipynb", new_notebook(cells=[new_markdown_cell("# DDIM")]))
    assert missing_headers(repo) == [Path("notebooks/04_ddim.ipynb")]
    # Widget state saved in a solution.
    nb = nbformat.read(repo / "solutions" / "03_ddpm.ipynb", as_version=4)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    write_nb(repo / "solutions" / "03_ddpm.ipynb", nb)
    # An oversized notebook (a huge embedded output).
    big = stamp_header(new_notebook(cells=[new_code_cell("x")]), "notebooks/05_big.ipynb")
    big.cells[-1].outputs = [new_output("stream", name="stdout", text="x" * (3 * 2**20))]
    write_nb(repo / "notebooks" / "05_big.ipynb", big)

    problems = "\n".join(check(repo))
    assert "notebooks/04_ddim.ipynb: header" in problems
    assert "solutions/03_ddpm.ipynb: widget state" in problems
    assert "notebooks/05_big.ipynb" in problems and "2 MB" in problems
    assert "notebooks/03_ddpm.ipynb" not in problems
    assert authoring.main(["check", "--root", str(repo)]) == 1

    # `headers` fixes what it can: header cells and saved widget state.
    assert authoring.main(["headers", "--root", str(repo)]) == 0
    assert missing_headers(repo) == []
    assert "widget state" not in "\n".join(check(repo))


# ---------------------------------------------------------------------------
# nbgrader metadata in solutions/
# ---------------------------------------------------------------------------
def graded_notebook():
    """solution_notebook() plus two check cells (one worth 3 points) and a plain cell."""
    nb = solution_notebook()
    nb.cells.insert(2, new_code_cell("lesson03.check_posterior_mean(posterior_mean)", id="check-a"))
    nb.cells.insert(4, new_code_cell("# points: 3\ncourse_lib.checks.lesson03.check_forward(Model)", id="check-b"))
    nb.cells.append(new_code_cell("from course_lib.checks import lesson03\nprint('not a check')", id="plain"))
    return nb


def nbgrader_meta(nb, cell_id):
    return cell(nb, cell_id).metadata.get("nbgrader")


def test_stamp_nbgrader_marks_solution_answer_and_check_cells():
    nb = authoring.stamp_nbgrader(graded_notebook(), "solutions/03_ddpm.ipynb")
    base = {"schema_version": 3, "task": False}
    assert nbgrader_meta(nb, "code-1") == {**base, "grade": False, "grade_id": "exercise-3-1",
                                           "locked": False, "solution": True}
    # A cell with two blocks (3.2 and 3.3) is one solution cell, named after its first block.
    assert nbgrader_meta(nb, "code-2")["grade_id"] == "exercise-3-2"
    assert nbgrader_meta(nb, "code-3")["grade_id"] == "exercise-3-4"
    assert nbgrader_meta(nb, "check-a") == {**base, "grade": True, "grade_id": "check-3-1",
                                            "locked": True, "points": 1, "solution": False}
    assert nbgrader_meta(nb, "check-b")["grade_id"] == "check-3-3"  # the last block above it
    assert nbgrader_meta(nb, "check-b")["points"] == 3
    # Markdown answers: nbgrader requires them graded (a "manually graded answer").
    assert nbgrader_meta(nb, "md-answer") == {**base, "grade": True, "grade_id": "answer-3-3",
                                              "locked": False, "points": 1, "solution": True}
    assert nbgrader_meta(nb, "md-whole")["grade_id"] == "answer-3-3-2"
    for cell_id in ("title", "plain"):
        assert nbgrader_meta(nb, cell_id) is None


def test_stamp_nbgrader_is_deterministic_idempotent_and_drops_stale_metadata():
    nb = graded_notebook()
    cell(nb, "title").metadata["nbgrader"] = {"grade": True, "grade_id": "old", "points": 5}
    once = authoring.stamp_nbgrader(nb, "03_ddpm.ipynb")
    assert nbgrader_meta(once, "title") is None
    twice = authoring.stamp_nbgrader(once, "03_ddpm.ipynb")
    assert notebook_text(once) == notebook_text(twice)
    assert notebook_text(once) == notebook_text(authoring.stamp_nbgrader(graded_notebook(), "03_ddpm.ipynb"))
    assert "nbgrader" not in cell(graded_notebook(), "code-1").metadata  # input untouched
    nbformat.validate(once)


def test_stamped_metadata_passes_nbgraders_own_validator():
    validator = pytest.importorskip("nbgrader.nbgraderformat").MetadataValidator()
    nb = authoring.stamp_nbgrader(graded_notebook(), "03_ddpm.ipynb")
    validator.validate_nb(nb)
    for c in nb.cells:
        validator.validate_cell(c)


def test_exercises_carry_no_nbgrader_metadata():
    stamped = authoring.stamp_nbgrader(graded_notebook(), "solutions/03_ddpm.ipynb")
    ex = make_exercise(stamped, "solutions/03_ddpm.ipynb")
    assert notebook_text(ex) == notebook_text(make_exercise(graded_notebook(), "solutions/03_ddpm.ipynb"))
    assert all("nbgrader" not in c.metadata for c in ex.cells)


def test_nbgrader_delimiter_outside_a_marker_line_is_refused():
    # nbgrader finds "BEGIN SOLUTION" anywhere in a line; the course only on its own line.
    nb = new_notebook(cells=[new_code_cell('print("### BEGIN SOLUTION here")')])
    with pytest.raises(AuthoringError, match="outside a marker line"):
        authoring.stamp_nbgrader(nb, "03_ddpm.ipynb")


def test_nbgrader_source_links_its_badge_to_exercises():
    nb = stamp_header(graded_notebook(), "solutions/03_ddpm.ipynb")
    source = authoring.nbgrader_source(nb, "solutions/03_ddpm.ipynb")
    assert has_header(source, "exercises/03_ddpm.ipynb")
    assert nbgrader_meta(source, "check-a")["grade_id"] == "check-3-1"


def test_solutions_metadata_staleness_and_stamping(repo):
    path = repo / "solutions" / "03_ddpm.ipynb"
    assert authoring.stale_solutions(repo) == [Path("solutions/03_ddpm.ipynb")]
    write_exercises(repo)
    assert "solutions/03_ddpm.ipynb: nbgrader cell metadata" in "\n".join(check(repo))
    assert authoring.write_nbgrader_metadata(repo) == [Path("solutions/03_ddpm.ipynb")]
    before = path.read_bytes()
    assert authoring.write_nbgrader_metadata(repo) == [] and path.read_bytes() == before
    assert authoring.stale_solutions(repo) == [] and check(repo) == []
    # Stamping the solution does not change the generated exercise.
    assert stale_exercises(repo) == []


# ---------------------------------------------------------------------------
# instructors/LESSONS.md
# ---------------------------------------------------------------------------
def test_objectives_and_run_time_are_read_from_the_lesson():
    nb = new_notebook(cells=[
        new_markdown_cell("# 07 · A lesson\n\nIntro.\n\n## Learning objectives\n\n- first thing;\n"
                          "- second thing, over\n  two lines.\n\n*Run time:* about 2 minutes on a CPU."),
        new_markdown_cell("## 3. Train\n\nSome text. **This cell takes 10 to 30 s on a 2-core CPU.** More."),
    ])
    assert authoring.lesson_objectives(nb) == ["first thing;", "second thing, over two lines."]
    assert authoring.stated_run_time(nb) == "Run time: about 2 minutes on a CPU."
    assert ("3. Train", "This cell takes 10 to 30 s on a 2-core CPU.") in authoring.timed_cells(nb)


def test_instructor_tables_list_points_and_are_checked_when_instructors_exists(repo):
    write_nb(repo / "notebooks" / "03_ddpm.ipynb", stamp_header(new_notebook(cells=[
        new_markdown_cell("# 03 · DDPM\n\n## Learning objectives\n\n- sample by ancestral sampling")]),
        "notebooks/03_ddpm.ipynb"))
    text = authoring.instructor_tables(repo)
    assert "| 03 | DDPM |" in text and "sample by ancestral sampling" in text
    assert "| 3.1 | the posterior mean | `exercise-3-1` | 0 |" in text
    assert "| 0 | 2 |" in text  # no check cells, two written answers of 1 point
    assert authoring.main(["exercises", "--root", str(repo)]) == 0
    assert not (repo / "instructors").exists() and check(repo) == []
    (repo / "instructors").mkdir()
    assert "instructors/LESSONS.md: out of date" in "\n".join(check(repo))
    assert authoring.main(["exercises", "--root", str(repo)]) == 0
    assert (repo / "instructors" / "LESSONS.md").read_text() == text and check(repo) == []


def test_check_hints_are_read_from_the_checks():
    hints = authoring.check_hints(REPO, 1, "check_alpha_bar_from_betas")
    assert any(h.startswith("the product of the betas: multiply the alphas") for h in hints)
    # the device probe's hint (expect_on_meta's fourth argument) is listed for instructors too
    hints = authoring.check_hints(REPO, 7, "check_drop_labels")
    assert any(h.startswith("your function created a tensor on the CPU while y was on another device") for h in hints)


# ---------------------------------------------------------------------------
# Environment files agree
# ---------------------------------------------------------------------------
def requirement_name(requirement):
    name = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_spec(requirement):
    return re.sub(r"\s+", "", requirement[len(re.match(r"^\s*[A-Za-z0-9._-]+", requirement).group(0)):])


def environment_pip_lines():
    """The entries of environment.yml's ``pip:`` list (a tiny YAML subset parser)."""
    lines = (REPO / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    entries = []
    for line in lines[start + 1:]:
        stripped = line.split(" #")[0].strip() if not line.strip().startswith("#") else ""
        if not stripped:
            continue
        if len(line) - len(line.lstrip()) <= indent:
            break
        assert stripped.startswith("- "), line
        entry = stripped[2:].strip()
        if len(entry) > 1 and entry[0] == entry[-1] and entry[0] in "'\"":
            entry = entry[1:-1]  # a quoted entry; quotes inside (environment markers) stay
        entries.append(entry)
    return entries


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_yml_and_pyproject_list_the_same_packages():
    project = pyproject()["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    entries = environment_pip_lines()
    editable = [e for e in entries if e.startswith("-e")]
    listed = [e for e in entries if not e.startswith("-")]

    assert {requirement_name(r) for r in listed} == {requirement_name(r) for r in declared}
    # Where pyproject constrains a version, environment.yml says the same.
    env_specs = {requirement_name(r): requirement_spec(r) for r in listed}
    for requirement in declared:
        if requirement_spec(requirement):
            assert env_specs[requirement_name(requirement)] == requirement_spec(requirement), requirement
    # course_lib itself is installed with every extra pyproject defines.
    assert len(editable) == 1
    extras = re.search(r"\[(.*)\]", editable[0]).group(1).split(",")
    assert sorted(extras) == sorted(project["optional-dependencies"])


def test_environment_yml_and_makefile_pin_the_same_torch():
    makefile = (REPO / "Makefile").read_text()
    pin = re.search(r"^TORCH_PIN\s*\?=\s*(.+)$", makefile, re.MULTILINE).group(1)
    pins = shlex.split(pin)
    env = [e for e in environment_pip_lines()
           if not e.startswith("-") and requirement_name(e) in ("torch", "torchvision")]
    assert sorted(pins) == sorted(env) and len(pins) == 2


def test_package_data_includes_the_pretrained_folder():
    config = pyproject()["tool"]["setuptools"]
    patterns = config["package-data"]["course_lib"]
    assert {"pretrained/*.pt", "pretrained/*.json", "pretrained/*.md"} <= set(patterns)


# ---------------------------------------------------------------------------
# The repository's own notebooks
# ---------------------------------------------------------------------------
def test_every_notebook_in_the_repository_has_the_header():
    assert missing_headers(REPO) == [], "run `make headers`"


def test_committed_exercises_are_up_to_date():
    assert stale_exercises(REPO) == [], "run `make exercises`"


def test_committed_solutions_carry_up_to_date_nbgrader_metadata():
    assert authoring.stale_solutions(REPO) == [], "run `make exercises`"


def test_committed_instructor_tables_are_up_to_date():
    assert authoring.stale_instructor_tables(REPO) == [], "run `make exercises`"


def test_repository_passes_the_authoring_check():
    assert check(REPO) == []
