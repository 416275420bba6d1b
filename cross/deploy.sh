#!/usr/bin/env bash
# Install teachcam on a board over ssh, or roll it back.
#
#   cross/deploy.sh [options] user@host            install the build matching the board
#   cross/deploy.sh [options] --rollback user@host return to the previous installed version
#
# What it does: asks the board for its architecture (uname -m) and picks dist/teachcam-aarch64,
# dist/teachcam-armv7 (from `make cross`) or, for an x86_64 machine, target/release/teachcam;
# bundles the binary, models/, the systemd unit and the default config with a checksum
# manifest; the version is the package version plus the manifest's hash, so the same bundle is
# the same version. The bundle is unpacked into PREFIX/releases/.incoming-VERSION, verified on
# the board (checksums, and the binary must run there) and only then renamed to
# PREFIX/releases/VERSION; PREFIX/current is switched atomically (symlink + rename), the old
# target kept as PREFIX/previous. The unit is installed when it differs, the config only when
# there is none (your edits stay), the state directory is never touched. Then the service is
# enabled and restarted; if it does not restart, current is switched back and the old version
# restarted. Finishes with `teachcam doctor` on the board, run as the service user (so it sees
# what the service will: its groups, its access to the state directory and devices). Running it
# twice changes nothing the second time.
#
# Privileges: log in as a user with passwordless sudo (e.g. pi@board); only the steps that
# write system paths (release, unit, config, service user, systemctl) run through `sudo -n`.
# A root login works too and then uses no sudo. Installed files are owned by root with fixed
# modes (directories and the binary 0755, other files 0644), whatever the modes and owners of
# the files on this machine: the service user must be able to read and run them, and nobody
# but root may change them.
#
# Options (defaults in brackets):
#   --port N            ssh port [22]
#   --prefix DIR        install prefix on the board [/opt/teachcam]
#   --config-dir DIR    [/etc/teachcam]       --unit-dir DIR   [/etc/systemd/system]
#   --state-dir DIR     only for creating the service user's home [/var/lib/teachcam]
#   --binary FILE       ship this binary instead of picking one (its ELF machine must match)
#   --no-service        install only: no unit, no systemctl (boards without systemd)
#   --systemctl CMD     [systemctl]   --useradd CMD [useradd]   --usermod CMD [usermod]
#   --systemd-dir DIR   [/run/systemd/system]
#                       (replaceable so the end-to-end test can record what would be run)
#   --sudo CMD          how to become root on the board [none when logged in as root, else sudo -n]
#   --service-user NAME the user the service runs as [teachcam]; the unit says User=teachcam,
#                       so only the end-to-end test, which cannot create users, changes this
# Environment: SSH_OPTS, extra options for ssh (e.g. "-i key -o UserKnownHostsFile=...").
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=22 PREFIX=/opt/teachcam CONFIG_DIR=/etc/teachcam UNIT_DIR=/etc/systemd/system
STATE_DIR=/var/lib/teachcam BINARY="" NO_SERVICE=0 ROLLBACK=0
SYSTEMCTL=systemctl USERADD=useradd USERMOD=usermod SYSTEMD_DIR=/run/systemd/system
SUDO=auto SERVICE_USER=teachcam
BOARD=""
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=$2; shift ;;
        --prefix) PREFIX=$2; shift ;;
        --config-dir) CONFIG_DIR=$2; shift ;;
        --unit-dir) UNIT_DIR=$2; shift ;;
        --state-dir) STATE_DIR=$2; shift ;;
        --binary) BINARY=$2; shift ;;
        --no-service) NO_SERVICE=1 ;;
        --rollback) ROLLBACK=1 ;;
        --systemctl) SYSTEMCTL=$2; shift ;;
        --useradd) USERADD=$2; shift ;;
        --usermod) USERMOD=$2; shift ;;
        --sudo) SUDO=$2; shift ;;
        --service-user) SERVICE_USER=$2; shift ;;
        --systemd-dir) SYSTEMD_DIR=$2; shift ;;
        -h|--help) sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "deploy: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) BOARD=$1 ;;
    esac
    shift
done
[ -n "$BOARD" ] || { echo "deploy: which board? make deploy BOARD=user@host" >&2; exit 2; }

die() { echo "deploy: $*" >&2; exit 1; }
q() { printf '%q' "$1"; }
# shellcheck disable=SC2086
board() { ssh -o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR -p "$PORT" ${SSH_OPTS:-} "$BOARD" "$@"; }

# 1. Ask the board what it is.
errf=$(mktemp)
set +e
probe=$(board "uname -m; if [ -d $(q "$SYSTEMD_DIR") ]; then echo systemd; else echo none; fi; \
readlink $(q "$PREFIX/current") || echo -; id -u" 2>"$errf")
rc=$?
set -e
why=$(tail -1 "$errf"); rm -f "$errf"
[ $rc -eq 0 ] || die "cannot reach $BOARD over ssh on port $PORT (ssh exit $rc: $why); check the address, that sshd runs, and that your key is authorized"
machine=$(echo "$probe" | sed -n 1p)
init=$(echo "$probe" | sed -n 2p)
current=$(echo "$probe" | sed -n 3p)
uid=$(echo "$probe" | sed -n 4p)
if [ "$NO_SERVICE" = 0 ] && [ "$init" != systemd ]; then
    die "$BOARD does not run systemd ($SYSTEMD_DIR is missing); install without a service with --no-service (make deploy NO_SERVICE=1) and start teachcam run yourself"
fi
if [ "$SUDO" = auto ]; then
    if [ "$uid" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
fi
if [ -n "$SUDO" ] && ! board "$SUDO true" 2>/dev/null; then
    die "$BOARD: '$SUDO' does not work for this login; log in as a user with passwordless sudo (or as root)"
fi

# Variables every remote step sees; ROOT_SH runs a script (stdin) as root.
REMOTE_ENV="PREFIX=$(q "$PREFIX") CONFIG_DIR=$(q "$CONFIG_DIR") UNIT_DIR=$(q "$UNIT_DIR") \
STATE_DIR=$(q "$STATE_DIR") SYSTEMCTL=$(q "$SYSTEMCTL") USERADD=$(q "$USERADD") \
USERMOD=$(q "$USERMOD") SERVICE_USER=$(q "$SERVICE_USER") NO_SERVICE=$NO_SERVICE"
ROOT_SH="$SUDO env $REMOTE_ENV sh -s"

remote_doctor() {
    # teachcam doctor on the board, as the service user when there is a service (so it sees
    # that user's groups and access), else as the login user: prints its findings and
    # verdict, never fails the deploy.
    local pre="" runas=""
    if [ "$NO_SERVICE" = 0 ]; then pre=$SUDO runas="runuser -u $SERVICE_USER --"; fi
    board "$pre env RUNAS=$(q "$runas") $REMOTE_ENV sh -s" <<'EOF'
if [ -n "$RUNAS" ]; then echo "doctor on the board (as $SERVICE_USER):"; else echo "doctor on the board:"; fi
$RUNAS "$PREFIX/current/teachcam" doctor --config "$CONFIG_DIR/teachcam.toml" 2>&1 | sed 's/^/  /'
exit 0
EOF
}

remote_finish() {
    # Restart (unless --no-service), then doctor.
    board "$ROOT_SH" <<'EOF' || return 3
if [ "$NO_SERVICE" = 0 ]; then
    $SYSTEMCTL restart teachcam.service || exit 3
fi
EOF
    remote_doctor
}

if [ "$ROLLBACK" = 1 ]; then
    board "$ROOT_SH" <<'EOF' || die "rollback failed; the board is unchanged"
set -eu
cd "$PREFIX"
prev=$(readlink previous 2>/dev/null) || { echo "nothing to roll back to (no $PREFIX/previous)" >&2; exit 1; }
cur=$(readlink current)
ln -sfn "$prev" .current.tmp && mv -T .current.tmp current
ln -sfn "$cur" .previous.tmp && mv -T .previous.tmp previous
echo "rolled back: current -> $prev (was $cur)"
EOF
    remote_finish || die "rolled back, but the service did not restart; see journalctl -u teachcam on the board"
    exit 0
fi

# 2. The binary for this board.
case "$machine" in
    aarch64|arm64) arch=aarch64 elf="AArch64" ;;
    armv7l|armv8l) arch=armv7 elf="ARM" ;;
    x86_64) arch=x86_64 elf="X86-64" ;;
    *) die "$BOARD is a '$machine' machine; teachcam is built for aarch64 (Pi 3/4/5 64-bit, Jetson), armv7l (Pi OS 32-bit) and x86_64" ;;
esac
if [ -z "$BINARY" ]; then
    if [ "$arch" = x86_64 ]; then BINARY=target/release/teachcam; else BINARY=dist/teachcam-$arch; fi
    [ -f "$BINARY" ] || die "no $BINARY for this $machine board; run 'make cross' (or 'make build' for x86_64) first"
fi
[ -f "$BINARY" ] || die "no such binary: $BINARY"
got=$(readelf -h "$BINARY" 2>/dev/null | sed -n 's/^ *Machine: *//p')
case "$got" in
    *"$elf"*) ;;
    *) die "$BINARY is built for '${got:-not an ELF file}', but $BOARD is $machine; use the $arch build" ;;
esac

