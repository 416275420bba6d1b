#!/usr/bin/env bash
# Cross builds for the boards, and their checks and tests under qemu-user.
#
#   cross/cross.sh setup-host            install what a host build needs (libclang, for the
#                                        V4L2 bindings); a no-op when it is there
#   cross/cross.sh setup-test            also what the host tests need (chromium and its
#                                        driver, mosquitto and its clients, openssl)
#   cross/cross.sh setup                 also what the cross builds and ARM tests need (Debian
#                                        packages, rustup targets, zig + cargo-zigbuild from PyPI
#                                        in .venv-cross)
#   cross/cross.sh packages STEP         the Debian packages STEP installs (no install)
#   cross/cross.sh build  aarch64|armv7  release binary linked against glibc 2.27 (JetPack 4 /
#                                        Ubuntu 18.04 and newer), copied to dist/
#   cross/cross.sh check  aarch64|armv7  highest GLIBC symbol version <= 2.27, tract's ARM kernels
#                                        really linked in, size
#   cross/cross.sh test   aarch64|armv7  the unit tests, built for the board, run under qemu
#                                        (aarch64: on a Cortex-A76, then on a Cortex-A72)
#   cross/cross.sh smoke  aarch64|armv7  the board binary under qemu vs the host binary on the same
#                                        images with the shipped model and a head: cosine and class
#
# Builds use the release profile for both the binary and the unit tests, so dependencies are
# compiled once per target. Called by `make setup`, `make cross`, `make test-arm`.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.27
VENV=.venv-cross
# Cargo's output directory (a shared CARGO_TARGET_DIR is honoured).
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export PATH="$PWD/$VENV/bin:$PATH"

triple() {
    case "$1" in
        aarch64) echo aarch64-unknown-linux-gnu ;;
        armv7) echo armv7-unknown-linux-gnueabihf ;;
        *) echo "unknown target '$1' (use aarch64 or armv7)" >&2; exit 2 ;;
    esac
}
sysroot() { case "$1" in aarch64) echo /usr/aarch64-linux-gnu ;; armv7) echo /usr/arm-linux-gnueabihf ;; esac; }
qemu() { case "$1" in aarch64) echo qemu-aarch64 ;; armv7) echo qemu-arm ;; esac; }

# Environment for one target: bindgen (nokhwa's V4L2 bindings) reads the board's kernel
# headers from the Debian cross sysroot; cargo runs test binaries through qemu; tract is
# told which CPU to pick kernels for, as its own CI does.
target_env() {
    local t; t=$(triple "$1")
    local up; up=$(echo "$t" | tr 'a-z-' 'A-Z_')
    local sr; sr=$(sysroot "$1")
    # cargo-zigbuild sets the underscore form of this variable for zig's own sysroot, which
    # lacks linux/videodev2.h; bindgen reads the dashed form first.
    # (A dashed name cannot be exported by bash: `cargo_for` passes it through env.)
    BINDGEN_ARG="BINDGEN_EXTRA_CLANG_ARGS_${t}=--sysroot=$sr -I$sr/include"
    export "CARGO_TARGET_${up}_RUNNER=$(qemu "$1") -L $sr"
    # qemu-user shows the guest the host's /proc/cpuinfo, so tract cannot read a CPU part and
    # is told the kind a board gets: a Pi 5's A76 (part 0xd0b) is unknown to tract, so
    # "generic" (dot product then comes from HWCAP). Not a55 or a75: tract assumes dot product
    # for those whatever HWCAP says.
    export TRACT_CPU_ARM32_NEON=${TRACT_CPU_ARM32_NEON:-true}
    export TRACT_CPU_AARCH64_KIND=${TRACT_CPU_AARCH64_KIND:-generic}
    # The emulated CPU: a Pi 5 core (Cortex-A76: NEON and dot product, no SVE) and a Pi 2/3
    # 32-bit core. qemu's default "max" CPU has 512-bit SVE2, which tract then uses and qemu
    # emulates about ten times slower than NEON. `test aarch64` also runs a Pi 4 core.
    case "$1" in
        aarch64) export QEMU_CPU=${QEMU_CPU:-cortex-a76} ;;
        armv7) export QEMU_CPU=${QEMU_CPU:-cortex-a7} ;;
    esac
}

cargo_for() { env "$BINDGEN_ARG" cargo "$@"; }

need() {
    for c in "$@"; do
        command -v "$c" >/dev/null || { echo "missing $c: run 'make setup' first" >&2; exit 2; }
    done
}

bin_path() { echo "$TARGET_DIR/$(triple "$1")/release/teachcam"; }

