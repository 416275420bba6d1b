//! Integration tests: drive the real `teachcam` executable in temporary directories, the way
//! a user would. Inputs are generated here (synthetic scenes, deliberately broken files);
//! nothing outside the repository is read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn teachcam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teachcam"))
        .args(args)
        .env_remove("TEACHCAM_MODELS")
        .output()
        .expect("run teachcam")
}

fn ok(args: &[&str]) -> String {
    let o = teachcam(args);
    assert!(
        o.status.success(),
        "teachcam {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let o = teachcam(args);
    assert_eq!(
        o.status.code(),
        Some(2),
        "teachcam {args:?} should exit 2: {o:?}"
    );
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected, got: {err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small synthetic dataset shared by several tests (written once per test).
fn dataset(dir: &Path, train: usize, val: usize) -> PathBuf {
    let d = dir.join("data");
    ok(&[
        "synth",
        s(&d),
        "--train",
        &train.to_string(),
        "--val",
        &val.to_string(),
        "--seed",
        "3",
    ]);
    d
}

#[test]
fn info_reports_model_and_precision() {
    let out = ok(&["info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The default is chosen for this CPU, and says why.
    let default = &v["int8_kernels"]["default_precision"];
    assert_eq!(v["precision"], default["precision"]);
    assert!(!default["why"].as_str().unwrap().is_empty());
    for layer in ["pointwise", "depthwise", "stem"] {
        let k = &v["int8_kernels"][layer];
        assert!(
            k["runnable"].as_array().unwrap().contains(&k["kernel"]),
            "{layer}: {k}"
        );
    }
    // The backbone too, and each backbone's files are its own.
    let backbone = &v["default_backbone"];
    assert_eq!(v["backbone"], backbone["backbone"]);
    assert!(!backbone["why"].as_str().unwrap().is_empty());
    for (kind, prefix) in [
        ("mobilenetv2", "mobilenetv2"),
        ("efficientnet-lite2", "efficientnet_lite2"),
    ] {
        for (p, file) in [("int8", "qop"), ("f32", "f32")] {
            let v: serde_json::Value = serde_json::from_str(&ok(&[
                "info",
                "--json",
                "--backbone",
                kind,
                "--precision",
                p,
            ]))
            .unwrap();
            let path = v["model_path"].as_str().unwrap();
            assert!(path.ends_with(&format!("{prefix}_{file}.onnx")), "{path}");
            assert_eq!(
                (v["model_ok"].as_bool(), v["backbone"].as_str()),
                (Some(true), Some(kind))
            );
        }
    }
    // A variant a backbone does not ship is named.
    let e = fails(&[
        "info",
        "--backbone",
        "efficientnet-lite2",
        "--precision",
        "qdq",
    ]);
    assert!(e.contains("ships no qdq"), "{e}");
}

#[test]
fn train_eval_classify_round_trip_on_synthetic_scenes() {
    let t = tempfile::tempdir().unwrap();
    let data = dataset(t.path(), 10, 5);
    let head = t.path().join("h.head");
    ok(&["train", s(&data), "--out", s(&head), "--seed", "1"]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["eval", s(&data), "--head", s(&head), "--json"])).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.8, "synthetic scenes should be easy, got {acc}");
    assert_eq!(v["per_class"].as_array().unwrap().len(), 3);
    let confusion = v["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 15);

    let img = data.join("val/ring/000.jpg");
    let line = ok(&[
        "classify",
        s(&img),
        "--head",
        s(&head),
        "--json",
        "--top-k",
        "3",
    ]);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["top"].as_array().unwrap().len(), 3);
    let p: f64 = v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["p"].as_f64().unwrap())
        .sum();
    assert!(
        (p - 1.0).abs() < 1e-3,
        "3-class probabilities sum to 1, got {p}"
    );
}

#[test]
fn same_seed_gives_byte_identical_heads_and_cache_reuse_matches() {
    let t = tempfile::tempdir().unwrap();
    let data = dataset(t.path(), 6, 2);
    let cache = t.path().join("c.tce");
    ok(&["embed", s(&data), "--out", s(&cache)]);
    let (a, b) = (t.path().join("a.head"), t.path().join("b.head"));
    ok(&["train", s(&cache), "--out", s(&a), "--seed", "9"]);
    ok(&["train", s(&cache), "--out", s(&b), "--seed", "9"]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Evaluating from the cache and from the folder gives the same answer.
    let from_cache = ok(&["eval", s(&cache), "--head", s(&a), "--json"]);
    let from_folder = ok(&["eval", s(&data), "--head", s(&a), "--json", "--jobs", "1"]);
    let (x, y): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&from_cache).unwrap(),
        serde_json::from_str(&from_folder).unwrap(),
    );
    assert_eq!(x["confusion"], y["confusion"]);
}

#[test]
fn corrupt_images_are_reported_by_path_and_skipped() {
    let t = tempfile::tempdir().unwrap();
    let data = dataset(t.path(), 4, 2);
    let bad = data.join("train/ball/zz_broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff definitely not a jpeg").unwrap();
    let head = t.path().join("h.head");
    let o = teachcam(&["train", s(&data), "--out", s(&head)]);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("zz_broken.jpg"),
        "the broken file must be named: {err}"
    );
    assert!(err.contains("1 of 13 images"), "and counted: {err}");
    assert!(head.is_file());
}

