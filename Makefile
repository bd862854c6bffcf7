# Two commands on a fresh machine: `make run` (install + serve) and `make test` (install + test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench checkpoint clean python-check system-deps-run system-deps-test

# The default checkpoint recipe (checkpoints/tiny/MODEL_CARD.md): data, training, held-out evaluation.
TRAIN_CLIPS ?= 1200
TRAIN_STEPS ?= 6000

# Fails with one line on a Python older than the project's (pyproject requires-python).
python-check:
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "microturn: needs Python >= 3.11, but $(PY) is $$( { $(PY) -V; } 2>/dev/null || echo missing); install one and run: make PY=python3.11 $(MAKECMDGOALS)" >&2; exit 1; }

# Debian packages (scripts/system-deps.sh): one dpkg-query when present, apt-get as root when not.
system-deps-run: python-check
	@PY=$(PY) bash scripts/system-deps.sh run

system-deps-test: python-check
	@PY=$(PY) bash scripts/system-deps.sh test

$(STAMP): pyproject.toml | system-deps-run
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned in pyproject (a bare `torch` pulls a multi-GB CUDA build)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: system-deps-run $(STAMP)
	$(BIN)/microturn serve

test: system-deps-test $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python tests/bench/bench_model.py
	$(BIN)/python tests/bench/bench_engine.py
	$(BIN)/python tests/bench/bench_scale.py

checkpoint: $(STAMP)
	$(BIN)/python -m model.data.generate --out data/synth --n $(TRAIN_CLIPS) --split train --seed 0 --workers 2
	$(BIN)/python -m model.data.generate --out data/synth --n 80 --split heldout --seed 1 \
		--scenarios pause,turn_taking,interruption,timed_speech
	$(BIN)/python -m model.eval.dialogues --dialogues data/synth/heldout --root data/fdbench-heldout --max-per-task 20
	$(BIN)/microturn train --preset tiny --data data/synth/train --out runs/tiny --steps $(TRAIN_STEPS) \
		--batch-size 6 --crop-turns 40 --lr 2e-3 --export checkpoints/tiny
	# speak-gate thresholds from a validation split (seed 2), never from the test split
	$(BIN)/python -m model.data.generate --out data/synth-val --n 40 --split heldout --seed 2 \
		--scenarios pause,turn_taking,interruption,timed_speech
	$(BIN)/python -m model.eval.dialogues --dialogues data/synth-val/heldout --root data/fdbench-heldout-val --max-per-task 10
	$(BIN)/python -m model.eval.calibrate --checkpoint checkpoints/tiny --root data/fdbench-heldout-val \
		--starts 0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7 --keep-ratios 1,0.5 --pause-max smart-turn --write --out checkpoints/tiny/eval
	$(BIN)/microturn eval --root data/fdbench-heldout --checkpoint checkpoints/tiny --out checkpoints/tiny/eval

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
