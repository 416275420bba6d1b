//! The appliance's configuration: a TOML file (`teachcam run --config FILE`), command-line
//! flags that override it, and built-in defaults, resolved into one checked [`RunConfig`]
//! before anything is opened. Every key is documented in `cross/teachcam.toml` (the file
//! `make deploy` installs) and checked here: an unknown key or a bad value is an error that
//! names the key and the file. Must not: open devices or load models.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backbone::{BackboneKind, Precision, Spec};
use crate::camera::CameraSpec;
use crate::frame::check_class_name;
use crate::gpio::{GpioSpec, Line, Wiring};

/// A configuration problem; the message names the key (and the file when there is one).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and shows the line).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{origin}: `{key}` {why}")]
    Invalid {
        /// The file, or "command line".
        origin: String,
        /// The key (`camera.fps`, …).
        key: &'static str,
        /// What is wrong and what is allowed.
        why: String,
    },
}

/// `[camera]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSection {
    /// Frame source URI.
    pub uri: Option<String>,
    /// Frames per second to take (0 = as fast as possible).
    pub fps: Option<f64>,
    /// Capture width asked of real cameras.
    pub width: Option<u32>,
    /// Capture height asked of real cameras.
    pub height: Option<u32>,
}

/// `[gpio]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioSection {
    /// Buttons/LEDs backend URI.
    pub uri: Option<String>,
    /// Button lines (undo first).
    pub buttons: Option<Vec<Line>>,
    /// LED lines ("unknown" first).
    pub leds: Option<Vec<Line>>,
    /// LEDs are lit by driving the line low.
    pub leds_active_low: Option<bool>,
    /// A level must be stable this long to count.
    pub debounce_ms: Option<u64>,
    /// Held this long = a hold (undo on button 0, bursts on the others).
    pub hold_ms: Option<u64>,
    /// Burst period while a class button is held.
    pub repeat_ms: Option<u64>,
}

/// Frames the inbox of unsure frames keeps by default.
pub const INBOX_SIZE: usize = 50;

/// Most frames one press may capture (`[train] burst`).
pub const MAX_PRESS_FRAMES: u32 = 20;

/// `[train]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Time budget of one background fine-tune, seconds.
    pub budget_s: Option<f64>,
    /// Frames one press captures (a short burst): 1..=20.
    pub burst: Option<u32>,
    /// Milliseconds between a press's frames: 50..=2000.
    pub burst_every_ms: Option<u64>,
}

/// `[inbox]`: frames the appliance was unsure of, kept to label or dismiss.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSection {
    /// Most frames kept: 0..=1000 (0: no inbox).
    pub size: Option<usize>,
    /// At most one frame in this long, seconds: 1..=3600.
    pub every_s: Option<f64>,
    /// A best class that beats the second by less than this is unsure: 0..=1.
    pub margin: Option<f32>,
}

/// `[model]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Models directory.
    pub dir: Option<PathBuf>,
    /// Backbone network: mobilenetv2 or efficientnet-lite2.
    pub backbone: Option<String>,
    /// Backbone precision: int8, w8, f32, qdq or qop.
    pub precision: Option<String>,
    /// Side of the square model input: 224, 192 or 160.
    pub input_size: Option<usize>,
    /// Threads one frame's int8 layers are split over: 1..=64 (default: the cores but one).
    pub threads: Option<u32>,
}

/// `[http]`: the web console.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Serve the console (default: true when the section is present).
    pub enabled: Option<bool>,
    /// Address and port to listen on (default [`DEFAULT_HTTP_LISTEN`]; `127.0.0.1:PORT` for
    /// an ssh tunnel only).
    pub listen: Option<String>,
    /// Largest dataset upload, MB (default [`DEFAULT_MAX_UPLOAD_MB`]).
    pub max_upload_mb: Option<u64>,
    /// How long a browser stays logged in, seconds (default a week).
    pub session_s: Option<u64>,
}

/// The console's default upload limit, MB (a tarball of about 10 000 samples).
pub const DEFAULT_MAX_UPLOAD_MB: u64 = 256;

/// The console's limits from the `[http]` section (defaults where it is silent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// Largest dataset upload, bytes.
    pub max_upload: u64,
    /// How long a login lasts.
    pub session: std::time::Duration,
}

/// Where the console listens by default: every interface, port 8088 (8080 is mjpg-streamer's,
/// 8000 picamera2's example, 4912 Edge Impulse's: a board may run one of those as its camera).
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8088";

