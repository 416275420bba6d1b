//! The routes: the login page, the page and its assets, and every `/api/…` request, checked
//! (authentication, same origin, fields) and turned into an [`Action`] through the hub or a
//! read of the hub's snapshots (samples, status, heat map, dreams).
//!
//! Must not: reach the file system (samples are addressed by numeric id through the hub).

use std::time::Instant;

use serde_json::{Value, json};

use super::auth::{self, COOKIE};
use super::dream;
use super::http::{Request, Response};
use super::metrics::{doctor, health, metrics};
use super::reply::act;
use super::stream::jpeg_of;
use super::{MAX_IDS, Shared};
use crate::session::{Action, ClassRef, MAX_BURST, Source};

/// The page, its script and style: compiled in, no build step.
pub(super) const INDEX_HTML: &str = include_str!("page/index.html");
pub(super) const APP_JS: &str = include_str!("page/app.js");
pub(super) const STYLE_CSS: &str = include_str!("page/style.css");

pub(super) const LOGIN_NEEDED: &str = "<!doctype html><meta charset=utf-8><title>teachcam</title>\
<h1>teachcam</h1><p>Log in with the URL that <code>teachcam run</code> printed at start-up \
(or that <code>teachcam doctor</code> prints).</p>";

pub(super) fn login(s: &Shared, req: &Request, now: Instant) -> Response {
    if req.method != "GET" {
        return Response::error(405, "GET /login?token=TOKEN");
    }
    let given = req.query_param("token").unwrap_or_default();
    if !s.auth.token_ok(&given) {
        return Response::new(401, "text/html; charset=utf-8", LOGIN_NEEDED);
    }
    match s.auth.start_session(now) {
        Ok(id) => Response::new(303, "text/plain", "")
            .with("Location", "/".into())
            .with(
                "Set-Cookie",
                format!(
                    "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                    s.auth.ttl().as_secs()
                ),
            ),
        Err(e) => Response::error(500, &format!("no randomness for a session: {e}")),
    }
}

/// Every authenticated route but the stream.
pub(super) fn route(s: &Shared, req: &Request) -> Response {
    let path = req.path.as_str();
    if req.method == "POST" {
        if !auth::same_origin(req) {
            return Response::error(403, "cross-origin request refused");
        }
        let body: Value = if req.body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => return Response::error(400, &format!("body is not JSON: {e}")),
            }
        };
        if path == "/api/dream" {
            return dream_start(s, &body);
        }
        return match post(s, path, &body) {
            Ok(r) => r,
            Err(msg) => Response::error(400, &msg),
        };
    }
    if req.method != "GET" {
        return Response::error(405, "GET or POST");
    }
    match path {
        "/" => Response::new(200, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => Response::new(200, "text/javascript; charset=utf-8", APP_JS),
        "/style.css" => Response::new(200, "text/css; charset=utf-8", STYLE_CSS),
        "/api/status" => match s.hub.status() {
            Some(st) => Response::json(200, &json!(&*st)),
            None => Response::error(503, "starting: no status yet"),
        },
        "/api/samples" => {
            let list = s.hub.samples().unwrap_or_default();
            Response::json(
                200,
                &json!({ "classes": list.classes, "samples": list.samples }),
            )
        }
        "/api/inbox" => inbox_list(s),
        "/api/health" => Response::json(200, &health(s)),
        "/api/doctor" => doctor(s),
        "/api/heatmap" => heatmap(s, req),
        "/api/dream" => dream_look(s, req),
        "/metrics" => Response::new(200, "text/plain; version=0.0.4", metrics(s)),
        "/api/snapshot.jpg" => match s.hub.latest_frame() {
            Some((version, frame)) => match jpeg_of(s, version, &frame) {
                // The frame's tag (scene kind, file name) lets tests and scripts know what
                // the camera showed.
                Some((_, jpeg)) => Response::new(200, "image/jpeg", jpeg.as_slice())
                    .with("X-Frame-Tag", frame.tag.clone())
                    .with("X-Frame-Version", version.to_string()),
                None => Response::error(500, "cannot encode the frame"),
            },
            None => Response::error(503, "no frame yet"),
        },
        _ if path.starts_with("/api/inbox/") => match numbered(path, "/api/inbox/", "/thumb") {
            Some(Some(id)) => match s.hub.inbox().map(|i| i.thumbnail(id)) {
                Some(Ok(jpeg)) => Response::new(200, "image/jpeg", jpeg),
                Some(Err(e)) => Response::error(404, &e.to_string()),
                None => Response::error(404, "this appliance keeps no inbox"),
            },
            _ => Response::error(404, "inbox frame ids are numbers"),
        },
        _ => match sample_thumb_id(path) {
            Some(Some(id)) => match s.hub.thumbnail(id) {
                Ok(jpeg) => Response::new(200, "image/jpeg", jpeg),
                Err(e) => Response::error(404, &e.to_string()),
            },
            Some(None) => Response::error(404, "sample ids are numbers"),
            None => Response::error(404, "no such page"),
        },
    }
}

