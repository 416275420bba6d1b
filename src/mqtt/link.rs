//! The MQTT link: two threads of its own between the [`Hub`] and a broker.
//!
//! - The *network* thread owns rumqttc's `Connection` (and the tokio runtime inside it): it
//!   drives the connection, reports connects, failures and incoming messages on a channel,
//!   and waits with backoff (1 s doubling to [`MAX_BACKOFF_MS`]) between failed attempts.
//! - The *observer* thread ([`run`], started by the daemon like the status writer) reads the
//!   hub's events, turns them into messages through the pure functions of [`super`], keeps
//!   them in the [`Outbox`] while the broker is away, and sends commands to the loop as
//!   [`Action`]s from [`Source::Mqtt`].
//!
//! Must not: block the loop (the hub never waits for us: our subscription is bounded and
//! drops the oldest) or exit the process: a refused password, an unknown certificate
//! authority or a silent broker is a log line, a field of the status file, and a retry.
//! Invariant: `client.try_publish` is the only way out, so this thread never waits for the
//! network either.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, ConnectionError, Event as NetEvent, LastWill, MqttOptions, Packet,
    QoS, TlsConfiguration, Transport,
};

use super::{
    DiscoveryOptions, LinkStatus, MqttConfig, Msg, Outbox, Topics, discovery, event_msg,
    parse_command, removed_buttons, state_msg, stats_msg,
};
use crate::bus::Note;
use crate::daemon::observe::Hub;
use crate::session::{Action, Event, Source};

/// Longest wait between two connection attempts, ms.
pub const MAX_BACKOFF_MS: u64 = 8000;
/// Messages rumqttc's request channel holds (a full channel makes us queue in the outbox).
pub const CHANNEL: usize = 512;
/// Seconds to wait for a CONNACK (or a TLS handshake) before calling the broker silent.
pub const CONNECT_TIMEOUT_S: u64 = 5;

