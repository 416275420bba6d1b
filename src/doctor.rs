//! `teachcam doctor`: checks a machine for running the appliance and says what is wrong and
//! how to fix it. Looks, never changes anything: the state directory is probed with a temp
//! file that is removed again, devices are opened only to see whether this user may.
//!
//! Checks: the config (parsed and validated as `run` would), the model (checksum, and that
//! tract loads it on this CPU), cameras (V4L2 nodes and their names, `rpicam-vid`,
//! `gst-launch-1.0` and `nvarguscamerasrc`), GPIO (chips with their labels and line names,
//! and the configured lines), and the state directory (writable, free space, samples, head).
//! Must not: fix things silently.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backbone::{self, Backbone};
use crate::camera::CameraSpec;
use crate::config::RunConfig;
use crate::gpio::GpioSpec;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing; does not stop the appliance.
    Note,
    /// Stops the appliance as configured.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Area: config, model, camera, gpio, state.
    pub area: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found (and, for failures, what to do).
    pub message: String,
}

/// Every finding, in order.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Findings.
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, area: &'static str, status: Status, message: impl Into<String>) {
        self.checks.push(Check {
            area,
            status,
            message: message.into(),
        });
    }

    /// Number of failures.
    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }
}

/// Whether `program` is an executable file on `$PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

/// Device nodes `/dev/<prefix>N`, sorted by N.
fn nodes(prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let n = name.strip_prefix(prefix)?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Whether this user may open `p` for reading and writing.
fn can_open_rw(p: &Path) -> Result<(), std::io::Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map(|_| ())
}

fn check_model(r: &mut Report, c: &RunConfig) -> Option<String> {
    let dir = match backbone::find_models_dir(c.models.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            r.push("model", Status::Fail, e.to_string());
            return None;
        }
    };
    let path = dir.join(c.backbone.file_name(c.precision));
    match backbone::verify_model(&path) {
        Ok(_) => {
            let t = std::time::Instant::now();
            match Backbone::load(&dir, c.spec()) {
                Ok(b) => {
                    r.push(
                        "model",
                        Status::Ok,
                        format!(
                            "{} ({}): checksum ok, loads in {:.0} ms, {}-d embeddings",
                            path.display(),
                            c.precision,
                            t.elapsed().as_secs_f64() * 1e3,
                            b.dim()
                        ),
                    );
                    // What heads record: the backbone's digest, not the file's SHA-256.
                    Some(b.id().digest.clone())
                }
                Err(e) => {
                    r.push("model", Status::Fail, e.to_string());
                    None
                }
            }
        }
        Err(e) => {
            r.push("model", Status::Fail, e.to_string());
            None
        }
    }
}

fn check_cameras(r: &mut Report, c: &RunConfig) {
    let videos = nodes("video");
    if videos.is_empty() {
        r.push("camera", Status::Note, "no V4L2 nodes (/dev/video*)");
    }
    for v in &videos {
        let name = v
            .file_name()
            .and_then(|n| {
                std::fs::read_to_string(Path::new("/sys/class/video4linux").join(n).join("name"))
                    .ok()
            })
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let access = match can_open_rw(v) {
            Ok(()) => "accessible".to_string(),
            Err(e) => format!("not accessible ({e}); add the user to the video group"),
        };
        r.push(
            "camera",
            Status::Note,
            format!("{} {name:?}: {access}", v.display()),
        );
    }
    let rpicam = on_path("rpicam-vid");
    let gst = on_path("gst-launch-1.0");
    for (prog, found) in [("rpicam-vid", &rpicam), ("gst-launch-1.0", &gst)] {
        r.push(
            "camera",
            Status::Note,
            match found {
                Some(p) => format!("{prog}: {}", p.display()),
                None => format!("{prog}: not installed"),
            },
        );
    }
    if gst.is_some() && on_path("gst-inspect-1.0").is_some() {
        let argus = std::process::Command::new("gst-inspect-1.0")
            .arg("nvarguscamerasrc")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        r.push(
            "camera",
            Status::Note,
            format!(
                "GStreamer nvarguscamerasrc (Jetson CSI): {}",
                if argus { "present" } else { "absent" }
            ),
        );
    }
    // The configured camera.
    let uri = c.camera.to_string();
    let (status, msg) = match &c.camera {
        CameraSpec::V4l2 { device: dev, .. } => {
            let p = Path::new(dev);
            if !p.exists() {
                (
                    Status::Fail,
                    format!(
                        "camera {uri}: {dev} does not exist; plug the webcam in, or pick one of the nodes listed above"
                    ),
                )
            } else if let Err(e) = can_open_rw(p) {
                (
                    Status::Fail,
                    format!(
                        "camera {uri}: cannot open {dev} ({e}); add the service user to the video group"
                    ),
                )
            } else if cfg!(all(feature = "hw", target_os = "linux")) {
                (Status::Ok, format!("camera {uri}: present"))
            } else {
                (
                    Status::Fail,
                    format!(
                        "camera {uri}: this build has no V4L2 support (built without the hw feature)"
                    ),
                )
            }
        }
        CameraSpec::Rpicam => match &rpicam {
            Some(_) => (Status::Ok, "camera rpicam: rpicam-vid found".into()),
            None => (Status::Fail, "camera rpicam: rpicam-vid is not installed; on Raspberry Pi OS: sudo apt install rpicam-apps".into()),
        },
        CameraSpec::Gst(_) => match &gst {
            Some(_) => (Status::Ok, "camera gst: gst-launch-1.0 found".into()),
            None => (
                Status::Fail,
                "camera gst: gst-launch-1.0 is not installed; sudo apt install gstreamer1.0-tools"
                    .into(),
            ),
        },
        CameraSpec::Dir(d) => match crate::camera::DirSource::new(d, 0) {
            Ok(_) => (Status::Ok, format!("camera {uri}: images found")),
            Err(e) => (Status::Fail, format!("camera {uri}: {e}")),
        },
        CameraSpec::Cmd(cmd) => {
            let prog = cmd.split_whitespace().next().unwrap_or("");
            match on_path(prog).or_else(|| Path::new(prog).is_file().then(|| PathBuf::from(prog))) {
                Some(_) => (Status::Ok, format!("camera cmd: {prog} found")),
                None => (Status::Fail, format!("camera cmd: {prog:?} is not on PATH")),
            }
        }
        CameraSpec::Synthetic { .. } => (Status::Ok, format!("camera {uri}: built in")),
    };
    r.push("camera", status, msg);
}

