#!/usr/bin/env python3
"""`make bench-fleet`: many `teachcam run` processes against one mosquitto.

Each device has its own state directory and device id, a synthetic camera (the object changes
every 1.5 s) and scripted presses that teach ball, block and ring in its first 4 s; all publish
to one broker started here on 127.0.0.1 (anonymous, no persistence). Reported:

  delivery   for every device, the `state` messages a subscriber received against the class
             changes the device printed (same count, same order = every change arrived);
  broker     messages the broker received and sent per second ($SYS counters, start to end);
  fps        each device's frames / run time (frames counted by the loop itself), against one
             device running alone with the same settings just before; the ratio is reported.

Needs `mosquitto` and `mosquitto_sub` (make setup). Usage:
  fleet_bench.py --teachcam BIN [--devices 20] [--seconds 300] [--fps 5] [--json-out F]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(work):
    port = free_port()
    conf = work / "mosquitto.conf"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    conf.write_text(
        f"user {user}\nallow_anonymous true\npersistence false\nsys_interval 1\n"
        f"max_queued_messages 100000\nlistener {port} 127.0.0.1\n"
    )
    log = open(work / "broker.log", "w")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return broker, port
        except OSError:
            time.sleep(0.05)
    sys.exit("mosquitto did not start: " + (work / "broker.log").read_text())


def sys_counter(port, name):
    """A $SYS counter of the broker, as an int."""
    out = subprocess.run(
        ["mosquitto_sub", "-p", str(port), "-C", "1", "-W", "5", "-t", f"$SYS/broker/{name}"],
        capture_output=True, text=True,
    ).stdout.strip()
    return int(out or 0)


def device(tc, work, port, k, fps, seconds):
    state = work / f"dev{k:02d}"
    state.mkdir()
    (state / "device_id").write_text(f"tc-{k:012x}\n")
    cfg = state / "teachcam.toml"
    cfg.write_text(
        f'state_dir = "{state}"\nclasses = ["ball", "block", "ring"]\n'
        f'[camera]\nuri = "synthetic:1500"\nfps = {fps}\n'
        f'[gpio]\nuri = "script:300@1,1900@2,3400@3"\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\nqos = 1\nstats_every_s = 10\n'
    )
    return subprocess.Popen(
        [tc, "run", "--config", str(cfg), "--duration", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "TEACHCAM_MODELS"},
    )


def finish(p):
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"teachcam failed ({p.returncode}):\n{out}\n{err}")
    frames = next(
        int(l.split()[3]) for l in out.splitlines() if l.startswith("teachcam: stopped after ")
    )
    classes = [l.split()[1] for l in out.splitlines() if l.startswith("class: ")]
    return frames, classes


def run_fleet(tc, work, port, n, fps, seconds, first_id):
    """n devices at once; their frames, class lines and the state messages received."""
    log = work / f"states-{first_id}.txt"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-q", "1", "-v", "-t", "teachcam/+/state"],
        stdout=open(log, "w"), stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    procs = [device(tc, work, port, first_id + k, fps, seconds) for k in range(n)]
    results = [finish(p) for p in procs]
    time.sleep(1.0)
    sub.terminate()
    sub.wait()
    got = {}
    for line in log.read_text().splitlines():
        topic, _, payload = line.partition(" ")
        got.setdefault(topic.split("/")[1], []).append(json.loads(payload)["class"])
    rows = []
    for k, (frames, classes) in enumerate(results):
        dev = f"tc-{first_id + k:012x}"
        rows.append({
            "device": dev, "frames": frames, "fps": frames / seconds,
            "class_changes": len(classes), "states_received": len(got.get(dev, [])),
            "all_arrived_in_order": got.get(dev, []) == classes,
        })
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachcam", required=True)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--fps", type=float, default=5)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    for tool in ("mosquitto", "mosquitto_sub"):
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: run 'make setup'")
    work = Path(tempfile.mkdtemp(prefix="teachcam-fleet-"))
    broker, port = start_broker(work)
    try:
        print(f"fleet: {a.devices} devices x {a.seconds:g} s at {a.fps:g} fps, broker on :{port}")
        alone = run_fleet(a.teachcam, work, port, 1, a.fps, a.seconds, 1000)[0]
        print(f"alone: {alone['frames']} frames ({alone['fps']:.2f} fps), "
              f"{alone['states_received']}/{alone['class_changes']} states")
        rx0, tx0 = sys_counter(port, "messages/received"), sys_counter(port, "messages/sent")
        t0 = time.monotonic()
        rows = run_fleet(a.teachcam, work, port, a.devices, a.fps, a.seconds, 1)
        wall = time.monotonic() - t0
        # $SYS counters are refreshed every second: wait for the last one.
        time.sleep(1.5)
        rx1, tx1 = sys_counter(port, "messages/received"), sys_counter(port, "messages/sent")
    finally:
        broker.terminate()
        broker.wait()
    ratios = sorted(r["fps"] / alone["fps"] for r in rows)
    changes = sum(r["class_changes"] for r in rows)
    report = {
        "devices": a.devices, "seconds": a.seconds, "fps_asked": a.fps,
        "alone": alone, "fleet": rows,
        "every_state_arrived": all(r["all_arrived_in_order"] for r in rows),
        "class_changes": changes,
        "states_received": sum(r["states_received"] for r in rows),
        "broker_received_per_s": (rx1 - rx0) / wall,
        "broker_sent_per_s": (tx1 - tx0) / wall,
        "fps_ratio_min": ratios[0], "fps_ratio_median": ratios[len(ratios) // 2],
    }
    print(f"delivery: {report['states_received']} state messages for {changes} class changes; "
          f"every device complete and in order: {report['every_state_arrived']}")
    print(f"broker: {report['broker_received_per_s']:.1f} msg/s received, "
          f"{report['broker_sent_per_s']:.1f} msg/s sent (over {wall:.0f} s, $SYS counters)")
    print(f"fps vs alone: min {ratios[0]:.3f}, median {report['fps_ratio_median']:.3f} "
          f"(alone {alone['fps']:.2f} fps)")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    if not report["every_state_arrived"]:
        sys.exit("some state changes did not arrive")


if __name__ == "__main__":
    main()
