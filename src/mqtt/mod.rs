//! MQTT and Home Assistant: the appliance talks to a broker it does not own.
//!
//! Owns: the `[mqtt]` configuration and its checks ([`MqttSection`] → [`MqttConfig`]), the
//! device id kept in the state directory, the topic layout ([`Topics`]), every payload
//! (state, events, stats, Home Assistant discovery), command parsing, and the bounded
//! outbound queue ([`Outbox`]). These are pure and unit-tested here; [`link`] is the thread
//! that connects them to a broker through rumqttc and to the loop through the
//! [`Hub`](crate::daemon::observe::Hub).
//!
//! Must not: block the loop (everything runs on the observer's own threads; commands reach
//! the core as ordinary [`Action`]s with [`Source::Mqtt`](crate::session::Source::Mqtt)),
//! decide anything the core decides, or exit the process after start-up.
//! Invariants: every retained topic we publish has exactly one current payload (the newest
//! wins); the outbound queue holds at most one message per retained topic plus
//! [`EVENT_QUEUE`] events; unique ids depend only on the device id and the class name.

#[cfg(feature = "mqtt")]
pub mod link;

/// Why `[mqtt]` cannot be used by this build (built without the `mqtt` feature).
#[cfg(not(feature = "mqtt"))]
pub const NOT_IN_THIS_BUILD: &str = "this teachcam was built without MQTT (cargo feature `mqtt`): remove [mqtt] from the config or use a build with it";

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::session::{Action, ClassRef, Event, Status};

/// Events (non-retained) kept while the broker is away; older ones are dropped and counted.
pub const EVENT_QUEUE: usize = 64;
/// Largest command payload read, bytes (longer ones are refused unparsed).
pub const MAX_COMMAND: usize = 1024;
/// Longest topic prefix, bytes.
pub const MAX_PREFIX: usize = 200;

/// `[mqtt]` as written in the config file (every key optional; `url` is required when the
/// section is present).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: Option<String>,
    /// MQTT client id (default `teachcam-<device id>`).
    pub client_id: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// File holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the broker's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM client key (with `client_cert`).
    pub client_key: Option<PathBuf>,
    /// Topic prefix (default `teachcam/<device id>`).
    pub topic_prefix: Option<String>,
    /// QoS of what we publish and subscribe: 0, 1 or 2.
    pub qos: Option<u8>,
    /// Accept commands (capture, undo, add/rename a class).
    pub commands: Option<bool>,
    /// Publish Home Assistant discovery configs.
    pub discovery: Option<bool>,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: Option<String>,
    /// Publish a JPEG of the frame on class changes.
    pub snapshot: Option<bool>,
    /// At most one snapshot per this many seconds.
    pub snapshot_every_s: Option<f64>,
    /// Stats every this many seconds.
    pub stats_every_s: Option<f64>,
    /// Keep-alive, seconds.
    pub keep_alive_s: Option<u64>,
}

/// The checked `[mqtt]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// Client id (`None`: from the device id).
    pub client_id: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password file.
    pub password_file: Option<PathBuf>,
    /// CA file.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// Topic prefix (`None`: `teachcam/<device id>`).
    pub topic_prefix: Option<String>,
    /// QoS 0..=2.
    pub qos: u8,
    /// Commands accepted.
    pub commands: bool,
    /// Discovery published.
    pub discovery: bool,
    /// Discovery prefix.
    pub discovery_prefix: String,
    /// Snapshots published.
    pub snapshot: bool,
    /// Snapshot period, ms.
    pub snapshot_every_ms: u64,
    /// Stats period, ms.
    pub stats_every_ms: u64,
    /// Keep-alive, seconds.
    pub keep_alive_s: u64,
}

/// A topic (or prefix) we publish under: no wildcards, no empty levels at the ends, no NUL.
fn check_topic(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_PREFIX {
        return Err(format!("must be 1..={MAX_PREFIX} bytes"));
    }
    if t.contains(['+', '#', '\0']) || t.chars().any(char::is_control) {
        return Err("must not contain +, #, NUL or control characters".into());
    }
    if t.starts_with('/') || t.ends_with('/') || t.contains("//") {
        return Err("must not start or end with / or have empty levels".into());
    }
    Ok(())
}

