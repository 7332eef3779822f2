# The two commands: `make demo` and `make test`. Both build .venv from scratch when it
# is missing and reuse it when pyproject.toml has not changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PARAMS ?= params/default.yaml

.PHONY: demo test venv clean-venv lint findings

venv: $(STAMP)

# torch is installed first and pinned, so pip never resolves an unpinned (CUDA) build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/nbstripout --install --attributes .gitattributes || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dasd-run --params $(PARAMS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (pyflakes, syntax, and the weight-loading rules of pyproject.toml) over the library,
# notebooks, benchmarks and tests; the notebook templates must hold no outputs
lint: $(STAMP)
	$(BIN)/ruff check dasd_lib notebooks benchmarks tests
	$(BIN)/nbstripout --verify notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)

# docs/findings.md from the study sweeps' run folders (params/study/*.yaml, run them first)
findings: $(STAMP)
	$(BIN)/python -m dasd_lib.findings --sweeps-dir reports/sweeps --out docs/findings.md
