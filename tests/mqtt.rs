//! MQTT against a real broker: each test starts Debian's `mosquitto` on 127.0.0.1 with free
//! ports, a password file (`mosquitto_passwd`), an ACL and a TLS listener whose CA is made
//! here with the `openssl` command, then runs the real `teachcam run` with a synthetic camera
//! and watches the broker with a client of its own.
//!
//! The tests take turns (one lock): frame counts are compared between runs, so two runs must
//! not share the CPU. Nothing here times the appliance; rates are frames counted by the loop.
//! Built only with the `mqtt` feature (the default).

#![cfg(feature = "mqtt")]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sh(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (make setup installs mosquitto and openssl)")
    });
    assert!(o.status.success(), "{cmd:?}: {o:?}");
}

/// A CA and, when `server`, a certificate for localhost/127.0.0.1 signed by it.
fn make_ca(dir: &Path, name: &str, server: bool) {
    let p = |f: &str| dir.join(format!("{name}{f}"));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    sh(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
        ])
        .args(ec)
        .args(["-keyout", s(&p("-ca.key")), "-out", s(&p("-ca.pem"))]));
    if server {
        sh(Command::new("openssl")
            .args(["req", "-subj", "/CN=localhost"])
            .args(ec)
            .args([
                "-keyout",
                s(&p("-server.key")),
                "-out",
                s(&p("-server.csr")),
            ]));
        std::fs::write(
            p("-ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        sh(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in", s(&p("-server.csr"))])
            .args(["-CA", s(&p("-ca.pem")), "-CAkey", s(&p("-ca.key"))])
            .args(["-CAcreateserial", "-extfile", s(&p("-ext.cnf"))])
            .args(["-out", s(&p("-server.pem"))]));
    }
}