fn check_gpio(r: &mut Report, c: &RunConfig) {
    let chips = nodes("gpiochip");
    if chips.is_empty() {
        r.push("gpio", Status::Note, "no GPIO chips (/dev/gpiochip*)");
    }
    #[cfg(all(feature = "hw", target_os = "linux"))]
    for p in &chips {
        match gpiocdev::chip::Chip::from_path(p) {
            Ok(chip) => {
                let info = chip.info().ok();
                let names: Vec<String> = chip
                    .line_info_iter()
                    .map(|it| {
                        it.filter_map(Result::ok)
                            .filter(|l| !l.name.is_empty())
                            .map(|l| l.name)
                            .collect()
                    })
                    .unwrap_or_default();
                r.push(
                    "gpio",
                    Status::Note,
                    format!(
                        "{} ({}, {} lines): {}",
                        p.display(),
                        info.as_ref().map_or("?", |i| i.label.as_str()),
                        info.as_ref().map_or(0, |i| i.num_lines),
                        if names.is_empty() {
                            "no line names".into()
                        } else {
                            names.join(" ")
                        }
                    ),
                );
            }
            Err(e) => r.push(
                "gpio",
                Status::Note,
                format!(
                    "{}: cannot open ({e}); add the user to the gpio group",
                    p.display()
                ),
            ),
        }
    }
    #[cfg(not(all(feature = "hw", target_os = "linux")))]
    for p in &chips {
        r.push("gpio", Status::Note, format!("{}", p.display()));
    }
    let uri = c.gpio.to_string();
    let buttons = c.classes.len() + 1;
    if !c.gpio.is_board() {
        r.push(
            "gpio",
            Status::Ok,
            format!("gpio {uri}: no board lines needed"),
        );
        return;
    }
    if !cfg!(all(feature = "hw", target_os = "linux")) {
        r.push(
            "gpio",
            Status::Fail,
            format!("gpio {uri}: this build has no board support (built without the hw feature)"),
        );
        return;
    }
    if c.gpio == GpioSpec::Rpi {
        let mem = ["/dev/gpiomem0", "/dev/gpiomem"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists());
        match mem {
            None => r.push("gpio", Status::Fail, "gpio rpi: no /dev/gpiomem; this is not a Raspberry Pi (use gpio = \"gpiochip\" on other boards)"),
            Some(m) => match can_open_rw(m) {
                Ok(()) => r.push("gpio", Status::Ok, format!("gpio rpi: {} accessible; buttons on BCM {}, LEDs on BCM {}", m.display(), list(&c.wiring.buttons[..buttons]), list(&c.wiring.leds))),
                Err(e) => r.push("gpio", Status::Fail, format!("gpio rpi: cannot open {} ({e}); add the service user to the gpio group", m.display())),
            },
        }
        return;
    }
    #[cfg(all(feature = "hw", target_os = "linux"))]
    {
        let chip = match match &c.gpio {
            GpioSpec::Gpiochip(Some(chip)) => Some(crate::gpio::board::chip_path(chip)),
            _ => None,
        } {
            Some(Err(e)) => {
                r.push("gpio", Status::Fail, format!("gpio {uri}: {e}"));
                return;
            }
            Some(Ok(p)) => Some(p),
            None => None,
        };
        let lines = c.wiring.buttons[..buttons]
            .iter()
            .map(|l| ("button", l))
            .chain(c.wiring.leds.iter().map(|l| ("LED", l)));
        let mut bad = 0;
        for (i, (role, line)) in lines.enumerate() {
            let found = crate::gpio::board::find_line(chip.as_deref(), line);
            match found {
                Some((p, info)) if info.used => {
                    bad += 1;
                    r.push("gpio", Status::Fail, format!("{role} line {line} ({} offset {}) is in use by {:?}; stop that program or pick another line", p.display(), info.offset, info.consumer));
                }
                Some(_) => {}
                None => {
                    bad += 1;
                    r.push("gpio", Status::Fail, format!("{role} line {line} (entry {i}) not found; pick a line from the list above"));
                }
            }
        }
        if bad == 0 {
            r.push(
                "gpio",
                Status::Ok,
                format!(
                    "gpio {uri}: all {} lines found and free",
                    buttons + c.wiring.leds.len()
                ),
            );
        }
    }
}

