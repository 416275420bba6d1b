//! Who asked for something and which request an outcome answers: every [`super::Action`]
//! carries an [`Origin`], and the events it causes carry it back.
//!
//! Must not: hold behaviour.

use serde::Serialize;

/// Correlates an action with the events it causes (chosen by the requester).
pub type RequestId = u64;

/// Where an action came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A GPIO button.
    Button,
    /// A key typed on the terminal.
    Keyboard,
    /// A scripted press (tests, demos).
    Script,
    /// The web console.
    Http,
    /// An MQTT command.
    Mqtt,
    /// The program itself (tests, start-up).
    Internal,
}

/// Who asked, which request it answers, and when it was asked (ms on the session's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// Where it came from.
    pub source: Source,
    /// The requester's id, echoed in every event the action causes.
    pub request: Option<RequestId>,
    /// When the action happened (a press is timed by the button thread).
    pub at_ms: u64,
}