/// `GET /api/heatmap[?class=NAME]`: renew the wish for class-activation maps and answer
/// with the newest one (202 while the first is on its way).
pub(super) fn heatmap(s: &Shared, req: &Request) -> Response {
    let class = match req.query_param("class").filter(|c| !c.is_empty()) {
        None => None,
        Some(name) => {
            let list = s.hub.samples().unwrap_or_default();
            match list.classes.iter().position(|c| *c == name) {
                Some(k) => Some(k),
                None => return Response::error(404, &format!("no class {name:?}")),
            }
        }
    };
    if s.hub.head().is_none() {
        return Response::error(409, "nothing taught yet: no head to map");
    }
    s.hub.want_heatmap(class);
    match s.hub.heatmap() {
        Some(m) if class.is_none_or(|k| k == m.class_index) => Response::json(200, &json!(&*m)),
        _ => Response::json(202, &json!({ "pending": true })),
    }
}

/// `POST /api/dream {"class": NAME, "steps": N}`: start a dream of the live head's class.
pub(super) fn dream_start(s: &Shared, body: &Value) -> Response {
    let Some(class) = body.get("class").and_then(Value::as_str) else {
        return Response::error(400, "needs \"class\": a name");
    };
    let steps = match body.get("steps").map(Value::as_u64) {
        None => crate::inspect::dream::DreamConfig::default().steps,
        Some(Some(n)) if (1..=dream::MAX_STEPS as u64).contains(&n) => n as usize,
        _ => return Response::error(400, &format!("\"steps\" is 1..={}", dream::MAX_STEPS)),
    };
    match s.dreams.start(&s.hub, class, steps) {
        Ok(()) => Response::json(202, &json!({ "dreaming": class, "steps": steps })),
        Err(e @ dream::Refused::NoClass(_)) => Response::error(404, &e.to_string()),
        Err(e @ (dream::Refused::NoModel | dream::Refused::Thread(_))) => {
            Response::error(503, &e.to_string())
        }
        Err(e) => Response::error(409, &e.to_string()),
    }
}

/// `GET /api/dream?class=NAME`: the PNG when the dream for the live head is ready, else
/// where it stands (JSON).
pub(super) fn dream_look(s: &Shared, req: &Request) -> Response {
    let Some(class) = req.query_param("class") else {
        return Response::error(400, "GET /api/dream?class=NAME");
    };
    let version = s.hub.status().map_or(0, |st| st.head_version);
    match s.dreams.look(&class, version) {
        dream::Look::Ready {
            png,
            head_version,
            prob,
            seconds,
        } => Response::new(200, "image/png", png.as_slice())
            .with("X-Head-Version", head_version.to_string())
            .with("X-Dream-Prob", format!("{prob:.4}"))
            .with("X-Dream-Seconds", format!("{seconds:.2}"))
            .with("Cache-Control", "no-store".into()),
        dream::Look::Running { seconds, steps } => Response::json(
            202,
            &json!({ "class": class, "running": true, "seconds": seconds, "steps": steps }),
        ),
        dream::Look::Failed(e) => Response::json(500, &json!({ "class": class, "error": e })),
        dream::Look::Missing => Response::error(
            404,
            "no dream of this class for the live head; POST /api/dream {\"class\": NAME}",
        ),
    }
}

/// `/api/samples/ID/thumb` → `Some(Some(ID))`; a malformed id → `Some(None)`; other paths
/// `None`. Only decimal digits are accepted: nothing in the path reaches the file system.
pub(super) fn sample_thumb_id(path: &str) -> Option<Option<u64>> {
    numbered(path, "/api/samples/", "/thumb")
}

/// `PREFIX` ID `SUFFIX` → `Some(Some(ID))`; a malformed id → `Some(None)`; other paths `None`.
fn numbered(path: &str, prefix: &str, suffix: &str) -> Option<Option<u64>> {
    let id = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let ok = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    Some(ok.then(|| id.parse().ok()).flatten())
}