/// Why the link could not be prepared (at start-up: fatal, naming the key).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A file named in `[mqtt]` cannot be read or parsed.
    #[error("`{key}`: {path}: {why}")]
    File {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The device id cannot be kept in the state directory.
    #[error("cannot keep the MQTT device id in {path}: {source}")]
    DeviceId {
        /// The state directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Everything the link needs, with the files read and checked at start-up.
pub struct Prepared {
    cfg: MqttConfig,
    topics: Topics,
    options: MqttOptions,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the options: they hold the password.
        f.debug_struct("Prepared")
            .field("broker", &format!("{}:{}", self.cfg.host, self.cfg.port))
            .field("topics", &self.topics)
            .finish()
    }
}

impl Prepared {
    /// The topics this device publishes under.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, LinkError> {
    let bad = |why: String| LinkError::File {
        key,
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    // Key and certificate files are small; refuse to read a huge file by mistake.
    if meta.len() > 1 << 20 {
        return Err(bad(format!("{} bytes (at most 1 MiB)", meta.len())));
    }
    std::fs::read(path).map_err(|e| bad(e.to_string()))
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Build the rustls client configuration (ring provider): the CA file's roots or the
/// system's, and the client certificate when configured.
fn tls_config(cfg: &MqttConfig) -> Result<rustls::ClientConfig, LinkError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        |key: &'static str, path: &Path| -> Result<Vec<CertificateDer<'static>>, LinkError> {
            let pem = read_file(key, path)?;
            let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
            let certs = certs.map_err(|e| LinkError::File {
                key,
                path: path.to_path_buf(),
                why: format!("not PEM certificates: {e}"),
            })?;
            if certs.is_empty() {
                return Err(LinkError::File {
                    key,
                    path: path.to_path_buf(),
                    why: "holds no PEM certificate".into(),
                });
            }
            Ok(certs)
        };
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(p) => {
            for c in certs("mqtt.ca_file", p)? {
                roots.add(c).map_err(|e| LinkError::File {
                    key: "mqtt.ca_file",
                    path: p.clone(),
                    why: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::File {
            key: "mqtt.url",
            path: PathBuf::new(),
            why: format!("TLS set-up: {e}"),
        })?
        .with_root_certificates(roots);
    match &cfg.client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certs("mqtt.client_cert", cert)?;
            let pem = read_file("mqtt.client_key", key)?;
            let bad = |why: String| LinkError::File {
                key: "mqtt.client_key",
                path: key.clone(),
                why,
            };
            let k: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad("holds no PEM private key".into()))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| bad(format!("does not fit client_cert: {e}")))
        }
    }
}

/// Read the files `[mqtt]` names, fix the device id, and build the client options. Errors
/// here are start-up errors naming the key; nothing here touches the network.
pub fn prepare(cfg: &MqttConfig, state_dir: &Path) -> Result<Prepared, LinkError> {
    let (device, replaced) = super::device_id(state_dir).map_err(|source| LinkError::DeviceId {
        path: state_dir.to_path_buf(),
        source,
    })?;
    if replaced {
        log::warn!(
            "mqtt: {}/device_id was not a device id; made a new one ({device}): Home Assistant sees a new device",
            state_dir.display()
        );
    }
    let topics = Topics::new(&device, cfg.topic_prefix.as_deref(), &cfg.discovery_prefix);
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("teachcam-{device}"));
    let mut options = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    options.set_keep_alive(Duration::from_secs(cfg.keep_alive_s));
    options.set_clean_session(true);
    // Snapshots are the largest thing we send; commands the largest we accept.
    options.set_max_packet_size(64 * 1024, 4 << 20);
    options.set_last_will(LastWill::new(
        topics.available(),
        "offline",
        qos(cfg.qos),
        true,
    ));
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => {
                let bytes = read_file("mqtt.password_file", p)?;
                let text = String::from_utf8(bytes).map_err(|_| LinkError::File {
                    key: "mqtt.password_file",
                    path: p.clone(),
                    why: "is not UTF-8 text".into(),
                })?;
                text.lines().next().unwrap_or_default().to_string()
            }
            None => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    if cfg.tls {
        let tls = tls_config(cfg)?;
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(Prepared {
        cfg: cfg.clone(),
        topics,
        options,
    })
}

/// What the network thread tells the observer thread.
enum Net {
    /// Connected (CONNACK accepted).
    Up,
    /// An attempt failed or the connection dropped; why, in words for the user.
    Down(String),
    /// A message arrived on a subscribed topic.
    Message(String, Vec<u8>),
    /// The network thread ended.
    Closed,
}

/// A connection error in words that say what to check.
fn explain(e: &ConnectionError, cfg: &MqttConfig) -> String {
    let at = format!("{}:{}", cfg.host, cfg.port);
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => format!(
                "the broker at {at} refused the user name or password (check mqtt.username and mqtt.password_file)"
            ),
            ConnectReturnCode::BadClientId => {
                format!("the broker at {at} refused the client id (check mqtt.client_id)")
            }
            other => format!("the broker at {at} refused the connection: {other:?}"),
        },
        ConnectionError::Tls(t) => format!(
            "TLS with {at} failed: {t} (check mqtt.ca_file, mqtt.client_cert, and that the url's host name is in the broker's certificate)"
        ),
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing listens at {at} (is the broker running? check mqtt.url)")
        }
        ConnectionError::Io(io) => format!("network error with {at}: {io}"),
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => format!(
            "no answer from {at} within {CONNECT_TIMEOUT_S} s (is it an MQTT broker? mqtts:// for a TLS port?)"
        ),
        other => format!("connection to {at} failed: {other}"),
    }
}

