#!/usr/bin/env bash
# The systemd unit's exposure as rated by `systemd-analyze security` must be 3.0 or lower
# ("OK"). Offline (no running systemd needed); skipped with a message where the command or
# its --offline option (systemd 250+) is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=cross/teachcam.service
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "skip systemd-analyze security: systemd-analyze is not installed"; exit 0
fi
if ! systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    echo "skip systemd-analyze security: this systemd has no --offline mode"; exit 0
fi
out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1 || true)
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for teachcam.service: \([0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
    printf '%s\n' "$out" >&2; echo "FAIL systemd-analyze security: no score for $unit" >&2; exit 1
fi
if ! awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
    printf '%s\n' "$out" | grep '✗' >&2 || true
    echo "FAIL systemd-analyze security: $unit exposure $score, above 3.0" >&2; exit 1
fi
echo "ok   systemd-analyze security: $unit exposure $score (at most 3.0)"
