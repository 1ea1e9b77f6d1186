# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chanloss-installed

.PHONY: demo test bench report docs lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel (PyTorch's CPU index), so that nothing pulls a CUDA build;
	# one retry: where that index cannot be reached, pip's configured mirrors answer at once
	$(PY) -m pip install --quiet --retries 1 torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Two pytest workers with one torch thread each: the machine has 2 cores.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

demo: $(STAMP)
	$(PY) -m chanloss demo

bench: $(STAMP)
	$(PY) tools/run_benchmarks.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build dist src/*.egg-info

report: $(STAMP)
	$(PY) tools/results_page.py

docs: $(STAMP)
	$(PY) -m chanloss.config.reference > docs/configuration.md