#[test]
fn bad_inputs_get_one_line_errors_and_exit_code_2() {
    let t = tempfile::tempdir().unwrap();
    // Empty dataset.
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fails(&["train", s(&empty), "--out", "x.head"]);
    assert!(e.contains("no class folders"), "{e}");
    // A class with no images.
    std::fs::create_dir_all(empty.join("cats")).unwrap();
    let e = fails(&["train", s(&empty), "--out", "x.head"]);
    assert!(e.contains("cats") && e.contains("no images"), "{e}");
    // Missing dataset.
    let e = fails(&["train", "/nonexistent/ds", "--out", "x.head"]);
    assert!(e.contains("/nonexistent/ds"), "{e}");
    // A missing head is reported before any embedding work.
    let e = fails(&["eval", "/nonexistent/ds", "--head", "x.head"]);
    assert!(e.contains("x.head"), "{e}");
    // A models directory without the model.
    let e = fails(&[
        "classify",
        "a.jpg",
        "--head",
        "x.head",
        "--models",
        s(t.path()),
    ]);
    assert!(e.contains("_qop.onnx") && e.contains("make models"), "{e}");
    // A damaged model file.
    let models = t.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let repo_models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    std::fs::copy(repo_models.join("SHA256SUMS"), models.join("SHA256SUMS")).unwrap();
    let mut bytes = std::fs::read(repo_models.join("mobilenetv2_qop.onnx")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(models.join("mobilenetv2_qop.onnx"), bytes).unwrap();
    let e = fails(&[
        "info",
        "--models",
        s(&models),
        "--backbone",
        "mobilenetv2",
        "--precision",
        "int8",
    ]);
    assert!(e.contains("damaged"), "{e}");
    // A train/val dataset without val/: the missing folder is named.
    let only_train = t.path().join("only_train");
    ok(&["synth", s(&only_train), "--train", "1", "--val", "0"]);
    std::fs::remove_dir_all(only_train.join("val")).unwrap();
    let head_ok = t.path().join("ok.head");
    ok(&["train", s(&only_train), "--out", s(&head_ok)]);
    let e = fails(&["eval", s(&only_train), "--head", s(&head_ok)]);
    assert!(
        e.contains("only_train/val") && e.contains("does not exist"),
        "{e}"
    );
    // Output folder that does not exist: refused before any work.
    let e = fails(&["train", s(&only_train), "--out", "/nonexistent/dir/h.head"]);
    assert!(e.contains("/nonexistent/dir"), "{e}");
    // A corrupt head.
    let head = t.path().join("bad.head");
    std::fs::write(&head, b"teachcam-head 1\n{}\n").unwrap();
    let e = fails(&["classify", "a.jpg", "--head", s(&head)]);
    assert!(e.contains("bad.head") && e.contains("corrupt"), "{e}");
}

#[test]
fn a_head_for_another_backbone_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = dataset(t.path(), 3, 1);
    let head = t.path().join("w8.head");
    ok(&["train", s(&data), "--out", s(&head), "--precision", "w8"]);
    let img = data.join("val/ball/000.jpg");
    let e = fails(&[
        "classify",
        s(&img),
        "--head",
        s(&head),
        "--precision",
        "f32",
    ]);
    assert!(e.contains("--precision w8"), "the fix must be named: {e}");
}

