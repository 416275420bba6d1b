//! The appliance's configuration: a TOML file (`teachcam run --config FILE`), command-line
//! flags that override it, and built-in defaults, resolved into one checked [`RunConfig`]
//! before anything is opened. Every key is documented in `cross/teachcam.toml` (the file
//! `make deploy` installs) and checked here: an unknown key or a bad value is an error that
//! names the key and the file. Must not: open devices or load models.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backbone::Precision;
use crate::gpio::{Line, Wiring};

/// Largest smoothing window.
pub const MAX_SMOOTHING: usize = 16;

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

/// `[train]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Time budget of one background fine-tune, seconds.
    pub budget_s: Option<f64>,
}

/// `[model]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Models directory.
    pub dir: Option<PathBuf>,
    /// Backbone precision: int8, w8, f32, qdq or qop.
    pub precision: Option<String>,
    /// Side of the square model input: 224, 192 or 160.
    pub input_size: Option<usize>,
}

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
            let source = line
                .and_then(|l| text.lines().nth(l - 1))
                .map(str::trim)
                .filter(|l| !l.is_empty());
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

/// Everything `teachcam run` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// State directory.
    pub state_dir: PathBuf,
    /// Status JSON path.
    pub status_file: Option<PathBuf>,
    /// Class names.
    pub classes: Vec<String>,
    /// Unknown threshold.
    pub threshold: f32,
    /// Smoothing window.
    pub smoothing: usize,
    /// Camera URI.
    pub camera: String,
    /// Camera options.
    pub camera_opts: crate::camera::Options,
    /// GPIO URI.
    pub gpio: String,
    /// Wiring for board backends.
    pub wiring: Wiring,
    /// Button timing.
    pub timing: crate::gpio::debounce::Timing,
    /// Fine-tune budget.
    pub train_budget_s: f64,
    /// Models directory (None = search).
    pub models: Option<PathBuf>,
    /// Backbone precision.
    pub precision: Precision,
    /// Model input side in pixels.
    pub input_size: usize,
}

/// Flags given on the command line (each overrides the file).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--state`.
    pub state_dir: Option<PathBuf>,
    /// `--status`.
    pub status_file: Option<PathBuf>,
    /// `--classes`.
    pub classes: Option<Vec<String>>,
    /// `--threshold`.
    pub threshold: Option<f32>,
    /// `--camera`.
    pub camera: Option<String>,
    /// `--fps`.
    pub fps: Option<f64>,
    /// `--gpio`.
    pub gpio: Option<String>,
    /// `--models`.
    pub models: Option<PathBuf>,
    /// `--precision`.
    pub precision: Option<Precision>,
    /// `--input-size`.
    pub input_size: Option<usize>,
}

