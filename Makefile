# `make run`: set up .venv and run the main job on the embedded default.
# `make test`: set up .venv and run the whole test suite offline.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test bench-teacher bench-compress clean

# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/slm demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench-teacher: $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,bench]"
	$(BIN)/python benchmarks/teacher.py --keep runs/bench-models

# needs the fine-tuned models that bench-teacher keeps in runs/bench-models
bench-compress: $(STAMP)
	$(BIN)/python benchmarks/compress.py --models runs/bench-models

clean:
	rm -rf $(VENV) runs .pytest_cache