/// The crash test the product promises: SIGKILL the daemon at random moments while it captures
/// and fine-tunes, restart it, and check after every kill that each acknowledged capture is
/// still there, nothing is corrupt, and a valid head loads. `TEACHCAM_KILLS` overrides the
/// number of kills (default 100).
#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_capture() {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let kills: usize = std::env::var("TEACHCAM_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    // A press every 90 ms, cycling over the three class buttons, for 60 s.
    let script: Vec<String> = (0..660)
        .map(|k| format!("{}@{}+60", k * 90, 1 + k % 3))
        .collect();
    let buttons = format!("script:{}", script.join(","));
    let mut rng = teachcam::rng::Rng::new(2024);
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut heads_seen = 0;
    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_teachcam"))
            .args([
                "run",
                "--state",
                s(&state),
                "--camera",
                "synthetic:300",
                "--fps",
                "0",
            ])
            .args([
                "--buttons",
                &buttons,
                "--classes",
                "a,b,c",
                "--duration",
                "60",
                "-q",
                // One frame a press: a capture every 90 ms, so at most one is in flight at
                // the kill (bursts put several in one poll).
                "--burst",
                "1",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the loop runs, then kill after a random delay (0–1.5 s).
        let started = Instant::now();
        let mut lines = Vec::new();
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("daemon did not start");
            let running = l.starts_with("teachcam: running");
            lines.push(l);
            if running {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500) as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for l in &lines {
            if let Some(id) = l
                .strip_prefix("captured id=")
                .and_then(|r| r.split(' ').next())
            {
                acked.insert(id.parse().unwrap());
            }
        }
        let (store, report) = teachcam::store::Store::open(&state).unwrap();
        assert!(
            report.quarantined.is_empty(),
            "round {round}: corrupt records {:?}",
            report.quarantined
        );
        let ids = store.ids();
        let lost: Vec<_> = acked.difference(&ids).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged captures lost: {lost:?}"
        );
        // At most the one capture in flight at the kill may exist without an acknowledgement.
        assert!(
            ids.len() <= acked.len() + 1,
            "round {round}: {} stored, {} acknowledged",
            ids.len(),
            acked.len()
        );
        acked = ids;
        if state.join("head.current").exists() || state.join("head.previous").exists() {
            assert!(
                store.load_head().is_some(),
                "round {round}: no valid head loads"
            );
            heads_seen += 1;
        }
    }
    assert!(
        acked.len() >= kills / 2,
        "captures happened: {}",
        acked.len()
    );
    assert!(
        heads_seen > kills / 2,
        "fine-tuned heads were written: {heads_seen}"
    );
    eprintln!(
        "kill test: {kills} kills and restarts, {} captures kept, 0 lost, 0 corrupt",
        acked.len()
    );
}

