#!/usr/bin/env python3
"""make bench-web: what the web console costs the appliance loop.

Runs `teachcam run` on the synthetic camera as fast as it can go (--fps 0, so the loop is
CPU-bound and any cost of the viewers shows as lost frames), then alternates phases of
--seconds each, in one run:

  idle       no viewer
  mjpeg      3 MJPEG viewers (/stream.mjpg) + 20 API requests/s
  snapshot   3 viewers polling /api/snapshot.jpg at 10/s + 20 API requests/s
  heatmap    /api/heatmap polled every 400 ms, as the page does with its heat map ticked
             (the loop then reads the feature map and splits the logit over it per frame)

and reports loop frames/s per phase (from /api/status frame counts), the ratio to idle,
RSS at start and end (/api/health), HTTP errors, and what 500 concurrent idle connections
do (refused with 503 or held until the header timeout; the console must answer afterwards).
Standard library only.

usage: bench/web_bench.py --teachcam BIN [--seconds 60] [--rounds 1] [--load mjpeg,snapshot,heatmap]
                          [--json-out FILE]

--load picks the loaded phases (each follows an idle one); `make bench-web-long` runs the
load case alone: idle, then 3 MJPEG viewers + 20 API requests/s, 300 s each.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--load", default="mjpeg,snapshot,heatmap")
    ap.add_argument("--json-out")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="teachcam-webbench-")
    dev = subprocess.Popen(
        [a.teachcam, "run", "--state", tmp + "/state", "--camera", "synthetic:2000", "--fps", "0",
         "--classes", "ball,block,ring", "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    login = None
    for line in dev.stdout:
        m = re.match(r"teachcam: web console at (\S+)", line)
        if m:
            login = m.group(1)
            break
    threading.Thread(target=lambda: [None for _ in dev.stdout], daemon=True).start()
    base, token = login.split("/login?token=")
    host, port = base[len("http://"):].split(":")
    hdr = {"Authorization": "Bearer " + token}
    errors = {"n": 0}

    def get(path, timeout=10):
        req = urllib.request.Request(base + path, headers=hdr)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def status():
        return json.loads(get("/api/status"))

    def wait_ready():
        end = time.time() + 60
        while time.time() < end:
            try:
                return status()
            except Exception:
                time.sleep(0.2)
        raise SystemExit("teachcam did not start")

    wait_ready()
    # Teach once so the head runs too (as on a real device).
    for k in ["ball", "block", "ring"]:
        body = json.dumps({"class": k}).encode()
        req = urllib.request.Request(base + "/api/capture", data=body, headers=hdr, method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        time.sleep(2.1)
    time.sleep(3)
    rss0 = json.loads(get("/api/health"))["rss_bytes"]

    def api_load(stop):
        paths = ["/api/status", "/api/samples", "/api/health", "/metrics"]
        i = 0
        while not stop.is_set():
            t = time.time()
            try:
                get(paths[i % len(paths)])
            except Exception:
                errors["n"] += 1
            i += 1
            time.sleep(max(0, 0.05 - (time.time() - t)))

    def mjpeg_viewer(stop, got):
        s = socket.create_connection((host, int(port)))
        s.sendall(f"GET /stream.mjpg HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        s.settimeout(5)
        while not stop.is_set():
            try:
                b = s.recv(65536)
            except Exception:
                errors["n"] += 1
                break
            if not b:
                errors["n"] += 1
                break
            got["n"] += b.count(b"--frame")
        s.close()

    def snapshot_viewer(stop, got):
        while not stop.is_set():
            t = time.time()
            try:
                get("/api/snapshot.jpg")
                got["n"] += 1
            except Exception:
                errors["n"] += 1
            time.sleep(max(0, 0.1 - (time.time() - t)))

    def heatmap_viewer(stop, got):
        while not stop.is_set():
            try:
                get("/api/heatmap")
                got["n"] += 1
            except Exception:
                errors["n"] += 1
            time.sleep(0.4)

    def phase(name):
        stop = threading.Event()
        got = {"n": 0}
        threads = []
        if name == "heatmap":
            threads.append(threading.Thread(target=heatmap_viewer, args=(stop, got)))
        elif name != "idle":
            threads.append(threading.Thread(target=api_load, args=(stop,)))
            viewer = mjpeg_viewer if name == "mjpeg" else snapshot_viewer
            threads += [threading.Thread(target=viewer, args=(stop, got)) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # settle (and the status snapshot is once a second)
        f0, t0 = status()["frames"], time.time()
        time.sleep(a.seconds)
        f1, t1 = status()["frames"], time.time()
        stop.set()
        for t in threads:
            t.join()
        fps = (f1 - f0) / (t1 - t0)
        print(f"{name:9} loop {fps:6.2f} frames/s   viewer frames {got['n']}", flush=True)
        return fps

    loads = [x for x in a.load.split(",") if x]
    assert loads and all(x in ("mjpeg", "snapshot", "heatmap") for x in loads), a.load
    results = {"idle": [], "mjpeg": [], "snapshot": [], "heatmap": []}
    for _ in range(a.rounds):
        for load in loads:
            results["idle"].append(phase("idle"))
            results[load].append(phase(load))
    rss1 = json.loads(get("/api/health"))["rss_bytes"]

    # 500 idle connections: each is refused (503) or held until the 5 s header timeout.
    socks = []
    for _ in range(500):
        try:
            socks.append(socket.create_connection((host, int(port)), timeout=5))
        except OSError:
            errors["n"] += 1
    time.sleep(1)
    refused = 0
    for s in socks:
        s.settimeout(0.05)
        try:
            if s.recv(64).startswith(b"HTTP/1.1 503"):
                refused += 1
        except Exception:
            pass
    for s in socks:
        s.close()
    time.sleep(6)
    alive = dev.poll() is None
    answers = status() is not None
    dev.terminate()
    dev.wait()

    mean = lambda xs: sum(xs) / len(xs)
    idle = mean(results["idle"])
    out = {
        "seconds_per_phase": a.seconds,
        "rounds": a.rounds,
        "fps_idle": idle,
    }
    for load in loads:
        out[f"fps_{load}"] = mean(results[load])
        out[f"{load}_vs_idle"] = mean(results[load]) / idle
    out |= {
        "rss_start_bytes": rss0,
        "rss_end_bytes": rss1,
        "rss_growth_bytes": rss1 - rss0,
        "http_errors": errors["n"],
        "idle_connections_opened": len(socks),
        "idle_connections_refused_503": refused,
        "alive_after_500_connections": alive and answers,
    }
    print(json.dumps(out, indent=2))
    if a.json_out:
        os.makedirs(os.path.dirname(a.json_out) or ".", exist_ok=True)
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
