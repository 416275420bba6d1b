//! The HTTP/1.1 subset the console speaks, on plain `std::net` sockets: read one request with
//! hard limits, write one response, close.
//!
//! Owns: request parsing (request line, headers, a `Content-Length` body), the limits that
//! make a hostile or slow client cheap (header bytes, header count, body bytes, a deadline for
//! the whole header), and response writing with the console's fixed security headers.
//! Must not: touch the file system, allocate more than the limits allow before checking them,
//! or keep a connection open after its response (every response says `Connection: close`,
//! so a connection costs one thread for one request at most).
//! Invariant: [`read_request`] returns either a request whose header fitted in
//! [`Limits::max_header`] bytes and whose body is at most [`Limits::max_body`] bytes, or the
//! status to refuse it with.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Bounds on what one client may send and how slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line + headers, bytes (larger: 431).
    pub max_header: usize,
    /// Header lines (more: 431).
    pub max_headers: usize,
    /// Body bytes (larger: 413).
    pub max_body: usize,
    /// The whole header must arrive within this (else the connection is closed with 408).
    pub header_timeout: Duration,
    /// Any single read or write may wait this long.
    pub io_timeout: Duration,
    /// Connections served at once (more: 503 and closed at once).
    pub max_connections: usize,
    /// Live-view streams at once (more: 503).
    pub max_streams: usize,
    /// Largest dataset upload, bytes (larger: 413 before a byte of it is read).
    pub max_upload: u64,
    /// How long a browser stays logged in.
    pub session_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: 8 * 1024,
            max_headers: 64,
            max_body: 64 * 1024,
            header_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            max_connections: 32,
            max_streams: 3,
            max_upload: 256 << 20,
            session_ttl: SESSION_TTL,
        }
    }
}

/// How long a login lasts by default (`[http] session_s` overrides it).
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query (not decoded: routes match it literally).
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: String,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (at most [`Limits::max_body`] bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query parameter `key`, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then_some(v)
            })
    }
}

/// `%XX` and `+` decoding of a query value; invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request was not read; each maps to a status (or to closing without one).
#[derive(Debug, PartialEq, Eq)]
pub enum Refuse {
    /// The header did not arrive in time (408).
    Timeout,
    /// Header too large or too many lines (431).
    HeaderTooLarge,
    /// Body larger than allowed (413).
    BodyTooLarge,
    /// Not HTTP/1.x as we speak it (400).
    Bad(&'static str),
    /// `Transfer-Encoding` (chunked uploads) is not supported (501).
    Unsupported,
    /// The client went away (nothing to answer).
    Gone,
}

impl Refuse {
    /// The status line to answer with, if the client is still there.
    pub fn status(&self) -> Option<u16> {
        match self {
            Refuse::Timeout => Some(408),
            Refuse::HeaderTooLarge => Some(431),
            Refuse::BodyTooLarge => Some(413),
            Refuse::Bad(_) => Some(400),
            Refuse::Unsupported => Some(501),
            Refuse::Gone => None,
        }
    }
}

/// Read from `stream` until `deadline`, at most what `buf` has room for.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, Refuse> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Refuse::Timeout);
    }
    stream
        .set_read_timeout(Some(left))
        .map_err(|_| Refuse::Gone)?;
    match stream.read(buf) {
        Ok(0) => Err(Refuse::Gone),
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(Refuse::Timeout)
        }
        Err(_) => Err(Refuse::Gone),
    }
}

/// A request whose header was read, its body not yet.
#[derive(Debug)]
pub struct Pending {
    /// The request (its `body` empty).
    pub req: Request,
    /// Its `Content-Length`.
    pub content_length: usize,
    /// Body bytes that came with the header.
    already: Vec<u8>,
}

/// Read one request from `stream` within `limits`.
pub fn read_request(stream: &mut TcpStream, limits: &Limits) -> Result<Request, Refuse> {
    let p = read_head(stream, limits)?;
    read_body(stream, p, limits)
}

/// Read a request's header (within [`Limits::max_header`] and its deadline).
pub fn read_head(stream: &mut TcpStream, limits: &Limits) -> Result<Pending, Refuse> {
    let deadline = Instant::now() + limits.header_timeout;
    // One buffer of the header limit, allocated up front: nothing grows with the input.
    let mut buf = vec![0u8; limits.max_header];
    let mut len = 0;
    let end = loop {
        if let Some(p) = find(&buf[..len], b"\r\n\r\n") {
            break p;
        }
        if len == buf.len() {
            return Err(Refuse::HeaderTooLarge);
        }
        len += read_some(stream, &mut buf[len..], deadline)?;
    };
    let (req, content_length) = parse_head(&buf[..end], limits)?;
    let already = buf[end + 4..len].to_vec();
    if already.len() > content_length {
        return Err(Refuse::Bad("more bytes than Content-Length"));
    }
    Ok(Pending {
        req,
        content_length,
        already,
    })
}

/// Read the body of `p` into its request: at most [`Limits::max_body`] bytes, within the
/// header's deadline again (the I/O timeout if longer).
pub fn read_body(stream: &mut TcpStream, p: Pending, limits: &Limits) -> Result<Request, Refuse> {
    if p.content_length > limits.max_body {
        return Err(Refuse::BodyTooLarge);
    }
    let mut body = Vec::with_capacity(p.content_length);
    body.extend_from_slice(&p.already);
    let deadline = Instant::now() + limits.header_timeout.max(limits.io_timeout);
    let mut chunk = [0u8; 8192];
    while body.len() < p.content_length {
        let want = (p.content_length - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..want], deadline)?;
        body.extend_from_slice(&chunk[..n]);
    }
    let mut req = p.req;
    req.body = body;
    Ok(req)
}

