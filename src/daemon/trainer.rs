//! Learning for the shell: imprinting a head from the stored samples (fast, on the loop's
//! thread) and fine-tuning it in the background (a thread of its own, newest job wins).
//!
//! Must not: decide when to learn or whether to use a result (the core does).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use crate::backbone::BackboneId;
use crate::head::Head;
use crate::head::train::{Examples, TrainConfig, imprint_head, train};
use crate::session::FineTune;
use crate::store::Sample;

/// The stored samples of `classes` as training data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    /// Generation the result answers for.
    pub generation: u64,
    /// Embedding length.
    pub dim: usize,
    /// `labels.len() · dim` values.
    pub data: Vec<f32>,
    /// Index into `classes` per row.
    pub labels: Vec<usize>,
    /// The press each row came from: rows of one press (a burst's frames, a sample's
    /// variations) are held out together when training selects its settings.
    pub groups: Vec<u64>,
    /// The classes that have samples, in class-list order.
    pub classes: Vec<String>,
}

impl Job {
    /// The samples whose label is one of `classes` (classes without samples are left out:
    /// a head only knows what it was shown).
    pub fn from_samples(generation: u64, samples: &[Sample], classes: &[String]) -> Job {
        let present: Vec<String> = classes
            .iter()
            .filter(|c| samples.iter().any(|s| &s.label == *c))
            .cloned()
            .collect();
        let mut job = Job {
            generation,
            classes: present,
            ..Job::default()
        };
        for s in samples {
            if let Some(k) = job.classes.iter().position(|c| *c == s.label) {
                if job.dim == 0 {
                    job.dim = s.embedding.len();
                }
                // Records embedded by another backbone (kept when re-embedding failed)
                // cannot be mixed in.
                if s.embedding.len() == job.dim {
                    job.data.extend_from_slice(&s.embedding);
                    job.labels.push(k);
                    job.groups.push(s.press);
                }
            }
        }
        job
    }

    fn examples(&self) -> Examples<'_> {
        Examples {
            dim: self.dim,
            data: &self.data,
            labels: &self.labels,
            groups: (self.groups.len() == self.labels.len()).then_some(&self.groups[..]),
        }
    }

    /// A head imprinted from the job's samples; `Ok(None)` when there are none.
    pub fn imprint(&self, backbone: &BackboneId, threshold: f32) -> Result<Option<Head>, String> {
        if self.labels.is_empty() {
            return Ok(None);
        }
        imprint_head(self.examples(), self.classes.clone(), backbone, threshold)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Fine-tune a head on the job's samples.
    pub fn fine_tune(&self, backbone: &BackboneId, cfg: &TrainConfig) -> Result<FineTune, String> {
        let (head, report) = train(self.examples(), None, self.classes.clone(), backbone, cfg)
            .map_err(|e| e.to_string())?;
        Ok(FineTune {
            head: Arc::new(head),
            holdout_accuracy: report.holdout_accuracy,
            imprint_accuracy: report.imprint_accuracy,
            confusion: report.holdout_confusion,
        })
    }
}

/// A finished fine-tune: its generation and result.
pub type Finished = (u64, Result<FineTune, String>);

/// Where fine-tunes run.
pub trait Trainer {
    /// Queue `job` (a newer job replaces one not yet started).
    fn submit(&mut self, job: Job);
    /// A finished fine-tune, if one is ready.
    fn finished(&mut self) -> Option<Finished>;
}