/// The network thread: drive the connection, report, back off after failures.
fn drive(mut conn: rumqttc::Connection, cfg: MqttConfig, tx: Sender<Net>, quit: Arc<AtomicBool>) {
    let mut net = conn.eventloop.network_options();
    net.set_connection_timeout(CONNECT_TIMEOUT_S);
    conn.eventloop.set_network_options(net);
    let mut backoff = 1000;
    for event in conn.iter() {
        let note = match event {
            Ok(NetEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = 1000;
                Net::Up
            }
            Ok(NetEvent::Incoming(Packet::Publish(p))) => Net::Message(p.topic, p.payload.to_vec()),
            Ok(_) => continue,
            Err(e) => {
                if quit.load(Ordering::Relaxed) {
                    break;
                }
                let _ = tx.send(Net::Down(explain(&e, &cfg)));
                // Wait in small steps so the end of the run is not held up by a long backoff.
                let until = Instant::now() + Duration::from_millis(backoff);
                while Instant::now() < until && !quit.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF_MS);
                if quit.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
        };
        if tx.send(note).is_err() {
            break;
        }
    }
    let _ = tx.send(Net::Closed);
}

/// The link's state, shared with the status file (through the hub) and the stats.
type Shared = Arc<Mutex<LinkStatus>>;

/// Run the link until the hub's bus closes (the loop ended) or `stop` is set: start the
/// network thread, publish what the loop does, take commands. Returns after publishing
/// `offline` and disconnecting (waiting at most 2 s for the broker).
pub fn run(p: Prepared, hub: &Hub, stop: &AtomicBool) {
    let sub = hub.subscribe(256);
    let cfg = p.cfg.clone();
    let t = p.topics.clone();
    let (client, conn) = Client::new(p.options, CHANNEL);
    let (tx, rx) = channel();
    let quit = Arc::new(AtomicBool::new(false));
    let status: Shared = Arc::new(Mutex::new(LinkStatus {
        broker: format!("{}:{}", cfg.host, cfg.port),
        ..LinkStatus::default()
    }));
    hub.set_link("mqtt", link_json(&status));
    let spawned = std::thread::Builder::new().name("mqtt-net".into()).spawn({
        let quit = Arc::clone(&quit);
        let cfg = cfg.clone();
        move || drive(conn, cfg, tx, quit)
    });
    if let Err(e) = spawned {
        // Not fatal: the appliance runs on without MQTT and says so.
        log::error!("mqtt: cannot start the network thread: {e}; MQTT is off for this run");
        return;
    }
    log::info!(
        "mqtt: publishing under {} to {}:{}{}",
        t.prefix,
        cfg.host,
        cfg.port,
        if cfg.tls { " (TLS)" } else { "" }
    );
    let mut link = Link {
        cfg,
        t,
        client,
        connected: false,
        outbox: Outbox::default(),
        status,
        classes: None,
        head_version: 0,
        last_stats: None,
        snapshot_due: false,
        last_snapshot: None,
        ignored_logged: 0,
    };
    if let Some(s) = hub.status() {
        link.head_version = s.head_version;
    }
    link.send(
        Msg {
            topic: link.t.available(),
            payload: b"online".to_vec(),
            retain: true,
        },
        true,
    );
    loop {
        while let Ok(note) = rx.try_recv() {
            link.network(note, hub);
        }
        match sub.next_timeout(Duration::from_millis(100)) {
            Some(Note::Event(e)) => link.event(&e, hub),
            Some(Note::Lost(n)) => link.status.lock().map(|mut s| s.dropped += n).unwrap_or(()),
            None if sub.is_finished() || stop.load(Ordering::Relaxed) => break,
            None => {}
        }
        link.tick(hub);
    }
    // Goodbye: `offline` (the will covers only an unclean end), then disconnect.
    link.send(
        Msg {
            topic: link.t.available(),
            payload: b"offline".to_vec(),
            retain: true,
        },
        true,
    );
    let was_connected = link.connected;
    quit.store(true, Ordering::Relaxed);
    let _ = link.client.try_disconnect();
    if was_connected {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Net::Closed) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                _ => {}
            }
        }
    }
}

fn link_json(s: &Shared) -> serde_json::Value {
    s.lock()
        .map(|s| serde_json::to_value(&*s).unwrap_or_default())
        .unwrap_or_default()
}

