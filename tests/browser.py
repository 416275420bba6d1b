#!/usr/bin/env python3
"""The web console in a real browser: headless Debian chromium driven by chromedriver over
the W3C WebDriver HTTP protocol (Python standard library only, no selenium).

It starts `teachcam run` on the synthetic camera (the object changes every few seconds),
opens the login URL, checks that the live picture updates, teaches three classes by clicking
their buttons while the camera shows each object, checks that the page then names each
object, labels an unsure frame from the inbox with one click (it becomes a sample) and
dismisses another, ticks the heat map and checks it is drawn over the picture, asks for a class's dream
presses once while it dreams and waits for the image (the page asks again for the new head), shows `teachcam doctor`'s checks, deletes a sample in the gallery and
checks the store, imports a tarball downloaded before the delete through the page's file input
(only the deleted sample comes back), and saves screenshots at desktop and phone sizes.

usage: tests/browser.py TEACHCAM_BINARY OUT_DIR
Exit 0: passed; 1: failed (the reason is printed); 77: chromium/chromedriver missing.
"""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

PHASE_MS = 4000  # the synthetic camera shows each object this long
CLASSES = ["ball", "block", "ring"]
CLICKS = 4


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(what, fn, timeout=30.0, every=0.1):
    end = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > end:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(every)


