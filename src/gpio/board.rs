//! Real buttons and LEDs: Raspberry Pi through `rppal` (URI `rpi`) and any board through the
//! Linux GPIO character device (URI `gpiochip` or `gpiochip:CHIP`, via `gpiocdev`).
//!
//! Buttons are wired between the pin and ground and read with the internal pull-up, so a
//! pressed button reads low; both backends report it as `true`. Their raw levels are sampled
//! by the daemon's button thread every few milliseconds and go through the same pure
//! [`super::debounce`] machine as every other backend: one tested debouncer instead of one
//! per kernel driver. LEDs: LED 0 is lit while the answer is "unknown", LED k+1 while the
//! class is class k (the board convention of the Coral teachable camera).
//!
//! Lines are given as numbers or names. For `rpi`, numbers are BCM GPIO numbers (`GPIO16`
//! is read as 16). For `gpiochip:CHIP`, numbers are line offsets on that chip (a path like
//! `/dev/gpiochip0`, a name like `gpiochip0`, or the chip's label such as
//! `pinctrl-bcm2711`); for plain `gpiochip`, lines are looked up by name across all chips,
//! because chip numbers differ between kernels (gpiochip0 on a Pi 4, gpiochip4 on early
//! Pi 5 kernels), and numbers are turned into `GPIO<n>` names. Must not: debounce or decide
//! what a press means.

use serde::Deserialize;

use super::{GpioError, Lamp};

/// A GPIO line: a number (BCM pin for `rpi`, offset for `gpiochip:CHIP`) or a line name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Line {
    /// A pin number or line offset.
    Number(u32),
    /// A line name, as the kernel lists it (`GPIO16`, `PQ.05`, …).
    Name(String),
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Number(n) => write!(f, "{n}"),
            Line::Name(s) => write!(f, "{s:?}"),
        }
    }
}

impl Line {
    /// The BCM number of a line given as `16` or `"GPIO16"`.
    pub fn bcm(&self) -> Option<u8> {
        match self {
            Line::Number(n) => u8::try_from(*n).ok(),
            Line::Name(s) => s.strip_prefix("GPIO").and_then(|n| n.parse().ok()),
        }
    }

    /// The line's name for a by-name lookup (`16` becomes `GPIO16`).
    pub fn name(&self) -> String {
        match self {
            Line::Number(n) => format!("GPIO{n}"),
            Line::Name(s) => s.clone(),
        }
    }
}

/// Which lines the buttons and LEDs are on.
#[derive(Debug, Clone, PartialEq)]
pub struct Wiring {
    /// Button lines: the first is undo, the others capture classes 1, 2, ….
    pub buttons: Vec<Line>,
    /// LED lines: the first shows "unknown", the others classes 1, 2, ….
    pub leds: Vec<Line>,
    /// LEDs light when the line is driven low (wired from 3.3 V through the LED to the pin).
    pub leds_active_low: bool,
}

impl Default for Wiring {
    /// The wiring of the Coral teachable-camera project: buttons on BCM 16, 6, 5, 24, 27 and
    /// LEDs on BCM 20, 13, 12, 25, 22, active-low.
    fn default() -> Self {
        Wiring {
            buttons: [16, 6, 5, 24, 27].map(Line::Number).to_vec(),
            leds: [20, 13, 12, 25, 22].map(Line::Number).to_vec(),
            leds_active_low: true,
        }
    }
}

/// Which of `n` LEDs are lit for `lamp`: LED 0 for "unknown", LED k+1 for class k (a class
/// without an LED lights nothing), every LED for an alert.
pub fn led_pattern(lamp: Lamp, n: usize) -> Vec<bool> {
    match lamp {
        Lamp::Alert => vec![true; n],
        Lamp::Class(class) => {
            let lit = class.map_or(0, |k| k + 1);
            (0..n).map(|i| i == lit).collect()
        }
    }
}

#[cfg(all(feature = "hw", target_os = "linux"))]
pub use imp::{chip_path, find_line, open_gpiochip, open_rpi};

