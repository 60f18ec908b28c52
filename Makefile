# One-command set-up, demo and tests. Everything installs from requirements.lock
# (CPU torch 2.13.0 pinned), so CI and a fresh machine resolve the same versions.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-output
ARCHIVE := demo-archive

.PHONY: install demo test test-slow bench clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m medcodec.warmup  # compile the kernels now, in parallel, not on first use
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m jobs.demo --out $(DEMO) --archive $(ARCHIVE)

# `make test`: everything but the tests marked slow (the sweeps over every real file beyond
# a sample, multi-process and pipeline rehearsals); `make test-slow` runs those. CI runs both.
test: install
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -n 2 -q -m slow

bench: install
	$(BIN)/medarchive bench pydicom --runs 3

clean:
	rm -rf $(VENV) $(DEMO) $(ARCHIVE) .pytest_cache .hypothesis
