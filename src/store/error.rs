//! What can go wrong in the store ([`StoreError`], each variant naming the file or sample)
//! and what kind of failure it is for the appliance's policy ([`Cause`]).
//!
//! Must not: touch files.

use std::path::{Path, PathBuf};

/// Why a store operation failed. Each variant names the file or sample.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error(
        "state directory {path}: {source}; check that it exists, that this user may write to it and that the disk has room"
    )]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The embedding length differs from the store's.
    #[error("sample has {got}-d embedding, the store holds {want}-d ones")]
    Dim {
        /// Store dimension.
        want: usize,
        /// Offered dimension.
        got: usize,
    },
    /// A file failed its checksum or does not parse.
    #[error("{path} is corrupt ({why}); move it away to start without it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An edit names a sample the store does not have.
    #[error("no sample {0}")]
    NoSample(u64),
    /// Another process has the state directory open (one writer at a time).
    #[error(
        "state directory {dir} is in use by {holder}; one program at a time may write it: stop that one first (e.g. `systemctl stop teachcam`), then retry"
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// Who holds it ("process 1234", or "another process" when its id is unknown).
        holder: String,
    },
    /// An edit would store a label that cannot be a class name.
    #[error("label {label:?} {why}")]
    BadLabel {
        /// The label.
        label: String,
        /// Why not.
        why: String,
    },
}

/// What kind of failure a [`StoreError`] is, for the appliance's policy and its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The disk (or the user's quota) is full: retry once space is freed.
    DiskFull,
    /// The state directory cannot be written (read-only mount, permissions).
    ReadOnly,
    /// Anything else.
    Other,
}

impl StoreError {
    /// Classify the failure (disk full and read-only state are expected on appliances).
    pub fn cause(&self) -> Cause {
        use std::io::ErrorKind as K;
        match self {
            StoreError::Io { source, .. } => match source.kind() {
                K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Cause::DiskFull,
                K::ReadOnlyFilesystem | K::PermissionDenied => Cause::ReadOnly,
                _ => Cause::Other,
            },
            _ => Cause::Other,
        }
    }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
