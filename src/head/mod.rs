//! The classifier on top of the backbone: a linear softmax head.
//!
//! Owns turning an embedding into class probabilities (L2-normalise, standardise with the
//! statistics stored in the head, `W·z + b`, softmax, "unknown" below a confidence threshold),
//! and the head file format. Training lives in [`train`].
//!
//! File format: the [`crate::framed`] container, kind `teachcam-head`, version 1; the JSON
//! metadata carries the classes, dimension, threshold, the backbone's SHA-256 and how it was
//! trained; the payload is `mean[dim] ‖ inv_std[dim] ‖ W[classes·dim] ‖ b[classes]`.
//! A head made for another backbone or dimension is refused when loaded.

pub mod train;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backbone::BackboneId;
use crate::framed::{self, FramedError};

const KIND: &str = "teachcam-head";
const VERSION: u32 = 1;

/// Largest head file read: 10 000 classes at 4096 dimensions.
pub const MAX_HEAD_FILE: u64 = 10_000 * 4096 * 4 + (4 << 20);

/// Label reported when the best class is below the head's confidence threshold.
pub use crate::frame::UNKNOWN;

/// Why a head cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Unreadable or corrupt file.
    #[error(transparent)]
    File(#[from] FramedError),
    /// Trained on another backbone.
    #[error(
        "head {path} was trained for backbone {head}, but the loaded backbone is {loaded}; {fix}"
    )]
    WrongBackbone {
        /// Head file.
        path: PathBuf,
        /// The backbone recorded in the head (its id, shortened, with precision and size).
        head: String,
        /// The loaded backbone, likewise.
        loaded: String,
        /// What to do: the flag that differs.
        fix: String,
    },
    /// Dimension mismatch.
    #[error(
        "head {path} expects {head_dim}-d embeddings but the backbone gives {dim}-d; retrain the head for this backbone"
    )]
    WrongDim {
        /// Head file.
        path: PathBuf,
        /// Dimension in the head.
        head_dim: usize,
        /// Backbone dimension.
        dim: usize,
    },
    /// Writing failed.
    #[error("cannot write head {path}: {source}")]
    Write {
        /// Head file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// How a head was made (kept in the file for `info` and reproducibility).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainInfo {
    /// RNG seed.
    pub seed: u64,
    /// Chosen L2 regularisation strength.
    pub l2: f32,
    /// Epochs run in the final fit.
    pub epochs: usize,
    /// Training examples per class.
    pub samples_per_class: Vec<usize>,
    /// Accuracy on the held-out split used for model selection, if there was one.
    pub holdout_accuracy: Option<f32>,
    /// Held-out examples.
    pub holdout_count: usize,
}

/// A trained linear softmax head.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Class names, index = output.
    pub classes: Vec<String>,
    /// Embedding length.
    pub dim: usize,
    /// Per-dimension mean of L2-normalised training embeddings.
    pub mean: Vec<f32>,
    /// Per-dimension 1/std of L2-normalised training embeddings.
    pub inv_std: Vec<f32>,
    /// `classes · dim` weights, row per class.
    pub weights: Vec<f32>,
    /// One bias per class.
    pub bias: Vec<f32>,
    /// Below this top probability the answer is "unknown".
    pub threshold: f32,
    /// The backbone whose embeddings this head classifies.
    pub backbone: BackboneId,
    /// Training record.
    pub info: TrainInfo,
}

/// The file's metadata. The backbone is stored as its digest and precision under the names
/// older files use, so heads stay readable both ways.
#[derive(Serialize, Deserialize)]
struct Meta {
    classes: Vec<String>,
    dim: usize,
    threshold: f32,
    backbone_sha256: String,
    precision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backbone: Option<crate::backbone::BackboneKind>,
    info: TrainInfo,
}

/// A classification result.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Probability per class.
    pub probs: Vec<f32>,
    /// Index of the most probable class.
    pub best: usize,
    /// Its probability.
    pub confidence: f32,
    /// False when `confidence` is below the threshold (the answer is "unknown").
    pub known: bool,
}

impl Prediction {
    /// The label to show: the class name, or [`UNKNOWN`].
    pub fn label<'a>(&self, head: &'a Head) -> &'a str {
        if self.known {
            &head.classes[self.best]
        } else {
            UNKNOWN
        }
    }

    /// The `k` most probable classes, best first.
    pub fn top_k(&self, k: usize) -> Vec<(usize, f32)> {
        let mut v: Vec<(usize, f32)> = self.probs.iter().copied().enumerate().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }
}