/// Under systemd (`Type=notify`), the daemon reports readiness after loading, pings the
/// watchdog from its loop, and says it is stopping; SIGTERM ends it cleanly with exit code 0.
#[test]
fn systemd_readiness_watchdog_and_clean_sigterm() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let t = tempfile::tempdir().unwrap();
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_teachcam"))
        .args([
            "run",
            "--state",
            s(&t.path().join("state")),
            "--camera",
            "synthetic",
            "--fps",
            "5",
            "-q",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got: Vec<String> = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    while t0.elapsed() < Duration::from_secs(60)
        && !(got.iter().any(|m| m.contains("READY=1"))
            && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3)
    {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // SIGTERM: a clean stop.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    assert!(
        status.success(),
        "SIGTERM must stop the daemon cleanly: {status:?}"
    );
}

fn fails_with(args: &[&str]) -> String {
    let o = teachcam(args);
    assert_eq!(
        o.status.code(),
        Some(2),
        "teachcam {args:?} should exit 2: {o:?}"
    );
    String::from_utf8(o.stdout).unwrap() + &String::from_utf8(o.stderr).unwrap()
}

#[test]
fn run_reads_a_config_file_and_refuses_bad_keys_by_name() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let cfg = t.path().join("teachcam.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\nclasses = [\"ball\", \"block\", \"ring\"]\n\
             [camera]\nuri = \"synthetic:1500\"\nfps = 20\n\
             [gpio]\nuri = \"script:300@1,1900@2,3400@3\"\n",
            s(&state)
        ),
    )
    .unwrap();
    let out = ok(&["run", "--config", s(&cfg), "--duration", "5"]);
    for class in ["ball", "block", "ring"] {
        assert!(out.contains(&format!("class={class}")), "{out}");
    }
    assert!(out.contains("learned: imprinted head live"), "{out}");
    assert!(out.contains("per frame: decode"), "{out}");
    // A flag overrides the file: a different state directory.
    let other = t.path().join("other");
    ok(&[
        "run",
        "--config",
        s(&cfg),
        "--state",
        s(&other),
        "--duration",
        "1",
    ]);
    assert!(other.join("samples").is_dir());

    // A misspelt key and a bad value stop the start, naming the key and the file.
    std::fs::write(&cfg, "[camera]\nfsp = 10\n").unwrap();
    let e = fails(&["run", "--config", s(&cfg), "--duration", "1"]);
    assert!(e.contains("fsp") && e.contains("teachcam.toml"), "{e}");
    std::fs::write(&cfg, "[gpio]\nuri = \"rpi\"\nbuttons = [16, 6]\n").unwrap();
    let e = fails(&["run", "--config", s(&cfg), "--duration", "1"]);
    assert!(e.contains("gpio.buttons"), "{e}");
    // A board backend on a machine without that board fails at once with a fix.
    let e = fails(&[
        "run",
        "--state",
        s(&state),
        "--gpio",
        "gpiochip:gpiochip7",
        "--duration",
        "1",
    ]);
    assert!(e.contains("gpiochip7"), "{e}");
}

#[test]
fn doctor_says_ready_or_names_what_is_wrong() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let out = ok(&["doctor", "--state", s(&state), "--camera", "synthetic"]);
    assert!(out.contains("verdict: ready"), "{out}");
    assert!(out.contains("checksum ok"), "{out}");
    assert!(out.contains("rpicam-vid"), "{out}");
    let json = ok(&["doctor", "--state", s(&state), "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] != "fail")
    );

    // A missing webcam and a state directory that cannot exist: two failures, each named.
    let file = t.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let bad_state = file.join("state");
    let out = fails_with(&[
        "doctor",
        "--state",
        s(&bad_state),
        "--camera",
        "v4l2:/dev/video42",
    ]);
    assert!(
        out.contains("FAIL") && out.contains("/dev/video42"),
        "{out}"
    );
    assert!(
        out.contains("plain-file") && out.contains("not a directory"),
        "{out}"
    );
    assert!(out.contains("2 problem(s)"), "{out}");
    // An invalid config is reported as such.
    let cfg = t.path().join("bad.toml");
    std::fs::write(&cfg, "threshold = 2\n").unwrap();
    let out = fails_with(&["doctor", "--config", s(&cfg)]);
    assert!(out.contains("`threshold`"), "{out}");
}

fn ids_and_labels(state: &Path) -> Vec<(String, String)> {
    // (label, thumbnail checksum) of every sample, via an image-folder export.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    ok(&[
        "dataset",
        "export",
        "--state",
        s(state),
        "--image-folder",
        s(&out),
    ]);
    let mut v = Vec::new();
    for class in std::fs::read_dir(&out).unwrap() {
        let class = class.unwrap().path();
        for f in std::fs::read_dir(&class).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            v.push((
                class.file_name().unwrap().to_string_lossy().into_owned(),
                format!("{:x}", bytes.len()) + &teachcam::fsutil::sha256_hex(&bytes),
            ));
        }
    }
    v.sort();
    v
}