/// The console's access token, in the state directory (mode 0600).
pub const HTTP_TOKEN_FILE: &str = "http-token";

/// The file as written (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Status JSON path.
    pub status_file: Option<PathBuf>,
    /// Class names in button order.
    pub classes: Option<Vec<String>>,
    /// Confidence below which the answer is "unknown".
    pub threshold: Option<f32>,
    /// Frames the displayed class is voted over.
    pub smoothing: Option<usize>,
    /// Largest image decoded, in pixels (`TEACHCAM_MAX_PIXELS` overrides it).
    pub max_pixels: Option<u64>,
    /// `[camera]`.
    #[serde(default)]
    pub camera: CameraSection,
    /// `[gpio]`.
    #[serde(default)]
    pub gpio: GpioSection,
    /// `[train]`.
    #[serde(default)]
    pub train: TrainSection,
    /// `[model]`.
    #[serde(default)]
    pub model: ModelSection,
    /// `[inbox]`.
    #[serde(default)]
    pub inbox: InboxSection,
    /// `[http]` (absent: no web console unless `--http` is given).
    pub http: Option<HttpSection>,
    /// `[mqtt]` (absent: no MQTT).
    pub mqtt: Option<crate::mqtt::MqttSection>,
}

impl ConfigFile {
    /// Read and parse `path` (unknown keys and wrong types are errors naming the key).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse TOML text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            // One line: where, then what (toml's own rendering spans several lines).
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            // The offending line, cut to 80 characters: a crafted file's 200 KB line must
            // not come back whole in a log or a terminal.
            let source = line
                .and_then(|l| text.lines().nth(l - 1))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| match l.char_indices().nth(80) {
                    Some((cut, _)) => format!("{}…", &l[..cut]),
                    None => l.to_string(),
                });
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: match (line, source) {
                    (Some(l), Some(src)) => format!("line {l} ({src}): {}", e.message().trim()),
                    (Some(l), None) => format!("line {l}: {}", e.message().trim()),
                    _ => e.message().trim().to_string(),
                },
            }
        })
    }
}

/// The checked numbers of the command line and the config file. Each type's `new` is the
/// one place its rule lives: clap parses flags through `FromStr` (which calls `new`), and
/// [`RunConfig::resolve`] checks file values with `new`, naming the key.
pub mod values {
    use std::fmt;
    use std::str::FromStr;