#[cfg(not(all(feature = "hw", target_os = "linux")))]
/// Not built: this binary has no board support.
pub fn open_rpi(_w: &Wiring, _count: usize) -> Result<super::Io, GpioError> {
    Err(GpioError::NotBuilt("rpi"))
}

#[cfg(not(all(feature = "hw", target_os = "linux")))]
/// Not built: this binary has no board support.
pub fn open_gpiochip(
    _chip: Option<&str>,
    _w: &Wiring,
    _count: usize,
) -> Result<super::Io, GpioError> {
    Err(GpioError::NotBuilt("gpiochip"))
}

#[cfg(all(feature = "hw", target_os = "linux"))]
mod imp {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use gpiocdev::line::{Bias, Value};

    use super::{GpioError, Line, Wiring, led_pattern};
    use crate::gpio::{Buttons, Indicator, Io, Lamp};

    fn board(what: String) -> GpioError {
        GpioError::Board(what)
    }

    // ---------------------------------------------------------------- rppal (Raspberry Pi)

    struct RpiButtons {
        pins: Vec<rppal::gpio::InputPin>,
    }

    impl Buttons for RpiButtons {
        fn count(&self) -> usize {
            self.pins.len()
        }
        fn read(&mut self, _now_ms: u64) -> Result<Vec<bool>, GpioError> {
            Ok(self.pins.iter().map(|p| p.is_low()).collect())
        }
    }

    struct RpiLeds {
        pins: Vec<rppal::gpio::OutputPin>,
        active_low: bool,
    }

    impl Indicator for RpiLeds {
        fn show(&mut self, lamp: Lamp) {
            let pattern = led_pattern(lamp, self.pins.len());
            for (pin, on) in self.pins.iter_mut().zip(pattern) {
                if on != self.active_low {
                    pin.set_high();
                } else {
                    pin.set_low();
                }
            }
        }
    }

    fn rpi_pin(
        gpio: &rppal::gpio::Gpio,
        line: &Line,
        role: &str,
    ) -> Result<rppal::gpio::Pin, GpioError> {
        let bcm = line.bcm().ok_or_else(|| {
            board(format!(
                "{role} line {line} is not a BCM GPIO number; with gpio = \"rpi\" give numbers like 16 or names like \"GPIO16\""
            ))
        })?;
        gpio.get(bcm).map_err(|e| {
            board(format!(
                "{role} on BCM {bcm}: {e}; check that no other program (or another teachcam) uses the pin"
            ))
        })
    }

