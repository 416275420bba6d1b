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
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Console`]: the listener, connection threads and slots, the shared state |
//! | `http.rs` | HTTP/1.1 reading and writing with hard limits |
//! | `auth.rs` | the token, login sessions, the same-origin rule |
//! | `api.rs` | the routes: page, login, `/api/…` |
//! | `reply.rs` | an action sent through the hub, answered by its event |
//! | `stream.rs` | the MJPEG live view and the dataset download |
//! | `import.rs` | dataset uploads: copied, verified, staged, handed to the loop |
//! | `dream.rs` | dreams per class on one low-priority thread |
//! | `metrics.rs` | counters, `/metrics`, health, doctor's checks |
//!
//! Must not: make the loop wait (it only reads the hub's newest-only slots and its own
//! bounded event queue), reach the file system from a request (samples are addressed by their
//! numeric ids through [`Hub::thumbnail`]; the page is compiled in), or serve anything but the
//! login route without authentication (`auth.rs`).
//! Invariants: at most [`Limits::max_connections`] connections and [`Limits::max_streams`]
//! live-view streams at once; every response closes its connection.

mod api;
pub mod auth;
pub mod dream;
pub mod http;
mod import;
mod metrics;
mod reply;
mod stream;
#[cfg(test)]
mod tests;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::observe::Hub;
use api::{LOGIN_NEEDED, login, route};
use auth::Auth;
pub use http::Limits;
use http::Response;
use metrics::{Counters, count_events};
use stream::{export_tar, stream_mjpeg};

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
