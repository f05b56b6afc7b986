# `make run`: set up .venv and run the main job on the embedded default.
# `make test`: set up .venv and run the whole test suite offline.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Debian's browser, for the bench report's render test
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STUDENTS ?= runs/students/a runs/students/b

.PHONY: run test bench-teacher bench-compress bench-report bench-label bench-pipeline clean

# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build. uv then installs the
# rest (about 15 s, against 2 to 3 minutes for pip), with torch pinned again so that nothing can replace it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile torch==2.13.0 uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]" torch==2.13.0
	touch $(STAMP)

# the main job: `slm run` on the bundled demo with the default budgets (cached: a rerun reuses finished stages)
run: $(STAMP)
	$(BIN)/slm run --data slmkit/demo/train.csv --test slmkit/demo/test.csv --out runs/demo-run

# two workers (pytest-xdist): each test file stays on one worker (tests/conftest.py groups them)
test: $(STAMP) $(CHROMIUM)
	SLMKIT_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -n 2 --dist loadgroup

# Installed only when missing (a file target: nothing runs once it exists). Playwright drives it; its own
# browser download is never used. Without apt-get the render test skips locally (and fails in CI).
$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; \
	else echo "no apt-get: install chromium at $(CHROMIUM) for the report render test"; fi

bench-teacher: $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,bench]"
	$(BIN)/python benchmarks/teacher.py --keep runs/bench-models

# needs the fine-tuned models that bench-teacher keeps in runs/bench-models
bench-compress: $(STAMP)
	$(BIN)/python benchmarks/compress.py --models runs/bench-models

# needs the teacher that bench-teacher keeps and two student directories: make bench-report STUDENTS="DIR DIR"
bench-report: $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,bench]"
	$(BIN)/python benchmarks/bench_report.py --teacher runs/bench-models/banking77 --students $(STUDENTS)

# active learning and label-error detection on banking77 (reads ../shared/data; caches embeddings under runs/)
bench-label: $(STAMP)
	$(BIN)/python benchmarks/label_quality.py

# `slm run` from scratch with the default settings on banking77 and SST-2 (reads ../shared/data; an idle machine:
# about 1.5 to 2 hours on 2 vCPUs); writes benchmarks/results/pipeline.md and .json, run directories under runs/bench-pipeline/
bench-pipeline: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
