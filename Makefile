# The two commands: `make demo` and `make test` (`make test-browser`: the browser test). Both build .venv from scratch when it
# is missing and reuse it when pyproject.toml has not changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PARAMS ?= params/default.yaml

.PHONY: demo test test-browser venv clean-venv lint findings

# what JupyterLab adds to a notebook it saves, besides outputs, counts and cell ids (which
# nbstripout strips anyway): the commit filter and `make lint` strip these too, so a template
# opened and saved in JupyterLab stays unchanged in git
NBSTRIPOUT_KEYS = metadata.language_info metadata.vscode cell.metadata.jupyter cell.metadata.trusted cell.metadata.execution

venv: $(STAMP)

# torch is installed first and pinned, so pip never resolves an unpinned (CUDA) build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/nbstripout --install --attributes .gitattributes || true
	git config filter.nbstripout.extrakeys "$(NBSTRIPOUT_KEYS)" || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dasd-run --params $(PARAMS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The tests marked `browser` (left out of `make test`): JupyterLab driven by Selenium in
# headless Debian chromium. Installs chromium and chromium-driver with apt-get when missing
# (sudo unless root) and the `browser` extra (selenium) into .venv.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER_STAMP := $(VENV)/.installed-browser

$(BROWSER_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e ".[browser]"
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	fi
	$(BIN)/python -m pytest -q -m browser

# ruff (pyflakes, syntax, and the weight-loading rules of pyproject.toml) over the library,
# notebooks, benchmarks and tests; the notebook templates must hold no outputs
lint: $(STAMP)
	$(BIN)/ruff check dasd_lib notebooks benchmarks tests
	$(BIN)/nbstripout --verify --extra-keys "$(NBSTRIPOUT_KEYS)" notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)

# docs/findings.md from the study sweeps' run folders (params/study/*.yaml, run them first)
findings: $(STAMP)
	$(BIN)/python -m dasd_lib.findings --sweeps-dir reports/sweeps --out docs/findings.md