    /// Define `FromStr` and `Display` for a checked number type through its `new` and `get`.
    macro_rules! checked_number {
        ($name:ident, $t:ty) => {
            impl FromStr for $name {
                type Err = String;
                fn from_str(s: &str) -> Result<Self, String> {
                    let v: $t = s
                        .trim()
                        .parse()
                        .map_err(|_| format!("{s:?} is not a number"))?;
                    $name::new(v)
                }
            }
            impl fmt::Display for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{}", self.get())
                }
            }
        };
    }

    /// Confidence below which the answer is "unknown": 0..=1.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Threshold(f32);
    impl Threshold {
        /// The default.
        pub const DEFAULT: Threshold = Threshold(0.5);
        /// Checked.
        pub fn new(v: f32) -> Result<Self, String> {
            if (0.0..=1.0).contains(&v) {
                Ok(Threshold(v))
            } else {
                Err(format!("must be in 0..=1, got {v}"))
            }
        }
        /// The value.
        pub fn get(self) -> f32 {
            self.0
        }
    }
    checked_number!(Threshold, f32);

    /// Frames per second to take: 0 (as fast as possible) ..= 240.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Fps(f64);
    impl Fps {
        /// Checked.
        pub fn new(v: f64) -> Result<Self, String> {
            if v.is_finite() && (0.0..=240.0).contains(&v) {
                Ok(Fps(v))
            } else {
                Err(format!(
                    "must be 0..=240 (0 = as fast as possible), got {v}"
                ))
            }
        }
        /// The value.
        pub fn get(self) -> f64 {
            self.0
        }
    }
    checked_number!(Fps, f64);

    /// A positive duration in seconds, at most ten years (so it always fits a `Duration`).
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Seconds(f64);
    impl Seconds {
        /// Longest accepted, seconds.
        pub const MAX: f64 = 10.0 * 365.0 * 86_400.0;
        /// Checked.
        pub fn new(v: f64) -> Result<Self, String> {
            if v.is_finite() && v > 0.0 && v <= Self::MAX {
                Ok(Seconds(v))
            } else {
                Err(format!(
                    "must be a positive number of seconds up to {}, got {v}",
                    Self::MAX
                ))
            }
        }
        /// The value.
        pub fn get(self) -> f64 {
            self.0
        }
        /// As a duration.
        pub fn duration(self) -> std::time::Duration {
            std::time::Duration::from_secs_f64(self.0)
        }
    }
    checked_number!(Seconds, f64);

    /// Time budget of one background fine-tune: 0.05..=600 s.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Budget(f64);
    impl Budget {
        /// The default, seconds.
        pub const DEFAULT: Budget = Budget(2.0);
        /// Checked.
        pub fn new(v: f64) -> Result<Self, String> {
            if v.is_finite() && (0.05..=600.0).contains(&v) {
                Ok(Budget(v))
            } else {
                Err(format!("must be 0.05..=600 seconds, got {v}"))
            }
        }
        /// The value.
        pub fn get(self) -> f64 {
            self.0
        }
    }
    checked_number!(Budget, f64);

    /// Fraction of each class held out per cross-validation fold: 0 (no selection) .. 0.9.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct ValSplit(f32);
    impl ValSplit {
        /// The default.
        pub const DEFAULT: ValSplit = ValSplit(0.2);
        /// Checked.
        pub fn new(v: f32) -> Result<Self, String> {
            if (0.0..0.9).contains(&v) {
                Ok(ValSplit(v))
            } else {
                Err(format!("must be in [0, 0.9), got {v}"))
            }
        }
        /// The value.
        pub fn get(self) -> f32 {
            self.0
        }
    }
    checked_number!(ValSplit, f32);

    /// An L2 regularisation strength: finite, >= 0.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct L2(f32);
    impl L2 {
        /// Checked.
        pub fn new(v: f32) -> Result<Self, String> {
            if v.is_finite() && v >= 0.0 {
                Ok(L2(v))
            } else {
                Err(format!("must be finite and >= 0, got {v}"))
            }
        }
        /// The value.
        pub fn get(self) -> f32 {
            self.0
        }
    }
    checked_number!(L2, f32);

    /// Side of the square model input: one of [`crate::backbone::INPUT_SIZES`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InputSize(usize);
    impl InputSize {
        /// The default ([`crate::backbone::INPUT_SIZE`]).
        pub const DEFAULT: InputSize = InputSize(crate::backbone::INPUT_SIZE);
        /// Checked.
        pub fn new(v: usize) -> Result<Self, String> {
            if crate::backbone::INPUT_SIZES.contains(&v) {
                Ok(InputSize(v))
            } else {
                let offered: Vec<String> = crate::backbone::INPUT_SIZES
                    .iter()
                    .map(usize::to_string)
                    .collect();
                Err(format!(
                    "{v} is not offered; choose one of {}",
                    offered.join(", ")
                ))
            }
        }
        /// The value.
        pub fn get(self) -> usize {
            self.0
        }
    }
    checked_number!(InputSize, usize);

    /// Frames the displayed class is voted over: 1..=[`crate::session::MAX_SMOOTHING`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Smoothing(usize);
    impl Smoothing {
        /// The default ([`crate::session::SMOOTHING`]).
        pub const DEFAULT: Smoothing = Smoothing(crate::session::SMOOTHING);
        /// Checked.
        pub fn new(v: usize) -> Result<Self, String> {
            let max = crate::session::MAX_SMOOTHING;
            if (1..=max).contains(&v) {
                Ok(Smoothing(v))
            } else {
                Err(format!("must be 1..={max} frames, got {v}"))
            }
        }
        /// The value.
        pub fn get(self) -> usize {
            self.0
        }
    }
    checked_number!(Smoothing, usize);
}

use values::{Budget, Fps, InputSize, Smoothing, Threshold};