/// mosquitto with a password file, an ACL, a plain and a TLS listener.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    tls_port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let passwd = d.join("passwd");
        std::fs::write(&passwd, "").unwrap();
        for (user, pw) in [("cam", "cam-secret"), ("watcher", "watch-secret")] {
            sh(Command::new("mosquitto_passwd").args(["-b", s(&passwd), user, pw]));
        }
        // The camera may use its own trees only; the watcher may read and write anything.
        std::fs::write(
            d.join("acl"),
            "user cam\ntopic readwrite teachcam/#\ntopic readwrite homeassistant/#\n\
             user watcher\ntopic readwrite #\n",
        )
        .unwrap();
        make_ca(d, "good", true);
        make_ca(d, "other", false);
        let (port, tls_port) = (free_port(), free_port());
        // Started as root, mosquitto would drop to its own user, which cannot read this
        // temporary directory: stay whoever runs the test.
        let me = Command::new("id").arg("-un").output().unwrap();
        let me = String::from_utf8(me.stdout).unwrap().trim().to_string();
        std::fs::write(
            d.join("mosquitto.conf"),
            format!(
                "user {me}\nper_listener_settings false\nallow_anonymous false\npersistence false\n\
                 password_file {pw}\nacl_file {acl}\nlog_dest stderr\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
                pw = s(&passwd),
                acl = s(&d.join("acl")),
                ca = s(&d.join("good-ca.pem")),
                cert = s(&d.join("good-server.pem")),
                key = s(&d.join("good-server.key")),
            ),
        )
        .unwrap();
        let mut b = Broker {
            dir,
            port,
            tls_port,
            child: None,
        };
        b.resume();
        b
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Start (again, on the same ports) and wait until both listeners accept.
    fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("broker.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", s(&self.path("mosquitto.conf"))])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (make setup)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        for port in [self.port, self.tls_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < until,
                    "mosquitto did not start: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One received message.
#[derive(Debug, Clone)]
struct Rec {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    at: Instant,
}

/// A client that records everything under `filter` (and reconnects when the broker comes
/// back).
struct Watcher {
    client: Client,
    got: Arc<Mutex<Vec<Rec>>>,
}

impl Watcher {
    fn new(port: u16, filter: &str) -> Watcher {
        let id = format!("watcher-{}", free_port());
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials("watcher", "watch-secret");
        o.set_max_packet_size(8 << 20, 1 << 20);
        let (client, mut conn) = Client::new(o, 64);
        let got = Arc::new(Mutex::new(Vec::new()));
        let (sub, record) = (client.clone(), Arc::clone(&got));
        let filter = filter.to_string();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for e in conn.iter() {
                match e {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        record.lock().unwrap().push(Rec {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            at: Instant::now(),
                        });
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the watcher subscribed");
        Watcher { client, got }
    }

    fn all(&self) -> Vec<Rec> {
        self.got.lock().unwrap().clone()
    }

    fn on(&self, topic: &str) -> Vec<Rec> {
        self.all()
            .into_iter()
            .filter(|r| r.topic == topic)
            .collect()
    }

    /// Wait (up to `secs`) until a message on `topic` satisfies `f`.
    fn wait_for(&self, secs: u64, topic: &str, f: impl Fn(&Rec) -> bool) -> Rec {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(r) = self.on(topic).into_iter().rev().find(|r| f(r)) {
                return r;
            }
            assert!(Instant::now() < until, "nothing on {topic} within {secs} s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .unwrap();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// The retained messages under `filter` now, as a fresh subscriber sees them.
fn retained(port: u16, filter: &str) -> BTreeMap<String, Rec> {
    let w = Watcher::new(port, filter);
    std::thread::sleep(Duration::from_millis(500));
    w.all()
        .into_iter()
        .filter(|r| r.retain)
        .map(|r| (r.topic.clone(), r))
        .collect()
}

fn json(r: &Rec) -> Value {
    serde_json::from_slice(&r.payload)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {:?}", r.topic, r.payload))
}

/// A state directory with its device id fixed (so the test knows the topics).
fn state_dir(t: &Path, name: &str, id: &str) -> PathBuf {
    let d = t.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("device_id"), format!("{id}\n")).unwrap();
    d
}

/// `teachcam run` with a config: `[mqtt]` lines appended to a synthetic camera's config.
fn spawn_run(
    dir: &Path,
    state: &Path,
    camera: &str,
    fps: u32,
    gpio: &str,
    mqtt: &str,
    secs: f64,
) -> Child {
    let cfg = dir.join(format!(
        "{}.toml",
        state.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {state:?}\nstatus_file = {status:?}\nclasses = [\"ball\", \"block\", \"ring\"]\n\
             [camera]\nuri = {camera:?}\nfps = {fps}\n[gpio]\nuri = {gpio:?}\n\
             # One frame a press: these tests count a sample per command.\n\
             [train]\nburst = 1\n[mqtt]\n{mqtt}\n",
            state = s(state),
            status = s(&state.join("status.json")),
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_teachcam"))
        .args(["run", "--config", s(&cfg), "--duration", &secs.to_string()])
        .env_remove("TEACHCAM_MODELS")
        .env("TEACHCAM_LOG", "warn,teachcam=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (String, String) {
    let o: Output = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "teachcam failed:\n{out}\n{err}");
    (out, err)
}

/// Frames the loop counted ("stopped after N frames").
fn frames(out: &str) -> u64 {
    let l = out
        .lines()
        .find_map(|l| l.strip_prefix("teachcam: stopped after "))
        .unwrap_or_else(|| panic!("no final line: {out}"));
    l.split(' ').next().unwrap().parse().unwrap()
}

/// The console's class lines ("class: ball (0.93) [ball]"), in order.
fn class_lines(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("class: "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

fn states(w: &Watcher, id: &str) -> Vec<String> {
    w.on(&format!("teachcam/{id}/state"))
        .iter()
        .map(|r| {
            let v = json(r);
            for k in ["class", "confidence", "timestamp", "head_version"] {
                assert!(v.get(k).is_some(), "state lacks {k}: {v}");
            }
            v["class"].as_str().unwrap().to_string()
        })
        .collect()
}

fn link_status(state: &Path) -> Value {
    let v: Value =
        serde_json::from_slice(&std::fs::read(state.join("status.json")).unwrap()).unwrap();
    v["links"]["mqtt"].clone()
}

const TEACH: &str = "script:300@1,1900@2,3400@3";

#[test]
fn over_tls_discovery_state_per_class_change_commands_and_stable_ids() {
    let _t = turn();
    let mut b = Broker::start();
    let t = tempfile::tempdir().unwrap();
    let id = "tc-00000000a001";
    let state = state_dir(t.path(), "cam", id);
    std::fs::write(t.path().join("pw"), "cam-secret\n").unwrap();
    let mqtt = format!(
        "url = \"mqtts://localhost:{}\"\nca_file = {:?}\nusername = \"cam\"\npassword_file = {:?}\n\
         commands = true\nsnapshot = true\nsnapshot_every_s = 1\nstats_every_s = 1\n",
        b.tls_port,
        s(&b.path("good-ca.pem")),
        s(&t.path().join("pw")),
    );
    let w = Watcher::new(b.port, "#");
    let run = spawn_run(t.path(), &state, "synthetic:1500", 20, TEACH, &mqtt, 8.0);
    let avail = format!("teachcam/{id}/available");
    w.wait_for(20, &avail, |r| r.payload == b"online");
    // Discovery is there; Home Assistant's birth message makes it come again.
    let class_cfg = format!("homeassistant/sensor/{id}/class/config");
    w.wait_for(10, &class_cfg, |_| true);
    w.publish("homeassistant/status", "online");
    w.wait_for(10, &class_cfg, |r| r.at > w.on(&class_cfg)[0].at);
    // A command teaches: "ring" from MQTT, answered by an event that names its source.
    w.wait_for(10, &format!("teachcam/{id}/event"), |r| {
        json(r)["type"] == "capture_saved" && json(r)["class"] == "ring"
    });
    w.publish(&format!("teachcam/{id}/cmd/capture"), "ring");
    let e = w.wait_for(10, &format!("teachcam/{id}/event"), |r| {
        json(r)["origin"]["source"] == "mqtt"
    });
    assert_eq!(json(&e)["type"], "capture_saved", "{}", json(&e));
    // Renaming a class through MQTT: its teach button goes, the new name's comes.
    let button = |class: &str| {
        let object = teachcam::mqtt::class_object(class);
        format!("homeassistant/button/{id}/{object}/config")
    };
    let (ring, hoop) = (button("ring"), button("hoop"));
    w.publish(
        &format!("teachcam/{id}/cmd/rename_class"),
        r#"{"from": "ring", "to": "hoop"}"#,
    );
    w.wait_for(10, &hoop, |r| json(r)["payload_press"] == "hoop");
    w.wait_for(10, &ring, |r| r.payload.is_empty());
    let (out, err) = finish(run);
    assert!(out.contains("4 samples stored"), "{out}");
    assert!(err.contains("mqtt: command capture"), "{err}");
    // Exactly one state message per class change, in the same order.
    std::thread::sleep(Duration::from_millis(300));
    let lines = class_lines(&out);
    assert!(lines.len() >= 3, "{out}");
    assert_eq!(states(&w, id), lines);
    // A clean end says offline; stats came every second with the loop's figures.
    assert_eq!(w.on(&avail).last().unwrap().payload, b"offline");
    let stats = w.on(&format!("teachcam/{id}/stats"));
    assert!(stats.len() >= 4, "{} stats", stats.len());
    assert!(json(stats.last().unwrap())["fps"].as_f64().unwrap() > 0.0);

    // What Home Assistant finds: retained, JSON, the keys it needs, one device.
    let configs = retained(b.port, "homeassistant/#");
    let ids = |configs: &BTreeMap<String, Rec>| -> BTreeMap<String, String> {
        configs
            .iter()
            .filter(|(_, r)| !r.payload.is_empty())
            .map(|(topic, r)| {
                let v = json(r);
                let component = topic.split('/').nth(1).unwrap();
                let key = match component {
                    "sensor" => "state_topic",
                    "button" => "command_topic",
                    "image" => "image_topic",
                    other => panic!("unexpected {other}"),
                };
                assert!(v[key].is_string(), "{topic} lacks {key}");
                assert!(v["name"].is_string() && v["availability_topic"].is_string());
                assert_eq!(v["device"]["identifiers"][0], id);
                (topic.clone(), v["unique_id"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let first = ids(&configs);
    // class, confidence, fps, samples, inbox, snapshot, undo, three teach buttons.
    assert_eq!(first.len(), 10, "{first:?}");
    assert!(first.contains_key(&hoop) && !configs.contains_key(&ring));
    let snap = retained(b.port, &format!("teachcam/{id}/snapshot"));
    let jpeg = &snap.values().next().expect("a retained snapshot").payload;
    assert_eq!(&jpeg[..2], &[0xff, 0xd8], "a JPEG");

    // A restart on a steady scene: the same ids, and no state message without a change.
    drop(w);
    let w = Watcher::new(b.port, &format!("teachcam/{id}/state"));
    // One picture over and over: a scene that cannot change.
    let synth = t.path().join("synth");
    let o = Command::new(env!("CARGO_BIN_EXE_teachcam"))
        .args([
            "synth",
            s(&synth),
            "--train",
            "1",
            "--val",
            "0",
            "--seed",
            "5",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let still = t.path().join("still");
    std::fs::create_dir_all(&still).unwrap();
    std::fs::copy(synth.join("train/ball/000.jpg"), still.join("ball.jpg")).unwrap();
    let camera = format!("dir:{}", s(&still));
    let run = spawn_run(t.path(), &state, &camera, 20, "none", &mqtt, 4.0);
    let (out, _) = finish(run);
    std::thread::sleep(Duration::from_millis(300));
    let lines = class_lines(&out);
    // The retained state of the last run, then one per change of this run: the first
    // answer, and nothing more for a scene that does not change.
    let got: Vec<Rec> = w.on(&format!("teachcam/{id}/state"));
    let live: Vec<String> = states(&w, id)
        .into_iter()
        .skip(usize::from(got[0].retain))
        .collect();
    assert_eq!(live, lines, "{out}");
    assert_eq!(lines.len(), 1, "a steady scene changed class: {lines:?}");
    assert_eq!(ids(&retained(b.port, "homeassistant/#")), first);
    b.stop();
}

#[test]
fn commands_off_are_ignored_and_logged_and_their_buttons_removed() {
    let _t = turn();
    let b = Broker::start();
    let t = tempfile::tempdir().unwrap();
    let id = "tc-00000000a002";
    let state = state_dir(t.path(), "cam", id);
    std::fs::write(t.path().join("pw"), "cam-secret\n").unwrap();
    // A button left over from a run with commands on.
    let stale = format!("homeassistant/button/{id}/undo/config");
    let w = Watcher::new(b.port, "#");
    w.client
        .publish(
            &stale,
            QoS::AtLeastOnce,
            true,
            b"{\"name\":\"Undo\"}".to_vec(),
        )
        .unwrap();
    let mqtt = format!(
        "url = \"mqtt://127.0.0.1:{}\"\nusername = \"cam\"\npassword_file = {:?}\n",
        b.port,
        s(&t.path().join("pw")),
    );
    let run = spawn_run(t.path(), &state, "synthetic:1500", 10, "none", &mqtt, 4.0);
    w.wait_for(20, &format!("teachcam/{id}/available"), |r| {
        r.payload == b"online"
    });
    w.publish(&format!("teachcam/{id}/cmd/capture"), "ball");
    w.publish(&format!("teachcam/{id}/cmd/add_class"), "mug");
    let (out, err) = finish(run);
    assert!(out.contains("0 samples stored"), "{out}");
    assert!(err.contains("ignored: commands are off"), "{err}");
    assert_eq!(link_status(&state)["commands_ignored"], 2);
    let status: Value =
        serde_json::from_slice(&std::fs::read(state.join("status.json")).unwrap()).unwrap();
    assert_eq!(
        status["classes"],
        serde_json::json!(["ball", "block", "ring"])
    );
    assert!(
        retained(b.port, &stale).is_empty(),
        "the stale button is removed"
    );
}

#[test]
fn a_broker_outage_of_ten_seconds_costs_no_frames_and_the_latest_state_arrives() {
    let _t = turn();
    let mut b = Broker::start();
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("pw"), "cam-secret\n").unwrap();
    let mqtt = format!(
        "url = \"mqtt://127.0.0.1:{}\"\nusername = \"cam\"\npassword_file = {:?}\nstats_every_s = 1\n",
        b.port,
        s(&t.path().join("pw")),
    );
    let secs = 18.0;
    // The same run with the broker up throughout: the reference frame count.
    let alone = state_dir(t.path(), "alone", "tc-00000000a003");
    let (out, _) = finish(spawn_run(
        t.path(),
        &alone,
        "synthetic:1500",
        10,
        TEACH,
        &mqtt,
        secs,
    ));
    let reference = frames(&out);

    let id = "tc-00000000a004";
    let state = state_dir(t.path(), "outage", id);
    let w = Watcher::new(b.port, &format!("teachcam/{id}/#"));
    let run = spawn_run(t.path(), &state, "synthetic:1500", 10, TEACH, &mqtt, secs);
    let avail = format!("teachcam/{id}/available");
    w.wait_for(20, &avail, |r| r.payload == b"online");
    std::thread::sleep(Duration::from_secs(2));
    b.stop();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    b.resume();
    let back = Instant::now();
    let (out, err) = finish(run);
    std::thread::sleep(Duration::from_millis(300));
    // Availability came back, and the state after the outage is the loop's last answer.
    let online_again = w
        .on(&avail)
        .into_iter()
        .any(|r| r.at > back && r.payload == b"online");
    assert!(online_again, "no online after the restart\n{err}");
    let last = class_lines(&out).last().cloned().unwrap();
    let after: Vec<Rec> = w
        .on(&format!("teachcam/{id}/state"))
        .into_iter()
        .filter(|r| r.at > back)
        .collect();
    assert!(!after.is_empty(), "no state after the reconnect\n{err}");
    assert_eq!(json(after.last().unwrap())["class"], last.as_str());
    let kept = retained(b.port, &format!("teachcam/{id}/state"));
    assert_eq!(json(kept.values().next().unwrap())["class"], last.as_str());
    assert!(err.contains("mqtt: reconnected"), "{err}");
    assert!(stopped < back);
    // The loop never waited for the network: as many frames as with the broker up (10 %).
    let n = frames(&out);
    assert!(
        n * 10 >= reference * 9,
        "{n} frames with a 10 s outage vs {reference} without"
    );
    eprintln!("frames: {n} with a 10 s broker outage, {reference} without");
}

#[test]
fn a_refused_password_an_unknown_ca_and_a_silent_broker_are_said_and_survived() {
    let _t = turn();
    let b = Broker::start();
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("bad"), "not-the-password\n").unwrap();
    std::fs::write(t.path().join("pw"), "cam-secret\n").unwrap();
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let closed = free_port();
    let cases = [
        (
            "password",
            format!(
                "url = \"mqtt://127.0.0.1:{}\"\nusername = \"cam\"\npassword_file = {:?}\n",
                b.port,
                s(&t.path().join("bad"))
            ),
            "refused the user name or password",
        ),
        (
            "ca",
            format!(
                "url = \"mqtts://localhost:{}\"\nca_file = {:?}\nusername = \"cam\"\npassword_file = {:?}\n",
                b.tls_port,
                s(&b.path("other-ca.pem")),
                s(&t.path().join("pw"))
            ),
            "certificate",
        ),
        (
            "silent",
            format!("url = \"mqtt://127.0.0.1:{silent_port}\"\n"),
            "no answer from",
        ),
        (
            "down",
            format!("url = \"mqtt://127.0.0.1:{closed}\"\n"),
            "nothing listens at",
        ),
    ];
    // Side by side (slow frames: 5 fps), each long enough for the silent broker's timeout.
    let runs: Vec<_> = cases
        .iter()
        .map(|(name, mqtt, _)| {
            let state = state_dir(t.path(), name, "tc-00000000a005");
            let child = spawn_run(t.path(), &state, "synthetic:1500", 5, TEACH, mqtt, 8.0);
            (state, child)
        })
        .collect();
    for ((state, child), (name, _, why)) in runs.into_iter().zip(&cases) {
        let (out, err) = finish(child);
        // It ran on: frames and the scripted captures.
        assert!(frames(&out) > 10, "{name}: {out}");
        assert!(out.contains("3 samples stored"), "{name}: {out}");
        assert!(err.contains(why), "{name}: {err}");
        // Said once, not at every retry.
        assert!(err.matches(why).count() <= 2, "{name}: {err}");
        let link = link_status(&state);
        assert_eq!(link["connected"], false, "{name}: {link}");
        assert!(
            link["last_error"].as_str().unwrap().contains(why),
            "{name}: {link}"
        );
        assert!(link["failures"].as_u64().unwrap() >= 1, "{name}: {link}");
    }
}
