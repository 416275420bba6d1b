//! `POST /api/import`: a dataset tarball (`teachcam dataset export`'s format) uploaded from
//! the page or with curl, added to the running appliance without stopping it.
//!
//! Owns: one import at a time (a second is refused with 409 while one runs), the upload file
//! (`STATE/.upload-PID.tar`, see [`crate::store::upload_path`]; removed when the request ends,
//! and at the next start if the process died first), and the work beside the loop:
//! 1. the body is copied to the upload file: its `Content-Length` is checked against
//!    [`super::Limits::max_upload`] before a byte is read, the disk's free space against it,
//!    and a client slower than [`super::http::MIN_UPLOAD_RATE`] is cut off;
//! 2. the tarball is read and verified whole as the CLI's import does
//!    ([`crate::dataset::count_new`]: bounded headers, checksums, manifest against records),
//!    without writing: a bad upload changes nothing;
//! 3. ids are reserved in the store's counter, and every new sample is staged (embedded
//!    here, at a lower priority than the loop, when it came from another backbone);
//! 4. the staged batch goes to the loop as [`crate::session::Action::Import`]: the loop only
//!    renames the staged files into place and updates the core, which learns from them as
//!    after a capture.
//!
//! Must not: add anything when any sample fails verification; write outside the state
//! directory's upload file and batch folder; block the loop (steps 1–3 run on the request's
//! own thread).

use std::net::TcpStream;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::http::{self, CopyError, Pending, Response};
use super::metrics::disk_free_bytes;
use super::reply::answer;
use super::{Shared, auth, lower_priority};
use crate::dataset::{self, DatasetError};
use crate::session::Source;
use crate::store::{Batch, Cause};

/// Removes the upload file when the request ends, however it ends.
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Free space kept on the state directory's disk beyond twice the upload (the file, then
/// the staged samples): captures must still fit after an import.
const KEEP_FREE: u64 = 50 << 20;

/// Answer `POST /api/import` (authenticated already; its body not read yet).
pub(super) fn upload(stream: &mut TcpStream, s: &Shared, p: &Pending) -> Response {
    if !auth::same_origin(&p.req) {
        return Response::error(403, "cross-origin request refused");
    }
    let Some(backbone) = s.info.backbone.clone() else {
        return Response::error(503, "this console cannot import (no model given to it)");
    };
    if p.req.header("content-length").is_none() {
        return Response::error(411, "send the tarball with a Content-Length");
    }
    let len = p.content_length as u64;
    if len == 0 {
        return Response::error(400, "the upload is empty");
    }
    if len > s.limits.max_upload {
        return Response::error(
            413,
            &format!(
                "the upload is {} MB; at most {} MB ([http] max_upload_mb)",
                len.div_ceil(1 << 20),
                s.limits.max_upload >> 20
            ),
        );
    }
    let Ok(_one) = s.importing.try_lock() else {
        return Response::error(409, "another import is running; try again when it is done");
    };
    let dir = &s.info.state_dir;
    if disk_free_bytes(dir).is_some_and(|free| free < 2 * len + KEEP_FREE) {
        return Response::error(
            507,
            "not enough free space on the state directory's disk for this upload",
        );
    }
    let file = Upload(crate::store::upload_path(dir));
    if let Err(r) = receive(stream, s, p, &file.0) {
        return r;
    }
    // Verifying, embedding and staging are seconds of work: the loop goes first.
    lower_priority();
    match stage(s, &file.0, &backbone) {
        Ok(Staged::Nothing { skipped }) => Response::json(
            200,
            &json!({ "imported": 0, "skipped": skipped, "embedded": 0, "classes_added": [] }),
        ),
        Ok(Staged::Batch(batch, rep)) => {
            drop(file);
            // Subscribed before sending, so the outcome cannot pass unseen.
            let sub = s.hub.subscribe(256);
            let id = s.hub.send_import(batch, Source::Http);
            let extra = json!({ "skipped": rep.skipped, "embedded": rep.embedded });
            let r = answer(&sub, id, extra);
            if r.status != 202 {
                // Refused by the core: the loop will not take the staged files.
                s.hub.drop_import(id);
            }
            r
        }
        Err(r) => r,
    }
}

/// Copy the body into `path`.
fn receive(stream: &mut TcpStream, s: &Shared, p: &Pending, path: &Path) -> Result<(), Response> {
    let f = std::fs::File::create(path).map_err(|e| write_refusal(path, &e))?;
    let mut w = std::io::BufWriter::with_capacity(256 * 1024, f);
    let copied = http::copy_body(stream, p, &s.limits, &mut w).and_then(|_| {
        let f = w
            .into_inner()
            .map_err(|e| CopyError::Write(e.into_error()))?;
        f.sync_all().map_err(CopyError::Write)
    });
    match copied {
        Ok(()) => Ok(()),
        Err(CopyError::Write(e)) => Err(write_refusal(path, &e)),
        Err(CopyError::Client(r)) => Err(Response::error(
            r.status().unwrap_or(400),
            "the upload did not arrive whole (too slow, or cut off)",
        )),
    }
}

fn write_refusal(path: &Path, e: &std::io::Error) -> Response {
    log::warn!("web console: upload {}: {e}", path.display());
    if e.raw_os_error() == Some(libc::ENOSPC) {
        Response::error(507, "the state directory's disk is full")
    } else {
        Response::error(500, &format!("cannot store the upload: {e}"))
    }
}

enum Staged {
    Nothing { skipped: usize },
    Batch(Batch, dataset::ImportReport),
}

/// Verify the upload, reserve ids and stage its new samples.
fn stage(
    s: &Shared,
    path: &Path,
    backbone: &crate::backbone::Backbone,
) -> Result<Staged, Response> {
    let list = s.hub.samples().unwrap_or_default();
    let have = dataset::known(list.samples.iter().map(|x| (&x.label, &x.thumb_sha256)));
    let digest = backbone.id().digest.clone();
    let dim = backbone.dim();
    let (new, skipped) = dataset::count_new(path, "the upload", &digest, dim, have.clone())
        .map_err(|e| refusal(&e))?;
    if new == 0 {
        return Ok(Staged::Nothing { skipped });
    }
    let Some(ids) = s.hub.reserve_ids(new as u64) else {
        return Err(Response::error(503, "starting: the store is not open yet"));
    };
    let mut batch = Batch::begin_reserved(&s.info.state_dir, ids, &digest, dim)
        .map_err(|e| refusal(&DatasetError::Store(e)))?;
    let mut emb = backbone.embedder();
    let now = crate::daemon::Clock::unix_ms(&crate::daemon::MonoClock::new());
    let rep = dataset::stage(path, "the upload", &mut emb, have, &mut batch, now)
        .map_err(|e| refusal(&e))?;
    Ok(Staged::Batch(batch, rep))
}

/// The response for an import that failed before reaching the loop (nothing was added).
fn refusal(e: &DatasetError) -> Response {
    let status = match e {
        DatasetError::Store(se) if se.cause() == Cause::DiskFull => 507,
        DatasetError::Store(_) | DatasetError::Io { .. } => 500,
        _ => 400,
    };
    Response::error(status, &e.to_string())
}
