# Two commands on a fresh machine: `make run` (install + serve) and `make test` (install + test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench checkpoint clean python-check system-deps-run system-deps-test

# The default checkpoint recipe (checkpoints/tiny/MODEL_CARD.md): data, training, held-out evaluation.
TRAIN_CLIPS ?= 2100
VISUAL_CLIPS ?= 600
TRAIN_STEPS ?= 2500
# the turn-taking scenarios and FD-bench's tasks twice as often as the rest
TRAIN_SCENARIOS ?= turn_taking,pause,interruption,monologue,timed_speech,turn_taking,pause,interruption,monologue,backchannel,delegation,typed_text,refusal,noise_silence,timed_speech
EVAL_SCENARIOS ?= pause,turn_taking,interruption,timed_speech,monologue
# issue 10's camera and cue scenarios, trained in the same run
VISUAL_SCENARIOS ?= rep_counting,visual_alert,visual_question,cue_speak

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

# the synthesizers that make the data (espeak-ng, MBROLA, flite) are in the test target's packages
checkpoint: system-deps-test $(STAMP)
	$(BIN)/python -m model.data.generate --out data/synth --n $(TRAIN_CLIPS) --split train --seed 0 --workers 2 \
		--scenarios $(TRAIN_SCENARIOS)
	$(BIN)/python -m model.data.generate --out data/synth-vis --n $(VISUAL_CLIPS) --split train --seed 10 --workers 2 \
		--scenarios $(VISUAL_SCENARIOS)
	# validation (seed 2, 12): best-checkpoint selection and gate calibration; never the test split (seed 1, 11)
	$(BIN)/python -m model.data.generate --out data/val/turns --n 100 --split heldout --seed 2 --workers 2 \
		--scenarios $(EVAL_SCENARIOS)
	$(BIN)/python -m model.data.generate --out data/val/visual --n 40 --split heldout --seed 12 --workers 2 \
		--scenarios $(VISUAL_SCENARIOS)
	$(BIN)/python -m model.data.generate --out data/synth --n 100 --split heldout --seed 1 --workers 2 \
		--scenarios $(EVAL_SCENARIOS)
	$(BIN)/python -m model.data.generate --out data/synth-vis --n 60 --split heldout --seed 11 --workers 2 \
		--scenarios $(VISUAL_SCENARIOS)
	$(BIN)/python -m model.eval.dialogues --dialogues data/synth/heldout --root data/fdbench-heldout --max-per-task 20
	$(BIN)/python -m model.eval.dialogues --dialogues data/synth-vis/heldout --root data/fdbench-heldout --max-per-task 15
	$(BIN)/python -m model.eval.dialogues --dialogues data/val/turns/heldout --root data/fdbench-heldout-val --max-per-task 10
	mkdir -p data/train-all && ln -sfn ../synth/train data/train-all/turns && ln -sfn ../synth-vis/train data/train-all/visual
	$(BIN)/microturn train --preset tiny --data data/train-all --val-data data/val --out runs/tiny \
		--steps $(TRAIN_STEPS) --batch-size 6 --crop-turns 40 --lr 2e-3 --select turn --export checkpoints/tiny
	$(BIN)/python -m model.eval.calibrate --checkpoint checkpoints/tiny --root data/fdbench-heldout-val \
		--starts 0.1,0.2,0.3,0.4,0.5,0.6 --keep-ratios 1,0.5 --voices none,0.3,0.5,0.7 --pause-max 0.10 \
		--write --out checkpoints/tiny/eval
	$(BIN)/microturn eval --root data/fdbench-heldout --checkpoint checkpoints/tiny --out checkpoints/tiny/eval --fdbench-scoring
	$(BIN)/python -m model.eval.intelligibility --checkpoint checkpoints/tiny --dialogues data/synth/heldout \
		--json checkpoints/tiny/eval/intelligibility.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