/// Default state directory.
pub const DEFAULT_STATE: &str = "/var/lib/teachcam";

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
        let dt = crate::gpio::debounce::Timing::default();
        let dc = crate::camera::Options::default();
        let precision = match (cli.precision, f.model.precision.as_deref()) {
            (Some(p), _) => p,
            (None, Some(s)) => s.parse().map_err(|e: String| bad("model.precision", e))?,
            (None, None) => Precision::default(),
        };
        let input_size = cli
            .input_size
            .or(f.model.input_size)
            .unwrap_or(crate::backbone::INPUT_SIZE);
        if !crate::backbone::INPUT_SIZES.contains(&input_size) {
            return Err(bad(
                "model.input_size",
                format!("{input_size} is not offered; use 224, 192 or 160"),
            ));
        }
        let c = RunConfig {
            state_dir: cli
                .state_dir
                .or(f.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
            status_file: cli.status_file.or(f.status_file),
            classes: cli
                .classes
                .or(f.classes)
                .unwrap_or_else(|| (1..=4).map(|k| format!("class{k}")).collect()),
            threshold: cli.threshold.or(f.threshold).unwrap_or(0.5),
            smoothing: f.smoothing.unwrap_or(5),
            camera: cli
                .camera
                .or(f.camera.uri)
                .unwrap_or_else(|| "synthetic".into()),
            camera_opts: crate::camera::Options {
                fps: cli.fps.or(f.camera.fps).unwrap_or(dc.fps),
                width: f.camera.width.unwrap_or(dc.width),
                height: f.camera.height.unwrap_or(dc.height),
            },
            gpio: cli.gpio.or(f.gpio.uri).unwrap_or_else(|| "none".into()),
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
            train_budget_s: f.train.budget_s.unwrap_or(2.0),
            models: cli.models.or(f.model.dir),
            precision,
            input_size,
        };

        // Values.
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
        if !(0.0..=1.0).contains(&c.threshold) {
            return Err(bad(
                "threshold",
                format!("must be in 0..1, got {}", c.threshold),
            ));
        }
        if !(1..=MAX_SMOOTHING).contains(&c.smoothing) {
            return Err(bad(
                "smoothing",
                format!("must be 1..={MAX_SMOOTHING} frames, got {}", c.smoothing),
            ));
        }
        let fps = c.camera_opts.fps;
        if !(fps.is_finite() && (0.0..=240.0).contains(&fps)) {
            return Err(bad(
                "camera.fps",
                format!("must be 0..=240 (0 = as fast as possible), got {fps}"),
            ));
        }
        for (key, v) in [
            ("camera.width", c.camera_opts.width),
            ("camera.height", c.camera_opts.height),
        ] {
            if !(16..=8192).contains(&v) {
                return Err(bad(key, format!("must be 16..=8192 pixels, got {v}")));
            }
        }
        crate::camera::check_uri(&c.camera).map_err(|e| bad("camera.uri", e.to_string()))?;
        let buttons = c.classes.len() + 1;
        crate::gpio::check_uri(&c.gpio, buttons).map_err(|e| bad("gpio.uri", e.to_string()))?;
        if crate::gpio::is_board(&c.gpio) && c.wiring.buttons.len() < buttons {
            return Err(bad(
                "gpio.buttons",
                format!(
                    "lists {} lines but {} classes need {buttons} (undo + one per class)",
                    c.wiring.buttons.len(),
                    c.classes.len()
                ),
            ));
        }
        if c.gpio == "rpi" {
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
        if let Some((i, l)) = all.iter().enumerate().find(|(i, l)| all[..*i].contains(l)) {
            let _ = i;
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
        if !(c.train_budget_s.is_finite() && (0.05..=600.0).contains(&c.train_budget_s)) {
            return Err(bad(
                "train.budget_s",
                format!("must be 0.05..=600 seconds, got {}", c.train_budget_s),
            ));
        }
        Ok(c)
    }
}

/// A class name must be usable as a folder name in an image-folder export.
pub fn check_class_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.trim() != name {
        return Err("must be non-empty without leading or trailing spaces".into());
    }
    if name == crate::head::UNKNOWN {
        return Err(format!(
            "is reserved ({:?} is the answer below the threshold)",
            crate::head::UNKNOWN
        ));
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) || name.len() > 64 {
        return Err("must be a plain name (no / or \\, not . or .., at most 64 bytes) so it can be a folder name".into());
    }
    Ok(())
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
        assert_eq!(c.gpio, "rpi");
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
            "[model]",
            "dir",
            "precision",
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
            ("[model]\nprecision = \"int4\"", "`model.precision`"),
            ("[model]\ninput_size = 100", "`model.input_size`"),
            ("classes = [\"cat\", \"cat\"]", "`classes`"),
            ("classes = [\"a/b\"]", "`classes`"),
            ("classes = [\"unknown\"]", "`classes`"),
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
                fps: Some(12.0),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.classes, ["a", "b"]);
        assert_eq!(c.camera_opts.fps, 12.0);
        assert_eq!(c.camera_opts.width, 640);
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE));
        assert_eq!(c.precision, Precision::default());
    }
}
