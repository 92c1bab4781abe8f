# The two commands a reader needs on a fresh Linux machine with Python 3.11, 3.12 or 3.13:
#   make book   -> the HTML book in _build/html (from the outputs stored in the chapters)
#   make test   -> unit tests, every chapter re-executed and compared by nbval, the book build
# Run `make help` for the other targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
# The Python versions the project supports and CI tests (.github/workflows/test.yml), newest first.
PYTHONS := 3.13 3.12 3.11
# The interpreter that creates $(VENV): the newest supported one among python3.13, python3.12, python3.11 and
# python3 that runs and can create a virtual environment (skipped: a pyenv shim of an inactive version, a
# Debian Python without python3-venv).
PYTHON ?= $(shell for c in $(addprefix python,$(PYTHONS)) python3; do \
	$$c -c 'import ensurepip, sys; sys.exit("%d.%d" % sys.version_info[:2] not in "$(PYTHONS)".split())' 2>/dev/null && command -v $$c && break; done)
# Marks a finished install; redone when the dependencies or their pins change.
STAMP := $(VENV)/.installed
# The exact versions to install; `CONSTRAINTS=` installs the loose requirements of pyproject.toml.
CONSTRAINTS ?= constraints.txt
# Notebooks for `make execute` (default: every chapter).
NB ?=
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`; each test file (each chapter) stays on one worker.
PYTEST_JOBS ?= 2

MATHJAX_VERSION ?= 3.2.2
MATHJAX_DIR := _deps/mathjax-site/_static/mathjax
MATHJAX := $(MATHJAX_DIR)/es5/tex-mml-chtml.js

# What `make check` lints and format-checks (ruff, settings in pyproject.toml).
LINT_PATHS := going_modular tools tests benchmarks book/_ext notebooks

.PHONY: help install mathjax book check unit test browser export execute experiments bench lock clean

help:
	@echo "make book      build the HTML book into _build/html (no execution)"
	@echo "make check     the fast gate (seconds): going_modular/ is a fresh export, ruff lint and format check"
	@echo "make unit      the fast tier (under 2 min): tests that need no notebook, subprocess or browser"
	@echo "make test      run the unit tests, nbval over every chapter and the book build"
	@echo "make export    regenerate going_modular/ from the chapters"
	@echo "make execute   re-execute chapters in place (NB=notebooks/02_x.ipynb for one)"
	@echo "make experiments  run every experiment's missing or stale records into results/ (resumable)"
	@echo "make bench     measure the speed tables of book/speed.md (minutes; close other programs first)"
	@echo "make lock      re-pin constraints.txt from the current $(VENV)"
	@echo "make clean     remove build outputs and downloads (keeps $(VENV))"

# Checked before anything is created: an unsupported or missing Python stops here.
$(BIN)/python:
	@version=$$($(or $(PYTHON),false) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	case " $(PYTHONS) " in *" $$version "*) ;; *) \
	  echo "error: the supported Python versions are $(PYTHONS); $(if $(PYTHON),PYTHON=$(PYTHON) is $${version:-not a Python that runs},no supported python3.X or python3 was found on PATH). Set PYTHON=/path/to/python3.X" >&2; exit 1;; \
	esac
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $@

install: $(STAMP)

# MathJax 3 from the npm registry, unpacked where _config.yml's html_extra_path serves it.
$(MATHJAX):
	rm -rf _deps/mathjax.tmp && mkdir -p _deps/mathjax.tmp/_static/mathjax
	cd _deps/mathjax.tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar -xzf _deps/mathjax.tmp/mathjax-$(MATHJAX_VERSION).tgz -C _deps/mathjax.tmp/_static/mathjax \
		--strip-components=1 package/es5 package/LICENSE
	rm _deps/mathjax.tmp/mathjax-$(MATHJAX_VERSION).tgz
	rm -rf _deps/mathjax-site && mv _deps/mathjax.tmp _deps/mathjax-site

mathjax: $(MATHJAX)

book: $(STAMP) $(MATHJAX)
	$(BIN)/jupyter-book build . -W -n --keep-going

# Run before every commit. Fix with `make export`, `$(BIN)/ruff check --fix` and `$(BIN)/ruff format`.
# All four run, so one pass reports every problem; the target fails if any of them failed.
# actionlint checks the GitHub Actions workflows (with shellcheck on their scripts, when it is installed).
check: $(STAMP)
	@status=0; \
	echo "== export check"; $(BIN)/python tools/nbexport.py --check || status=1; \
	echo "== ruff check"; $(BIN)/python -m ruff check --output-format concise $(LINT_PATHS) || status=1; \
	echo "== ruff format --check"; $(BIN)/python -m ruff format --check --output-format concise $(LINT_PATHS) || status=1; \
	echo "== actionlint"; $(BIN)/actionlint .github/workflows/*.yml || status=1; \
	exit $$status

# The fast tier: no notebook kernel, no subprocess, no browser (the tests marked slow are left out).
unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(PYTEST_JOBS) -m "not slow" tests $(PYTEST_ARGS)

test: $(STAMP) $(MATHJAX) browser
	@# The digits checkpoint that several chapters read: made once here (about 20 s when missing), so
	@# that chapters running in parallel never train and write it at the same time.
	cd notebooks && HF_HUB_OFFLINE=1 $(abspath $(BIN))/python -c "from going_modular.training import digits_checkpoint; digits_checkpoint()"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

# Debian's Chromium and ChromeDriver for the browser tests (tests/test_book.py): installed when missing
# and this is Debian as root; otherwise those tests are skipped, and under CI=true a skip fails them.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	  else \
	    echo "note: no Chromium, and not root on Debian to install it: the browser tests will be skipped"; \
	  fi; \
	fi

export: $(STAMP)
	$(BIN)/python tools/nbexport.py

execute: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python tools/run_notebooks.py $(NB)

# The stored records of chapters 10-12 (results/NAME.jsonl): every run without a current record, on
# $(EXPERIMENT_JOBS) processes of one thread; interrupted, it continues where it stopped. Delete
# results/ to redo everything. `DEVICE=cuda` runs on a GPU (keep those records apart: RESULTS=results/gpu).
EXPERIMENT_JOBS ?= 2
DEVICE ?= cpu
RESULTS ?= results
experiments: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/vit-experiment --results $(RESULTS) run --all --stale --jobs $(EXPERIMENT_JOBS) --device $(DEVICE)

# The stored tables of book/speed.md: ours against torchvision and timm, and the NumPy forward pass.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/speed.py --markdown book/_generated/speed_cpu.md --figure book/_generated/speed_cpu.png
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/numpy_forward.py --threads 1 --processes 6 --markdown book/_generated/numpy_cpu.md

lock: $(STAMP)
	{ echo "# The tested environment, pinned exactly: pip install -c constraints.txt -e \".[dev]\""; \
	  echo "# Regenerate with \`make lock\` (made with Python $$($(BIN)/python -c 'import platform; print(platform.python_version())'), x86_64 Linux;"; \
	  echo "# one file for Python $(PYTHONS): CI installs it on each)."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^going[-_]modular'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)

clean:
	rm -rf _build _deps build *.egg-info
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf
