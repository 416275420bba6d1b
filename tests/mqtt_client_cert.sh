#!/bin/bash
# TLS client-certificate authentication: mosquitto on 127.0.0.1 with
# `require_certificate true` and a CA made here; `teachcam run` with `client_cert`/`client_key`
# must connect and publish, and without them must be refused with the broker's reason in the
# status file, running on. Usage: tests/mqtt_client_cert.sh TEACHCAM_BINARY
set -u
BIN=$(realpath "$1")
export TEACHCAM_MODELS=$(realpath "$(dirname "$0")/../models")
D=$(mktemp -d /tmp/teachcam-cc.XXXX); cd $D
trap 'kill $SP $BP 2>/dev/null; rm -rf $D' EXIT
EC="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 -days 2 -subj "/CN=cc test CA" $EC -keyout ca.key -out ca.pem 2>/dev/null
openssl req -subj /CN=localhost $EC -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > srv.cnf
openssl x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile srv.cnf -out server.pem 2>/dev/null
openssl req -subj /CN=cam1 $EC -keyout client.key -out client.csr 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > cli.cnf
openssl x509 -req -days 2 -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile cli.cnf -out client.pem 2>/dev/null
PORT=$((20000 + RANDOM % 20000))
cat > m.conf <<C
user $(id -un)
per_listener_settings false
allow_anonymous true
persistence false
listener $PORT 127.0.0.1
cafile $D/ca.pem
certfile $D/server.pem
keyfile $D/server.key
require_certificate true
use_identity_as_username true
C
mosquitto -c m.conf > broker.log 2>&1 & BP=$!
sleep 1
mosquitto_sub -h localhost -p $PORT --cafile ca.pem --cert client.pem --key client.key -t 'teachcam/#' -v > sub.txt 2>&1 & SP=$!
runfail=0
for variant in with without; do
  extra=""; [ $variant = with ] && extra="client_cert = \"$D/client.pem\"
client_key = \"$D/client.key\""
  cat > t-$variant.toml <<C
state_dir = "$D/state-$variant"
classes = ["ball", "block", "ring"]
[camera]
uri = "synthetic:4000"
fps = 5
[mqtt]
url = "mqtts://localhost:$PORT"
ca_file = "$D/ca.pem"
topic_prefix = "teachcam/cc-$variant"
$extra
C
  "$BIN" run --config t-$variant.toml --duration 6 --status $D/status-$variant.json > run-$variant.log 2>&1
  rc=$?; echo "run $variant a client certificate: exit $rc"; [ $rc = 0 ] || runfail=1
done
sleep 1
with=$(grep -c '^teachcam/cc-with/' sub.txt); without=$(grep -c '^teachcam/cc-without/' sub.txt)
echo "messages a certificate-holding subscriber received: with=$with without=$without"
links() { python3 -c "import json,sys;l=json.load(open(sys.argv[1]))['links']['mqtt'];print(l['connected'], l['last_error'] or '')" "$1"; }
fail=$runfail
[ "$with" -ge 1 ] || { echo "FAIL: nothing published with a client certificate"; fail=1; }
[ "$without" -eq 0 ] || { echo "FAIL: published without a client certificate"; fail=1; }
links status-with.json | grep -q '^True' || { echo "FAIL: not connected with a client certificate"; fail=1; }
links status-without.json | grep -qi '^False.*certificate' || { echo "FAIL: the refusal does not say certificate"; fail=1; }
[ $fail = 0 ] && echo "ok   mqtt client certificate: connects with it, refused (and says why) without it"
exit $fail
