#!/usr/bin/env bash
# End-to-end test of cross/deploy.sh against a real sshd on 127.0.0.1, started here with a
# throwaway host key and user key. The "board" is this machine under a temporary prefix;
# systemctl, useradd and usermod are replaced by a recorder so every call can be checked, and
# sudo by a recorder that runs the command (so the privileged steps are seen to go through
# it). The service user is `nobody` (a test cannot create users): the deployed binary and
# doctor run as that unprivileged user, so wrong modes or owners in a release show up.
# Usage: tests/deploy.sh BINARY   (a teachcam binary for this machine)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:?usage: tests/deploy.sh BINARY}")
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$SSHD" ] || { echo "tests/deploy.sh needs sshd (make setup installs openssh-server)" >&2; exit 2; }

T=$(mktemp -d)
# The unprivileged service user must be able to reach the board's files under $T.
chmod 755 "$T"
SVC=nobody
command -v runuser >/dev/null || { echo "tests/deploy.sh needs runuser (util-linux)" >&2; exit 2; }
PORT=$((20000 + RANDOM % 20000))
cleanup() { [ -f "$T/sshd.pid" ] && kill "$(cat "$T/sshd.pid")" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
pass=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; echo "--- last output:" >&2; cat "$T/out" >&2 || true; exit 1; }

# sshd on loopback, key-only, this user.
ssh-keygen -q -t ed25519 -N '' -f "$T/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$T/user_key"
cp "$T/user_key.pub" "$T/authorized_keys"
chmod 600 "$T/authorized_keys"
mkdir -p /run/sshd 2>/dev/null || true
cat > "$T/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $T/host_key
AuthorizedKeysFile $T/authorized_keys
PidFile $T/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
EOF
"$SSHD" -f "$T/sshd_config" -E "$T/sshd.log"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
export SSH_OPTS="-i $T/user_key -o UserKnownHostsFile=$T/known_hosts -o StrictHostKeyChecking=accept-new"
USER_AT="$(id -un)@127.0.0.1"

# The board: prefix, config, unit dirs, a state dir with something taught, a recorder.
B=$T/board
mkdir -p "$B/run-systemd" "$B/state/samples" "$B/bin"
echo "taught" > "$B/state/samples/00000001.rec"
cat > "$B/bin/record" <<EOF
#!/bin/sh
echo "\$*" >> $B/calls
[ "\$2" = restart ] && [ -f $B/fail-restart ] && exit 1
exit 0
EOF
chmod +x "$B/bin/record"
cat > "$B/bin/sudo" <<EOF
#!/bin/sh
echo "\$*" >> $B/sudo-calls
exec "\$@"
EOF
chmod +x "$B/bin/sudo"
mkdir -p "$B/etc"
# The board's own config (a user's edit): synthetic camera, no GPIO, state under the test dir.
cat > "$B/etc/teachcam.toml" <<EOF
state_dir = "$B/state"
[camera]
uri = "synthetic"
[gpio]
uri = "none"
EOF
cp "$B/etc/teachcam.toml" "$T/config-before"
# systemd's StateDirectory= makes the state directory the service user's.
chown -R "$SVC" "$B/state"

deploy() {
    cross/deploy.sh --port "$PORT" --prefix "$B/opt" --config-dir "$B/etc" --unit-dir "$B/unit" \
        --state-dir "$B/state" --systemctl "$B/bin/record systemctl" --useradd "$B/bin/record useradd" \
        --usermod "$B/bin/record usermod" --sudo "$B/bin/sudo" --service-user "$SVC" \
        --systemd-dir "$B/run-systemd" "$@" "$USER_AT" > "$T/out" 2>&1
}
calls() { cat "$B/calls" 2>/dev/null || true; }
snapshot() { (cd "$B" && find opt unit etc state \( -type f -o -type l \) -printf '%p %s %T@ %l\n' 2>/dev/null | LC_ALL=C sort); }

# Unreachable host.
if cross/deploy.sh --port 1 "$USER_AT" > "$T/out" 2>&1; then fail "deploy to a closed port succeeded"; fi
grep -q "cannot reach" "$T/out" || fail "unreachable host not named"
ok "an unreachable board is refused with a clear message"

# A binary for another architecture (ELF machine patched to AArch64) is refused.
cp "$BIN" "$T/other-arch"
printf '\xb7\x00' | dd of="$T/other-arch" bs=1 seek=18 conv=notrunc status=none
if deploy --binary "$T/other-arch"; then fail "wrong-architecture binary accepted"; fi
grep -q "AArch64" "$T/out" && grep -q "x86_64" "$T/out" || fail "mismatch message"
[ ! -e "$B/opt" ] || fail "a refused deploy created files"
ok "a binary for another architecture is refused before anything is copied"

# No systemd on the board: refused, unless --no-service.
if deploy --binary "$BIN" --systemd-dir "$B/nonexistent"; then fail "deploy without systemd succeeded"; fi
grep -q -- "--no-service" "$T/out" || fail "no-systemd refusal does not offer --no-service"
ok "a board without systemd is refused, --no-service offered"

# First deploy.
deploy --binary "$BIN" || fail "first deploy"
v1=$(readlink "$B/opt/current")
[ -x "$B/opt/current/teachcam" ] && [ -f "$B/opt/current/models/SHA256SUMS" ] || fail "bundle not installed"
[ -f "$B/unit/teachcam.service" ] || fail "unit not installed"
cmp -s "$B/etc/teachcam.toml" "$T/config-before" || fail "the board's config was overwritten"
grep -q "verdict: ready" "$T/out" || fail "doctor verdict not printed"
grep -q "doctor on the board (as $SVC)" "$T/out" || fail "doctor did not run as the service user"
for g in video gpio; do
    if getent group "$g" >/dev/null && ! id -nG "$SVC" | tr ' ' '\n' | grep -qx "$g"; then
        calls | grep -qx "usermod -a -G $g $SVC" || fail "the service user was not added to group $g"
    fi