class WebDriver:
    """The few W3C WebDriver commands the test needs."""

    def __init__(self, url):
        self.url = url
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": shutil.which("chromium"),
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,1000"],
                    },
                }
            }
        }
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"webdriver {method} {path}: {e.read().decode()[:500]}")

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css):
        v = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(v.values()))

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def type_into(self, css, text):
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def text(self, css):
        return self.s("GET", f"/element/{self.find(css)}/text")

    def size(self, w, h):
        self.s("POST", "/window/rect", {"width": w, "height": h})

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.s("GET", "/screenshot")))

    def quit(self):
        try:
            self.call("DELETE", f"/session/{self.session}")
        except Exception:
            pass


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    binary, out_dir = sys.argv[1], sys.argv[2]
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("browser test skipped: install chromium and chromium-driver (make setup)")
        return 77
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="teachcam-browser-")
    state = os.path.join(tmp, "state")
    procs = []
    try:
        # Unsure frames may reach the inbox every second (the default is every 10 s).
        # MobileNetV2: the console is the same for every backbone, and a dream through
        # EfficientNet-Lite2's float graph in the debug build took over 5 minutes on 2 cores.
        config = os.path.join(tmp, "teachcam.toml")
        with open(config, "w") as f:
            f.write("[inbox]\nevery_s = 1\n[model]\nbackbone = \"mobilenetv2\"\n")
        dev = subprocess.Popen(
            [binary, "run", "--config", config, "--state", state, "--camera",
             f"synthetic:{PHASE_MS}", "--fps", "5", "--classes", ",".join(CLASSES),
             "--http", "127.0.0.1:0", "--duration", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(dev)
        login = None
        for line in dev.stdout:
            m = re.match(r"teachcam: web console at (\S+)", line)
            if m:
                login = m.group(1)
                break
        assert login, "teachcam printed no login URL"
        base, token = login.split("/login?token=")

        def api(path):
            req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.headers, r.read()

        def shown():
            return api("/api/snapshot.jpg")[0]["X-Frame-Tag"]

        def samples():
            return json.loads(api("/api/samples")[1])["samples"]

        port = free_port()
        drv_proc = subprocess.Popen(["chromedriver", f"--port={port}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(drv_proc)
        wd_url = f"http://127.0.0.1:{port}"

        def driver_up():
            try:
                urllib.request.urlopen(wd_url + "/status", timeout=2)
                return True
            except Exception:
                return False
        wait("chromedriver", driver_up)
        wd = WebDriver(wd_url)
        try:
            # Log in: the login URL sets the cookie and lands on the page.
            wd.go(login)
            wait("the page", lambda: wd.js("return document.getElementById('teach').children.length") == 3)
            # The live picture updates: its snapshot counter grows and it has pixels.
            n0 = wait("a first picture", lambda: int(wd.js(
                "const i=document.getElementById('frame'); return i.naturalWidth>0 ? (i.dataset.frames||0) : 0") or 0))
            wait("the picture to update", lambda: int(wd.js(
                "return document.getElementById('frame').dataset.frames||0")) > int(n0) + 3)
            print("live picture updates")

            # Teach: click each class's button while the camera shows that object.
            for name in CLASSES:
                wait(f"the camera to show {name}", lambda: shown() == name, timeout=4 * PHASE_MS / 1000)
                # Start right after the change, so every click lands inside the phase.
                time.sleep(0.3)
                for _ in range(CLICKS):
                    wd.click(f"#teach button[data-class='{name}']")
                    time.sleep(0.25)
                got = wait(f"{CLICKS} {name} samples",
                           lambda: len([s for s in samples() if s["label"] == name]) >= CLICKS)
                print(f"taught {name}: {got and CLICKS} clicks stored")

            # Recognise: the page names each object when the camera shows it.
            for name in CLASSES:
                wait(f"the camera to show {name}", lambda: shown() == name, timeout=4 * PHASE_MS / 1000)
                wait(f"the page to say {name}", lambda: wd.text("#answer") == name and shown() == name,
                     timeout=PHASE_MS / 1000)
                print(f"page names {name}")

            # Inbox: unsure frames (object changes make the answer flip) appear as cards; one is
            # labelled with one click and becomes a sample, another is dismissed.
            def inbox():
                return json.loads(api("/api/inbox")[1])["items"]
            cards = "document.querySelectorAll('#inboxitems .inboxitem')"
            wait("an unsure frame in the inbox", lambda: wd.js(f"return {cards}.length") >= 2,
                 timeout=60)
            first = int(wd.js(f"return {cards}[0].dataset.id"))
            balls = len([s for s in samples() if s["label"] == "ball"])
            wd.js(f"const c=[...{cards}].find(c => c.dataset.id==='{first}');"
                  "c.querySelector('select').value='ball';")
            wd.click(f"#inboxitems .inboxitem[data-id='{first}'] button.label")
            wait("the labelled frame to become a sample",
                 lambda: len([s for s in samples() if s["label"] == "ball"]) == balls + 1)
            wait("the page to say so", lambda: "is now sample" in wd.text("#inboxmsg"))
            assert first not in [i["id"] for i in inbox()], "a labelled frame leaves the inbox"
            other = int(wait("another card", lambda: wd.js(
                f"const c=[...{cards}].find(c => c.dataset.id!=='{first}'); return c ? c.dataset.id : 0")))
            wd.click(f"#inboxitems .inboxitem[data-id='{other}'] button.dismiss")
            wait("the dismissed frame to go", lambda: other not in [i["id"] for i in inbox()])
            assert len([s for s in samples() if s["label"] == "ball"]) == balls + 1, \
                "dismissing stores nothing"
            status = json.loads(api("/api/status")[1])
            metrics = api("/metrics")[1].decode()
            assert "teachcam_inbox_frames" in metrics and "inbox" in status, status.keys()
            print(f"inbox: frame {first} labelled ball (now a sample), frame {other} dismissed; "
                  f"{status['inbox']} waiting")

            # Heat map: ticked, maps arrive and are drawn over the picture (non-transparent
            # pixels on the canvas), for the class the page names.
            wd.click("#heat")
            wait("a heat map drawn", lambda: int(wd.js(
                "return document.getElementById('heatcanvas').dataset.frame||0")) > 0)
            painted = wait("heat-map pixels", lambda: wd.js(
                "const c=document.getElementById('heatcanvas');"
                "const d=c.getContext('2d').getImageData(0,0,c.width,c.height).data;"
                "let n=0; for (let i=3;i<d.length;i+=4) if (d[i]>0) n++; return n"))
            cls = wd.js("return document.getElementById('heatcanvas').dataset.cls")
            print(f"heat map drawn over {painted} pixels, class {cls}")

            # Dream: the image of a class, made on the device, shown when ready.
            # A press while it dreams swaps the head the dream was asked for: the page must
            # ask again for the new head rather than stop at the device's 404.
            def head_version():
                return json.loads(api("/api/status")[1])["head_version"]

            wd.js("const s=document.getElementById('dreamclass'); s.value='ring';")
            before = head_version()
            wd.click("#dream")
            now = shown()
            wd.click(f"#teach button[data-class='{now if now in CLASSES else CLASSES[0]}']")
            wait("the ring dream", lambda: wd.js(
                "const i=document.getElementById('dreamimg');"
                "return i.dataset.cls==='ring' && i.naturalWidth===256"), timeout=300)
            after = head_version()
            assert after > before, f"the press did not swap the head ({before} -> {after})"
            print(f"dream of ring shown after the head changed ({before} -> {after}):",
                  wd.text("#dreammsg"))

            # Health: what `teachcam doctor` says, checked on the device.
            wd.click("#doctorbtn")
            wait("the doctor's checks", lambda: wd.js(
                "return [...document.querySelectorAll('#doctorlist li')].some(l => l.textContent.includes('model:'))"),
                timeout=120)
            print("doctor checks shown:", wd.js("return document.querySelectorAll('#doctorlist li').length"))

            wd.js("window.scrollTo(0, 0)")
            time.sleep(0.3)
            wd.screenshot(os.path.join(out_dir, "web-desktop.png"))
            # Kept to import back after the delete below.
            tarball = os.path.join(tmp, "download.tar")
            with open(tarball, "wb") as f:
                f.write(api("/api/export.tar")[1])

            # Curate: delete one ball sample in the gallery; the store loses exactly it.
            before = [s["id"] for s in samples() if s["label"] == "ball"]
            wd.js("const s=document.getElementById('galclass'); s.value='ball'; s.dispatchEvent(new Event('change'));")
            wait("ball thumbnails", lambda: wd.js("return document.querySelectorAll('#thumbs img').length") == len(before))
            victim = int(wd.js("return document.querySelector('#thumbs input').value"))
            wd.click("#thumbs input")
            wd.click("#delsel")
            wait("the sample to go", lambda: victim not in [s["id"] for s in samples()])
            rec = os.path.join(state, "samples", f"{victim:08}.rec")
            assert not os.path.exists(rec), f"{rec} still in the store"
            after = [s["id"] for s in samples() if s["label"] == "ball"]
            assert sorted(after) == sorted(i for i in before if i != victim), (before, after)
            wait("the gallery to drop it", lambda: wd.js(
                "return document.querySelectorAll('#thumbs img').length") == len(before) - 1)
            print(f"deleted sample {victim} in the gallery; store has {len(after)} ball samples")

            # Import the download taken before the delete: only the deleted sample is new.
            wd.type_into("#importfile", tarball)
            wd.click("#importbtn")
            wait("the import", lambda: wd.js("return document.getElementById('importmsg').dataset.imported||''") != "",
                 timeout=60)
            msg = wd.text("#importmsg")
            assert wd.js("return document.getElementById('importmsg').dataset.imported") == "1", msg
            back = [s["id"] for s in samples() if s["label"] == "ball"]
            assert len(back) == len(before) and victim not in back, (before, back)
            print("imported through the page:", msg)

            wd.size(390, 844)
            time.sleep(1.0)
            wd.screenshot(os.path.join(out_dir, "web-phone.png"))
            print("screenshots in", out_dir)
        finally:
            wd.quit()
        print("browser test passed")
        return 0
    except AssertionError as e:
        print("browser test FAILED:", e)
        return 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