#[test]
fn dataset_export_import_moves_what_was_taught_and_feeds_train() {
    let t = tempfile::tempdir().unwrap();
    let data = dataset(t.path(), 4, 0);
    let a = t.path().join("board-a");
    // Teach board A from an image folder (embedded here), as a workstation would.
    let out = ok(&[
        "dataset",
        "import",
        "--state",
        s(&a),
        s(&data.join("train")),
    ]);
    assert!(out.contains("imported 12 samples"), "{out}");
    let out = ok(&[
        "dataset",
        "import",
        "--state",
        s(&a),
        s(&data.join("train")),
    ]);
    assert!(
        out.contains("imported 0 samples") && out.contains("12 already there"),
        "{out}"
    );

    // Export to a tarball, import on board B: the same samples arrive.
    let tar = t.path().join("taught.tar");
    ok(&["dataset", "export", "--state", s(&a), s(&tar)]);
    let b = t.path().join("board-b");
    let out = ok(&["dataset", "import", "--state", s(&b), s(&tar)]);
    assert!(
        out.contains("imported 12 samples") && out.contains("0 embedded here"),
        "{out}"
    );
    assert_eq!(ids_and_labels(&a), ids_and_labels(&b));
    // On a board with another backbone, the thumbnails are embedded again.
    let c = t.path().join("board-c");
    let out = ok(&[
        "dataset",
        "import",
        "--state",
        s(&c),
        s(&tar),
        "--precision",
        "f32",
    ]);
    assert!(out.contains("12 embedded here"), "{out}");

    // The image-folder export is what `train` accepts.
    let folder = t.path().join("folder");
    ok(&[
        "dataset",
        "export",
        "--state",
        s(&b),
        "--image-folder",
        s(&folder),
    ]);
    let head = t.path().join("h.head");
    let out = ok(&["train", s(&folder), "--out", s(&head)]);
    assert!(out.contains("ball") || out.contains("3 classes"), "{out}");

    // A damaged tarball imports nothing and names the damaged entry.
    let mut bytes = std::fs::read(&tar).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"\xFF\xD8\xFF\xE0")
        .unwrap()
        + 200;
    bytes[at] ^= 0x55;
    let bad = t.path().join("bad.tar");
    std::fs::write(&bad, &bytes).unwrap();
    let d = t.path().join("board-d");
    let e = fails(&["dataset", "import", "--state", s(&d), s(&bad)]);
    assert!(
        e.contains("bad.tar") && e.contains("corrupt") && e.contains(".jpg"),
        "{e}"
    );
    assert!(ids_and_labels(&d).is_empty(), "all or nothing");
}