/// L2-normalise `x` into `out`.
pub fn l2_normalise(x: &[f32], out: &mut [f32]) {
    let n = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    for (o, v) in out.iter_mut().zip(x) {
        *o = v / n;
    }
}

pub use crate::linalg::dot;

/// In-place numerically stable softmax.
pub fn softmax(v: &mut [f32]) {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}

impl Head {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The standardised feature vector the weights act on.
    pub fn features(&self, embedding: &[f32], out: &mut [f32]) {
        l2_normalise(embedding, out);
        for ((o, m), s) in out.iter_mut().zip(&self.mean).zip(&self.inv_std) {
            *o = (*o - m) * s;
        }
    }

    /// Logits for already standardised features.
    pub fn logits(&self, z: &[f32], out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate() {
            *o = dot(&self.weights[c * self.dim..(c + 1) * self.dim], z) + self.bias[c];
        }
    }

    /// Classify one embedding.
    pub fn predict(&self, embedding: &[f32]) -> Prediction {
        let mut z = vec![0f32; self.dim];
        self.features(embedding, &mut z);
        let mut probs = vec![0f32; self.num_classes()];
        self.logits(&z, &mut probs);
        softmax(&mut probs);
        let (best, confidence) =
            probs
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |a, (i, p)| if p > a.1 { (i, p) } else { a },
                );
        Prediction {
            known: confidence >= self.threshold,
            probs,
            best,
            confidence,
        }
    }

    /// Serialise to the head file format.
    pub fn encode(&self) -> Vec<u8> {
        let meta = Meta {
            classes: self.classes.clone(),
            dim: self.dim,
            threshold: self.threshold,
            backbone_sha256: self.backbone.digest.clone(),
            precision: self.backbone.precision.clone(),
            input_size: self.backbone.input_size,
            backbone: self.backbone.kind,
            info: self.info.clone(),
        };
        // Plain data: serialisation cannot fail.
        let meta = serde_json::to_value(meta).unwrap_or_default();
        let mut payload = Vec::with_capacity(2 * self.dim + self.weights.len() + self.bias.len());
        payload.extend_from_slice(&self.mean);
        payload.extend_from_slice(&self.inv_std);
        payload.extend_from_slice(&self.weights);
        payload.extend_from_slice(&self.bias);
        framed::encode(KIND, VERSION, &meta, &payload)
    }

    /// Write atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), HeadError> {
        crate::fsutil::atomic_write(path, &self.encode()).map_err(|source| HeadError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parse head bytes (already read from `path`, which is only used in messages).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, HeadError> {
        let (meta, p) = framed::decode(path, bytes, KIND, VERSION, |m| {
            let dim = framed::meta_usize(m, "dim")
                .filter(|&d| d > 0)
                .ok_or("no positive dim")?;
            let c = m["classes"]
                .as_array()
                .filter(|c| !c.is_empty())
                .ok_or("no classes")?
                .len();
            c.checked_add(2)
                .and_then(|k| k.checked_mul(dim))
                .and_then(|n| n.checked_add(c))
                .ok_or_else(|| "size overflows".to_string())
        })?;
        let meta: Meta = serde_json::from_value(meta).map_err(|e| FramedError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let (d, c) = (meta.dim, meta.classes.len());
        // Numbers that parse can still be unusable: a non-finite weight answers "unknown"
        // forever, and an infinite field cannot even be written back (JSON has no inf).
        let bad = if !(0.0..=1.0).contains(&meta.threshold) {
            Some("threshold outside 0..1")
        } else if !meta.info.l2.is_finite()
            || meta.info.holdout_accuracy.is_some_and(|a| !a.is_finite())
        {
            Some("non-finite training record")
        } else if p.iter().any(|v| !v.is_finite()) {
            Some("non-finite weights or statistics")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(HeadError::File(FramedError::Corrupt {
                path: path.to_path_buf(),
                why: why.into(),
            }));
        }
        Ok(Head {
            mean: p[..d].to_vec(),
            inv_std: p[d..2 * d].to_vec(),
            weights: p[2 * d..2 * d + c * d].to_vec(),
            bias: p[2 * d + c * d..].to_vec(),
            classes: meta.classes,
            dim: d,
            threshold: meta.threshold,
            backbone: BackboneId {
                digest: meta.backbone_sha256,
                precision: meta.precision,
                input_size: meta.input_size,
                kind: meta.backbone,
            },
            info: meta.info,
        })
    }

    /// Read and verify a head file (at most [`MAX_HEAD_FILE`] bytes).
    pub fn load(path: &Path) -> Result<Self, HeadError> {
        Self::decode(path, &framed::read_file(path, MAX_HEAD_FILE)?)
    }

    /// Refuse a head made for another backbone or dimension.
    pub fn check_backbone(
        &self,
        path: &Path,
        loaded: &BackboneId,
        dim: usize,
    ) -> Result<(), HeadError> {
        if self.dim != dim {
            return Err(HeadError::WrongDim {
                path: path.to_path_buf(),
                head_dim: self.dim,
                dim,
            });
        }
        if !self.backbone.same_as(loaded) {
            let head = &self.backbone;
            // Name the flag that actually differs: the network, else the input size when
            // both are known and differ, else the precision. Heads written before the
            // network was recorded were all MobileNetV2's.
            let head_kind = head
                .kind
                .unwrap_or(crate::backbone::BackboneKind::MobileNetV2);
            let fix = match (loaded.kind, head.input_size, loaded.input_size) {
                (Some(l), _, _) if l != head_kind => format!(
                    "retrain it (teachcam --backbone {l} train ...) or run with --backbone {head_kind}"
                ),
                (_, Some(h), Some(l)) if h != l => format!(
                    "retrain it (teachcam --input-size {l} train ...) or run with --input-size {h}"
                ),
                _ => format!(
                    "retrain it (teachcam train ... --precision {}) or run with --precision {}",
                    loaded.precision, head.precision
                ),
            };
            return Err(HeadError::WrongBackbone {
                path: path.to_path_buf(),
                head: head.to_string(),
                loaded: loaded.to_string(),
                fix,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Head {
        Head {
            classes: vec!["a".into(), "b".into()],
            dim: 2,
            mean: vec![0.0, 0.0],
            inv_std: vec![1.0, 1.0],
            weights: vec![5.0, 0.0, 0.0, 5.0],
            bias: vec![0.0, 0.0],
            threshold: 0.6,
            backbone: id("f", "w8", 224),
            info: TrainInfo {
                seed: 3,
                ..Default::default()
            },
        }
    }

    fn id(digit: &str, precision: &str, size: usize) -> BackboneId {
        BackboneId {
            digest: digit.repeat(64),
            precision: precision.into(),
            input_size: Some(size),
            kind: Some(crate::backbone::BackboneKind::MobileNetV2),
        }
    }

    #[test]
    fn predicts_and_reports_unknown_below_threshold() {
        let h = tiny();
        let p = h.predict(&[1.0, 0.0]);
        assert_eq!((p.best, p.label(&h)), (0, "a"));
        assert!(p.confidence > 0.99);
        let p = h.predict(&[1.0, 1.0]);
        assert!(!p.known, "a tie must be unknown at threshold 0.6: {p:?}");
        assert_eq!(p.label(&h), UNKNOWN);
        assert_eq!(
            h.predict(&[0.0, 2.0]).top_k(1),
            vec![(1, h.predict(&[0.0, 2.0]).probs[1])]
        );
    }

    #[test]
    fn file_round_trip_and_backbone_check() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.head");
        let h = tiny();
        h.save(&p).unwrap();
        let back = Head::load(&p).unwrap();
        assert_eq!(back, h);
        back.check_backbone(&p, &id("f", "w8", 224), 2).unwrap();
        let e = back
            .check_backbone(&p, &id("0", "f32", 224), 2)
            .unwrap_err();
        assert!(e.to_string().contains("--precision f32"), "{e}");
        // Another input size: the message names that flag, not a no-op precision.
        let e = back
            .check_backbone(&p, &id("0", "w8", 160), 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--input-size 224") && !e.contains("--precision"),
            "{e}"
        );
        let e = back
            .check_backbone(&p, &id("f", "w8", 224), 1280)
            .unwrap_err();
        assert!(matches!(e, HeadError::WrongDim { .. }));
    }

    #[test]
    fn heads_with_unusable_numbers_are_refused_as_corrupt() {
        // Found by the fuzz target `head`: an l2 of 1e307 parses as an f32 infinity.
        let mut h = tiny();
        h.info.l2 = f32::INFINITY;
        let e = Head::decode(Path::new("x.head"), &h.encode()).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        let mut h = tiny();
        h.weights[1] = f32::NAN;
        assert!(Head::decode(Path::new("x"), &h.encode()).is_err());
        let mut h = tiny();
        h.threshold = 2.0;
        assert!(Head::decode(Path::new("x"), &h.encode()).is_err());
        assert!(Head::decode(Path::new("x"), &tiny().encode()).is_ok());
    }
}
