# One entry point for set-up, the demo, the tests and the benchmarks.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
DEMO_DIR ?= demo
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# openai-whisper ships only an sdist whose setup.py imports pkg_resources, so it is built
# without isolation, against setuptools<81, after everything else is in place.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install -q -U pip "setuptools<81" wheel
	$(BIN)/pip install -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/pip install -c $(CONSTRAINTS) --no-build-isolation openai-whisper
	# numba's on-disk cache of librosa's gufuncs, written once here, not raced by parallel workers
	$(BIN)/python -c "from stages.diarize.vocal import warm_compile_caches; warm_compile_caches()"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/emo demo --dir $(DEMO_DIR)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
