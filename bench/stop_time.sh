#!/usr/bin/env bash
# make bench-stop: how long `teachcam run` takes to exit on SIGTERM in the middle of a long
# fine-tune (12 000 samples, train.budget_s = 600), against the unit's TimeoutStopSec=15.
# usage: bench/stop_time.sh TEACHCAM_BINARY [PER_CLASS=4000]
set -euo pipefail
BIN=$(realpath "$1"); PER=${2:-4000}
D=$(mktemp -d /tmp/teachcam-stop.XXXX); trap 'rm -rf "$D"' EXIT; cd "$D"
"$BIN" synth data --train "$PER" --val 0 --seed 5 >/dev/null
"$BIN" dataset import --state state data/train -q
printf 'classes = ["ball", "block", "ring"]\n[train]\nbudget_s = 600\n' > cfg.toml
for delay in 1.5 2.0 3.0; do
    # A press 1 s after the start begins a fine-tune on every sample; SIGTERM $delay s later.
    "$BIN" run --config cfg.toml --state state --camera synthetic:1000 --fps 10 \
        --gpio script:1000@2 -v > run.log 2>&1 &
    pid=$!
    until grep -q 'running with' run.log; do sleep 0.05; done
    sleep "$delay"
    tuned=$(grep -c 'fine-tuned' run.log || true)
    t0=$(date +%s%N); kill -TERM $pid; rc=0; wait $pid || rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "SIGTERM ${delay} s after start ($(( PER * 3 )) samples, fine-tunes finished before it: $tuned): exit $rc after $ms ms"
done