# Install the Debian packages given that are missing.
apt_install() {
    command -v dpkg >/dev/null || { echo "not a Debian system: install $* by hand" >&2; return 0; }
    local missing=""
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -n "$missing" ] || return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing$missing"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
}

# The Debian packages each step needs. A build (`make build`, `make demo`) needs only
# libclang (nokhwa's V4L2 bindings); the browser and the broker are for tests.
packages() {
    case "$1" in
        setup-host) echo libclang-dev ;;
        # tests/browser.py drives chromium; tests/mqtt.rs, the client-certificate test and
        # make bench-fleet run a real broker, its clients, and a CA made at test time.
        setup-test) echo chromium chromium-driver mosquitto mosquitto-clients openssl ;;
        setup) echo clang qemu-user gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
            openssh-server openssh-client binutils python3-venv gcc libc6-dev ;;
    esac
}

case "${1:-}" in
packages)
    # What a step would install (tests check that a build installs no test service).
    packages "${2:-}"
    ;;
setup-host)
    # shellcheck disable=SC2046
    apt_install $(packages setup-host)
    ;;
setup-test)
    # shellcheck disable=SC2046
    apt_install $(packages setup-host) $(packages setup-test)
    ;;
setup)
    # shellcheck disable=SC2046
    apt_install $(packages setup-host) $(packages setup-test) $(packages setup)
    rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf >/dev/null
    if [ ! -x "$VENV/bin/cargo-zigbuild" ] || ! cmp -s cross/requirements.txt "$VENV/.installed"; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check -r cross/requirements.txt
        cp cross/requirements.txt "$VENV/.installed"
    fi
    echo "setup: ok (zig $("$VENV/bin/python" -m ziglang version), $(cargo-zigbuild --version))"
    ;;
build)
    need cargo-zigbuild
    target_env "$2"
    t=$(triple "$2")
    start=$(date +%s)
    # CROSS_FEATURES=hw: the same build without the default `mqtt` feature (to measure it).
    # shellcheck disable=SC2086
    cargo_for zigbuild --release --locked --target "$t.$GLIBC" \
        ${CROSS_FEATURES:+--no-default-features --features "$CROSS_FEATURES"}
    mkdir -p dist
    # DIST_NAME: another name in dist/ (make profile-arm's build with symbols).
    cp "$(bin_path "$2")" "dist/${DIST_NAME:-teachcam-$2}"
    echo "build $2: $(( $(date +%s) - start )) s (whole cargo process)"
    ;;
check)
    b=$(bin_path "$2")
    [ -x "$b" ] || { echo "no $b: run 'make cross' first" >&2; exit 2; }
    python3 cross/check_binary.py --arch "$2" --max-glibc "$GLIBC" \
        --build-dir "$TARGET_DIR/$(triple "$2")/release/build" "$b"
    ;;
test)
    need cargo-zigbuild "$(qemu "$2")"
    target_env "$2"
    arch=$2
    unit_tests() {
        echo "unit tests for $arch under $(qemu "$arch") -cpu $QEMU_CPU (TRACT_CPU_AARCH64_KIND=$TRACT_CPU_AARCH64_KIND, TRACT_CPU_ARM32_NEON=$TRACT_CPU_ARM32_NEON)"
        start=$(date +%s)
        env "$BINDGEN_ARG" cargo-zigbuild test --release --locked --lib \
            --target "$(triple "$arch").$GLIBC"
        echo "unit tests for $arch -cpu $QEMU_CPU: $(( $(date +%s) - start )) s"
    }
    unit_tests
    if [ "$arch" = aarch64 ]; then
        # A Pi 4 / Jetson Nano core: no dot product, so tract takes its SMLAL int8 kernels
        # instead of SDOT (qemu's cortex-a72 would stop on an SDOT as an illegal instruction).
        # Only the environment of cargo's runner changes, so the test binary is reused. All
        # the unit tests (about 8 s under qemu), not a filtered subset: a filter that stops
        # matching after a rename would pass silently with 0 tests.
        QEMU_CPU=cortex-a72 TRACT_CPU_AARCH64_KIND=a72 unit_tests
    fi
    ;;
smoke)
    need "$(qemu "$2")"
    b=$(bin_path "$2")
    [ -x "$b" ] || { echo "no $b: run 'make cross' first" >&2; exit 2; }
    host=${HOST_BIN:-$TARGET_DIR/release/teachcam}
    [ -x "$host" ] || { echo "no host build $host: run 'make build' first" >&2; exit 2; }
    target_env "$2"
    python3 cross/smoke.py --host "$host" \
        --board "$(qemu "$2") -L $(sysroot "$2") $b" --arch "$2"
    ;;
*)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
