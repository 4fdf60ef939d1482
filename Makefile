# Two entry points that work on a fresh machine with Python 3.11: `make repro` and `make test`.
# Setup is idempotent: the venv is (re)installed only when requirements.txt is newer than it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `dvc plots show/diff` page with vega inlined; .dvc/config's plots.html_template points here.
PLOTS_TEMPLATE := .cache/dvc-plots/template.html
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# dvc.yaml commands run `python -m stages.<name>`: make it the venv's python.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
HOST ?= 127.0.0.1
PORT ?= 5000
TUNE_PORT ?= 8080
# `make lab-server`: PostgreSQL + MLflow server for a group (docs/lab.md)
LAB_DIR ?= .lab
LAB_HOST ?= 127.0.0.1
LAB_PORT ?= 5000
LAB_PG_PORT ?= 5432
LAB_PUBLIC_HOST ?= $(shell hostname -f 2>/dev/null || hostname)

.PHONY: setup browser postgres repro test test-fast ui ui-check tune-ui bench compare lab-server lab-stop lab-user

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Built from the npm packages pinned in pfcvr/report/plots_page.py; rebuilt only when that file changes.
$(PLOTS_TEMPLATE): pfcvr/report/plots_page.py | $(STAMP)
	$(PY) -m pfcvr.report.plots_page

setup: $(STAMP) $(PLOTS_TEMPLATE)

repro: setup  ## run the whole DVC pipeline
	$(VENV)/bin/dvc repro

browser:  ## headless Chromium for the browser tests (Debian package; installed only when missing)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	    else echo "note: install Chromium to run the MLflow UI test (it is skipped without it)"; fi; }

postgres:  ## Debian's PostgreSQL for the lab-server test (installed only when missing)
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	    else echo "note: install PostgreSQL to run the lab-server test (it is skipped without it)"; fi; }

test: setup browser postgres  ## the whole test suite (CI runs exactly this)
	$(PY) -m pytest -q

test-fast: setup  ## everything but the end-to-end runs
	$(PY) -m pytest -q -m "not slow"

ui: setup  ## MLflow UI over the repository's store; prints the ablation and compare pages
	@MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db $(PY) -m pfcvr.tracking \
	  --ui-urls http://$(HOST):$(PORT) || true
	@echo "(Ctrl-C to stop)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host $(HOST) --port $(PORT) --workers 1

lab-server: setup postgres  ## a group's PostgreSQL + MLflow server in LAB_DIR (docs/lab.md); prints what members set
	$(PY) -m pfcvr.tracking.lab start --dir $(LAB_DIR) --host $(LAB_HOST) --port $(LAB_PORT) \
	  --pg-port $(LAB_PG_PORT) --public-host $(LAB_PUBLIC_HOST)

lab-user: setup  ## an MLflow account NAME=... on the running lab server; prints that member's lines
	$(PY) -m pfcvr.tracking.lab add-user $(NAME) --dir $(LAB_DIR) --public-host $(LAB_PUBLIC_HOST)

lab-stop: setup  ## stop the lab servers of LAB_DIR (the data stays)
	$(PY) -m pfcvr.tracking.lab stop --dir $(LAB_DIR)

tune-ui: setup  ## Optuna dashboard over the study storage (OPTUNA_STORAGE overrides ./optuna.db)
	@$(PY) -m pfcvr.tuning.dashboard $(HOST) $(TUNE_PORT)

ui-check: setup browser  ## real server + offline headless Chromium over ./mlflow.db; 2 screenshots
	$(PY) -m tests.support.uicheck --store sqlite:///$(CURDIR)/mlflow.db --figures reports/figures

# `make compare`: every column of `dvc exp show` is dropped but the experiment, the params (the
# top-level sections of params.yaml; --only-changed keeps those that differ) and the test.<variant>
# cells of reports/compare.json (kept even when equal). tests/test_compare.py checks the list.
PARAM_SECTIONS := seed|data|parts|model|pretrain|train|eval|ablations|report|tune|tracking
compare: setup  ## DVC experiments side by side in 120 columns: changed params, test R1 / mAP per variant
	@echo "test.<variant> = test R1 / mAP (%, best-on-val checkpoint, mean over seeds)"
	$(VENV)/bin/dvc exp show --no-pager --only-changed --keep '^test\.' --drop '^(?!Experiment$$|(params\.yaml:)?($(PARAM_SECTIONS))(\.|$$))'

bench: setup  ## speed and memory benchmarks (print ratios); presets.py is their shared data
	for b in benchmarks/*.py; do case "$$b" in benchmarks/presets.py|benchmarks/learnability.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; done
