//! Who may use the console: the access token, login sessions, and the cross-origin rule.
//!
//! - The token is 32 random bytes (hex) in `STATE/http-token`, created at the first start with
//!   mode 0600 and reused after; a token file readable by others is narrowed to 0600.
//! - `GET /login?token=…` with the right token starts a session: a random id in an HttpOnly,
//!   SameSite=Strict cookie, valid for [`super::http::SESSION_TTL`] (or `[http] session_s`); at most [`MAX_SESSIONS`] are kept
//!   (the oldest goes). Sessions live in memory: a restart logs everybody out.
//! - Scripts (curl) may instead send `Authorization: Bearer TOKEN`.
//! - A state-changing request from another origin is refused (`Sec-Fetch-Site` or `Origin`).
//!
//! Must not: compare secrets in time that depends on where they differ; log a token except in
//! the start-up login URL the operator asked for. Invariant: the session table holds at most
//! [`MAX_SESSIONS`] entries.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::WebError;
use super::http::Request;

/// The session cookie's name.
pub const COOKIE: &str = "teachcam_session";
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 64;

/// Equal in time independent of where `a` and `b` differ (only their lengths leak).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// `n` random bytes from the kernel, as lower-case hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token in `dir/name`, created (0600) if missing.
pub fn load_or_create_token(dir: &Path, name: &str) -> Result<String, WebError> {
    let path = dir.join(name);
    let err = |source| WebError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(WebError::BadToken(path));
            }
            let meta = std::fs::metadata(&path).map_err(err)?;
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!("{} was readable by others; now 0600", path.display());
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = random_hex(32).map_err(err)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(err)?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(err)?;
            Ok(token)
        }
        Err(e) => Err(err(e)),
    }
}

/// The token and the live sessions.
pub struct Auth {
    token: String,
    sessions: Mutex<HashMap<String, Instant>>,
    ttl: Duration,
}

impl Auth {
    /// Checks against `token`; a login lasts `ttl`.
    pub fn new(token: String, ttl: Duration) -> Self {
        Auth {
            token,
            sessions: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The token (to keep it out of what the console shows).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How long a login lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether `given` is the token.
    pub fn token_ok(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }

    /// A new session (its cookie value), valid until `now` plus the login's lifetime.
    pub fn start_session(&self, now: Instant) -> std::io::Result<String> {
        let id = random_hex(32)?;
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, until| *until > now);
        while s.len() >= MAX_SESSIONS {
            let oldest = s.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => s.remove(&k),
                None => break,
            };
        }
        s.insert(id.clone(), now + self.ttl);
        Ok(id)
    }

    /// Whether `req` is authenticated at `now` (session cookie or bearer token).
    pub fn allowed(&self, req: &Request, now: Instant) -> bool {
        if let Some(t) = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
        {
            return self.token_ok(t.trim());
        }
        let Some(id) = req.cookie(COOKIE) else {
            return false;
        };
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Every stored id is compared (constant time each), so timing says nothing about
        // which ids exist.
        let mut ok = false;
        for (k, until) in s.iter() {
            ok |= constant_time_eq(k.as_bytes(), id.as_bytes()) && *until > now;
        }
        ok
    }
}

/// Whether a state-changing request comes from the console's own origin (or from a
/// non-browser client, which sends neither header and must then carry the bearer token or a
/// SameSite=Strict cookie).
pub fn same_origin(req: &Request) -> bool {
    if let Some(site) = req.header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match (req.header("origin"), req.header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::http::SESSION_TTL;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn tokens_and_sessions_authenticate_and_expire() {
        let a = Auth::new("ab".repeat(32), SESSION_TTL);
        let t0 = Instant::now();
        assert!(!a.allowed(&req(&[]), t0));
        let bearer = format!("Bearer {}", "ab".repeat(32));
        assert!(a.allowed(&req(&[("authorization", &bearer)]), t0));
        assert!(!a.allowed(&req(&[("authorization", "Bearer abab")]), t0));
        let id = a.start_session(t0).unwrap();
        let cookie = format!("{COOKIE}={id}");
        assert!(a.allowed(&req(&[("cookie", &cookie)]), t0));
        assert!(!a.allowed(&req(&[("cookie", &cookie)]), t0 + SESSION_TTL));
        assert!(!a.allowed(&req(&[("cookie", "teachcam_session=00")]), t0));
    }

    #[test]
    fn the_session_table_is_bounded() {
        let a = Auth::new("ab".repeat(32), SESSION_TTL);
        let t0 = Instant::now();
        let first = a.start_session(t0).unwrap();
        for i in 1..=MAX_SESSIONS as u64 {
            a.start_session(t0 + Duration::from_millis(i)).unwrap();
        }
        assert_eq!(a.sessions.lock().unwrap().len(), MAX_SESSIONS);
        let cookie = format!("{COOKIE}={first}");
        assert!(
            !a.allowed(&req(&[("cookie", &cookie)]), t0),
            "oldest evicted"
        );
    }

    #[test]
    fn cross_origin_requests_are_told_apart() {
        assert!(same_origin(&req(&[])));
        assert!(same_origin(&req(&[
            ("host", "cam:8088"),
            ("origin", "http://cam:8088")
        ])));
        assert!(!same_origin(&req(&[
            ("host", "cam:8088"),
            ("origin", "http://evil")
        ])));
        assert!(!same_origin(&req(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&req(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(&req(&[("sec-fetch-site", "same-origin")])));
    }

    #[test]
    fn the_token_file_is_created_private_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let t = load_or_create_token(d.path(), "tok").unwrap();
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(d.path().join("tok"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(d.path(), "tok").unwrap(), t);
        std::fs::write(d.path().join("bad"), "short").unwrap();
        assert!(matches!(
            load_or_create_token(d.path(), "bad"),
            Err(WebError::BadToken(_))
        ));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(constant_time_eq(b"abc", b"abc"));
    }
}