/// The slowest upload accepted, bytes per second on average (a stalled one also ends
/// after [`Limits::io_timeout`] without a byte).
pub const MIN_UPLOAD_RATE: u64 = 32 * 1024;

/// Why a body could not be copied.
#[derive(Debug)]
pub enum CopyError {
    /// The client: too slow, gone.
    Client(Refuse),
    /// The destination refused (a full disk).
    Write(io::Error),
}

/// Copy the body of `p` (whatever its length: the caller bounded it) to `w`, in 64 kB
/// pieces; each read waits at most [`Limits::io_timeout`], the whole body at most
/// `io_timeout` plus its length at [`MIN_UPLOAD_RATE`].
pub fn copy_body(
    stream: &mut TcpStream,
    p: &Pending,
    limits: &Limits,
    w: &mut impl Write,
) -> Result<u64, CopyError> {
    let total = p.content_length as u64;
    let end = Instant::now() + limits.io_timeout + Duration::from_secs(total / MIN_UPLOAD_RATE);
    w.write_all(&p.already).map_err(CopyError::Write)?;
    let mut done = p.already.len() as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while done < total {
        let want = (total - done).min(chunk.len() as u64) as usize;
        let deadline = end.min(Instant::now() + limits.io_timeout);
        let n = read_some(stream, &mut chunk[..want], deadline).map_err(CopyError::Client)?;
        w.write_all(&chunk[..n]).map_err(CopyError::Write)?;
        done += n as u64;
    }
    Ok(done)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse the request line and headers (`head` excludes the blank line); the request and its
/// `Content-Length`.
pub fn parse_head(head: &[u8], limits: &Limits) -> Result<(Request, usize), Refuse> {
    let text = std::str::from_utf8(head).map_err(|_| Refuse::Bad("header is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refuse::Bad("bad request line"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(Refuse::Bad("only HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Refuse::Bad("bad method"));
    }
    if !target.starts_with('/') {
        return Err(Refuse::Bad("target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= limits.max_headers {
            return Err(Refuse::HeaderTooLarge);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(Refuse::Bad("header line without ':'"))?;
        if name.is_empty() || name.contains(' ') {
            return Err(Refuse::Bad("bad header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(Refuse::Unsupported);
    }
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let content_length = match lengths.as_slice() {
        [] => 0,
        [v] => v
            .parse::<usize>()
            .map_err(|_| Refuse::Bad("bad Content-Length"))?,
        _ => return Err(Refuse::Bad("several Content-Length headers")),
    };
    Ok((req, content_length))
}

/// The reason phrase of the statuses the console uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// More headers (`Set-Cookie`, `Location`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body of type `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
    }

    /// With one more header.
    pub fn with(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Headers every response carries: no caching of private data, no sniffing, no framing, and
/// scripts only from the console itself.
pub const SECURITY_HEADERS: &str = "Cache-Control: no-store\r\n\
X-Content-Type-Options: nosniff\r\n\
X-Frame-Options: DENY\r\n\
Referrer-Policy: no-referrer\r\n\
Content-Security-Policy: default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'\r\n";

/// Write the status line and headers of `r` (the body is written by the caller or by
/// [`write_response`]).
pub fn write_head(w: &mut impl Write, r: &Response, length: Option<usize>) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nConnection: close\r\n{SECURITY_HEADERS}",
        r.status,
        reason(r.status),
        r.content_type
    );
    if let Some(n) = length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    for (n, v) in &r.headers {
        // Values are ours, never a request's bytes; a stray line break would still end here.
        let v: String = v.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

/// Write `r` completely.
pub fn write_response(w: &mut impl Write, r: &Response) -> io::Result<()> {
    write_head(w, r, Some(r.body.len()))?;
    w.write_all(&r.body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Request, usize), Refuse> {
        parse_head(text.as_bytes(), &Limits::default())
    }

    #[test]
    fn a_request_line_headers_and_query_are_parsed() {
        let (r, n) = parse(
            "POST /api/capture?x=1&token=a%2Fb+c HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nCookie: a=1; teachcam_session=abc",
        )
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), n),
            ("POST", "/api/capture", 12)
        );
        assert_eq!(r.query_param("token").as_deref(), Some("a/b c"));
        assert_eq!(r.query_param("y"), None);
        assert_eq!(r.header("host"), Some("h"));
        assert_eq!(r.cookie("teachcam_session"), Some("abc"));
        assert_eq!(r.cookie("b"), None);
    }

    #[test]
    fn malformed_or_unsupported_requests_are_refused() {
        for bad in [
            "GET / HTTP/2",
            "GET  / HTTP/1.1",
            "get / HTTP/1.1",
            "GET http://x/ HTTP/1.1",
            "GET / HTTP/1.1\r\nno colon",
            "GET / HTTP/1.1\r\nContent-Length: -1",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
        ] {
            assert!(matches!(parse(bad), Err(Refuse::Bad(_))), "{bad:?}");
        }
        assert_eq!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked").unwrap_err(),
            Refuse::Unsupported
        );
        let many: String = (0..100).map(|i| format!("\r\nX-{i}: 1")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1{many}")).unwrap_err(),
            Refuse::HeaderTooLarge
        );
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%41%zz%4"), "aA%zz%4");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn response_headers_cannot_be_split() {
        let mut out = Vec::new();
        let r = Response::new(303, "text/plain", "").with("Location", "/\r\nX-Evil: 1".into());
        write_response(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Location: /X-Evil: 1\r\n"), "{text}");
        assert!(text.starts_with("HTTP/1.1 303 See Other\r\n"));
        assert!(text.contains("Connection: close\r\n"));
    }
}
