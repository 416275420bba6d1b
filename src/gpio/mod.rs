//! Buttons and indicator outputs behind two small traits, chosen at run time by a typed
//! [`GpioSpec`] (parsed once), plus the pure [`debounce`] state machine every backend's raw
//! levels go through.
//!
//! Backends: `rpi` (rppal, Raspberry Pi) and `gpiochip[:CHIP]` (the Linux GPIO character
//! device, any board), both in [`board`]; `keyboard` (button numbers typed on stdin),
//! `script:T@B[+D],...` (button B held from T ms for D ms, default 300; for tests and
//! demos) and `none`. Must not: know what a button means.

pub mod board;
pub mod debounce;

use std::fmt;
use std::str::FromStr;

pub use board::{Line, Wiring};

/// Why a GPIO backend failed.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The URI is not understood.
    #[error(
        "unknown gpio {0:?}; use rpi, gpiochip, gpiochip:CHIP, keyboard, script:MS@BUTTON,... or none"
    )]
    UnknownUri(String),
    /// This binary was built without board support.
    #[error(
        "gpio {0:?} is not in this build (built without the `hw` feature); rebuild with default features"
    )]
    NotBuilt(&'static str),
    /// A board backend failed; the message names the pin or chip and what to do.
    #[error("{0}")]
    Board(String),
    /// The wiring has fewer buttons than the classes need.
    #[error(
        "{classes} classes need {need} buttons (undo + one per class) but gpio.buttons lists {have}; add buttons or remove classes"
    )]
    TooFewButtons {
        /// Class count.
        classes: usize,
        /// Buttons needed.
        need: usize,
        /// Buttons wired.
        have: usize,
    },
    /// A script entry is malformed.
    #[error("bad button script entry {entry:?}: {why}; expected MS@BUTTON or MS@BUTTON+HOLD_MS")]
    Script {
        /// The entry.
        entry: String,
        /// What is wrong.
        why: String,
    },
}

/// Opened buttons and the class indicator.
pub type Io = (Box<dyn Buttons>, Box<dyn Indicator>);

/// Raw button levels.
pub trait Buttons: Send {
    /// Number of buttons.
    fn count(&self) -> usize;
    /// Raw levels at `now_ms` (`true` = pressed).
    fn read(&mut self, now_ms: u64) -> Result<Vec<bool>, GpioError>;
}

/// What the indicator shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lamp {
    /// The class with this index (LED k+1), or "unknown" (LED 0).
    Class(Option<usize>),
    /// Every LED at once: something needs attention (a refused capture, a failing camera or
    /// model); the appliance shows the class again when it passes.
    Alert,
}

/// Something that shows the current class (LEDs, a relay, a log line).
pub trait Indicator: Send {
    /// Show `lamp`.
    fn show(&mut self, lamp: Lamp);
}

/// Most buttons a script may press (button numbers 0..=63).
pub const MAX_SCRIPT_BUTTONS: usize = 64;

/// Scripted presses: `(start_ms, button, hold_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    presses: Vec<(u64, usize, u64)>,
    count: usize,
}

impl Script {
    /// Parse `T@B[+D],...` for `count` buttons (0..count).
    pub fn parse(spec: &str, count: usize) -> Result<Self, GpioError> {
        let mut s = Self::parse_any(spec)?;
        s.check(count)?;
        s.count = count;
        Ok(s)
    }

    /// Refuse presses of buttons that do not exist (0..count).
    pub fn check(&self, count: usize) -> Result<(), GpioError> {
        match self.presses.iter().find(|p| p.1 >= count) {
            Some(&(t, b, d)) => Err(GpioError::Script {
                entry: format!("{t}@{b}+{d}"),
                why: format!("button {b} does not exist (0..{count})"),
            }),
            None => Ok(()),
        }
    }

    /// Parse the grammar alone (button numbers are checked against the wiring later).
    fn parse_any(spec: &str) -> Result<Self, GpioError> {
        let mut presses = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| GpioError::Script {
                entry: entry.to_string(),
                why: why.to_string(),
            };
            let (t, rest) = entry.split_once('@').ok_or_else(|| bad("missing @"))?;
            let (b, d) = rest.split_once('+').unwrap_or((rest, "300"));
            let t: u64 = t
                .parse()
                .map_err(|_| bad("time is not a whole number of ms"))?;
            // Parsed as u64 whatever the word size (a 32-bit board must say "too large" too).
            let b: u64 = b.parse().map_err(|_| bad("button is not a number"))?;
            // Bounded so the button count (largest + 1) cannot overflow (found by fuzzing).
            if b >= MAX_SCRIPT_BUTTONS as u64 {
                return Err(bad("button number is too large (at most 63)"));
            }
            let b = b as usize; // < 64
            let d: u64 = d
                .parse()
                .map_err(|_| bad("hold is not a whole number of ms"))?;
            if t.checked_add(d).is_none() {
                return Err(bad("time and hold overflow"));
            }
            presses.push((t, b, d));
        }
        let count = presses.iter().map(|p| p.1 + 1).max().unwrap_or(0);
        Ok(Script { presses, count })
    }

    fn with_count(&self, count: usize) -> Result<Self, GpioError> {
        self.check(count)?;
        Ok(Script {
            presses: self.presses.clone(),
            count,
        })
    }
}

