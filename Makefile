# Diffusion Models from Scratch: set-up, lessons and tests in two commands.
#
#   make lab     create the environment if missing, open JupyterLab on lesson 01
#   make test    the same environment, then every test (unit tests + notebooks)
#
# Override on the command line, e.g. for CPU-only torch wheels on Linux:
#   make lab TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
TORCH_PIP_ARGS ?=
PYTEST_WORKERS ?= 2

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env lab test test-unit test-notebooks test-gpu exercises headers check clean distclean

env: $(STAMP)

# Torch is installed first, pinned, so that installing course_lib's unpinned
# "torch" requirement never triggers a different (huge) download.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) $(TORCH_PIN)
	$(BIN)/python -m pip install -e ".[lab,test]"
	touch $@

# Jupyter refuses to start as root (containers, some cloud VMs) unless told --allow-root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

# Served from the repository root, so that notebooks/, exercises/ and solutions/ are all in the file
# browser (a file argument alone would make its folder the root); lesson 01 opens first.
# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of spinning while they wait. On a busy
# 2-core machine spinning threads fight each other: a U-Net forward pass ran 11-18 evaluations/s with two
# spinning threads against 54-155 with two passive ones (53-55 on one thread) at load 4-5.
lab: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/jupyter lab $(ALLOW_ROOT) --ServerApp.root_dir="$(CURDIR)" \
		"$(CURDIR)/notebooks/01_forward_process.ipynb"

# COURSE_FAST=1 shrinks steps, data and sample counts (course_lib.budget).
# OMP_NUM_THREADS=1: the two pytest workers already fill both cores; two torch threads each
# oversubscribe them (measured 11 vs 82 network evaluations/s under load).
# Two pytest runs, both always run; `make test` fails if either fails.
#  * unit tests (tests/), spread over the workers module by module, with the
#    Agg backend.  MPLBACKEND is set for this run only: a Jupyter kernel
#    inherits the environment, and with MPLBACKEND set it would not use the
#    inline backend (figures would never be shown or closed).
#  * notebooks/ and solutions/ with nbval: each notebook runs top to bottom in
#    its own kernel (--dist loadscope keeps a notebook's cells on one worker).
#    --nbval-lax: a cell fails only if it raises; outputs are compared only in
#    cells marked "# NBVAL_CHECK_OUTPUT", after tests/nbval_sanitize.cfg.
#    exercises/ is not run here (its notebooks stop on NotImplementedError).
NOTEBOOKS := $(wildcard notebooks/*.ipynb solutions/*.ipynb)
NOTEBOOK_DIRS := $(sort $(dir $(NOTEBOOKS)))

test: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory test-unit || status=1; \
	$(MAKE) --no-print-directory test-notebooks || status=1; \
	exit $$status

test-unit: $(STAMP)
	COURSE_FAST=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadscope tests

test-notebooks: $(STAMP)
ifeq ($(strip $(NOTEBOOKS)),)
	@echo "test-notebooks: no notebooks in notebooks/ or solutions/ yet"
else
	COURSE_FAST=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadscope \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		$(NOTEBOOK_DIRS)
endif

# The GPU check, for anyone with a CUDA GPU: tools/gpu-check.sh with this environment's python (the bench on the
# GPU at batch 64 and 512, then every lesson and solution in default mode under nbval, one notebook at a time with
# its wall-clock time, and a Markdown table in /tmp/gpu-check/table.md). Fails without a GPU rather than silently
# measuring the CPU.
test-gpu: $(STAMP)
	PYTHON=$(BIN)/python tools/gpu-check.sh

# Instructors: solutions/ is the source; exercises/ is generated from it.
exercises: $(STAMP)
	$(BIN)/python -m course_lib.authoring exercises

headers: $(STAMP)
	$(BIN)/python -m course_lib.authoring headers

check: $(STAMP)
	$(BIN)/python -m course_lib.authoring check

# Caches only; `make distclean` also deletes the environment.
clean:
	rm -rf .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