# 3. The bundle and its version.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/models"
cp "$BINARY" "$stage/teachcam"
cp models/*.onnx models/SHA256SUMS "$stage/models/"
cp cross/teachcam.service cross/teachcam.toml "$stage/"
# Modes are set here and again on the board: mktemp -d makes the stage 0700, and the bundle's
# ./ entry would carry that mode to the release directory.
find "$stage" -type d -exec chmod 755 {} +
find "$stage" -type f -exec chmod 644 {} +
chmod 755 "$stage/teachcam"
(cd "$stage" && find . -type f ! -name MANIFEST | LC_ALL=C sort | xargs sha256sum > MANIFEST)
pkg=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
version="$pkg-$(sha256sum "$stage/MANIFEST" | cut -c1-12)"

if [ "$current" = "releases/$version" ]; then
    # Same bundle: only make sure the unit and config are in place; change nothing else.
    echo "deploy: $BOARD already runs teachcam $version; nothing to change"
    # Releases made by earlier versions of this script could be 0700 (unusable by the
    # service user): repair the modes, which changes nothing else.
    board "$SUDO chmod 755 $(q "$PREFIX") $(q "$PREFIX/releases") $(q "$PREFIX/$current")"
    remote_doctor
    exit 0
fi

# 4. Upload and verify; nothing the board runs has changed yet.
was=${current#releases/}; [ "$current" = - ] && was="nothing installed"
echo "deploy: $BOARD ($machine) $was -> $version"
incoming="$PREFIX/releases/.incoming-$version"
# Unpacked as root with root's ownership and the modes above, whoever made the files here.
unpack="set -e; umask 022; rm -rf $(q "$incoming"); mkdir -p $(q "$incoming"); \
tar -xf - -C $(q "$incoming") --no-same-owner --no-same-permissions; \
chmod 755 $(q "$incoming") $(q "$incoming/models") $(q "$incoming/teachcam"); \
find $(q "$incoming") -type f ! -path $(q "$incoming/teachcam") -exec chmod 644 {} +; \
cd $(q "$incoming"); sha256sum -c --quiet MANIFEST; \
./teachcam --version >/dev/null || { echo 'the new binary does not run on this board' >&2; exit 1; }"
if ! tar -C "$stage" --owner=0 --group=0 --numeric-owner -cf - . | board "$SUDO sh -c $(q "$unpack")"; then
    board "$SUDO rm -rf $(q "$incoming")" || true
    die "upload or verification failed; nothing was switched, the board still runs ${current#releases/}"
fi

# 5. Activate: unit and config, service user, atomic switch.
set +e
board "$SUDO env VERSION=$(q "$version") $REMOTE_ENV sh -s" <<'EOF'
set -eu
umask 022
chmod 755 "$PREFIX" "$PREFIX/releases"
cd "$PREFIX/releases"
if [ -d "$VERSION" ]; then rm -rf ".incoming-$VERSION"; else mv ".incoming-$VERSION" "$VERSION"; fi
sync
if [ ! -f "$CONFIG_DIR/teachcam.toml" ]; then
    mkdir -p "$CONFIG_DIR"
    cp "$VERSION/teachcam.toml" "$CONFIG_DIR/.teachcam.toml.tmp"
    mv "$CONFIG_DIR/.teachcam.toml.tmp" "$CONFIG_DIR/teachcam.toml"
    echo "installed default config $CONFIG_DIR/teachcam.toml (edit it; deploys keep it)"
fi
if [ "$NO_SERVICE" = 0 ]; then
    # The device groups the board has; the unit lists none (a missing group would stop the
    # service from starting), the user's membership gives the access.
    groups=$(for g in video gpio; do getent group "$g" >/dev/null && printf '%s,' "$g"; done; true)
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        $USERADD --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
            ${groups:+--groups "${groups%,}"} "$SERVICE_USER"
    else
        for g in $(echo "$groups" | tr , ' '); do
            id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$g" || $USERMOD -a -G "$g" "$SERVICE_USER"
        done
    fi
    if ! cmp -s "$VERSION/teachcam.service" "$UNIT_DIR/teachcam.service"; then
        mkdir -p "$UNIT_DIR"
        cp "$VERSION/teachcam.service" "$UNIT_DIR/.teachcam.service.tmp"
        mv "$UNIT_DIR/.teachcam.service.tmp" "$UNIT_DIR/teachcam.service"
        $SYSTEMCTL daemon-reload
    fi
    $SYSTEMCTL enable teachcam.service
fi
cd "$PREFIX"
old=$(readlink current 2>/dev/null || true)
if [ -n "$old" ] && [ "$old" != "releases/$VERSION" ]; then
    ln -sfn "$old" .previous.tmp && mv -T .previous.tmp previous
fi
ln -sfn "releases/$VERSION" .current.tmp && mv -T .current.tmp current
# Keep current, previous and the newest other release; remove the rest.
keep="$(readlink current) $(readlink previous 2>/dev/null || true)"
ls -1t releases | grep -v '^\.' | while read -r r; do
    case " $keep " in *" releases/$r "*) continue ;; esac
    if [ -z "${spare:-}" ]; then spare=$r; continue; fi
    rm -rf "releases/$r"
done
EOF
rc=$?
set -e
[ $rc -eq 0 ] || die "activation failed (exit $rc) before the service was restarted; check the board (PREFIX/current still points to the last good version unless this message follows the switch)"

if ! remote_finish; then
    echo "deploy: the service did not restart on $version; switching back to ${current#releases/}" >&2
    if [ "$current" != - ]; then
        board "$ROOT_SH" <<'EOF' || true
cd "$PREFIX" && prev=$(readlink previous) && ln -sfn "$prev" .current.tmp && mv -T .current.tmp current
[ "$NO_SERVICE" = 0 ] && $SYSTEMCTL restart teachcam.service
EOF
    fi
    die "deploy of $version failed at restart; the board runs ${current#releases/} again (see journalctl -u teachcam)"
fi
echo "deploy: $BOARD now runs teachcam $version"
