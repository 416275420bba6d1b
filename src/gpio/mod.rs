//! Buttons and indicator outputs behind two small traits, chosen at run time by URI, plus
//! the pure [`debounce`] state machine every backend's raw levels go through.
//!
//! Backends: `rpi` (rppal, Raspberry Pi) and `gpiochip[:CHIP]` (the Linux GPIO character
//! device, any board), both in [`board`]; `keyboard` (button numbers typed on stdin),
//! `script:T@B[+D],...` (button B held from T ms for D ms, default 300; for tests and
//! demos) and `none`. Must not: know what a button means.

pub mod board;
pub mod debounce;

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

/// Something that shows the current class (LEDs, a relay, a log line).
pub trait Indicator: Send {
    /// Show `class` (index), or nothing for "unknown".
    fn show(&mut self, class: Option<usize>);
}

/// Scripted presses: `(start_ms, button, hold_ms)`.
#[derive(Debug, Clone)]
pub struct Script {
    presses: Vec<(u64, usize, u64)>,
    count: usize,
}

impl Script {
    /// Parse `T@B[+D],...`.
    pub fn parse(spec: &str, count: usize) -> Result<Self, GpioError> {
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
            let b: usize = b.parse().map_err(|_| bad("button is not a number"))?;
            let d: u64 = d
                .parse()
                .map_err(|_| bad("hold is not a whole number of ms"))?;
            if b >= count {
                return Err(bad(&format!("button {b} does not exist (0..{count})")));
            }
            presses.push((t, b, d));
        }
        Ok(Script { presses, count })
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

/// Open buttons and the class indicator from a URI: `count` buttons (undo + one per class)
/// and, on boards, the wired LEDs.
pub fn open(uri: &str, wiring: &Wiring, count: usize) -> Result<Io, GpioError> {
    if is_board(uri) && wiring.buttons.len() < count {
        return Err(GpioError::TooFewButtons {
            classes: count - 1,
            need: count,
            have: wiring.buttons.len(),
        });
    }
    if uri == "rpi" {
        return board::open_rpi(wiring, count);
    }
    if uri == "gpiochip" {
        return board::open_gpiochip(None, wiring, count);
    }
    if let Some(chip) = uri.strip_prefix("gpiochip:") {
        return board::open_gpiochip(Some(chip), wiring, count);
    }
    Ok((open_buttons(uri, count)?, Box::new(LogIndicator)))
}

/// Whether `uri` names real GPIO (`rpi`, `gpiochip`, `gpiochip:CHIP`), so the wiring applies.
pub fn is_board(uri: &str) -> bool {
    uri == "rpi" || uri == "gpiochip" || uri.starts_with("gpiochip:")
}

/// Check a URI's grammar without touching hardware.
pub fn check_uri(uri: &str, count: usize) -> Result<(), GpioError> {
    match uri {
        "rpi" | "gpiochip" | "keyboard" | "none" => Ok(()),
        u if u.starts_with("gpiochip:") => Ok(()),
        u => u
            .strip_prefix("script:")
            .map(|s| Script::parse(s, count).map(|_| ()))
            .unwrap_or_else(|| Err(GpioError::UnknownUri(u.to_string()))),
    }
}

/// Open non-board buttons from a URI.
pub fn open_buttons(uri: &str, count: usize) -> Result<Box<dyn Buttons>, GpioError> {
    if uri == "none" {
        return Ok(Box::new(Script {
            presses: Vec::new(),
            count,
        }));
    }
    if uri == "keyboard" {
        return Ok(Box::new(Keyboard::new(count)));
    }
    if let Some(spec) = uri.strip_prefix("script:") {
        return Ok(Box::new(Script::parse(spec, count)?));
    }
    Err(GpioError::UnknownUri(uri.to_string()))
}

/// An indicator without outputs (class changes are printed by the daemon anyway).
#[derive(Debug, Default)]
pub struct LogIndicator;

impl Indicator for LogIndicator {
    fn show(&mut self, _class: Option<usize>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(check_uri("gpiochip:/dev/gpiochip4", 3).is_ok());
        assert!(check_uri("script:1@9", 3).is_err());
    }

    #[test]
    fn boards_need_a_button_per_class_plus_undo() {
        let w = Wiring {
            buttons: vec![Line::Number(16), Line::Number(6)],
            ..Wiring::default()
        };
        let e = open("rpi", &w, 4).err().unwrap().to_string();
        assert!(e.contains("3 classes need 4 buttons"), "{e}");
        assert!(e.contains("gpio.buttons lists 2"), "{e}");
    }
}
