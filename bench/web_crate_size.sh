#!/bin/sh
# What an HTTP server crate adds: three hello-world servers built alone with teachcam's release
# profile (thin LTO, 4 codegen units) plus strip, for the host or a board target:
#   base   std::net only (what teachcam's console uses)
#   tiny   tiny_http 0.12
#   axum   axum 0.8 (http1 only) on tokio's current-thread runtime
# Prints stripped size and RSS after one request (host only). Run under the build lock:
#   flock /tmp/cargo-build.lock bench/web_crate_size.sh [TARGET_TRIPLE]
# A board triple (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf) needs cargo-zigbuild
# on PATH (make setup puts it in .venv-cross/bin).
# Each crate gets its own target dir under target/web-crate-size.
set -eu
root=$(pwd)/target/web-crate-size
target=${1:-}
mkdir -p "$root"
profile='[profile.release]
lto = "thin"
codegen-units = 4
strip = true'
mk() { # name deps main.rs
    mkdir -p "$root/$1/src"
    printf '[package]\nname = "%s"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\n%s\n%s\n' \
        "$1" "$2" "$profile" > "$root/$1/Cargo.toml"
    printf '%s\n' "$3" > "$root/$1/src/main.rs"
}
mk base "" 'use std::io::{Read, Write};
fn main() {
    let l = std::net::TcpListener::bind("127.0.0.1:18091").unwrap();
    for s in l.incoming() {
        let mut s = s.unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
}'
mk tiny 'tiny_http = "0.12"' 'fn main() {
    let server = tiny_http::Server::http("127.0.0.1:18092").unwrap();
    for rq in server.incoming_requests() {
        let _ = rq.respond(tiny_http::Response::from_string("ok"));
    }
}'
mk axumhello 'axum = { version = "0.8", default-features = false, features = ["http1", "tokio"] }
tokio = { version = "1", features = ["rt", "net", "macros"] }' 'use axum::{routing::get, Router};
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = Router::new().route("/", get(|| async { "ok" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:18093").await.unwrap();
    axum::serve(l, app).await.unwrap();
}'
port=18091
for n in base tiny axumhello; do
    if [ -n "$target" ]; then
        (cd "$root/$n" && CARGO_TARGET_DIR="$root/target-$n" cargo zigbuild --release --target "$target" -q)
        bin="$root/target-$n/$target/release/$n"
        echo "$n $target stripped $(stat -c %s "$bin") bytes"
    else
        (cd "$root/$n" && CARGO_TARGET_DIR="$root/target-$n" cargo build --release -q)
        bin="$root/target-$n/release/$n"
        "$bin" & pid=$!
        sleep 1
        curl -s "http://127.0.0.1:$port/" >/dev/null
        rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
        kill $pid
        echo "$n host stripped $(stat -c %s "$bin") bytes, RSS after one request $rss kB"
    fi
    port=$((port + 1))
done