done
grep -q "sh -c" "$B/sudo-calls" && grep -q "env VERSION=" "$B/sudo-calls" || fail "privileged steps did not go through sudo"
ok "first deploy: $v1 installed, unit installed, config kept, service enabled and restarted, doctor ready"

# The release is usable by the unprivileged service user: root-owned, 0755 directories and
# binary, 0644 files (the stage's 0700 mktemp mode once made the release unusable).
for d in "$B/opt" "$B/opt/releases" "$B/opt/$v1" "$B/opt/$v1/models"; do
    [ "$(stat -c '%a %u' "$d")" = "755 0" ] || fail "$d is $(stat -c '%a %u' "$d"), not 755 root"
done
[ "$(stat -c '%a %u' "$B/opt/$v1/teachcam")" = "755 0" ] || fail "binary mode $(stat -c %a "$B/opt/$v1/teachcam")"
[ "$(stat -c '%a' "$B/opt/$v1/models/SHA256SUMS")" = 644 ] || fail "model file mode"
runuser -u "$SVC" -- "$B/opt/current/teachcam" --version > "$T/out" 2>&1 || fail "the service user cannot run the binary"
runuser -u "$SVC" -- "$B/opt/current/teachcam" info > "$T/out" 2>&1 || fail "the service user cannot load the models"
ok "the release is root-owned, 0755/0644, and $SVC can run the binary and load the models"

# Doctor really runs as the service user: a state directory only root may write is a FAIL.
chown root "$B/state"; chmod 755 "$B/state"
deploy --binary "$BIN" || fail "redeploy for the doctor check"
grep -q "FAIL state" "$T/out" || fail "doctor ran with more rights than the service user"
chown -R "$SVC" "$B/state"
ok "doctor runs as $SVC: a state directory $SVC cannot write is reported"

calls | grep -q "useradd --system" || id -u "$SVC" >/dev/null || fail "service user not created"
for c in "systemctl daemon-reload" "systemctl enable teachcam.service" "systemctl restart teachcam.service"; do
    calls | grep -qx "$c" || fail "missing call: $c"
done
ok "first deploy: systemctl daemon-reload, enable, restart called"

# Second deploy of the same bundle changes nothing.
before=$(snapshot); ncalls=$(calls | wc -l)
deploy --binary "$BIN" || fail "second deploy"
grep -q "nothing to change" "$T/out" || fail "second deploy did not say nothing changed"
[ "$(snapshot)" = "$before" ] || fail "second deploy changed files"
[ "$(calls | wc -l)" = "$ncalls" ] || fail "second deploy called systemctl"
ok "second deploy of the same build changes nothing (files and service untouched)"

# Upgrade to a new build.
cp "$BIN" "$T/v2"; echo "v2" >> "$T/v2"
deploy --binary "$T/v2" || fail "upgrade"
v2=$(readlink "$B/opt/current")
[ "$v2" != "$v1" ] && [ "$(readlink "$B/opt/previous")" = "$v1" ] || fail "upgrade did not switch current/previous"
[ "$(calls | grep -c 'restart')" = 2 ] || fail "upgrade did not restart once"
cmp -s "$B/state/samples/00000001.rec" <(echo taught) || fail "state touched"
ok "upgrade: current -> $v2, previous -> $v1, restarted, taught state untouched"

# Rollback.
deploy --rollback || fail "rollback"
[ "$(readlink "$B/opt/current")" = "$v1" ] && [ "$(readlink "$B/opt/previous")" = "$v2" ] || fail "rollback links"
[ "$(calls | grep -c 'restart')" = 3 ] || fail "rollback did not restart"
ok "rollback: current -> $v1 again, restarted"

# A deploy that fails half-way (the new binary cannot run on the board) changes nothing.
head -c 100000 "$BIN" > "$T/broken"; chmod +x "$T/broken"
before=$(snapshot); ncalls=$(calls | wc -l)
if deploy --binary "$T/broken"; then fail "broken binary deployed"; fi
grep -q "still runs" "$T/out" || fail "failure message does not say what runs"
[ "$(snapshot)" = "$before" ] || fail "failed deploy left changes"
[ "$(calls | wc -l)" = "$ncalls" ] || fail "failed deploy touched the service"
ok "a deploy that fails verification leaves the previous version running and nothing behind"

# A deploy whose service does not come up is switched back.
cp "$BIN" "$T/v3"; echo "v3" >> "$T/v3"
touch "$B/fail-restart"
if deploy --binary "$T/v3"; then fail "deploy with a failing restart succeeded"; fi
rm "$B/fail-restart"
[ "$(readlink "$B/opt/current")" = "$v1" ] || fail "not switched back after a failed restart: $(readlink "$B/opt/current")"
grep -q "runs .* again" "$T/out" || fail "switch-back not reported"
ok "a deploy whose service fails to restart is switched back to $v1"

# --no-service on a board without systemd installs without touching systemctl.
ncalls=$(calls | wc -l)
deploy --binary "$T/v2" --no-service --systemd-dir "$B/nonexistent" || fail "--no-service deploy"
[ "$(calls | wc -l)" = "$ncalls" ] || fail "--no-service called systemctl"
ok "--no-service installs without systemctl"

echo "deploy test: $pass checks passed"
