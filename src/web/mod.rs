//! The web console: a page, a JSON API, a live view and Prometheus metrics, served
//! by `teachcam run` on plain `std::net` sockets (see `http.rs` for why no framework).
//!
//! Owns: the listener, one short-lived thread per connection (capped), routing, the JSON the
//! API speaks, the live view (MJPEG stream and JPEG snapshot, encoded on the viewer's thread
//! and shared between viewers of the same frame), the metrics text and the embedded page.
//! Everything the page or the API changes is an [`Action`] sent through the
//! [`Hub`] with [`Source::Http`], the same path as a button press; the answer is the event
//! the loop publishes for that request id.
//!
//! Must not: make the loop wait (it only reads the hub's newest-only slots and its own
//! bounded event queue), reach the file system from a request (samples are addressed by their
//! numeric ids through [`Hub::thumbnail`]; the page is compiled in), or serve anything but the
//! login route without authentication (`auth.rs`).
//! Invariants: at most [`Limits::max_connections`] connections and [`Limits::max_streams`]
//! live-view streams at once; every response closes its connection.

pub mod auth;
pub mod dream;
pub mod http;
mod import;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bus::{Note, Subscription};
use crate::daemon::observe::{Hub, STAGE_BUCKETS_US};
use crate::frame::Frame;
use crate::session::{Action, ClassRef, Event, FineTuneResult, MAX_BURST, Source};
use auth::{Auth, COOKIE};
pub use http::Limits;
use http::{Request, Response};

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address could not be bound.
    #[error(
        "web console: cannot listen on {addr}: {source}; is another program using the port? \
         Set [http] listen = \"ADDRESS:PORT\" or --http, or [http] enabled = false"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The token file could not be read or written.
    #[error("web console token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file holds something else than a token.
    #[error(
        "web console token {0} is not 64 hex digits; delete it and a new one is made at the next start"
    )]
    BadToken(PathBuf),
    /// The accept thread could not be started.
    #[error("cannot start the web console thread: {0}")]
    Thread(std::io::Error),
}

/// Facts about this run shown on the health page (collected at start-up, read-only after).
#[derive(Debug, Clone, Default)]
pub struct Info {
    /// Program version.
    pub version: String,
    /// The camera, as it describes itself.
    pub camera: String,
    /// The backbone (precision, input size, digest).
    pub model: String,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The float model file, for dreams (`None`: not found; dreams are refused).
    pub float_model: Option<PathBuf>,
    /// The backbone's input side.
    pub input_size: usize,
    /// The loop's backbone, for embedding imported samples of another backbone (`None`:
    /// imports are refused).
    pub backbone: Option<crate::backbone::Backbone>,
    /// The configuration this run resolved, for `teachcam doctor`'s checks on the health
    /// page (`None`: not offered).
    pub config: Option<crate::config::RunConfig>,
}

/// The page, its script and style: compiled in, no build step.
const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// Frames per second at most on one MJPEG stream (the page needs no more).
pub const STREAM_MAX_FPS: u64 = 10;
/// How long an API call waits for the loop's answer before answering 202 with its request id.
pub const ACTION_WAIT: Duration = Duration::from_secs(5);
/// Most sample ids one delete or relabel request may name.
pub const MAX_IDS: usize = 1000;

/// A bound, not yet serving, console.
pub struct Console {
    listener: TcpListener,
    auth: Arc<Auth>,
    token: String,
    limits: Limits,
}