/// Seconds in `lo..=hi` to milliseconds.
fn period_ms(v: f64, lo: f64, hi: f64) -> Result<u64, String> {
    if !v.is_finite() || !(lo..=hi).contains(&v) {
        return Err(format!("must be {lo}..={hi} seconds, got {v}"));
    }
    Ok((v * 1000.0).round() as u64)
}

impl MqttSection {
    /// Check every value; errors name the key (`mqtt.url`, ...) and what is allowed.
    pub fn check(self) -> Result<MqttConfig, (&'static str, String)> {
        let url = self
            .url
            .ok_or(("mqtt.url", "is required in [mqtt]".to_string()))?;
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err((
                "mqtt.url",
                format!("must start with mqtt:// or mqtts://, got {url:?}"),
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || !p.is_empty() => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or(("mqtt.url", format!("port must be 1..=65535, got {p:?}")))?;
                (h, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || host.len() > 253
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
        {
            return Err((
                "mqtt.url",
                format!("needs a host name or address, got {url:?}"),
            ));
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err((
                "mqtt.client_id",
                "must be 1..=128 printable ASCII characters without spaces".into(),
            ));
        }
        if let Some(u) = &self.username
            && (u.is_empty() || u.len() > 256 || u.chars().any(char::is_control))
        {
            return Err((
                "mqtt.username",
                "must be 1..=256 characters without control characters".into(),
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err((
                "mqtt.password_file",
                "needs mqtt.username (MQTT sends a password only with a user name)".into(),
            ));
        }
        if !tls {
            for (key, set) in [
                ("mqtt.ca_file", self.ca_file.is_some()),
                ("mqtt.client_cert", self.client_cert.is_some()),
                ("mqtt.client_key", self.client_key.is_some()),
            ] {
                if set {
                    return Err((key, "needs an mqtts:// url".into()));
                }
            }
        }
        let client_auth = match (self.client_cert, self.client_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(("mqtt.client_key", "is needed with client_cert".into()));
            }
            (None, Some(_)) => {
                return Err(("mqtt.client_cert", "is needed with client_key".into()));
            }
        };
        if let Some(p) = &self.topic_prefix {
            check_topic(p).map_err(|w| ("mqtt.topic_prefix", w))?;
        }
        let discovery_prefix = self
            .discovery_prefix
            .unwrap_or_else(|| "homeassistant".into());
        check_topic(&discovery_prefix).map_err(|w| ("mqtt.discovery_prefix", w))?;
        let qos = self.qos.unwrap_or(1);
        if qos > 2 {
            return Err(("mqtt.qos", format!("must be 0, 1 or 2, got {qos}")));
        }
        let keep_alive_s = self.keep_alive_s.unwrap_or(30);
        if !(5..=3600).contains(&keep_alive_s) {
            return Err((
                "mqtt.keep_alive_s",
                format!("must be 5..=3600, got {keep_alive_s}"),
            ));
        }
        Ok(MqttConfig {
            host: host.to_string(),
            port,
            tls,
            client_id: self.client_id,
            username: self.username,
            password_file: self.password_file,
            ca_file: self.ca_file,
            client_auth,
            topic_prefix: self.topic_prefix,
            qos,
            commands: self.commands.unwrap_or(false),
            discovery: self.discovery.unwrap_or(true),
            discovery_prefix,
            snapshot: self.snapshot.unwrap_or(false),
            snapshot_every_ms: period_ms(self.snapshot_every_s.unwrap_or(5.0), 0.5, 3600.0)
                .map_err(|w| ("mqtt.snapshot_every_s", w))?,
            stats_every_ms: period_ms(self.stats_every_s.unwrap_or(10.0), 1.0, 3600.0)
                .map_err(|w| ("mqtt.stats_every_s", w))?,
            keep_alive_s,
        })
    }
}

/// The device id kept in `STATE/device_id` (`tc-` and 12 hex digits), made at the first
/// start so topics and Home Assistant unique ids survive restarts. A file that does not hold
/// such an id is replaced (and the caller is told, as `Ok((id, true))`).
pub fn device_id(state_dir: &Path) -> std::io::Result<(String, bool)> {
    let path = state_dir.join("device_id");
    let valid = |s: &str| {
        s.len() == 15
            && s.starts_with("tc-")
            && s[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut replaced = false;
    match std::fs::read(&path) {
        Ok(b) if b.len() < 64 => {
            let s = String::from_utf8_lossy(&b).trim().to_string();
            if valid(&s) {
                return Ok((s, false));
            }
            replaced = true;
        }
        Ok(_) => replaced = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut seed = [0u8; 6];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    if read.is_err() {
        // No /dev/urandom: the clock, the process id and the directory still differ per device.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let h = crate::fsutil::sha256_hex(
            format!("{t}{}{}", std::process::id(), state_dir.display()).as_bytes(),
        );
        return finish_id(&path, format!("tc-{}", &h[..12]), replaced);
    }
    finish_id(&path, format!("tc-{}", crate::fsutil::hex(&seed)), replaced)
}

fn finish_id(path: &Path, id: String, replaced: bool) -> std::io::Result<(String, bool)> {
    crate::fsutil::atomic_write(path, format!("{id}\n").as_bytes())?;
    Ok((id, replaced))
}

/// Where everything goes, for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Our prefix.
    pub prefix: String,
    /// Home Assistant's discovery prefix.
    pub discovery: String,
    /// The device id (node id in discovery topics, base of unique ids).
    pub device: String,
}

impl Topics {
    /// Topics for `device` under `prefix` (default `teachcam/<device>`).
    pub fn new(device: &str, prefix: Option<&str>, discovery: &str) -> Self {
        Topics {
            prefix: prefix.map_or_else(|| format!("teachcam/{device}"), str::to_string),
            discovery: discovery.to_string(),
            device: device.to_string(),
        }
    }
    /// `online` / `offline`, retained; `offline` is the last will.
    pub fn available(&self) -> String {
        format!("{}/available", self.prefix)
    }
    /// The displayed class, retained, one message per change.
    pub fn state(&self) -> String {
        format!("{}/state", self.prefix)
    }
    /// Events (captures, head swaps, camera lost/back), not retained.
    pub fn event(&self) -> String {
        format!("{}/event", self.prefix)
    }
    /// Periodic stats, not retained.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.prefix)
    }
    /// JPEG of the frame at a class change, retained.
    pub fn snapshot(&self) -> String {
        format!("{}/snapshot", self.prefix)
    }
    /// A command topic (`capture`, `undo`, `add_class`, `rename_class`).
    pub fn command(&self, name: &str) -> String {
        format!("{}/cmd/{name}", self.prefix)
    }
    /// Home Assistant's birth/will topic.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery)
    }
    /// A discovery config topic.
    pub fn config(&self, component: &str, object: &str) -> String {
        format!(
            "{}/{component}/{}/{object}/config",
            self.discovery, self.device
        )
    }
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Retained on the broker.
    pub retain: bool,
}

impl Msg {
    fn json(topic: String, v: &Value, retain: bool) -> Msg {
        Msg {
            topic,
            payload: v.to_string().into_bytes(),
            retain,
        }
    }
}

/// The state payload: `{"class", "confidence", "timestamp" (Unix ms), "head_version"}`.
pub fn state_msg(t: &Topics, class: &str, confidence: f32, unix_ms: u64, head: u64) -> Msg {
    // Rounded so a payload does not carry f32 noise (0.8999999761581421).
    let conf = (f64::from(confidence) * 1000.0).round() / 1000.0;
    Msg::json(
        t.state(),
        &json!({"class": class, "confidence": conf, "timestamp": unix_ms, "head_version": head}),
        true,
    )
}

/// The event payload for the events MQTT users care about (`None` for the rest: status
/// snapshots go to stats, the class to state).
pub fn event_msg(t: &Topics, event: &Event, unix_ms: u64) -> Option<Msg> {
    let origin = |o: &crate::session::Origin| json!({"source": o.source, "request": o.request});
    let v = match event {
        Event::CaptureSaved { sample, origin: o } => json!({"type": "capture_saved",
            "class": sample.label, "sample": sample.id, "origin": origin(o)}),
        Event::CaptureRefused {
            class,
            reason,
            origin: o,
        } => json!({"type": "capture_refused", "class": class,
            "reason": reason.to_string(), "origin": origin(o)}),
        Event::Undone {
            sample,
            ids,
            origin: o,
        } => json!({"type": "undone",
            "class": sample.label, "sample": sample.id, "samples": ids, "origin": origin(o)}),
        Event::NothingToUndo { origin: o } => {
            json!({"type": "nothing_to_undo", "origin": origin(o)})
        }
        Event::ClassAdded { name, origin: o } => {
            json!({"type": "class_added", "class": name, "origin": origin(o)})
        }
        Event::ClassRenamed {
            from,
            to,
            origin: o,
        } => json!({"type": "class_renamed", "from": from, "to": to, "origin": origin(o)}),
        Event::ClassRemoved {
            name,
            samples,
            origin: o,
        } => json!({"type": "class_removed", "class": name, "samples": samples,
            "origin": origin(o)}),
        Event::ActionRefused {
            action,
            reason,
            origin: o,
        } => json!({"type": "action_refused", "action": action, "reason": reason,
            "origin": origin(o)}),
        Event::HeadSwapped {
            version,
            kind,
            samples,
            holdout_accuracy,
            ..
        } => json!({"type": "head_swapped", "head_version": version, "kind": kind,
            "samples": samples, "holdout_accuracy": holdout_accuracy}),
        Event::HeadCleared => json!({"type": "head_cleared"}),
        Event::CameraLost { silent_ms } => json!({"type": "camera_lost", "silent_ms": silent_ms}),
        Event::CameraBack { after_ms } => json!({"type": "camera_back", "after_ms": after_ms}),
        Event::Fault {
            kind,
            message,
            count,
        } => json!({"type": "fault", "kind": kind, "message": message, "count": count}),
        _ => return None,
    };
    let mut v = v;
    v["timestamp"] = json!(unix_ms);
    Some(Msg::json(t.event(), &v, false))
}

/// What the link reports about itself (in stats and in the status file).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStatus {
    /// Connected to the broker now.
    pub connected: bool,
    /// `host:port`.
    pub broker: String,
    /// Why the last attempt failed (cleared on connect).
    pub last_error: Option<String>,
    /// Successful connections since start.
    pub connects: u64,
    /// Failed connection attempts since start.
    pub failures: u64,
    /// Events dropped while the broker was away or the queue was full.
    pub dropped: u64,
    /// Commands ignored (commands off) or refused (unparseable).
    pub commands_ignored: u64,
}

/// The stats payload: fps, frames, samples per class, stage times, errors, camera, link.
pub fn stats_msg(t: &Topics, s: &Status, link: &LinkStatus, unix_ms: u64) -> Msg {
    Msg::json(
        t.stats(),
        &json!({
            "timestamp": unix_ms,
            "fps": (s.fps * 10.0).round() / 10.0,
            "frames": s.frames,
            "samples": s.samples,
            "samples_per_class": s.samples_per_class,
            "inbox": s.inbox,
            "head_version": s.head_version,
            "stages": s.stages,
            "errors": s.errors,
            "camera": s.camera,
            "uptime_s": s.uptime_s,
            "mqtt": {"dropped": link.dropped, "connects": link.connects,
                     "commands_ignored": link.commands_ignored},
        }),
        false,
    )
}

/// A class's button object id: stable for a name, safe in a topic whatever the name holds.
pub fn class_object(class: &str) -> String {
    format!(
        "teach_{}",
        &crate::fsutil::sha256_hex(class.as_bytes())[..12]
    )
}

/// What discovery announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Buttons (teach per class, undo) are announced only when commands are accepted.
    pub commands: bool,
    /// The image entity is announced only when snapshots are published.
    pub snapshot: bool,
}

/// Home Assistant discovery configs for one device: sensor class and confidence, image
/// snapshot, a teach button per class, an undo button, diagnostic fps and samples, and the
/// count of unsure frames waiting in the inbox. Retained;
/// entities the options switch off come as empty configs (Home Assistant removes them).
pub fn discovery(t: &Topics, classes: &[String], o: DiscoveryOptions) -> Vec<Msg> {
    let device = json!({
        "identifiers": [t.device],
        "name": format!("teachcam {}", t.device),
        "manufacturer": "teachcam",
        "model": "teachcam",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let base = |object: &str, name: &str| {
        json!({
            "name": name,
            "unique_id": format!("{}_{object}", t.device),
            "object_id": format!("{}_{object}", t.device),
            "availability_topic": t.available(),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        })
    };
    let mut out = Vec::new();
    let mut put = |component: &str, object: &str, v: Value| {
        out.push(Msg::json(t.config(component, object), &v, true));
    };
    let mut v = base("class", "Class");
    v["state_topic"] = json!(t.state());
    v["value_template"] = json!("{{ value_json.class }}");
    v["json_attributes_topic"] = json!(t.state());
    v["icon"] = json!("mdi:eye");
    put("sensor", "class", v);
    let mut v = base("confidence", "Confidence");
    v["state_topic"] = json!(t.state());
    v["value_template"] = json!("{{ (value_json.confidence * 100) | round(1) }}");
    v["unit_of_measurement"] = json!("%");
    v["state_class"] = json!("measurement");
    put("sensor", "confidence", v);
    let mut v = base("fps", "Frames per second");
    v["state_topic"] = json!(t.stats());
    v["value_template"] = json!("{{ value_json.fps }}");
    v["unit_of_measurement"] = json!("fps");
    v["state_class"] = json!("measurement");
    v["entity_category"] = json!("diagnostic");
    put("sensor", "fps", v);
    let mut v = base("samples", "Samples");
    v["state_topic"] = json!(t.stats());
    v["value_template"] = json!("{{ value_json.samples }}");
    v["state_class"] = json!("measurement");
    v["entity_category"] = json!("diagnostic");
    put("sensor", "samples", v);
    let mut v = base("inbox", "Unsure frames");
    v["state_topic"] = json!(t.stats());
    v["value_template"] = json!("{{ value_json.inbox }}");
    v["state_class"] = json!("measurement");
    v["icon"] = json!("mdi:inbox");
    put("sensor", "inbox", v);
    // Entities switched off by the configuration are removed (an empty retained config), so
    // a device that had them does not keep dead ones in Home Assistant.
    let mut removed = Vec::new();
    if !o.snapshot {
        removed.push(t.config("image", "snapshot"));
    }
    if !o.commands {
        removed.push(t.config("button", "undo"));
        removed.extend(classes.iter().map(|c| t.config("button", &class_object(c))));
    }
    if o.snapshot {
        let mut v = base("snapshot", "Snapshot");
        v["image_topic"] = json!(t.snapshot());
        v["content_type"] = json!("image/jpeg");
        put("image", "snapshot", v);
    }
    if o.commands {
        let mut v = base("undo", "Undo");
        v["command_topic"] = json!(t.command("undo"));
        v["payload_press"] = json!("undo");
        v["icon"] = json!("mdi:undo");
        put("button", "undo", v);
        for class in classes {
            let object = class_object(class);
            let mut v = base(&object, &format!("Teach {class}"));
            v["command_topic"] = json!(t.command("capture"));
            v["payload_press"] = json!(class);
            v["icon"] = json!("mdi:school");
            put("button", &object, v);
        }
    }
    out.extend(removed.into_iter().map(|topic| Msg {
        topic,
        payload: Vec::new(),
        retain: true,
    }));
    out
}

/// Empty retained configs (Home Assistant's "remove this entity") for the teach buttons of
/// classes in `before` that `after` lacks.
pub fn removed_buttons(t: &Topics, before: &[String], after: &[String]) -> Vec<Msg> {
    let now: BTreeSet<&String> = after.iter().collect();
    before
        .iter()
        .filter(|c| !now.contains(c))
        .map(|c| Msg {
            topic: t.config("button", &class_object(c)),
            payload: Vec::new(),
            retain: true,
        })
        .collect()
}

/// A command message as an [`Action`]. `capture`: a class name, or its 1-based button
/// number; `undo`: any payload; `add_class`: the name; `rename_class`:
/// `{"from": "...", "to": "..."}`. Names are checked by the core like a button's.
pub fn parse_command(t: &Topics, topic: &str, payload: &[u8]) -> Result<Action, String> {
    let name = topic
        .strip_prefix(&t.prefix)
        .and_then(|r| r.strip_prefix("/cmd/"))
        .ok_or_else(|| format!("{topic} is not a command topic"))?;
    if payload.len() > MAX_COMMAND {
        return Err(format!(
            "payload of {} bytes (at most {MAX_COMMAND})",
            payload.len()
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| "payload is not UTF-8".to_string())?
        .trim();
    match name {
        "capture" if text.is_empty() => Err("capture needs a class name or number".into()),
        "capture" => Ok(Action::Capture(match text.parse::<usize>() {
            Ok(k) if k >= 1 => ClassRef::Index(k - 1),
            _ => ClassRef::Name(text.to_string()),
        })),
        "undo" => Ok(Action::Undo),
        "add_class" if text.is_empty() => Err("add_class needs a class name".into()),
        "add_class" => Ok(Action::AddClass(text.to_string())),
        "rename_class" => {
            #[derive(Deserialize)]
            struct Rename {
                from: String,
                to: String,
            }
            let r: Rename = serde_json::from_str(text)
                .map_err(|e| format!("rename_class wants {{\"from\":..,\"to\":..}}: {e}"))?;
            Ok(Action::RenameClass {
                from: r.from,
                to: r.to,
            })
        }
        other => Err(format!(
            "unknown command {other:?} (capture, undo, add_class, rename_class)"
        )),
    }
}

/// The outbound queue: the newest message per retained-or-latest topic, and up to
/// [`EVENT_QUEUE`] events; plus the retained truth republished at every (re)connection
/// (a broker restarted without persistence has forgotten it).
#[derive(Debug, Default)]
pub struct Outbox {
    /// Retained topics' current payloads (availability, state, snapshot, discovery).
    retained: BTreeMap<String, Msg>,
    /// Latest-wins messages not yet handed to the client.
    pending: BTreeMap<String, Msg>,
    /// Events not yet handed to the client, oldest first.
    events: VecDeque<Msg>,
    /// Events dropped (queue full).
    pub dropped: u64,
}

impl Outbox {
    /// Publish `msg` through `sink` (which returns false when it cannot take it now, e.g.
    /// disconnected or its channel full); keep what it refused. `latest` marks a message
    /// whose newer version supersedes it (state, stats, snapshot, configs).
    pub fn send(&mut self, msg: Msg, latest: bool, sink: &mut dyn FnMut(&Msg) -> bool) {
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained.remove(&msg.topic);
            } else {
                self.retained.insert(msg.topic.clone(), msg.clone());
            }
        }
        // Anything older for this topic is superseded; events keep their order behind.
        if latest {
            self.pending.remove(&msg.topic);
        }
        if self.pending.is_empty() && self.events.is_empty() && sink(&msg) {
            return;
        }
        if latest {
            self.pending.insert(msg.topic.clone(), msg);
        } else {
            if self.events.len() == EVENT_QUEUE {
                self.events.pop_front();
                self.dropped += 1;
            }
            self.events.push_back(msg);
        }
    }

    /// Hand queued messages to `sink` until it refuses one: latest-wins first (they say
    /// what is true now), then events in order.
    pub fn flush(&mut self, sink: &mut dyn FnMut(&Msg) -> bool) {
        while let Some((topic, msg)) = self.pending.pop_first() {
            if !sink(&msg) {
                self.pending.insert(topic, msg);
                return;
            }
        }
        while let Some(msg) = self.events.pop_front() {
            if !sink(&msg) {
                self.events.push_front(msg);
                return;
            }
        }
    }

    /// A new connection: everything retained is queued again (newest only), then flushed.
    pub fn reconnected(&mut self, sink: &mut dyn FnMut(&Msg) -> bool) {
        for (topic, msg) in &self.retained {
            self.pending.insert(topic.clone(), msg.clone());
        }
        self.flush(sink);
    }

    /// Messages waiting (latest-wins, events).
    pub fn waiting(&self) -> (usize, usize) {
        (self.pending.len(), self.events.len())
    }

    /// The retained payload we hold for `topic`.
    pub fn retained(&self, topic: &str) -> Option<&Msg> {
        self.retained.get(topic)
    }
}

#[cfg(test)]
mod tests;