#[test]
fn a_precision_change_re_embeds_what_was_taught() {
    let t = tempfile::tempdir().unwrap();
    let data = dataset(t.path(), 2, 0);
    let state = t.path().join("state");
    ok(&[
        "dataset",
        "import",
        "--state",
        s(&state),
        s(&data.join("train")),
    ]);
    let start_with_f32 = || {
        let o = teachcam(&[
            "run",
            "--state",
            s(&state),
            "--precision",
            "f32",
            "--classes",
            "ball,block,ring",
            "--duration",
            "1",
        ]);
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = start_with_f32();
    assert!(
        err.contains("6 samples were embedded by another backbone"),
        "{err}"
    );
    // Second start: nothing left to re-embed.
    assert!(!start_with_f32().contains("re-embedding"));
}

#[test]
fn input_size_is_a_choice_and_heads_remember_it() {
    let t = tempfile::tempdir().unwrap();
    let data = dataset(t.path(), 3, 1);
    let head = t.path().join("160.head");
    ok(&["--input-size", "160", "train", s(&data), "--out", s(&head)]);
    let img = data.join("val/ball/000.jpg");
    let out = ok(&[
        "--input-size",
        "160",
        "classify",
        "--head",
        s(&head),
        s(&img),
    ]);
    assert!(
        out.contains("ball") || out.contains("block") || out.contains("ring"),
        "{out}"
    );
    // The same head with the default 224 input: another backbone, refused.
    let e = fails(&["classify", "--head", s(&head), s(&img)]);
    assert!(e.contains("160.head"), "{e}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["--input-size", "192", "info", "--json"])).unwrap();
    assert_eq!(v["input"], serde_json::json!([1, 3, 192, 192]));
    let e = fails(&[
        "--input-size",
        "100",
        "classify",
        "--head",
        s(&head),
        s(&img),
    ]);
    assert!(e.contains("100") && e.contains("160, 192, 224"), "{e}");
}

#[test]
fn the_class_list_is_kept_in_the_state_directory_after_the_first_start() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let run = |classes: &str| {
        let o = teachcam(&[
            "run",
            "--state",
            s(&state),
            "--classes",
            classes,
            "--duration",
            "0.5",
        ]);
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let first = run("cup,pen");
    assert!(
        first.contains("running with 2 classes (cup, pen)"),
        "{first}"
    );
    assert!(state.join("classes").is_file());
    // Later starts use the state's list (edited at run time); the flag only seeds it.
    let second = run("x,y,z");
    assert!(
        second.contains("running with 2 classes (cup, pen)"),
        "{second}"
    );
}

#[test]
fn bad_flag_values_are_one_line_errors_naming_the_rule() {
    for (args, want) in [
        (&["run", "--threshold", "2", "--duration", "1"][..], "0..=1"),
        (
            &["run", "--duration", "1e20"][..],
            "positive number of seconds",
        ),
        (
            &["run", "--camera", "webcam", "--duration", "1"][..],
            "unknown camera",
        ),
        (
            &["run", "--gpio", "script:5@x", "--duration", "1"][..],
            "button is not a number",
        ),
        (
            &["train", "d", "--out", "h", "--val-split", "0.95"][..],
            "[0, 0.9)",
        ),
    ] {
        let e = fails(args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

#[test]
fn explain_features_dream_and_attack_write_what_they_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dataset(dir.path(), 4, 1);
    let head = dir.path().join("f32.head");
    ok(&[
        "--precision",
        "f32",
        "train",
        s(&d),
        "--out",
        s(&head),
        "--val-split",
        "0",
    ]);
    let ball = d.join("val/ball/000.jpg");

    // explain: a PNG over the model's view and a JSON map that sums to logit − bias.
    let (map, js) = (dir.path().join("map.png"), dir.path().join("map.json"));
    let line = ok(&[
        "--precision",
        "f32",
        "explain",
        s(&ball),
        "--head",
        s(&head),
        "--class",
        "ring",
        "--out",
        s(&map),
        "--json",
        s(&js),
    ]);
    assert!(line.contains("map of ring"), "{line}");
    assert_eq!(image::open(&map).unwrap().width(), 224);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
    let values = v["map"]["values"].as_array().unwrap();
    assert_eq!(values.len(), 49);
    let sum: f64 = values.iter().map(|x| x.as_f64().unwrap()).sum();
    let (logit, bias) = (
        v["map"]["logit"].as_f64().unwrap(),
        v["map"]["bias"].as_f64().unwrap(),
    );
    assert!(
        (sum - (logit - bias)).abs() < 1e-4 * (1.0 + logit.abs()),
        "{sum} vs {logit} − {bias}"
    );

    // features: a grid; a bad layer is a one-line error naming the way out.
    let grid = dir.path().join("grid.png");
    ok(&[
        "features",
        s(&ball),
        "--layer",
        "3",
        "--channels",
        "4",
        "--out",
        s(&grid),
    ]);
    assert!(image::open(&grid).is_ok());
    assert!(fails(&["features", s(&ball), "--layer", "999", "--out", s(&grid)]).contains("--list"));

    // dream: seeded, so two runs write the same bytes; JPEG output is refused.
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    for out in [&a, &b] {
        ok(&[
            "dream",
            "--head",
            s(&head),
            "--class",
            "block",
            "--steps",
            "2",
            "--out",
            s(out),
        ]);
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(
        fails(&[
            "dream",
            "--head",
            s(&head),
            "--class",
            "block",
            "--out",
            "x.jpg"
        ])
        .contains(".png")
    );

    // attack: the written PNG stays within the budget of the original's pixels.
    let adv = dir.path().join("adv.png");
    let out = ok(&[
        "attack",
        s(&ball),
        "--head",
        s(&head),
        "--target",
        "ring",
        "--eps",
        "3",
        "--steps",
        "5",
        "--out",
        s(&adv),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let orig = image::open(&ball).unwrap().to_rgb8();
    let new = image::open(&adv).unwrap().to_rgb8();
    assert_eq!(orig.dimensions(), new.dimensions());
    let linf = orig
        .as_raw()
        .iter()
        .zip(new.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(
        linf <= 3 && u64::from(linf) == r["linf"].as_u64().unwrap(),
        "{linf} {r}"
    );
    // A head trained on int8 is refused for gradients, with the fix.
    let h8 = dir.path().join("int8.head");
    ok(&["train", s(&d), "--out", s(&h8), "--val-split", "0"]);
    assert!(
        fails(&["dream", "--head", s(&h8), "--class", "ball", "--out", s(&a)])
            .contains("--precision f32")
    );
}
