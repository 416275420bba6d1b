//! How an action's outcome becomes a response: send it through the hub with a request id,
//! wait (at most [`super::ACTION_WAIT`]) for the event that answers that id, and map the
//! event to a status and JSON.
//!
//! Must not: wait for anything but its own bounded event queue.

use std::time::Instant;

use serde_json::{Value, json};

use super::http::Response;
use super::{ACTION_WAIT, Shared};
use crate::bus::{Note, Subscription};
use crate::session::{Action, Event, Source};

/// Send `action` and answer with the outcome the loop publishes for it.
pub(super) fn act(s: &Shared, action: Action) -> Response {
    // Subscribed before sending, so the outcome cannot pass unseen.
    let sub = s.hub.subscribe(256);
    let id = s.hub.send(action, Source::Http);
    answer(&sub, id, json!({}))
}

/// Wait on `sub` (subscribed before request `id` was sent) for the request's outcome; the
/// response, with the fields of `extra` added.
pub(super) fn answer(sub: &Subscription<Event>, id: u64, extra: Value) -> Response {
    let deadline = Instant::now() + ACTION_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Response::json(202, &json!({ "request": id, "pending": true }));
        }
        match sub.next_timeout(left) {
            Some(Note::Event(e)) => {
                if let Some(r) = outcome(&e, id, &extra) {
                    return r;
                }
            }
            Some(Note::Lost(_)) => {}
            None if sub.is_finished() => return Response::error(503, "the loop is stopping"),
            None => {}
        }
    }
}

/// The response for `e` if it is the outcome of request `id` (with `extra`'s fields).
pub(super) fn outcome(e: &Event, id: u64, extra: &Value) -> Option<Response> {
    let (origin, status, body) = match e {
        Event::CaptureSaved { sample, origin } => (origin, 200, json!({ "saved": sample })),
        Event::CaptureRefused {
            class,
            reason,
            origin,
        } => (
            origin,
            409,
            json!({ "error": reason.to_string(), "class": class }),
        ),
        Event::Undone {
            sample,
            ids,
            origin,
        } => (origin, 200, json!({ "undone": sample, "samples": ids })),
        Event::NothingToUndo { origin } => (origin, 409, json!({ "error": "nothing to undo" })),
        Event::SamplesDeleted { ids, origin } => (origin, 200, json!({ "deleted": ids })),
        Event::SamplesRelabelled { ids, to, origin } => {
            (origin, 200, json!({ "relabelled": ids, "to": to }))
        }
        Event::ClassAdded { name, origin } => (origin, 200, json!({ "added": name })),
        Event::Imported {
            samples,
            classes_added,
            origin,
        } => (
            origin,
            200,
            json!({ "imported": samples, "classes_added": classes_added }),
        ),
        Event::ClassRenamed { from, to, origin } => {
            (origin, 200, json!({ "renamed": from, "to": to }))
        }
        Event::ClassRemoved {
            name,
            samples,
            origin,
        } => (
            origin,
            200,
            json!({ "removed": name, "samples_deleted": samples }),
        ),
        Event::ActionRefused {
            action,
            reason,
            origin,
        } => (origin, 409, json!({ "error": reason, "action": action })),
        _ => return None,
    };
    (origin.request == Some(id)).then(|| {
        let mut body = body;
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        body["request"] = json!(id);
        Response::json(status, &body)
    })
}