impl Console {
    /// Bind `listen` and load (or create) the token in `state_dir`: start-up failures happen
    /// here, before the model is loaded.
    pub fn bind(listen: SocketAddr, state_dir: &Path, limits: Limits) -> Result<Self, WebError> {
        let token = auth::load_or_create_token(state_dir, crate::config::HTTP_TOKEN_FILE)?;
        let listener = TcpListener::bind(listen).map_err(|source| WebError::Bind {
            addr: listen,
            source,
        })?;
        Ok(Console {
            listener,
            auth: Arc::new(Auth::new(token.clone(), limits.session_ttl)),
            token,
            limits,
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The URL that logs a browser in (the host part is this machine's name when listening
    /// on every interface).
    pub fn login_url(&self) -> String {
        login_url(self.local_addr(), &self.token)
    }

    /// Serve on `hub` from threads of its own; returns at once.
    pub fn start(self, hub: Arc<Hub>, info: Info) -> Result<(), WebError> {
        let shared = Arc::new(Shared {
            dreams: Arc::new(dream::Dreams::new(
                info.float_model.clone(),
                info.input_size,
            )),
            counters: Counters::default(),
            hub,
            auth: self.auth,
            limits: self.limits,
            info,
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            jpeg: Mutex::new(None),
            importing: Mutex::new(()),
            doctor: Mutex::new(None),
        });
        let sub = shared.hub.subscribe(256);
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("web-metrics".into())
            .spawn(move || count_events(&sub, &s.counters))
            .map_err(WebError::Thread)?;
        let listener = self.listener;
        std::thread::Builder::new()
            .name("web-accept".into())
            .spawn(move || accept(&listener, &shared))
            .map_err(WebError::Thread)?;
        Ok(())
    }
}

/// The login URL for `addr` and `token`.
pub fn login_url(addr: Option<SocketAddr>, token: &str) -> String {
    let host = match addr {
        Some(a) if a.ip().is_unspecified() => {
            let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let name = name.trim();
            format!(
                "{}:{}",
                if name.is_empty() { "localhost" } else { name },
                a.port()
            )
        }
        Some(a) => a.to_string(),
        None => "localhost".into(),
    };
    format!("http://{host}/login?token={token}")
}

/// Counts of events since start (for `/metrics`).
#[derive(Debug, Default)]
struct Counters {
    captures_saved: AtomicU64,
    captures_refused: AtomicU64,
    fine_tunes: [AtomicU64; 4],
    head_swaps: AtomicU64,
    camera_lost: AtomicU64,
    camera_back: AtomicU64,
    actions_refused: AtomicU64,
    events_lost: AtomicU64,
}

fn count_events(sub: &Subscription<Event>, c: &Counters) {
    let add = |a: &AtomicU64, n: u64| {
        a.fetch_add(n, Ordering::Relaxed);
    };
    loop {
        match sub.next_timeout(Duration::from_secs(1)) {
            Some(Note::Lost(n)) => add(&c.events_lost, n),
            Some(Note::Event(e)) => match e {
                Event::CaptureSaved { .. } => add(&c.captures_saved, 1),
                Event::CaptureRefused { .. } => add(&c.captures_refused, 1),
                Event::HeadSwapped { .. } => add(&c.head_swaps, 1),
                Event::CameraLost { .. } => add(&c.camera_lost, 1),
                Event::CameraBack { .. } => add(&c.camera_back, 1),
                Event::ActionRefused { .. } => add(&c.actions_refused, 1),
                Event::FineTuneFinished { result, .. } => {
                    let k = match result {
                        FineTuneResult::Swapped { .. } => 0,
                        FineTuneResult::KeptOut { .. } => 1,
                        FineTuneResult::Stale => 2,
                        FineTuneResult::Failed { .. } => 3,
                    };
                    add(&c.fine_tunes[k], 1);
                }
                _ => {}
            },
            None if sub.is_finished() => return,
            None => {}
        }
    }
}

struct Shared {
    hub: Arc<Hub>,
    auth: Arc<Auth>,
    limits: Limits,
    info: Info,
    started: Instant,
    connections: AtomicUsize,
    streams: AtomicUsize,
    /// The newest frame's JPEG, by frame version: viewers of one frame share one encoding.
    jpeg: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    counters: Counters,
    dreams: Arc<dream::Dreams>,
    /// Held by the one import running.
    importing: Mutex<()>,
    /// The newest doctor report and when it was made (held while one is made).
    doctor: Mutex<Option<(Instant, Value)>>,
}

/// Decrements a counter when dropped (a connection or a stream ended, however it ended).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Take one of `max` slots of `counter`, or `None` when all are taken.
fn take_slot(counter: &AtomicUsize, max: usize) -> Option<Slot<'_>> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(counter))
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else {
            // Out of file descriptors or the like: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if shared.connections.load(Ordering::Acquire) >= shared.limits.max_connections {
            // Refused from this thread with a short write timeout: a client that does not
            // read cannot hold the acceptor for long.
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = http::write_response(
                &mut stream,
                &Response::error(503, "too many connections; try again"),
            );
            continue;
        }
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("web-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _slot = Slot(&s.connections);
                serve(stream, &s);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Answer a request that could not be read (if the client is still there to hear it).
fn refuse(stream: &mut TcpStream, refusal: http::Refuse) {
    if let Some(status) = refusal.status() {
        let msg = match refusal {
            http::Refuse::Bad(why) => why,
            _ => http::reason(status),
        };
        let _ = http::write_response(stream, &Response::error(status, msg));
    }
}

fn serve(mut stream: TcpStream, s: &Shared) {
    let _ = stream.set_write_timeout(Some(s.limits.io_timeout));
    let pending = match http::read_head(&mut stream, &s.limits) {
        Ok(p) => p,
        Err(refusal) => return refuse(&mut stream, refusal),
    };
    let now = Instant::now();
    let head = &pending.req;
    if head.path == "/login" {
        let _ = http::write_response(&mut stream, &login(s, head, now));
        return;
    }
    if !s.auth.allowed(head, now) {
        let r = if head.method == "GET" && head.path == "/" {
            Response::new(401, "text/html; charset=utf-8", LOGIN_NEEDED)
        } else {
            Response::error(
                401,
                "log in first: open the login URL printed at start-up or by `teachcam doctor`",
            )
        };
        let _ = http::write_response(&mut stream, &r);
        return;
    }
    // The one route whose body may be large: copied to a file, never held in memory.
    if head.method == "POST" && head.path == "/api/import" {
        let r = import::upload(&mut stream, s, &pending);
        let _ = http::write_response(&mut stream, &r);
        return;
    }
    let req = match http::read_body(&mut stream, pending, &s.limits) {
        Ok(r) => r,
        Err(refusal) => return refuse(&mut stream, refusal),
    };
    if req.method == "GET" && req.path == "/stream.mjpg" {
        stream_mjpeg(&mut stream, s);
        return;
    }
    if req.method == "GET" && req.path == "/api/export.tar" {
        export_tar(&mut stream, s);
        return;
    }
    let r = route(s, &req);
    let _ = http::write_response(&mut stream, &r);
}

const LOGIN_NEEDED: &str = "<!doctype html><meta charset=utf-8><title>teachcam</title>\
<h1>teachcam</h1><p>Log in with the URL that <code>teachcam run</code> printed at start-up \
(or that <code>teachcam doctor</code> prints).</p>";

fn login(s: &Shared, req: &Request, now: Instant) -> Response {
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
fn route(s: &Shared, req: &Request) -> Response {
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
fn heatmap(s: &Shared, req: &Request) -> Response {
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
fn dream_start(s: &Shared, body: &Value) -> Response {
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
fn dream_look(s: &Shared, req: &Request) -> Response {
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
fn sample_thumb_id(path: &str) -> Option<Option<u64>> {
    let id = path.strip_prefix("/api/samples/")?.strip_suffix("/thumb")?;
    let ok = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    Some(ok.then(|| id.parse().ok()).flatten())
}

fn str_field<'a>(body: &'a Value, key: &str) -> Result<&'a str, String> {
    body.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("needs \"{key}\": a string"))
}

fn ids_field(body: &Value) -> Result<Vec<u64>, String> {
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
fn post(s: &Shared, path: &str, body: &Value) -> Result<Response, String> {
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

/// Send `action` and answer with the outcome the loop publishes for it.
fn act(s: &Shared, action: Action) -> Response {
    // Subscribed before sending, so the outcome cannot pass unseen.
    let sub = s.hub.subscribe(256);
    let id = s.hub.send(action, Source::Http);
    answer(&sub, id, json!({}))
}

/// Wait on `sub` (subscribed before request `id` was sent) for the request's outcome; the
/// response, with the fields of `extra` added.
fn answer(sub: &Subscription<Event>, id: u64, extra: Value) -> Response {
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
fn outcome(e: &Event, id: u64, extra: &Value) -> Option<Response> {
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
        Event::Undone { sample, origin } => (origin, 200, json!({ "undone": sample })),
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

/// The JPEG of frame `version` (encoded once per frame, on the first viewer's thread).
fn jpeg_of(s: &Shared, version: u64, frame: &Frame) -> Option<(u64, Arc<Vec<u8>>)> {
    let mut cache = s.jpeg.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((v, j)) = cache.as_ref()
        && *v == version
    {
        return Some((version, Arc::clone(j)));
    }
    let img =
        image::RgbImage::from_raw(frame.width as u32, frame.height as u32, frame.rgb.clone())?;
    let jpeg = Arc::new(crate::frame::encode_jpeg(&img).ok()?);
    *cache = Some((version, Arc::clone(&jpeg)));
    Some((version, jpeg))
}

/// `multipart/x-mixed-replace` JPEGs of each new frame, at most [`STREAM_MAX_FPS`], until the
/// viewer goes away (or stops reading for longer than the write timeout).
fn stream_mjpeg(stream: &mut TcpStream, s: &Shared) {
    use std::io::Write;
    let Some(_slot) = take_slot(&s.streams, s.limits.max_streams) else {
        let _ = http::write_response(
            stream,
            &Response::error(
                503,
                "too many live views open; close one or use /api/snapshot.jpg",
            ),
        );
        return;
    };
    let head = Response::new(200, "multipart/x-mixed-replace; boundary=frame", "");
    if http::write_head(stream, &head, None).is_err() {
        return;
    }
    let mut seen = 0;
    let period = Duration::from_millis(1000 / STREAM_MAX_FPS);
    loop {
        let started = Instant::now();
        let Some((version, frame)) = s.hub.wait_frame(seen, Duration::from_secs(2)) else {
            continue;
        };
        seen = version;
        let Some((_, jpeg)) = jpeg_of(s, version, &frame) else {
            continue;
        };
        let part = format!(
            "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        if stream
            .write_all(part.as_bytes())
            .and_then(|()| stream.write_all(&jpeg))
            .and_then(|()| stream.write_all(b"\r\n"))
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
        if let Some(rest) = period.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// The dataset tarball (`teachcam dataset export`'s format) of the samples listed now,
/// streamed as it is read; it holds one of the stream slots while it runs.
fn export_tar(stream: &mut TcpStream, s: &Shared) {
    let Some(_slot) = take_slot(&s.streams, s.limits.max_streams) else {
        let _ = http::write_response(
            stream,
            &Response::error(503, "too many downloads and live views open; try again"),
        );
        return;
    };
    let ids: Vec<u64> = s
        .hub
        .samples()
        .map(|l| l.samples.iter().map(|x| x.id).collect())
        .unwrap_or_default();
    let head = Response::new(200, "application/x-tar", "").with(
        "Content-Disposition",
        "attachment; filename=\"teachcam-dataset.tar\"".into(),
    );
    if http::write_head(stream, &head, None).is_err() {
        return;
    }
    let w = std::io::BufWriter::with_capacity(64 * 1024, stream);
    match crate::dataset::stream_tar(&s.info.state_dir, &ids, w) {
        Ok((n, 0)) => log::info!("web console: dataset download of {n} samples"),
        Ok((n, left)) => log::warn!(
            "web console: dataset download of {n} samples; {left} left out (named above)"
        ),
        Err(e) => log::warn!("web console: dataset download cut off: {e}"),
    }
}

/// Resident memory of this process, bytes (`VmRSS` of `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes free for unprivileged users on the file system holding `dir`.
pub fn disk_free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` points to writable
    // memory of the right type; it is read only when the call reports success (0).
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The fields are 32-bit on armv7: the casts are not no-ops everywhere.
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn health(s: &Shared) -> Value {
    let st = s.hub.status();
    json!({
        "version": s.info.version,
        "uptime_s": s.started.elapsed().as_secs(),
        "loop_uptime_s": st.as_ref().map(|st| st.uptime_s),
        "camera": st.as_ref().map(|st| json!(st.camera)),
        "camera_source": s.info.camera,
        "model": s.info.model,
        "state_dir": s.info.state_dir,
        "rss_bytes": rss_bytes(),
        "disk_free_bytes": disk_free_bytes(&s.info.state_dir),
        "errors": st.as_ref().map(|st| json!(st.errors)),
        "last_error": st.as_ref().and_then(|st| st.last_error.clone()),
        "http": {
            "connections": s.connections.load(Ordering::Relaxed),
            "streams": s.streams.load(Ordering::Relaxed),
            "max_connections": s.limits.max_connections,
            "max_streams": s.limits.max_streams,
        },
    })
}

/// How long a doctor report is reused (its model check loads the model again).
pub const DOCTOR_FRESH: Duration = Duration::from_secs(30);

/// `GET /api/doctor`: what `teachcam doctor` says on this device with this run's
/// configuration (made at a lower priority, at most once per [`DOCTOR_FRESH`]; a request
/// while one is made waits for it). The login token in its console check is not repeated.
fn doctor(s: &Shared) -> Response {
    let Some(config) = s.info.config.clone() else {
        return Response::error(503, "this console was started without its configuration");
    };
    let mut cached = s.doctor.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, report)) = cached.as_ref()
        && at.elapsed() < DOCTOR_FRESH
    {
        return Response::json(200, report);
    }
    lower_priority();
    let report = crate::doctor::diagnose(Ok(config));
    let mut v = json!(&report);
    let token = s.auth.token();
    if let Some(checks) = v.get_mut("checks").and_then(Value::as_array_mut) {
        for c in checks {
            if let Some(m) = c.get("message").and_then(Value::as_str)
                && m.contains(token)
            {
                c["message"] = json!(m.replace(token, "(the token: see teachcam doctor)"));
            }
        }
    }
    v["failures"] = json!(report.failures());
    *cached = Some((Instant::now(), v.clone()));
    Response::json(200, &v)
}

/// A Prometheus label value with `\`, `"` and line breaks escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` text (Prometheus exposition format 0.0.4).
fn metrics(s: &Shared) -> String {
    let mut m = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(
            m,
            "# HELP teachcam_{name} {help}\n# TYPE teachcam_{name} {kind}"
        );
        for (labels, v) in samples {
            let _ = writeln!(m, "teachcam_{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let c = &s.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    if let Some(st) = s.hub.status() {
        metric(
            "frames_total",
            "counter",
            "Frames through the backbone.",
            &one(st.frames as f64),
        );
        metric(
            "fps",
            "gauge",
            "Frames per second over the last second.",
            &one(st.fps),
        );
        metric(
            "samples",
            "gauge",
            "Samples stored.",
            &one(st.samples as f64),
        );
        let per: Vec<_> = st
            .samples_per_class
            .iter()
            .map(|(k, v)| (format!("{{class=\"{}\"}}", label(k)), *v as f64))
            .collect();
        metric("class_samples", "gauge", "Samples stored per class.", &per);
        metric(
            "head_version",
            "gauge",
            "Heads made live since start.",
            &one(st.head_version as f64),
        );
        let acc = st.head.as_ref().and_then(|h| h.holdout_accuracy);
        if let Some(a) = acc {
            metric(
                "holdout_accuracy",
                "gauge",
                "The live head's held-out accuracy.",
                &one(a as f64),
            );
        }
        let e = &st.errors;
        let kinds = [
            ("camera", e.camera),
            ("frame", e.frame),
            ("backbone", e.backbone),
            ("store", e.store),
            ("training", e.training),
        ];
        let errs: Vec<_> = kinds
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v as f64))
            .collect();
        metric(
            "errors_total",
            "counter",
            "Errors inside the loop, by kind.",
            &errs,
        );
        let up = matches!(st.camera, crate::session::CameraState::Live);
        metric(
            "camera_up",
            "gauge",
            "1 while frames arrive.",
            &one(f64::from(u8::from(up))),
        );
        metric(
            "loop_uptime_seconds",
            "gauge",
            "Seconds since the loop started.",
            &one(st.uptime_s as f64),
        );
    }
    let captures = vec![
        ("{result=\"accepted\"}".to_string(), get(&c.captures_saved)),
        ("{result=\"refused\"}".to_string(), get(&c.captures_refused)),
    ];
    metric(
        "captures_total",
        "counter",
        "Captures since the console started.",
        &captures,
    );
    let tunes: Vec<_> = ["swapped", "kept_out", "stale", "failed"]
        .iter()
        .zip(&c.fine_tunes)
        .map(|(k, v)| (format!("{{result=\"{k}\"}}"), get(v)))
        .collect();
    metric(
        "fine_tunes_total",
        "counter",
        "Fine-tunes finished, by result.",
        &tunes,
    );
    metric(
        "head_swaps_total",
        "counter",
        "Heads made live (imprints and fine-tunes).",
        &one(get(&c.head_swaps)),
    );
    metric(
        "camera_lost_total",
        "counter",
        "Times the camera was lost.",
        &one(get(&c.camera_lost)),
    );
    metric(
        "camera_restarts_total",
        "counter",
        "Times frames came back after a loss.",
        &one(get(&c.camera_back)),
    );
    metric(
        "actions_refused_total",
        "counter",
        "Actions the loop refused.",
        &one(get(&c.actions_refused)),
    );
    metric(
        "events_lost_total",
        "counter",
        "Events the metrics reader fell behind on.",
        &one(get(&c.events_lost)),
    );
    // Per-stage latency histograms, from every frame the loop embedded.
    let snap = s.hub.stage_histograms();
    let mut hist = Vec::new();
    for (stage, (counts, sum_us)) in ["decode", "preprocess", "backbone", "head"]
        .iter()
        .zip(&snap)
    {
        let mut cumulative = 0;
        for (bound, n) in STAGE_BUCKETS_US.iter().zip(counts) {
            cumulative += n;
            let le = if *bound == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", *bound as f64 / 1e6)
            };
            hist.push((
                format!("_bucket{{stage=\"{stage}\",le=\"{le}\"}}"),
                cumulative as f64,
            ));
        }
        hist.push((format!("_sum{{stage=\"{stage}\"}}"), *sum_us as f64 / 1e6));
        hist.push((format!("_count{{stage=\"{stage}\"}}"), cumulative as f64));
    }
    metric(
        "stage_seconds",
        "histogram",
        "Time per frame in each stage of the loop.",
        &hist,
    );
    if let Some(rss) = rss_bytes() {
        metric(
            "resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            &one(rss as f64),
        );
    }
    let conns = s.connections.load(Ordering::Relaxed) as f64;
    metric(
        "http_connections",
        "gauge",
        "Web console connections open.",
        &one(conns),
    );
    let streams = s.streams.load(Ordering::Relaxed) as f64;
    metric(
        "http_streams",
        "gauge",
        "Live-view streams open.",
        &one(streams),
    );
    m
}

/// Give the calling thread a lower priority than the loop's (a dream or an import is
/// seconds of work; the camera must not feel it). Best effort: a refusal leaves it as it was.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: both calls take and return plain integers and touch no memory of ours;
        // `gettid` cannot fail, and a failing `setpriority` only leaves the priority as it was.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
        };
        if rc != 0 {
            log::debug!("web console: a worker thread keeps its priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numeric_sample_ids_reach_the_store() {
        assert_eq!(sample_thumb_id("/api/samples/12/thumb"), Some(Some(12)));
        for bad in [
            "/api/samples/../../etc/passwd/thumb",
            "/api/samples/%2e%2e/thumb",
            "/api/samples//thumb",
            "/api/samples/-1/thumb",
            "/api/samples/99999999999999999999999/thumb",
        ] {
            assert_eq!(sample_thumb_id(bad), Some(None), "{bad}");
        }
        assert_eq!(sample_thumb_id("/api/samples"), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn slots_are_capped_and_returned() {
        let n = AtomicUsize::new(0);
        let a = take_slot(&n, 2).unwrap();
        let _b = take_slot(&n, 2).unwrap();
        assert!(take_slot(&n, 2).is_none());
        drop(a);
        assert!(take_slot(&n, 2).is_some());
    }

    #[test]
    fn the_login_url_names_the_bound_address() {
        let u = login_url(Some("127.0.0.1:8088".parse().unwrap()), "ab");
        assert_eq!(u, "http://127.0.0.1:8088/login?token=ab");
    }
}
