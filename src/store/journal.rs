//! Edits that touch several files: an [`Edit`] is written to `STATE/journal` first (the
//! commit point), applied file by file, then removed; [`complete`] finishes one left by a
//! kill. Also the class list file (`STATE/classes`).
//!
//! Must not: decide what an edit means (the appliance core does).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::MAX_INDEX_FILE;
use super::error::{StoreError, io};
use super::files::remove_if_present;
use super::record::{Sample, read_record, write_record};
use crate::framed;
use crate::fsutil::{atomic_write, sync_dir};

pub(super) const CLASSES_KIND: &str = "teachcam-classes";
pub(super) const JOURNAL_KIND: &str = "teachcam-journal";

/// A change to several records and the class list that happens completely or not at all
/// (through the journal). Applied in field order: relabel, delete, then the class list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// Give these samples a new label.
    #[serde(default)]
    pub relabel: Vec<(u64, String)>,
    /// Delete these samples (record, then thumbnail).
    #[serde(default)]
    pub delete: Vec<u64>,
    /// Replace the class list.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

impl Edit {
    /// Delete `ids`.
    pub fn delete(ids: Vec<u64>) -> Self {
        Edit {
            delete: ids,
            ..Edit::default()
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct ClassesMeta {
    classes: Vec<String>,
}

/// Make the files say what `edit` says. Idempotent: a record already relabelled or deleted
/// is left alone, so an interrupted completion can simply run again.
pub(super) fn complete(dir: &Path, edit: &Edit) -> Result<(), StoreError> {
    let sdir = dir.join("samples");
    for (id, label) in &edit.relabel {
        let p = sdir.join(format!("{id:08}.rec"));
        if !p.exists() {
            continue;
        }
        let s = read_record(&p)?;
        if &s.label != label {
            write_record(
                dir,
                &Sample {
                    label: label.clone(),
                    ..s
                },
            )?;
        }
    }
    for id in &edit.delete {
        // Record first (the commit point of the sample), then its thumbnail.
        remove_if_present(&sdir.join(format!("{id:08}.rec")))?;
        remove_if_present(&sdir.join(format!("{id:08}.jpg")))?;
    }
    if !edit.delete.is_empty() {
        sync_dir(&sdir).map_err(io(&sdir))?;
    }
    if let Some(classes) = &edit.classes {
        let p = dir.join("classes");
        let meta = serde_json::to_value(ClassesMeta {
            classes: classes.clone(),
        })
        .unwrap_or_default();
        atomic_write(&p, &framed::encode(CLASSES_KIND, 1, &meta, &[])).map_err(io(&p))?;
    }
    Ok(())
}

pub(super) fn read_journal(p: &Path) -> Result<Edit, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt {
        path: p.to_path_buf(),
        why,
    };
    let (meta, _) = framed::read(p, MAX_INDEX_FILE, JOURNAL_KIND, 1, |_| Ok(0))
        .map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_value(meta).map_err(|e| corrupt(e.to_string()))
}

pub(super) fn read_classes(p: &Path) -> Result<Option<Vec<String>>, StoreError> {
    if !p.exists() {
        return Ok(None);
    }
    let corrupt = |why: String| StoreError::Corrupt {
        path: p.to_path_buf(),
        why,
    };
    let (meta, _) = framed::read(p, MAX_INDEX_FILE, CLASSES_KIND, 1, |_| Ok(0))
        .map_err(|e| corrupt(e.to_string()))?;
    let m: ClassesMeta = serde_json::from_value(meta).map_err(|e| corrupt(e.to_string()))?;
    for c in &m.classes {
        crate::frame::check_class_name(c).map_err(|why| corrupt(format!("class {c:?} {why}")))?;
    }
    Ok(Some(m.classes))
}