/// `GET /api/inbox`: the frames the appliance was unsure of, oldest first.
fn inbox_list(s: &Shared) -> Response {
    match s.hub.inbox() {
        Some(inbox) => {
            let items: Vec<Value> = inbox
                .items()
                .iter()
                .map(|i| {
                    json!({ "id": i.id, "time_ms": i.time_ms, "reason": i.reason.name(),
                        "guess": i.guess, "confidence": i.confidence })
                })
                .collect();
            Response::json(
                200,
                &json!({ "capacity": inbox.capacity(), "items": items }),
            )
        }
        None => Response::json(200, &json!({ "capacity": 0, "items": [] })),
    }
}

/// `POST /api/inbox/dismiss {"ids": [...]}` or `{"all": true}`: forget inbox frames. The
/// inbox is not what was taught, so this is the console's own business, not the loop's.
fn inbox_dismiss(s: &Shared, body: &Value) -> Result<Response, String> {
    let inbox = s.hub.inbox().ok_or("this appliance keeps no inbox")?;
    if body.get("all").and_then(Value::as_bool) == Some(true) {
        return Ok(Response::json(200, &json!({ "dismissed": inbox.clear() })));
    }
    let mut gone = Vec::new();
    for id in ids_field(body)? {
        if inbox.remove(id).is_ok() {
            gone.push(id);
        }
    }
    Ok(Response::json(
        200,
        &json!({ "dismissed": gone.len(), "ids": gone }),
    ))
}

pub(super) fn str_field<'a>(body: &'a Value, key: &str) -> Result<&'a str, String> {
    body.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("needs \"{key}\": a string"))
}

pub(super) fn ids_field(body: &Value) -> Result<Vec<u64>, String> {
    let ids = body
        .get("ids")
        .and_then(Value::as_array)
        .ok_or("needs \"ids\": [numbers]")?;
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(format!("\"ids\" needs 1..={MAX_IDS} sample ids"));
    }
    ids.iter()
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| "sample ids are numbers".to_string())
        })
        .collect()
}

/// POST routes: the body is JSON (already parsed).
pub(super) fn post(s: &Shared, path: &str, body: &Value) -> Result<Response, String> {
    let action = match path {
        "/api/capture" => {
            let class = match (body.get("class"), body.get("index")) {
                (Some(Value::String(n)), _) => ClassRef::Name(n.clone()),
                (None, Some(i)) => ClassRef::Index(
                    i.as_u64().ok_or("\"index\" is a class position from 0")? as usize,
                ),
                _ => return Err("needs \"class\": a name (or \"index\": a position)".into()),
            };
            match body.get("count").map(Value::as_u64) {
                None => Action::Capture(class),
                Some(Some(count)) if (1..=MAX_BURST as u64).contains(&count) => {
                    let every_ms = body.get("every_ms").and_then(Value::as_u64).unwrap_or(200);
                    let action = Action::Burst {
                        class,
                        count: count as u32,
                        every_ms: every_ms.max(crate::session::MIN_BURST_MS),
                    };
                    let id = s.hub.send(action, Source::Http);
                    return Ok(Response::json(
                        202,
                        &json!({ "request": id, "burst": count }),
                    ));
                }
                _ => return Err(format!("\"count\" is 1..={MAX_BURST}")),
            }
        }
        "/api/undo" => Action::Undo,
        "/api/inbox/label" => Action::LabelInbox {
            id: body
                .get("id")
                .and_then(Value::as_u64)
                .ok_or("needs \"id\": an inbox frame's number")?,
            class: ClassRef::Name(str_field(body, "class")?.to_string()),
        },
        "/api/inbox/dismiss" => return inbox_dismiss(s, body),
        "/api/classes/add" => Action::AddClass(str_field(body, "name")?.to_string()),
        "/api/classes/rename" => Action::RenameClass {
            from: str_field(body, "from")?.to_string(),
            to: str_field(body, "to")?.to_string(),
        },
        "/api/classes/remove" => Action::RemoveClass(str_field(body, "name")?.to_string()),
        "/api/samples/delete" => Action::DeleteSamples(ids_field(body)?),
        "/api/samples/relabel" => Action::RelabelSamples {
            ids: ids_field(body)?,
            to: str_field(body, "to")?.to_string(),
        },
        _ => return Ok(Response::error(404, "no such action")),
    };
    Ok(act(s, action))
}
