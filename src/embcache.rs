//! Embedding caches: the embeddings of an image folder, computed once by `teachcam embed`
//! and reused by `train` and `eval` (and by the scikit-learn comparison in `tools/`).
//!
//! Stored in the [`crate::framed`] container (kind `teachcam-embeddings`, version 1), so a
//! truncated cache is detected. Records the backbone's id (digest, precision, input size) so a
//! cache made with another model is never mixed with this one's heads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backbone::BackboneId;
use crate::framed::{self, FramedError};

const KIND: &str = "teachcam-embeddings";
const VERSION: u32 = 1;

/// One cached item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedItem {
    /// Image the embedding came from.
    pub path: String,
    /// Index into the cache's classes.
    pub label: usize,
    /// `"train"`, `"val"`, or absent for a folder without splits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    dim: usize,
    count: usize,
    backbone_sha256: String,
    precision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backbone: Option<crate::backbone::BackboneKind>,
    classes: Vec<String>,
    items: Vec<CachedItem>,
}

/// Embeddings of a labelled image set.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSet {
    /// Embedding length.
    pub dim: usize,
    /// The backbone that produced them.
    pub backbone: BackboneId,
    /// Class names.
    pub classes: Vec<String>,
    /// Items, in the same order as rows of `data`.
    pub items: Vec<CachedItem>,
    /// `items.len() · dim` values, row-major.
    pub data: Vec<f32>,
}

impl EmbeddingSet {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The subset whose split is `split` (all items when none carries a split).
    pub fn select_split(&self, split: &str) -> EmbeddingSet {
        let any_split = self.items.iter().any(|i| i.split.is_some());
        let keep: Vec<usize> = (0..self.items.len())
            .filter(|&i| !any_split || self.items[i].split.as_deref() == Some(split))
            .collect();
        EmbeddingSet {
            dim: self.dim,
            backbone: self.backbone.clone(),
            classes: self.classes.clone(),
            items: keep.iter().map(|&i| self.items[i].clone()).collect(),
            data: keep
                .iter()
                .flat_map(|&i| self.row(i).iter().copied())
                .collect(),
        }
    }

    /// Labels of all items.
    pub fn labels(&self) -> Vec<usize> {
        self.items.iter().map(|i| i.label).collect()
    }

    /// Serialise (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let meta = Meta {
            dim: self.dim,
            count: self.items.len(),
            backbone_sha256: self.backbone.digest.clone(),
            precision: self.backbone.precision.clone(),
            input_size: self.backbone.input_size,
            backbone: self.backbone.kind,
            classes: self.classes.clone(),
            items: self.items.clone(),
        };
        // Serialising plain structs of strings and numbers cannot fail.
        let meta = serde_json::to_value(meta).unwrap_or_default();
        framed::encode(KIND, VERSION, &meta, &self.data)
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::fsutil::atomic_write(path, &self.encode())
    }

    /// Read and verify a cache file.
    pub fn load(path: &Path) -> Result<Self, FramedError> {
        Self::decode(path, &framed::read_file(path, framed::MAX_FILE)?)
    }

    /// Parse and verify cache bytes (`path` names them in messages).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, FramedError> {
        let (meta, data) = framed::decode(path, bytes, KIND, VERSION, |m| {
            let dim = framed::meta_usize(m, "dim")
                .filter(|&d| d > 0)
                .ok_or("no positive dim")?;
            let count = framed::meta_usize(m, "count").ok_or("no count")?;
            dim.checked_mul(count)
                .ok_or_else(|| "size overflows".to_string())
        })?;
        let corrupt = |why: String| FramedError::Corrupt {
            path: PathBuf::from(path),
            why,
        };
        let meta: Meta = serde_json::from_value(meta).map_err(|e| corrupt(e.to_string()))?;
        if meta.items.len() != meta.count
            || meta.items.iter().any(|i| i.label >= meta.classes.len())
        {
            return Err(corrupt("item list does not match counts or classes".into()));
        }
        Ok(EmbeddingSet {
            dim: meta.dim,
            backbone: BackboneId {
                digest: meta.backbone_sha256,
                precision: meta.precision,
                input_size: meta.input_size,
                kind: meta.backbone,
            },
            classes: meta.classes,
            items: meta.items,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EmbeddingSet {
        EmbeddingSet {
            dim: 2,
            backbone: BackboneId {
                digest: "ab".into(),
                precision: "w8".into(),
                input_size: Some(224),
                kind: None,
            },
            classes: vec!["x".into(), "y".into()],
            items: vec![
                CachedItem {
                    path: "a".into(),
                    label: 0,
                    split: Some("train".into()),
                },
                CachedItem {
                    path: "b".into(),
                    label: 1,
                    split: Some("val".into()),
                },
            ],
            data: vec![1.0, 2.0, 3.0, 4.0],
        }
    }

    #[test]
    fn save_load_round_trip_and_split_selection() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.tce");
        let s = sample();
        s.save(&p).unwrap();
        let back = EmbeddingSet::load(&p).unwrap();
        assert_eq!(back, s);
        let v = back.select_split("val");
        assert_eq!(v.items.len(), 1);
        assert_eq!(v.data, vec![3.0, 4.0]);
    }

    #[test]
    fn truncated_cache_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.tce");
        let bytes = sample().encode();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let e = EmbeddingSet::load(&p).unwrap_err();
        assert!(
            e.to_string().contains("c.tce") && e.to_string().contains("corrupt"),
            "{e}"
        );
    }
}