impl Buttons for Script {
    fn count(&self) -> usize {
        self.count
    }

    fn read(&mut self, now_ms: u64) -> Result<Vec<bool>, GpioError> {
        let mut v = vec![false; self.count];
        for &(t, b, d) in &self.presses {
            if now_ms >= t && now_ms < t + d {
                v[b] = true;
            }
        }
        Ok(v)
    }
}

/// Buttons from the terminal (`keyboard`): type a button number and Enter to press it
/// briefly; `u` and Enter holds button 0 (undo). For a laptop or a board over ssh.
pub struct Keyboard {
    count: usize,
    presses: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, usize, u64)>>>,
}

impl Keyboard {
    /// Start reading stdin on a background thread.
    pub fn new(count: usize) -> Self {
        let presses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&presses);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                let key = line.trim();
                let press = match key {
                    "u" | "U" => Some((0, 1500)),
                    k => k
                        .parse::<usize>()
                        .ok()
                        .filter(|&b| b < count)
                        .map(|b| (b, 300)),
                };
                match (press, sink.lock()) {
                    (Some((b, hold)), Ok(mut v)) => v.push((std::time::Instant::now(), b, hold)),
                    (None, _) => {
                        log::warn!("keyboard: type 1..{} to capture, u to undo", count - 1)
                    }
                    _ => {}
                }
            }
        });
        Keyboard { count, presses }
    }
}

impl Buttons for Keyboard {
    fn count(&self) -> usize {
        self.count
    }

    fn read(&mut self, _now_ms: u64) -> Result<Vec<bool>, GpioError> {
        let mut v = vec![false; self.count];
        if let Ok(mut p) = self.presses.lock() {
            p.retain(|(t, _, hold)| t.elapsed().as_millis() < u128::from(*hold) + 100);
            for (t, b, hold) in p.iter() {
                if t.elapsed().as_millis() < u128::from(*hold) {
                    v[*b] = true;
                }
            }
        }
        Ok(v)
    }
}

/// Which buttons and LEDs to open: the parsed form of a GPIO URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GpioSpec {
    /// `rpi`: Raspberry Pi GPIO through rppal (BCM numbers).
    Rpi,
    /// `gpiochip` (lines by name on any chip) or `gpiochip:CHIP`.
    Gpiochip(Option<String>),
    /// `keyboard`: button numbers typed on stdin.
    Keyboard,
    /// `script:T@B[+D],...`: scripted presses.
    Script(Script),
    /// `none`: no buttons, no LEDs (the default).
    #[default]
    None,
}

impl FromStr for GpioSpec {
    type Err = GpioError;

    fn from_str(uri: &str) -> Result<Self, GpioError> {
        Ok(match uri {
            "rpi" => GpioSpec::Rpi,
            "gpiochip" => GpioSpec::Gpiochip(None),
            "keyboard" => GpioSpec::Keyboard,
            "none" => GpioSpec::None,
            u => {
                if let Some(chip) = u.strip_prefix("gpiochip:").filter(|c| !c.is_empty()) {
                    GpioSpec::Gpiochip(Some(chip.to_string()))
                } else if let Some(spec) = u.strip_prefix("script:") {
                    GpioSpec::Script(Script::parse_any(spec)?)
                } else {
                    return Err(GpioError::UnknownUri(u.to_string()));
                }
            }
        })
    }
}

impl fmt::Display for GpioSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpioSpec::Rpi => f.write_str("rpi"),
            GpioSpec::Gpiochip(None) => f.write_str("gpiochip"),
            GpioSpec::Gpiochip(Some(c)) => write!(f, "gpiochip:{c}"),
            GpioSpec::Keyboard => f.write_str("keyboard"),
            GpioSpec::Script(s) => {
                let entries: Vec<String> = s
                    .presses
                    .iter()
                    .map(|(t, b, d)| format!("{t}@{b}+{d}"))
                    .collect();
                write!(f, "script:{}", entries.join(","))
            }
            GpioSpec::None => f.write_str("none"),
        }
    }
}