fn list(lines: &[crate::gpio::Line]) -> String {
    lines
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Free bytes for this user on the filesystem holding `p`.
fn free_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `s` points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let s = unsafe { s.assume_init() };
    // The field widths differ between 32- and 64-bit targets.
    #[allow(clippy::unnecessary_cast)]
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

fn check_state(r: &mut Report, c: &RunConfig, model_sha: Option<&str>) {
    let dir = &c.state_dir;
    // The nearest existing ancestor decides whether the directory can be created.
    let probe_dir = if dir.is_dir() {
        dir.clone()
    } else {
        match dir.ancestors().find(|a| a.exists()) {
            Some(a) if a.is_dir() => {
                r.push(
                    "state",
                    Status::Note,
                    format!("{} does not exist yet; `run` creates it", dir.display()),
                );
                a.to_path_buf()
            }
            Some(a) => {
                r.push(
                    "state",
                    Status::Fail,
                    format!(
                        "{} cannot be created: {} is not a directory",
                        dir.display(),
                        a.display()
                    ),
                );
                return;
            }
            None => {
                r.push(
                    "state",
                    Status::Fail,
                    format!("{} cannot be created", dir.display()),
                );
                return;
            }
        }
    };
    let probe = probe_dir.join(format!(".teachcam-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"probe") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            let free = free_bytes(&probe_dir);
            let status = if free.is_some_and(|f| f < 50 << 20) {
                Status::Fail
            } else {
                Status::Ok
            };
            r.push(
                "state",
                status,
                format!(
                    "{}: writable, {} free{}",
                    dir.display(),
                    free.map_or("?".into(), |f| format!("{:.0} MB", f as f64 / 1e6)),
                    if status == Status::Fail {
                        "; free some space (each capture needs about 15 kB, heads about 50 kB)"
                    } else {
                        ""
                    }
                ),
            );
        }
        Err(e) => {
            r.push(
                "state",
                Status::Fail,
                format!("{} is not writable by this user ({e}); chown it to the service user or pick another state_dir", probe_dir.display()),
            );
            return;
        }
    }
    let samples = std::fs::read_dir(dir.join("samples"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "rec"))
                .count()
        })
        .unwrap_or(0);
    let head = dir.join("head.current");
    let head_msg = if head.exists() {
        match crate::head::Head::load(&head) {
            Ok(h) if model_sha.is_some_and(|s| s != h.backbone.digest) => {
                "a head for another backbone (re-made from the samples at start)".to_string()
            }
            Ok(h) => format!(
                "a head for {} ({} classes)",
                h.classes.join(", "),
                h.classes.len()
            ),
            Err(e) => {
                format!("an unreadable head ({e}); head.previous or the samples are used instead")
            }
        }
    } else {
        "no head yet".into()
    };
    r.push(
        "state",
        Status::Note,
        format!("{samples} samples stored, {head_msg}"),
    );
}

/// Run every check for `config` (already validated) — or report why it is invalid.
pub fn diagnose(config: Result<RunConfig, String>) -> Report {
    let mut r = Report::default();
    let c = match config {
        Ok(c) => {
            r.push(
                "config",
                Status::Ok,
                format!(
                    "valid: camera {}, gpio {}, classes {}, state {}",
                    c.camera,
                    c.gpio,
                    c.classes.join(","),
                    c.state_dir.display()
                ),
            );
            c
        }
        Err(e) => {
            r.push("config", Status::Fail, e);
            return r;
        }
    };
    let sha = check_model(&mut r, &c);
    check_cameras(&mut r, &c);
    check_gpio(&mut r, &c);
    check_state(&mut r, &c, sha.as_deref());
    check_http(&mut r, &c);
    r
}

/// The web console: where it listens and its login URL (the token is made at the first
/// `run`; doctor only reads it).
fn check_http(r: &mut Report, c: &RunConfig) {
    let Some(addr) = c.http else {
        r.push(
            "http",
            Status::Note,
            "web console off (add an [http] section to the config)",
        );
        return;
    };
    let path = c.state_dir.join(crate::config::HTTP_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) => {
            let host = if addr.ip().is_unspecified() {
                format!("THIS-BOARD:{}", addr.port())
            } else {
                addr.to_string()
            };
            r.push(
                "http",
                Status::Ok,
                format!(
                    "web console on {addr}; log in at http://{host}/login?token={}",
                    token.trim()
                ),
            );
        }
        Err(_) => r.push(
            "http",
            Status::Note,
            format!(
                "web console on {addr}; its token is made at the first `teachcam run` ({})",
                path.display()
            ),
        ),
    }
}