    /// Buttons (pull-up, pressed = low) and LEDs on a Raspberry Pi, by BCM number.
    pub fn open_rpi(w: &Wiring, count: usize) -> Result<Io, GpioError> {
        let gpio = rppal::gpio::Gpio::new().map_err(|e| {
            board(format!(
                "cannot open the Raspberry Pi GPIO (/dev/gpiomem): {e}; on a Pi, add this user to the gpio group; on another board use gpio = \"gpiochip\""
            ))
        })?;
        let buttons = w.buttons[..count]
            .iter()
            .enumerate()
            .map(|(i, l)| rpi_pin(&gpio, l, &format!("button {i}")).map(|p| p.into_input_pullup()))
            .collect::<Result<Vec<_>, _>>()?;
        let pins = w
            .leds
            .iter()
            .enumerate()
            .map(|(i, l)| {
                rpi_pin(&gpio, l, &format!("LED {i}")).map(|p| {
                    // Off at start: high for active-low LEDs.
                    let mut o = if w.leds_active_low {
                        p.into_output_high()
                    } else {
                        p.into_output_low()
                    };
                    o.set_reset_on_drop(true);
                    o
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            Box::new(RpiButtons { pins: buttons }),
            Box::new(RpiLeds {
                pins,
                active_low: w.leds_active_low,
            }),
        ))
    }

    // ------------------------------------------------ gpiocdev (the GPIO character device)

    /// Resolve a chip argument (`/dev/gpiochip0`, `gpiochip0`, or a chip label) to its path.
    pub fn chip_path(chip: &str) -> Result<PathBuf, GpioError> {
        if chip.starts_with('/') {
            return Ok(PathBuf::from(chip));
        }
        let chips = gpiocdev::chip::chips().map_err(|e| {
            board(format!(
                "cannot list GPIO chips: {e}; is /dev/gpiochip* present and readable by this user (gpio group)?"
            ))
        })?;
        for p in &chips {
            if p.file_name().is_some_and(|n| n == chip) {
                return Ok(p.clone());
            }
            if let Ok(c) = gpiocdev::chip::Chip::from_path(p)
                && c.info().is_ok_and(|i| i.label == chip)
            {
                return Ok(p.clone());
            }
        }
        Err(board(format!(
            "no GPIO chip named or labelled {chip:?} (found: {}); run `teachcam doctor` to list chips",
            chips
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Where `line` is and what the kernel says about it: on `chip` (by offset or name) or,
    /// without a chip, by name on any chip. Used to claim lines and by `teachcam doctor`.
    pub fn find_line(chip: Option<&Path>, line: &Line) -> Option<(PathBuf, gpiocdev::line::Info)> {
        match (chip, line) {
            (Some(c), l) => {
                let ch = gpiocdev::chip::Chip::from_path(c).ok()?;
                let info = match l {
                    Line::Number(off) => ch.line_info(*off).ok()?,
                    Line::Name(name) => ch.find_line_info(name)?,
                };
                Some((c.to_path_buf(), info))
            }
            (None, l) => gpiocdev::find_named_line(&l.name()).map(|f| (f.chip, f.info)),
        }
    }

    /// (chip path, offset) of each line.
    fn resolve(
        chip: Option<&Path>,
        lines: &[Line],
        role: &str,
    ) -> Result<Vec<(PathBuf, u32)>, GpioError> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| match (chip, l) {
                // An offset on a named chip needs no lookup; claiming it reports any problem.
                (Some(c), Line::Number(off)) => Ok((c.to_path_buf(), *off)),
                _ => find_line(chip, l).map(|(p, info)| (p, info.offset)).ok_or_else(|| {
                    board(match chip {
                        Some(c) => format!(
                            "{role} {i}: no line named {l} on {}; run `teachcam doctor` to list lines",
                            c.display()
                        ),
                        None => format!(
                            "{role} {i}: no GPIO line named {:?} on any chip; give the chip (gpio = \"gpiochip:/dev/gpiochipN\") to use offsets, or run `teachcam doctor` to list line names",
                            l.name()
                        ),
                    })
                }),
            })
            .collect()
    }

    /// One request per chip, with the positions (in the caller's order) of its lines.
    struct Group {
        req: gpiocdev::Request,
        lines: Vec<(usize, u32)>,
    }

    fn request(
        lines: &[(PathBuf, u32)],
        role: &str,
        configure: impl Fn(&mut gpiocdev::request::Builder),
    ) -> Result<Vec<Group>, GpioError> {
        let mut by_chip: BTreeMap<&Path, Vec<(usize, u32)>> = BTreeMap::new();
        for (i, (c, off)) in lines.iter().enumerate() {
            by_chip.entry(c.as_path()).or_default().push((i, *off));
        }
        by_chip
            .into_iter()
            .map(|(chip, group)| {
                let offsets: Vec<u32> = group.iter().map(|&(_, o)| o).collect();
                let mut b = gpiocdev::Request::builder();
                b.on_chip(chip).with_consumer("teachcam").with_lines(&offsets);
                configure(&mut b);
                let req = b.request().map_err(|e| {
                    board(format!(
                        "cannot claim {role} lines {offsets:?} on {}: {e}; check the wiring in the config and that no other program holds the lines",
                        chip.display()
                    ))
                })?;
                Ok(Group { req, lines: group })
            })
            .collect()
    }

    struct CdevButtons {
        groups: Vec<Group>,
        count: usize,
    }

    impl Buttons for CdevButtons {
        fn count(&self) -> usize {
            self.count
        }
        fn read(&mut self, _now_ms: u64) -> Result<Vec<bool>, GpioError> {
            let mut v = vec![false; self.count];
            for g in &self.groups {
                for &(i, off) in &g.lines {
                    // Requested active-low: a pressed button (pulled to ground) is Active.
                    v[i] = g.req.value(off).map_err(|e| {
                        board(format!(
                            "reading button {i} (line {off} on {}): {e}",
                            g.req.chip_path().display()
                        ))
                    })? == Value::Active;
                }
            }
            Ok(v)
        }
    }

    struct CdevLeds {
        groups: Vec<Group>,
        count: usize,
    }

    impl Indicator for CdevLeds {
        fn show(&mut self, lamp: Lamp) {
            let pattern = led_pattern(lamp, self.count);
            for g in &self.groups {
                for &(i, off) in &g.lines {
                    let v = if pattern[i] {
                        Value::Active
                    } else {
                        Value::Inactive
                    };
                    if let Err(e) = g.req.set_value(off, v) {
                        log::warn!("LED {i} (line {off}): {e}");
                    }
                }
            }
        }
    }

    /// Buttons and LEDs on the GPIO character device: on `chip` by offset or name, or by
    /// name across all chips.
    pub fn open_gpiochip(chip: Option<&str>, w: &Wiring, count: usize) -> Result<Io, GpioError> {
        let chip = chip.map(chip_path).transpose()?;
        let b = resolve(chip.as_deref(), &w.buttons[..count], "button")?;
        let l = resolve(chip.as_deref(), &w.leds, "LED")?;
        let buttons = request(&b, "button", |r| {
            r.as_input().as_active_low().with_bias(Bias::PullUp);
        })?;
        let active_low = w.leds_active_low;
        let leds = request(&l, "LED", |r| {
            if active_low {
                r.as_active_low();
            }
            r.as_output(Value::Inactive);
        })?;
        Ok((
            Box::new(CdevButtons {
                groups: buttons,
                count,
            }),
            Box::new(CdevLeds {
                groups: leds,
                count: l.len(),
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_from_numbers_and_names() {
        #[derive(Deserialize)]
        struct T {
            l: Vec<Line>,
        }
        let t: T = toml::from_str(r#"l = [16, "GPIO6", "PQ.05"]"#).unwrap();
        assert_eq!(t.l[0].bcm(), Some(16));
        assert_eq!(t.l[1].bcm(), Some(6));
        assert_eq!(t.l[2].bcm(), None);
        assert_eq!(t.l[0].name(), "GPIO16");
        assert_eq!(t.l[2].name(), "PQ.05");
    }

    #[test]
    fn one_led_per_class_and_led_zero_for_unknown() {
        let class = |k| led_pattern(Lamp::Class(k), 5);
        assert_eq!(class(None), [true, false, false, false, false]);
        assert_eq!(class(Some(0)), [false, true, false, false, false]);
        assert_eq!(class(Some(3)), [false, false, false, false, true]);
        assert_eq!(class(Some(7)), [false; 5], "no LED for class 8");
        assert!(led_pattern(Lamp::Class(Some(0)), 0).is_empty());
        assert_eq!(led_pattern(Lamp::Alert, 3), [true; 3]);
    }

    #[test]
    fn default_wiring_is_the_coral_layout() {
        let w = Wiring::default();
        let b: Vec<u8> = w.buttons.iter().filter_map(Line::bcm).collect();
        assert_eq!(b, [16, 6, 5, 24, 27]);
        let l: Vec<u8> = w.leds.iter().filter_map(Line::bcm).collect();
        assert_eq!(l, [20, 13, 12, 25, 22]);
        assert!(w.leds_active_low);
    }

    #[test]
    fn without_a_board_opening_fails_with_a_message_that_says_what_to_do() {
        // This machine has no GPIO: both backends must fail cleanly, never panic.
        let w = Wiring::default();
        let e = match open_rpi(&w, 5) {
            Ok(_) => return, // running on a real Pi
            Err(e) => e.to_string(),
        };
        assert!(e.contains("gpio") || e.contains("GPIO"), "{e}");
        if let Err(e) = open_gpiochip(Some("no-such-chip"), &w, 5) {
            assert!(e.to_string().contains("no-such-chip"), "{e}");
        }
    }
}