impl GpioSpec {
    /// Whether this is real GPIO (`rpi`, `gpiochip`), so the wiring applies.
    pub fn is_board(&self) -> bool {
        matches!(self, GpioSpec::Rpi | GpioSpec::Gpiochip(_))
    }

    /// Check that the spec can drive `count` buttons (a script presses only those).
    pub fn check_buttons(&self, count: usize) -> Result<(), GpioError> {
        match self {
            GpioSpec::Script(s) => s.check(count),
            _ => Ok(()),
        }
    }
}

/// Open buttons and the class indicator: `count` buttons (undo + one per class) and, on
/// boards, the wired LEDs.
pub fn open(spec: &GpioSpec, wiring: &Wiring, count: usize) -> Result<Io, GpioError> {
    if spec.is_board() && wiring.buttons.len() < count {
        return Err(GpioError::TooFewButtons {
            classes: count - 1,
            need: count,
            have: wiring.buttons.len(),
        });
    }
    let buttons: Box<dyn Buttons> = match spec {
        GpioSpec::Rpi => return board::open_rpi(wiring, count),
        GpioSpec::Gpiochip(chip) => return board::open_gpiochip(chip.as_deref(), wiring, count),
        GpioSpec::None => Box::new(Script {
            presses: Vec::new(),
            count,
        }),
        GpioSpec::Keyboard => Box::new(Keyboard::new(count)),
        GpioSpec::Script(s) => Box::new(s.with_count(count)?),
    };
    Ok((buttons, Box::new(LogIndicator)))
}

/// An indicator without outputs (class changes are printed by the daemon anyway).
#[derive(Debug, Default)]
pub struct LogIndicator;

impl Indicator for LogIndicator {
    fn show(&mut self, _lamp: Lamp) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_buttons(uri: &str, count: usize) -> Result<Box<dyn Buttons>, GpioError> {
        let spec: GpioSpec = uri.parse()?;
        open(&spec, &Wiring::default(), count).map(|(b, _)| b)
    }

    #[test]
    fn script_levels_follow_the_schedule() {
        let mut s = open_buttons("script:100@1,300@0+500", 3).unwrap();
        assert_eq!(s.read(50).unwrap(), vec![false, false, false]);
        assert_eq!(s.read(150).unwrap(), vec![false, true, false]);
        assert_eq!(s.read(700).unwrap(), vec![true, false, false]);
        assert_eq!(s.read(900).unwrap(), vec![false, false, false]);
    }

    #[test]
    fn bad_scripts_name_the_entry() {
        let e = open_buttons("script:100@7", 3).err().unwrap();
        assert!(
            e.to_string().contains("100@7") && e.to_string().contains("does not exist"),
            "{e}"
        );
        assert!(open_buttons("script:abc", 3).is_err());
        assert!(matches!(
            open_buttons("rppal", 3),
            Err(GpioError::UnknownUri(_))
        ));
        let chip: GpioSpec = "gpiochip:/dev/gpiochip4".parse().unwrap();
        assert_eq!(chip, GpioSpec::Gpiochip(Some("/dev/gpiochip4".into())));
        let script: GpioSpec = "script:1@9".parse().unwrap();
        assert!(script.check_buttons(3).is_err() && script.check_buttons(10).is_ok());
        assert!(
            "script:18446744073709551615@1+5"
                .parse::<GpioSpec>()
                .is_err()
        );
        // A huge button number is an error, not an overflow (found by fuzzing the config).
        let e = "script:300@18446744073709551615"
            .parse::<GpioSpec>()
            .unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn gpio_uris_parse_once_into_specs_and_print_back() {
        for uri in [
            "rpi",
            "gpiochip",
            "gpiochip:gpiochip4",
            "keyboard",
            "none",
            "script:10@1+300,900@0+1500",
        ] {
            let spec: GpioSpec = uri.parse().unwrap();
            assert_eq!(spec.to_string(), uri);
        }
        assert!(GpioSpec::Rpi.is_board() && !GpioSpec::Keyboard.is_board());
        assert!("gpiochip:".parse::<GpioSpec>().is_err());
    }

    #[test]
    fn boards_need_a_button_per_class_plus_undo() {
        let w = Wiring {
            buttons: vec![Line::Number(16), Line::Number(6)],
            ..Wiring::default()
        };
        let e = open(&GpioSpec::Rpi, &w, 4).err().unwrap().to_string();
        assert!(e.contains("3 classes need 4 buttons"), "{e}");
        assert!(e.contains("gpio.buttons lists 2"), "{e}");
    }
}