/// Everything `teachcam run` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// State directory.
    pub state_dir: PathBuf,
    /// Status JSON path.
    pub status_file: Option<PathBuf>,
    /// Class names (they seed the state directory's list at the first start).
    pub classes: Vec<String>,
    /// Unknown threshold.
    pub threshold: Threshold,
    /// Smoothing window.
    pub smoothing: Smoothing,
    /// Camera.
    pub camera: CameraSpec,
    /// Camera options.
    pub camera_opts: crate::camera::Options,
    /// Buttons and LEDs.
    pub gpio: GpioSpec,
    /// Wiring for board backends.
    pub wiring: Wiring,
    /// Button timing.
    pub timing: crate::gpio::debounce::Timing,
    /// Fine-tune budget.
    pub train_budget: Budget,
    /// Most frames the inbox keeps (0: none).
    pub inbox_size: usize,
    /// At most one frame to the inbox in this long, ms.
    pub inbox_every_ms: u64,
    /// The inbox's margin.
    pub inbox_margin: f32,
    /// Frames one press captures.
    pub press_frames: u32,
    /// Milliseconds between a press's frames.
    pub press_every_ms: u64,
    /// Models directory (None = search).
    pub models: Option<PathBuf>,
    /// Backbone network.
    pub backbone: BackboneKind,
    /// Backbone precision.
    pub precision: Precision,
    /// Model input side in pixels.
    pub input_size: InputSize,
    /// Threads one frame's int8 layers are split over (1..=[`crate::backbone::MAX_THREADS`]).
    pub threads: usize,
    /// Where the web console listens (`None`: no console).
    pub http: Option<std::net::SocketAddr>,
    /// The console's upload limit and login lifetime.
    pub http_options: HttpOptions,
    /// MQTT and Home Assistant (`None`: off).
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    /// The file's pixel limit for every decode (`None`: the environment's or the default).
    pub max_pixels: Option<u64>,
}

impl RunConfig {
    /// The backbone to load.
    pub fn spec(&self) -> Spec {
        Spec::new(self.backbone, self.precision)
            .sized(self.input_size.get())
            .threaded(self.threads)
    }
}

/// Flags given on the command line (each overrides the file); already checked by their types.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--state`.
    pub state_dir: Option<PathBuf>,
    /// `--status`.
    pub status_file: Option<PathBuf>,
    /// `--classes`.
    pub classes: Option<Vec<String>>,
    /// `--threshold`.
    pub threshold: Option<Threshold>,
    /// `--camera`.
    pub camera: Option<CameraSpec>,
    /// `--fps`.
    pub fps: Option<Fps>,
    /// `--gpio`.
    pub gpio: Option<GpioSpec>,
    /// `--models`.
    pub models: Option<PathBuf>,
    /// `--backbone`.
    pub backbone: Option<BackboneKind>,
    /// `--precision`.
    pub precision: Option<Precision>,
    /// `--input-size`.
    pub input_size: Option<InputSize>,
    /// `--threads`.
    pub threads: Option<u32>,
    /// `--http`.
    pub http: Option<std::net::SocketAddr>,
    /// `--burst`.
    pub burst: Option<u32>,
}

