# mtl: `make pretrain metatrain metatest` runs the whole method; `make test` runs the tests.
# PIPELINE picks the experiment, ARGS passes extra CLI options (e.g. ARGS="--set meta.shot=5").
# `make data DATASET=miniimagenet SOURCE=~/Downloads/mini` prepares a dataset where the pipelines look.
# GPUS=K runs pretrain and metatrain on K GPUs of this machine with torchrun (DistributedDataParallel).

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
PIPELINE    ?= pipelines/glyphs-1shot.yaml
CHECKPOINTS ?= checkpoints
ARGS        ?=
PORT        ?= 6006
DATASET     ?= folder
SOURCE      ?=
DEST        ?= $(HOME)/.cache/mtl/$(DATASET)
GPUS        ?=

STAMP := $(VENV)/.installed
RUN   := $(BIN)/mtl
TRAIN := $(if $(GPUS),$(BIN)/torchrun --standalone --nproc_per_node=$(GPUS) -m mtl,$(RUN))

.PHONY: setup pretrain metatrain metatest ablation compare data report bench gpu-check test lint tensorboard clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-cache-dir -e '.[dev]'
	touch $@

pretrain metatrain: $(STAMP)
	$(TRAIN) $@ $(PIPELINE) --checkpoints $(CHECKPOINTS) $(ARGS)

metatest: $(STAMP)
	$(RUN) $@ $(PIPELINE) --checkpoints $(CHECKPOINTS) $(ARGS)

ablation: $(STAMP)
	$(RUN) ablate $(PIPELINE) --checkpoints $(CHECKPOINTS) $(ARGS)

compare: $(STAMP)
	$(RUN) compare $(PIPELINE) --checkpoints $(CHECKPOINTS) $(ARGS)

data: $(STAMP)
	@test -n "$(SOURCE)" || { echo "error: set SOURCE, e.g. make data DATASET=miniimagenet SOURCE=~/Downloads/mini" >&2; exit 2; }
	$(RUN) data prepare $(DATASET) --source $(SOURCE) --dest $(DEST) $(ARGS)

report: $(STAMP)
	$(RUN) report $(CHECKPOINTS) $(ARGS)

# BENCH= (empty) for the full-size benchmark on a GPU.
BENCH ?= --quick
bench: $(STAMP)
	$(RUN) bench $(BENCH) $(ARGS)

# On a machine with one CUDA GPU: tests, full-size bench, a pipeline slice, projections (gpu-check/).
gpu-check: $(STAMP)
	$(BIN)/python -m mtl.bench.gpu_check gpu-check

test: $(STAMP)
	$(BIN)/pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mtl tests
	$(BIN)/ruff format --check mtl tests

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir $(CHECKPOINTS) --port $(PORT)

clean:
	rm -rf $(VENV) build *.egg-info