/// Fine-tunes on a background thread, so inference never waits for training.
pub struct ThreadTrainer {
    jobs: Option<Sender<Job>>,
    results: Receiver<Finished>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set on drop: the running fine-tune ends within an epoch (shutdown must not wait for
    /// the budget; systemd's stop timeout is 15 s, the budget may be minutes).
    stop: Arc<AtomicBool>,
}

impl ThreadTrainer {
    /// Start the thread: each fine-tune gets `budget`, heads get `threshold`.
    pub fn spawn(backbone: BackboneId, threshold: f32, budget: Duration) -> std::io::Result<Self> {
        let (job_tx, job_rx) = channel::<Job>();
        let (res_tx, res_rx) = channel::<Finished>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fine-tune".into())
            .spawn(move || {
                while let Ok(mut job) = job_rx.recv() {
                    // Only the newest request matters.
                    while let Ok(newer) = job_rx.try_recv() {
                        job = newer;
                    }
                    let cfg = TrainConfig {
                        deadline: Some(Instant::now() + budget),
                        stop: Some(Arc::clone(&stop_flag)),
                        threshold,
                        ..TrainConfig::default()
                    };
                    let result = job.fine_tune(&backbone, &cfg);
                    if res_tx.send((job.generation, result)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(ThreadTrainer {
            jobs: Some(job_tx),
            results: res_rx,
            thread: Some(thread),
            stop,
        })
    }
}

impl Trainer for ThreadTrainer {
    fn submit(&mut self, job: Job) {
        if let Some(tx) = &self.jobs {
            let _ = tx.send(job);
        }
    }

    fn finished(&mut self) -> Option<Finished> {
        self.results.try_recv().ok()
    }
}

impl Drop for ThreadTrainer {
    /// Stop taking jobs, tell the running one to stop (it ends within an epoch, keeping
    /// nothing: its result is never read) and wait for it.
    fn drop(&mut self) {
        self.jobs = None;
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fine-tunes at once, on the caller's thread: for simulations and tests, where the result
/// must not depend on thread timing.
pub struct InlineTrainer {
    backbone: BackboneId,
    cfg: TrainConfig,
    done: Vec<Finished>,
}

impl InlineTrainer {
    /// Train with `cfg` (its deadline is ignored: runs to completion).
    pub fn new(backbone: BackboneId, cfg: TrainConfig) -> Self {
        InlineTrainer {
            backbone,
            cfg: TrainConfig {
                deadline: None,
                ..cfg
            },
            done: Vec::new(),
        }
    }
}

impl Trainer for InlineTrainer {
    fn submit(&mut self, job: Job) {
        let r = job.fine_tune(&self.backbone, &self.cfg);
        self.done.push((job.generation, r));
    }

    fn finished(&mut self) -> Option<Finished> {
        (!self.done.is_empty()).then(|| self.done.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64, label: &str, e: &[f32]) -> Sample {
        Sample {
            id,
            label: label.into(),
            time_ms: 0,
            embedding: e.to_vec(),
            backbone: String::new(),
            thumb_sha256: String::new(),
            press: id,
        }
    }

    #[test]
    fn jobs_keep_the_listed_classes_with_samples_in_list_order() {
        let s = [
            sample(1, "b", &[1.0, 0.0]),
            sample(2, "x", &[0.0, 1.0]),
            sample(3, "a", &[0.5, 0.5]),
            sample(4, "b", &[1.0, 0.1, 9.0]),
        ];
        let classes = ["a".to_string(), "b".into(), "c".into()];
        let j = Job::from_samples(7, &s, &classes);
        assert_eq!(j.classes, ["a", "b"], "c has no samples, x is not a class");
        assert_eq!(
            (j.dim, j.labels.clone()),
            (2, vec![1, 0]),
            "the 3-d row is left out"
        );
        let h = j.imprint(&BackboneId::default(), 0.5).unwrap().unwrap();
        assert_eq!(h.classes, ["a", "b"]);
        assert!(
            Job::from_samples(1, &[], &classes)
                .imprint(&BackboneId::default(), 0.5)
                .unwrap()
                .is_none()
        );
    }

    /// Dropping the trainer (what SIGTERM does) during a fine-tune
    /// with a 10-minute budget returns within a couple of epochs, not at the budget.
    #[test]
    fn dropping_the_trainer_stops_a_long_fine_tune_at_once() {
        let budget = Duration::from_secs(600);
        let t = ThreadTrainer::spawn(BackboneId::default(), 0.5, budget).unwrap();
        let mut rng = crate::rng::Rng::new(3);
        // Noisy overlapping classes: early stopping does not end this fine-tune soon.
        let s: Vec<Sample> = (0..6000)
            .map(|i| {
                let e: Vec<f32> = (0..256)
                    .map(|_| rng.normal() + (i % 3) as f32 * 0.01)
                    .collect();
                sample(i, ["a", "b", "c"][i as usize % 3], &e)
            })
            .collect();
        let mut t = t;
        t.submit(Job::from_samples(
            1,
            &s,
            &["a".into(), "b".into(), "c".into()],
        ));
        // Let it start.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            t.finished().is_none(),
            "the fine-tune ended before the test could stop it"
        );
        let start = Instant::now();
        drop(t);
        let took = start.elapsed();
        eprintln!("trainer stopped {took:?} after the drop (budget {budget:?})");
        assert!(took < Duration::from_secs(5), "drop took {took:?}");
    }

    #[test]
    fn the_thread_trainer_returns_the_newest_generation() {
        let mut t =
            ThreadTrainer::spawn(BackboneId::default(), 0.5, Duration::from_secs(5)).unwrap();
        let s: Vec<Sample> = (0..8)
            .map(|i| {
                sample(
                    i,
                    ["a", "b"][i as usize % 2],
                    &[(i % 2) as f32, 1.0 - (i % 2) as f32],
                )
            })
            .collect();
        t.submit(Job::from_samples(3, &s, &["a".into(), "b".into()]));
        let got = loop {
            if let Some(f) = t.finished() {
                break f;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(got.0, 3);
        assert_eq!(got.1.unwrap().head.classes, ["a", "b"]);
    }
}