/// `max_upload_mb` in 1..=4096 and `session_s` in 1 s..=a year, or the defaults.
fn http_options(
    h: Option<&HttpSection>,
    bad: impl Fn(&'static str, String) -> ConfigError,
) -> Result<HttpOptions, ConfigError> {
    let mb = h
        .and_then(|h| h.max_upload_mb)
        .unwrap_or(DEFAULT_MAX_UPLOAD_MB);
    if !(1..=4096).contains(&mb) {
        return Err(bad("http.max_upload_mb", format!("is {mb}; use 1..=4096")));
    }
    let week = 7 * 24 * 3600;
    let session_s = h.and_then(|h| h.session_s).unwrap_or(week);
    if !(1..=365 * 24 * 3600).contains(&session_s) {
        return Err(bad(
            "http.session_s",
            format!("is {session_s}; use 1..=31536000 (a year)"),
        ));
    }
    Ok(HttpOptions {
        max_upload: mb << 20,
        session: std::time::Duration::from_secs(session_s),
    })
}

/// Default state directory.
pub const DEFAULT_STATE: &str = "/var/lib/teachcam";

/// Default class names (class1..class4).
pub fn default_classes() -> Vec<String> {
    (1..=4).map(|k| format!("class{k}")).collect()
}

impl RunConfig {
    /// Merge flags over the file over the defaults, then check every value.
    pub fn resolve(
        file: Option<(&Path, ConfigFile)>,
        cli: Overrides,
    ) -> Result<RunConfig, ConfigError> {
        let (origin, f) = match file {
            Some((p, f)) => (format!("config {}", p.display()), f),
            None => ("command line".to_string(), ConfigFile::default()),
        };
        let bad = |key: &'static str, why: String| ConfigError::Invalid {
            origin: origin.clone(),
            key,
            why,
        };
        // A file value goes through the same checked type as its flag.
        fn from_file<T, V>(
            v: Option<V>,
            new: impl Fn(V) -> Result<T, String>,
            bad: impl Fn(String) -> ConfigError,
        ) -> Result<Option<T>, ConfigError> {
            v.map(new).transpose().map_err(bad)
        }
        let dt = crate::gpio::debounce::Timing::default();
        let dc = crate::camera::Options::default();
        let precision = match (cli.precision, f.model.precision.as_deref()) {
            (Some(p), _) => p,
            (None, Some(s)) => s.parse().map_err(|e: String| bad("model.precision", e))?,
            (None, None) => Precision::default(),
        };
        let backbone = match (cli.backbone, f.model.backbone.as_deref()) {
            (Some(k), _) => k,
            (None, Some(s)) => s.parse().map_err(|e: String| bad("model.backbone", e))?,
            (None, None) => BackboneKind::default(),
        };
        let input_size = match cli.input_size {
            Some(s) => s,
            None => from_file(f.model.input_size, InputSize::new, |w| {
                bad("model.input_size", w)
            })?
            .unwrap_or(InputSize::DEFAULT),
        };
        let threshold = match cli.threshold {
            Some(t) => t,
            None => from_file(f.threshold, Threshold::new, |w| bad("threshold", w))?
                .unwrap_or(Threshold::DEFAULT),
        };
        let fps = match cli.fps {
            Some(v) => v,
            None => from_file(f.camera.fps, Fps::new, |w| bad("camera.fps", w))?
                .unwrap_or(Fps::new(dc.fps).map_err(|w| bad("camera.fps", w))?),
        };
        let camera = match (cli.camera, f.camera.uri) {
            (Some(c), _) => c,
            (None, Some(u)) => u
                .parse()
                .map_err(|e: crate::camera::CameraError| bad("camera.uri", e.to_string()))?,
            (None, None) => CameraSpec::default(),
        };
        let gpio = match (cli.gpio, f.gpio.uri) {
            (Some(g), _) => g,
            (None, Some(u)) => u
                .parse()
                .map_err(|e: crate::gpio::GpioError| bad("gpio.uri", e.to_string()))?,
            (None, None) => GpioSpec::default(),
        };
        let c = RunConfig {
            state_dir: cli
                .state_dir
                .or(f.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
            status_file: cli.status_file.or(f.status_file),
            classes: cli.classes.or(f.classes).unwrap_or_else(default_classes),
            threshold,
            smoothing: from_file(f.smoothing, Smoothing::new, |w| bad("smoothing", w))?
                .unwrap_or(Smoothing::DEFAULT),
            camera,
            camera_opts: crate::camera::Options {
                fps: fps.get(),
                width: f.camera.width.unwrap_or(dc.width),
                height: f.camera.height.unwrap_or(dc.height),
            },
            gpio,
            wiring: {
                let d = Wiring::default();
                Wiring {
                    buttons: f.gpio.buttons.unwrap_or(d.buttons),
                    leds: f.gpio.leds.unwrap_or(d.leds),
                    leds_active_low: f.gpio.leds_active_low.unwrap_or(d.leds_active_low),
                }
            },
            timing: crate::gpio::debounce::Timing {
                debounce_ms: f.gpio.debounce_ms.unwrap_or(dt.debounce_ms),
                hold_ms: f.gpio.hold_ms.unwrap_or(dt.hold_ms),
                repeat_ms: f.gpio.repeat_ms.unwrap_or(dt.repeat_ms),
            },
            train_budget: from_file(f.train.budget_s, Budget::new, |w| bad("train.budget_s", w))?
                .unwrap_or(Budget::DEFAULT),
            inbox_size: match f.inbox.size {
                None => INBOX_SIZE,
                Some(n) if n <= crate::inbox::MAX_CAPACITY => n,
                Some(n) => {
                    return Err(bad(
                        "inbox.size",
                        format!("must be 0..={} frames, got {n}", crate::inbox::MAX_CAPACITY),
                    ));
                }
            },
            inbox_every_ms: match f.inbox.every_s {
                None => crate::session::INBOX_EVERY_MS,
                Some(s) if s.is_finite() && (1.0..=3600.0).contains(&s) => (s * 1000.0) as u64,
                Some(s) => {
                    return Err(bad(
                        "inbox.every_s",
                        format!("must be 1..=3600 seconds, got {s}"),
                    ));
                }
            },
            inbox_margin: match f.inbox.margin {
                None => crate::session::INBOX_MARGIN,
                Some(m) if (0.0..=1.0).contains(&m) => m,
                Some(m) => return Err(bad("inbox.margin", format!("must be 0..=1, got {m}"))),
            },
            press_frames: match cli.burst.or(f.train.burst) {
                None => crate::session::PRESS_FRAMES,
                Some(n) if (1..=MAX_PRESS_FRAMES).contains(&n) => n,
                Some(n) => {
                    let key = if cli.burst.is_some() {
                        "--burst"
                    } else {
                        "train.burst"
                    };
                    return Err(bad(
                        key,
                        format!("must be 1..={MAX_PRESS_FRAMES} frames, got {n}"),
                    ));
                }
            },
            press_every_ms: match f.train.burst_every_ms {
                None => crate::session::PRESS_EVERY_MS,
                Some(ms) if (crate::session::MIN_BURST_MS..=2000).contains(&ms) => ms,
                Some(ms) => {
                    return Err(bad(
                        "train.burst_every_ms",
                        format!(
                            "must be {}..=2000 ms, got {ms}",
                            crate::session::MIN_BURST_MS
                        ),
                    ));
                }
            },
            models: cli.models.or(f.model.dir),
            backbone,
            precision,
            input_size,
            threads: match (cli.threads, f.model.threads) {
                (Some(n), _) => n as usize,
                (None, Some(n)) if (1..=crate::backbone::MAX_THREADS as u32).contains(&n) => {
                    n as usize
                }
                (None, Some(n)) => {
                    return Err(bad(
                        "model.threads",
                        format!(
                            "must be 1..={} threads, got {n}",
                            crate::backbone::MAX_THREADS
                        ),
                    ));
                }
                (None, None) => crate::backbone::default_threads_here(),
            },
            http: match (cli.http, &f.http) {
                (Some(a), _) => Some(a),
                (None, Some(h)) if h.enabled != Some(false) => Some(
                    h.listen
                        .as_deref()
                        .unwrap_or(DEFAULT_HTTP_LISTEN)
                        .parse()
                        .map_err(|e| bad("http.listen", format!("is not ADDRESS:PORT ({e})")))?,
                ),
                _ => None,
            },
            mqtt: match f.mqtt {
                Some(m) => Some(m.check().map_err(|(key, why)| bad(key, why))?),
                None => None,
            },
            http_options: http_options(f.http.as_ref(), bad)?,
            max_pixels: match f.max_pixels {
                Some(n) => Some(
                    crate::decode::parse_limit(&n.to_string()).map_err(|w| bad("max_pixels", w))?,
                ),
                None => None,
            },
        };

        // What no single value's type can check: names, and values that depend on others.
        if c.state_dir.as_os_str().is_empty() {
            return Err(bad("state_dir", "must not be empty".into()));
        }
        if c.classes.is_empty() {
            return Err(bad("classes", "needs at least one class name".into()));
        }
        for (i, name) in c.classes.iter().enumerate() {
            if let Err(why) = check_class_name(name) {
                return Err(bad("classes", format!("entry {i} ({name:?}) {why}")));
            }
            if c.classes[..i].contains(name) {
                return Err(bad("classes", format!("lists {name:?} twice")));
            }
        }
        for (key, v) in [
            ("camera.width", c.camera_opts.width),
            ("camera.height", c.camera_opts.height),
        ] {
            if !(16..=8192).contains(&v) {
                return Err(bad(key, format!("must be 16..=8192 pixels, got {v}")));
            }
        }
        let buttons = c.classes.len() + 1;
        c.gpio
            .check_buttons(buttons)
            .map_err(|e| bad("gpio.uri", e.to_string()))?;
        if c.gpio.is_board() && c.wiring.buttons.len() < buttons {
            return Err(bad(
                "gpio.buttons",
                format!(
                    "lists {} lines but {} classes need {buttons} (undo + one per class)",
                    c.wiring.buttons.len(),
                    c.classes.len()
                ),
            ));
        }
        if c.gpio == GpioSpec::Rpi {
            for (key, lines) in [
                ("gpio.buttons", &c.wiring.buttons),
                ("gpio.leds", &c.wiring.leds),
            ] {
                if let Some(l) = lines.iter().find(|l| l.bcm().is_none_or(|b| b > 53)) {
                    return Err(bad(
                        key,
                        format!("has {l}, not a BCM GPIO number (0..=53) as gpio = \"rpi\" needs"),
                    ));
                }
            }
        }
        let mut all: Vec<&Line> = c.wiring.buttons[..buttons.min(c.wiring.buttons.len())]
            .iter()
            .collect();
        all.extend(c.wiring.leds.iter());
        if let Some(l) = all
            .iter()
            .enumerate()
            .find_map(|(i, l)| all[..i].contains(l).then_some(l))
        {
            return Err(bad(
                "gpio",
                format!("uses line {l} twice (buttons and LEDs must be distinct)"),
            ));
        }
        let t = c.timing;
        if !(1..=1000).contains(&t.debounce_ms) {
            return Err(bad(
                "gpio.debounce_ms",
                format!("must be 1..=1000, got {}", t.debounce_ms),
            ));
        }
        if t.hold_ms <= t.debounce_ms || t.hold_ms > 10_000 {
            return Err(bad(
                "gpio.hold_ms",
                format!(
                    "must be above debounce_ms ({}) and at most 10000, got {}",
                    t.debounce_ms, t.hold_ms
                ),
            ));
        }
        if !(20..=10_000).contains(&t.repeat_ms) {
            return Err(bad(
                "gpio.repeat_ms",
                format!("must be 20..=10000, got {}", t.repeat_ms),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<RunConfig, ConfigError> {
        let p = Path::new("/etc/teachcam/teachcam.toml");
        RunConfig::resolve(Some((p, ConfigFile::parse(text, p)?)), Overrides::default())
    }

    #[test]
    fn the_shipped_config_is_valid_and_documents_every_key() {
        let text = include_str!("../cross/teachcam.toml");
        let c = resolve(text).unwrap();
        assert_eq!(c.gpio, GpioSpec::Rpi);
        assert_eq!(c.wiring, Wiring::default());
        // Every key the parser knows appears in the shipped file (uncommented or as a comment).
        for key in [
            "state_dir",
            "status_file",
            "classes",
            "threshold",
            "smoothing",
            "[camera]",
            "uri",
            "fps",
            "width",
            "height",
            "[gpio]",
            "buttons",
            "leds",
            "leds_active_low",
            "debounce_ms",
            "hold_ms",
            "repeat_ms",
            "[train]",
            "budget_s",
            "burst",
            "burst_every_ms",
            "[model]",
            "dir",
            "backbone",
            "precision",
            "threads",
            "[inbox]",
            "size",
            "every_s",
            "margin",
            "[http]",
            "enabled",
            "listen",
            "max_upload_mb",
            "session_s",
        ] {
            assert!(
                text.contains(key),
                "cross/teachcam.toml does not document {key}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = resolve("[camera]\nfsp = 10\n").unwrap_err().to_string();
        assert!(e.contains("fsp") && e.contains("teachcam.toml"), "{e}");
        let e = resolve("threshold = \"high\"\n").unwrap_err().to_string();
        assert!(e.contains("threshold"), "{e}");
        let e = resolve("colour = 1\n").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = resolve("smoothing = 3\n[gpio]\nleds = [1,\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && !e.contains('\n'), "{e}");
        // 100 000 nested brackets: refused, and the line is not echoed whole.
        let deep = format!("x = {}", "[".repeat(100_000));
        let e = resolve(&deep).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.len() < 400,
            "{} bytes: {e:.300}",
            e.len()
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_allowed_range() {
        for (text, key) in [
            ("threshold = 1.5", "`threshold`"),
            ("smoothing = 0", "`smoothing`"),
            ("[camera]\nfps = -1", "`camera.fps`"),
            ("[camera]\nuri = \"webcam\"", "`camera.uri`"),
            ("[camera]\nuri = \"v4l2:/dev/cam\"", "`camera.uri`"),
            ("[gpio]\nuri = \"rpi\"\nbuttons = [16, 6]", "`gpio.buttons`"),
            (
                "[gpio]\nuri = \"rpi\"\nbuttons = [16, 6, 5, 24, \"PQ.05\"]",
                "`gpio.buttons`",
            ),
            ("[gpio]\nleds = [16, 13]", "`gpio`"),
            ("[gpio]\nhold_ms = 10", "`gpio.hold_ms`"),
            ("[train]\nbudget_s = 0", "`train.budget_s`"),
            ("[train]\nburst = 0", "`train.burst`"),
            ("[inbox]\nsize = 5000", "`inbox.size`"),
            ("[inbox]\nevery_s = 0", "`inbox.every_s`"),
            ("[inbox]\nmargin = 2", "`inbox.margin`"),
            ("[train]\nburst_every_ms = 10", "`train.burst_every_ms`"),
            ("[model]\nprecision = \"int4\"", "`model.precision`"),
            ("[model]\nbackbone = \"resnet50\"", "`model.backbone`"),
            ("[model]\ninput_size = 100", "`model.input_size`"),
            ("[model]\nthreads = 0", "`model.threads`"),
            ("[model]\nthreads = 65", "`model.threads`"),
            ("classes = [\"cat\", \"cat\"]", "`classes`"),
            ("classes = [\"a/b\"]", "`classes`"),
            ("classes = [\"unknown\"]", "`classes`"),
            ("classes = [\"a\\nb\"]", "`classes`"),
            ("state_dir = \"\"", "`state_dir`"),
            ("max_pixels = 0", "`max_pixels`"),
            ("max_pixels = 9999999999999", "`max_pixels`"),
            ("[gpio]\nuri = \"script:100@9\"", "`gpio.uri`"),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let p = Path::new("c.toml");
        let f = ConfigFile::parse(
            "classes = [\"a\", \"b\"]\n[camera]\nfps = 5\nuri = \"synthetic\"\n",
            p,
        )
        .unwrap();
        let c = RunConfig::resolve(
            Some((p, f)),
            Overrides {
                fps: Some("12".parse().unwrap()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.classes, ["a", "b"]);
        assert_eq!(c.camera_opts.fps, 12.0);
        assert_eq!(c.camera_opts.width, 640);
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE));
        assert_eq!(c.precision, Precision::default());
        assert_eq!(c.smoothing, Smoothing::DEFAULT);
        assert_eq!(c.max_pixels, None);
        let f = ConfigFile::parse("max_pixels = 1000000\n", p).unwrap();
        let c = RunConfig::resolve(Some((p, f)), Overrides::default()).unwrap();
        assert_eq!(c.max_pixels, Some(1_000_000));
    }

    #[test]
    fn http_console_is_off_without_a_section_and_on_with_one() {
        let p = Path::new("c.toml");
        let r = |text: &str| {
            RunConfig::resolve(Some((p, ConfigFile::parse(text, p)?)), Overrides::default())
        };
        assert_eq!(r("").unwrap().http, None);
        assert_eq!(
            r("[http]\n").unwrap().http,
            Some(DEFAULT_HTTP_LISTEN.parse().unwrap())
        );
        assert_eq!(r("[http]\nenabled = false\n").unwrap().http, None);
        assert_eq!(
            r("[http]\nlisten = \"127.0.0.1:9000\"\n").unwrap().http,
            Some("127.0.0.1:9000".parse().unwrap())
        );
        let e = r("[http]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen"), "{e}");
        assert!(r("[http]\nport = 1\n").is_err(), "unknown keys are errors");
        // The upload limit and the login's lifetime: defaults, values, bounds naming the key.
        let d = r("").unwrap().http_options;
        assert_eq!(d.max_upload, DEFAULT_MAX_UPLOAD_MB << 20);
        assert_eq!(d.session.as_secs(), 7 * 24 * 3600);
        let o = r("[http]\nmax_upload_mb = 8\nsession_s = 60\n")
            .unwrap()
            .http_options;
        assert_eq!((o.max_upload, o.session.as_secs()), (8 << 20, 60));
        for (text, key) in [
            ("[http]\nmax_upload_mb = 0\n", "http.max_upload_mb"),
            ("[http]\nmax_upload_mb = 5000\n", "http.max_upload_mb"),
            ("[http]\nsession_s = 0\n", "http.session_s"),
            ("[http]\nsession_s = 99999999\n", "http.session_s"),
        ] {
            let e = r(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn each_number_has_one_rule_for_flags_and_file() {
        assert!("0.5".parse::<Threshold>().is_ok());
        for bad in ["1.5", "-0.1", "NaN", "x"] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
        assert!(
            "1e20".parse::<values::Seconds>().is_err(),
            "would overflow a Duration"
        );
        assert!("0".parse::<values::Seconds>().is_err());
        assert_eq!(
            "2.5"
                .parse::<values::Seconds>()
                .unwrap()
                .duration()
                .as_millis(),
            2500
        );
        let e = "100".parse::<InputSize>().unwrap_err();
        assert!(e.contains("160, 192, 224"), "{e}");
        assert!("0.9".parse::<values::ValSplit>().is_err());
        assert!("-1".parse::<values::L2>().is_err());
        assert!("17".parse::<Smoothing>().is_err());
        // The file goes through the same rule.
        let e = resolve("threshold = 1.5").unwrap_err().to_string();
        assert!(e.contains(&Threshold::new(1.5).unwrap_err()), "{e}");
    }
}
