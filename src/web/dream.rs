//! Dreams for the console: "what does the live head think a <class> looks like"
//! ([`crate::inspect::dream`]), asked for from the page and computed on a thread of its own.
//!
//! Owns: one dream at a time, at a lower scheduling priority than the loop (nice +10 on
//! Linux), and the newest finished PNG per class, remembered with the head version it was
//! made for (a dream of an older head is not served as the current one).
//! Must not: touch the loop, the store or the backbone: it reads the live head from the hub
//! and the float network from the models folder, and lets go of both when it finishes.
//! The head may have been trained on int8 embeddings: the dream then runs through the float
//! twin of that backbone, which the int8 path approximates (cosine >= 0.98, docs/measurements.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::daemon::observe::Hub;
use crate::grad::Network;
use crate::inspect::dream::{DreamConfig, dream};

/// Most gradient steps one request may ask for.
pub const MAX_STEPS: usize = 200;
/// Most classes remembered (one PNG each, about 150 KB).
const MAX_KEPT: usize = 64;

/// Where a dream of one class stands.
#[derive(Debug, Clone)]
pub enum Look {
    /// Finished for `head_version`: the PNG, the class probability of the float image, seconds.
    Ready {
        /// The PNG file.
        png: Arc<Vec<u8>>,
        /// The head version it was made for.
        head_version: u64,
        /// The head's probability of the class for the dreamed image.
        prob: f32,
        /// How long it took.
        seconds: f64,
    },
    /// Being computed (for `head_version`), started `seconds` ago, `steps` in all.
    Running {
        /// Seconds since it started.
        seconds: f64,
        /// Steps asked for.
        steps: usize,
    },
    /// The last attempt failed.
    Failed(String),
    /// Never asked for, or made for an older head.
    Missing,
}

#[derive(Debug)]
struct Running {
    class: String,
    started: Instant,
    steps: usize,
}

/// A finished dream: the head version, the PNG, the class probability, seconds.
type Made = (u64, Arc<Vec<u8>>, f32, f64);

#[derive(Debug, Default)]
struct State {
    running: Option<Running>,
    done: BTreeMap<String, Result<Made, String>>,
}

/// The console's dreams.
#[derive(Debug)]
pub struct Dreams {
    /// The float model file (`None`: the models folder was not found at start).
    model: Option<PathBuf>,
    input_size: usize,
    state: Mutex<State>,
}

impl Dreams {
    /// Dreams through the float network in `model` at `input_size`.
    pub fn new(model: Option<PathBuf>, input_size: usize) -> Self {
        Dreams {
            model,
            input_size,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start dreaming `class` of the live head in `steps` steps. Refused (with the reason)
    /// when another dream is running, there is no head, or the class is not one of its.
    pub fn start(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        class: &str,
        steps: usize,
    ) -> Result<(), Refused> {
        let model = self.model.clone().ok_or(Refused::NoModel)?;
        let head = hub.head().ok_or(Refused::NoHead)?;
        let k = head
            .classes
            .iter()
            .position(|c| c == class)
            .ok_or_else(|| Refused::NoClass(class.to_string()))?;
        let version = hub.status().map_or(0, |s| s.head_version);
        let steps = steps.clamp(1, MAX_STEPS);
        {
            let mut st = self.lock();
            if let Some(r) = &st.running {
                return Err(Refused::Busy(r.class.clone()));
            }
            st.running = Some(Running {
                class: class.to_string(),
                started: Instant::now(),
                steps,
            });
        }
        let me = Arc::clone(self);
        let (name, size) = (class.to_string(), self.input_size);
        let spawned = std::thread::Builder::new()
            .name("web-dream".into())
            .spawn(move || {
                super::lower_priority();
                let t = Instant::now();
                let result = Network::load(&model, size)
                    .map_err(|e| e.to_string())
                    .and_then(|net| {
                        let cfg = DreamConfig {
                            steps,
                            ..DreamConfig::default()
                        };
                        let d = dream(&net, &head, k, &cfg);
                        png(&d.to_rgb8(), d.side).map(|png| (png, d.prob))
                    });
                let seconds = t.elapsed().as_secs_f64();
                let mut st = me.lock();
                st.running = None;
                if st.done.len() >= MAX_KEPT && !st.done.contains_key(&name) {
                    st.done.pop_first();
                }
                let entry = result.map(|(png, prob)| (version, Arc::new(png), prob, seconds));
                if let Err(e) = &entry {
                    log::warn!("web console: dream of {name} failed: {e}");
                }
                st.done.insert(name, entry);
            });
        if let Err(e) = spawned {
            self.lock().running = None;
            return Err(Refused::Thread(e.to_string()));
        }
        Ok(())
    }

    /// Where the dream of `class` stands for head version `head_version`.
    pub fn look(&self, class: &str, head_version: u64) -> Look {
        let st = self.lock();
        if let Some(r) = st.running.as_ref().filter(|r| r.class == class) {
            return Look::Running {
                seconds: r.started.elapsed().as_secs_f64(),
                steps: r.steps,
            };
        }
        match st.done.get(class) {
            Some(Ok((v, png, prob, seconds))) if *v == head_version => Look::Ready {
                png: Arc::clone(png),
                head_version: *v,
                prob: *prob,
                seconds: *seconds,
            },
            Some(Err(e)) => Look::Failed(e.clone()),
            _ => Look::Missing,
        }
    }
}

/// Why a dream was not started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// One is running.
    #[error("a dream of {0} is running; one at a time")]
    Busy(String),
    /// No head yet.
    #[error("nothing taught yet: there is no head to dream with")]
    NoHead,
    /// Not a class of the head.
    #[error("the head has no class {0:?}")]
    NoClass(String),
    /// The float model was not found at start.
    #[error("the float model was not found at start-up; dreams need it")]
    NoModel,
    /// No thread.
    #[error("cannot start the dream thread: {0}")]
    Thread(String),
}

fn png(rgb: &[u8], side: usize) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            rgb,
            side as u32,
            side as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dream_without_a_head_or_model_is_refused_and_nothing_runs() {
        let (hub, _rx) = Hub::new(PathBuf::from("/nonexistent"));
        let d = Arc::new(Dreams::new(None, 224));
        assert_eq!(d.start(&hub, "ball", 5), Err(Refused::NoModel));
        let d = Arc::new(Dreams::new(Some(PathBuf::from("/nonexistent/m.onnx")), 224));
        assert_eq!(d.start(&hub, "ball", 5), Err(Refused::NoHead));
        assert!(matches!(d.look("ball", 0), Look::Missing));
    }

    #[test]
    fn png_writes_a_decodable_image_of_the_side() {
        let rgb: Vec<u8> = (0..8 * 8 * 3).map(|i| i as u8).collect();
        let p = png(&rgb, 8).unwrap();
        let img = image::load_from_memory(&p).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (8, 8));
        assert_eq!(img.as_raw(), &rgb);
    }
}