struct Link {
    cfg: MqttConfig,
    t: Topics,
    client: Client,
    connected: bool,
    outbox: Outbox,
    status: Shared,
    /// The class list discovery was last published for.
    classes: Option<Vec<String>>,
    head_version: u64,
    last_stats: Option<Instant>,
    snapshot_due: bool,
    last_snapshot: Option<Instant>,
    ignored_logged: u64,
}

impl Link {
    fn sink(client: &Client, connected: bool, qos_level: u8) -> impl FnMut(&Msg) -> bool + '_ {
        move |m: &Msg| {
            connected
                && client
                    .try_publish(m.topic.clone(), qos(qos_level), m.retain, m.payload.clone())
                    .is_ok()
        }
    }

    fn send(&mut self, msg: Msg, latest: bool) {
        let mut sink = Self::sink(&self.client, self.connected, self.cfg.qos);
        self.outbox.send(msg, latest, &mut sink);
        let dropped = self.outbox.dropped;
        if let Ok(mut s) = self.status.lock() {
            s.dropped = s.dropped.max(dropped);
        }
    }

    fn update_status(&self, hub: &Hub, f: impl FnOnce(&mut LinkStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
        hub.set_link("mqtt", link_json(&self.status));
    }

    fn network(&mut self, note: Net, hub: &Hub) {
        match note {
            Net::Up => {
                self.connected = true;
                let first = self.status.lock().map(|s| s.connects == 0).unwrap_or(true);
                log::info!(
                    "mqtt: {} {}:{}",
                    if first {
                        "connected to"
                    } else {
                        "reconnected to"
                    },
                    self.cfg.host,
                    self.cfg.port
                );
                self.update_status(hub, |s| {
                    s.connected = true;
                    s.connects += 1;
                    s.last_error = None;
                });
                // Subscriptions do not survive a clean session: ask again every time.
                let q = qos(self.cfg.qos);
                let _ = self.client.try_subscribe(self.t.command("+"), q);
                if self.cfg.discovery {
                    let _ = self.client.try_subscribe(self.t.ha_status(), q);
                }
                let mut sink = Self::sink(&self.client, true, self.cfg.qos);
                self.outbox.reconnected(&mut sink);
            }
            Net::Down(why) => {
                let was = self.connected;
                self.connected = false;
                let same = self
                    .status
                    .lock()
                    .map(|s| s.last_error.as_deref() == Some(why.as_str()))
                    .unwrap_or(false);
                // Logged when it changes, not at every retry.
                if was || !same {
                    log::warn!("mqtt: {why}; retrying");
                }
                self.update_status(hub, |s| {
                    s.connected = false;
                    s.failures += 1;
                    s.last_error = Some(why);
                });
            }
            Net::Message(topic, payload) => self.message(&topic, &payload, hub),
            Net::Closed => self.connected = false,
        }
    }

    fn message(&mut self, topic: &str, payload: &[u8], hub: &Hub) {
        if topic == self.t.ha_status() {
            if payload == b"online" && self.cfg.discovery {
                log::info!("mqtt: Home Assistant is online; discovery sent again");
                let classes = self.classes.clone().unwrap_or_default();
                for m in discovery(&self.t, &classes, self.options()) {
                    // Sent even when unchanged: Home Assistant asked.
                    let mut sink = Self::sink(&self.client, self.connected, self.cfg.qos);
                    self.outbox.send(m, true, &mut sink);
                }
            }
            return;
        }
        if !self.cfg.commands {
            self.ignored_logged += 1;
            // Every one counted; the first and then every 100th logged.
            if self.ignored_logged % 100 == 1 {
                log::warn!(
                    "mqtt: command on {topic} ignored: commands are off ([mqtt] commands = true enables them)"
                );
            }
            self.update_status(hub, |s| s.commands_ignored += 1);
            return;
        }
        match parse_command(&self.t, topic, payload) {
            Ok(action) => {
                let what = describe(&action);
                let id = hub.send(action, Source::Mqtt);
                log::info!("mqtt: command {what} (request {id})");
            }
            Err(why) => {
                log::warn!("mqtt: command on {topic} refused: {why}");
                self.update_status(hub, |s| s.commands_ignored += 1);
                let v = serde_json::json!({"type": "command_refused", "topic": topic,
                    "reason": why, "timestamp": unix_ms()});
                self.send(
                    Msg {
                        topic: self.t.event(),
                        payload: v.to_string().into_bytes(),
                        retain: false,
                    },
                    false,
                );
            }
        }
    }

    fn options(&self) -> DiscoveryOptions {
        DiscoveryOptions {
            commands: self.cfg.commands,
            snapshot: self.cfg.snapshot,
        }
    }

    fn event(&mut self, e: &Event, hub: &Hub) {
        let now = unix_ms();
        match e {
            Event::ClassShown {
                class, confidence, ..
            } => {
                let c = class.as_deref().unwrap_or(crate::frame::UNKNOWN);
                let m = state_msg(&self.t, c, *confidence, now, self.head_version);
                self.send(m, true);
                self.snapshot_due = self.cfg.snapshot;
            }
            Event::HeadSwapped { version, .. } => self.head_version = *version,
            Event::Status(s) => {
                self.head_version = s.head_version;
                let due = self
                    .last_stats
                    .is_none_or(|t| t.elapsed().as_millis() as u64 >= self.cfg.stats_every_ms);
                if due {
                    self.last_stats = Some(Instant::now());
                    let link = self.status.lock().map(|s| s.clone()).unwrap_or_default();
                    let m = stats_msg(&self.t, s, &link, now);
                    self.send(m, true);
                    hub.set_link("mqtt", link_json(&self.status));
                }
            }
            _ => {}
        }
        if let Some(m) = event_msg(&self.t, e, now) {
            self.send(m, false);
        }
    }

    /// Work that is not an event: discovery for a changed class list, a due snapshot,
    /// queued messages.
    fn tick(&mut self, hub: &Hub) {
        if self.cfg.discovery
            && let Some(list) = hub.samples()
            && self.classes.as_deref() != Some(list.classes.as_slice())
        {
            let before = self.classes.replace(list.classes.clone());
            if let Some(before) = before {
                for m in removed_buttons(&self.t, &before, &list.classes) {
                    self.send(m, true);
                }
            }
            for m in discovery(&self.t, &list.classes, self.options()) {
                // Unchanged configs are not sent again (the broker keeps them).
                if self.outbox.retained(&m.topic) != Some(&m) {
                    self.send(m, true);
                }
            }
        }
        if self.snapshot_due
            && self
                .last_snapshot
                .is_none_or(|t| t.elapsed().as_millis() as u64 >= self.cfg.snapshot_every_ms)
        {
            self.snapshot_due = false;
            if let Some((_, frame)) = hub.latest_frame() {
                self.last_snapshot = Some(Instant::now());
                match image::RgbImage::from_raw(
                    frame.width as u32,
                    frame.height as u32,
                    frame.rgb.clone(),
                ) {
                    Some(img) => match crate::frame::encode_jpeg(&img) {
                        Ok(jpeg) => self.send(
                            Msg {
                                topic: self.t.snapshot(),
                                payload: jpeg,
                                retain: true,
                            },
                            true,
                        ),
                        Err(e) => log::warn!("mqtt: snapshot not encoded: {e}"),
                    },
                    None => log::warn!("mqtt: snapshot skipped: frame size does not match"),
                }
            }
        }
        if self.connected {
            let mut sink = Self::sink(&self.client, true, self.cfg.qos);
            self.outbox.flush(&mut sink);
        }
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Capture(c) => format!("capture {c}"),
        Action::Undo => "undo".into(),
        Action::AddClass(n) => format!("add class {n:?}"),
        Action::RenameClass { from, to } => format!("rename class {from:?} to {to:?}"),
        other => format!("{other:?}"),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
