//! Unit tests of the pure parts: config checks, device id, payloads, discovery, commands,
//! and the outbound queue under a sink that refuses.

use super::*;
use crate::session::{Origin, Session, SessionConfig, Source};

fn section(toml_text: &str) -> MqttSection {
    toml::from_str(toml_text).unwrap()
}

fn topics() -> Topics {
    Topics::new("tc-0123456789ab", None, "homeassistant")
}

#[test]
fn urls_and_defaults() {
    let c = section("url = \"mqtt://broker.lan\"").check().unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.tls),
        ("broker.lan", 1883, false)
    );
    assert!(!c.commands && c.discovery && !c.snapshot);
    assert_eq!((c.qos, c.discovery_prefix.as_str()), (1, "homeassistant"));
    let c = section("url = \"mqtts://10.0.0.2:18883\"").check().unwrap();
    assert_eq!((c.host.as_str(), c.port, c.tls), ("10.0.0.2", 18883, true));
    let c = section("url = \"mqtts://h\"").check().unwrap();
    assert_eq!(c.port, 8883);
}

#[test]
fn hostile_values_name_the_key_in_one_line() {
    for (text, key) in [
        ("client_id = \"x\"", "mqtt.url"),
        ("url = \"http://h\"", "mqtt.url"),
        ("url = \"mqtt://\"", "mqtt.url"),
        ("url = \"mqtt://h:0\"", "mqtt.url"),
        ("url = \"mqtt://h:99999\"", "mqtt.url"),
        ("url = \"mqtt://h x\"", "mqtt.url"),
        ("url = \"mqtt://h\"\nqos = 3", "mqtt.qos"),
        (
            "url = \"mqtt://h\"\ntopic_prefix = \"a/#\"",
            "mqtt.topic_prefix",
        ),
        (
            "url = \"mqtt://h\"\ntopic_prefix = \"/a\"",
            "mqtt.topic_prefix",
        ),
        (
            "url = \"mqtt://h\"\ntopic_prefix = \"a//b\"",
            "mqtt.topic_prefix",
        ),
        (
            "url = \"mqtt://h\"\ntopic_prefix = \"\"",
            "mqtt.topic_prefix",
        ),
        (
            "url = \"mqtt://h\"\ndiscovery_prefix = \"ha/+\"",
            "mqtt.discovery_prefix",
        ),
        ("url = \"mqtt://h\"\nca_file = \"/ca.pem\"", "mqtt.ca_file"),
        (
            "url = \"mqtts://h\"\nclient_cert = \"/c.pem\"",
            "mqtt.client_key",
        ),
        (
            "url = \"mqtts://h\"\nclient_key = \"/k.pem\"",
            "mqtt.client_cert",
        ),
        (
            "url = \"mqtt://h\"\npassword_file = \"/p\"",
            "mqtt.password_file",
        ),
        ("url = \"mqtt://h\"\nclient_id = \"a b\"", "mqtt.client_id"),
        ("url = \"mqtt://h\"\nusername = \"\"", "mqtt.username"),
        (
            "url = \"mqtt://h\"\nsnapshot_every_s = 0.0",
            "mqtt.snapshot_every_s",
        ),
        (
            "url = \"mqtt://h\"\nstats_every_s = nan",
            "mqtt.stats_every_s",
        ),
        ("url = \"mqtt://h\"\nkeep_alive_s = 1", "mqtt.keep_alive_s"),
    ] {
        let (k, why) = section(text).check().unwrap_err();
        assert_eq!(k, key, "{text}: {why}");
        assert!(!why.contains('\n'), "{why}");
    }
    // Through the whole config: the error names the key and the file.
    let p = Path::new("/etc/teachcam.toml");
    let f = crate::config::ConfigFile::parse("[mqtt]\nurl = \"mqtt://h\"\nqos = 7\n", p).unwrap();
    let e = crate::config::RunConfig::resolve(Some((p, f)), Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("mqtt.qos") && e.contains("teachcam.toml"), "{e}");
    let e = crate::config::ConfigFile::parse("[mqtt]\nurll = \"x\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("urll"), "{e}");
}

#[test]
fn the_device_id_is_made_once_and_kept() {
    let d = tempfile::tempdir().unwrap();
    let (a, replaced) = device_id(d.path()).unwrap();
    assert!(!replaced && a.starts_with("tc-") && a.len() == 15, "{a}");
    assert_eq!(device_id(d.path()).unwrap(), (a.clone(), false));
    std::fs::write(d.path().join("device_id"), "tc-../../etc\n").unwrap();
    let (b, replaced) = device_id(d.path()).unwrap();
    assert!(replaced && b != a && b.len() == 15);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(device_id(other.path()).unwrap().0, b);
}

#[test]
fn state_and_events_carry_what_the_issue_lists() {
    let t = topics();
    let m = state_msg(&t, "cup", 0.9, 1_700_000_000_000, 3);
    assert!(m.retain && m.topic == "teachcam/tc-0123456789ab/state");
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["class"], "cup");
    assert_eq!(v["confidence"], 0.9);
    assert_eq!(v["timestamp"], 1_700_000_000_000u64);
    assert_eq!(v["head_version"], 3);
    let o = Origin {
        source: Source::Mqtt,
        request: Some(7),
        at_ms: 0,
    };
    let e = Event::CaptureRefused {
        class: "cup".into(),
        reason: crate::session::Refusal::NoFrame,
        origin: o,
    };
    let m = event_msg(&t, &e, 5).unwrap();
    assert!(!m.retain && m.topic.ends_with("/event"));
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["type"], "capture_refused");
    assert_eq!(v["origin"]["source"], "mqtt");
    assert_eq!(v["origin"]["request"], 7);
    for e in [
        Event::CameraLost { silent_ms: 3000 },
        Event::CameraBack { after_ms: 10 },
        Event::HeadCleared,
    ] {
        assert!(event_msg(&t, &e, 0).is_some(), "{e:?}");
    }
    let s = Session::new(
        SessionConfig::default(),
        0,
        vec!["a".into()],
        Vec::new(),
        None,
    );
    let st = Arc::new(s.status(2000));
    assert!(event_msg(&t, &Event::Status(Arc::clone(&st)), 0).is_none());
    let m = stats_msg(&t, &st, &LinkStatus::default(), 0);
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    for key in [
        "fps",
        "frames",
        "samples_per_class",
        "stages",
        "errors",
        "mqtt",
    ] {
        assert!(v.get(key).is_some(), "stats lack {key}: {v}");
    }
}

use std::sync::Arc;

#[test]
fn discovery_is_one_device_with_stable_ids_and_removes_a_removed_class() {
    let t = topics();
    let classes = vec!["cup".to_string(), "pen / marker".to_string()];
    let all = DiscoveryOptions {
        commands: true,
        snapshot: true,
    };
    let msgs = discovery(&t, &classes, all);
    // class, confidence, fps, samples, inbox, snapshot, undo, two teach buttons.
    assert_eq!(msgs.len(), 9);
    let inbox = msgs
        .iter()
        .find(|m| m.topic.ends_with("/inbox/config"))
        .expect("the unsure-frames sensor");
    let v: serde_json::Value = serde_json::from_slice(&inbox.payload).unwrap();
    assert_eq!(v["value_template"], "{{ value_json.inbox }}");
    assert_eq!(v["state_topic"], t.stats());
    assert!(msgs.iter().all(|m| !m.payload.is_empty()));
    let mut ids = BTreeSet::new();
    for m in &msgs {
        assert!(m.retain);
        assert!(m.topic.starts_with("homeassistant/") && m.topic.ends_with("/config"));
        // One level per part: component, node, object, config (a class name's / is hashed).
        assert_eq!(m.topic.split('/').count(), 5, "{}", m.topic);
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(ids.insert(v["unique_id"].as_str().unwrap().to_string()));
        assert_eq!(v["device"]["identifiers"][0], "tc-0123456789ab");
        assert_eq!(
            v["availability_topic"],
            "teachcam/tc-0123456789ab/available"
        );
        let component = m.topic.split('/').nth(1).unwrap();
        let needs: &[&str] = match component {
            "sensor" => &["state_topic"],
            "button" => &["command_topic"],
            "image" => &["image_topic"],
            other => panic!("unexpected component {other}"),
        };
        for k in needs {
            assert!(v.get(k).is_some(), "{} lacks {k}", m.topic);
        }
    }
    // The same inputs give the same bytes: ids are stable across restarts.
    assert_eq!(msgs, discovery(&t, &classes, all));
    // Without commands and snapshots: no buttons, no image.
    let few = discovery(
        &t,
        &classes,
        DiscoveryOptions {
            commands: false,
            snapshot: false,
        },
    );
    // Five entities; the image, undo and two buttons removed (empty retained configs).
    let (kept, gone): (Vec<_>, Vec<_>) = few.iter().partition(|m| !m.payload.is_empty());
    assert_eq!((kept.len(), gone.len()), (5, 4));
    assert!(gone.iter().all(|m| m.retain));
    let topics: BTreeSet<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
    assert!(gone.iter().all(|m| topics.contains(m.topic.as_str())));
    let gone = removed_buttons(&t, &classes, &classes[..1]);
    assert_eq!(gone.len(), 1);
    assert!(gone[0].retain && gone[0].payload.is_empty());
    assert_eq!(
        gone[0].topic,
        t.config("button", &class_object("pen / marker"))
    );
}

#[test]
fn commands_parse_into_actions_and_bad_ones_are_refused() {
    let t = topics();
    let c = |name: &str, p: &str| parse_command(&t, &t.command(name), p.as_bytes());
    assert_eq!(
        c("capture", "cup"),
        Ok(Action::Capture(ClassRef::Name("cup".into())))
    );
    assert_eq!(c("capture", "2"), Ok(Action::Capture(ClassRef::Index(1))));
    assert_eq!(c("undo", ""), Ok(Action::Undo));
    assert_eq!(c("add_class", " mug "), Ok(Action::AddClass("mug".into())));
    assert_eq!(
        c("rename_class", r#"{"from":"cup","to":"mug"}"#),
        Ok(Action::RenameClass {
            from: "cup".into(),
            to: "mug".into()
        })
    );
    assert!(c("capture", "").is_err());
    assert!(c("rename_class", "cup").is_err());
    assert!(c("reboot", "").is_err());
    assert!(c("capture", &"x".repeat(MAX_COMMAND + 1)).is_err());
    assert!(parse_command(&t, &t.command("capture"), &[0xff, 0xfe]).is_err());
    assert!(parse_command(&t, "elsewhere/cmd/undo", b"").is_err());
}

fn msg(topic: &str, payload: &str, retain: bool) -> Msg {
    Msg {
        topic: topic.into(),
        payload: payload.into(),
        retain,
    }
}

#[test]
fn the_outbox_keeps_the_newest_state_and_a_bounded_number_of_events() {
    let mut out = Outbox::default();
    let mut sent: Vec<Msg> = Vec::new();
    let mut down = |_: &Msg| false;
    // The broker is away: 100 states and 100 events.
    for i in 0..100 {
        out.send(msg("p/state", &format!("{i}"), true), true, &mut down);
        out.send(msg("p/event", &format!("e{i}"), false), false, &mut down);
    }
    assert_eq!(out.waiting(), (1, EVENT_QUEUE));
    assert_eq!(out.dropped, 100 - EVENT_QUEUE as u64);
    let mut up = |m: &Msg| {
        sent.push(m.clone());
        true
    };
    out.reconnected(&mut up);
    assert_eq!(out.waiting(), (0, 0));
    // The newest state first, once; then the newest events in order.
    assert_eq!(sent[0], msg("p/state", "99", true));
    assert_eq!(sent.iter().filter(|m| m.topic == "p/state").count(), 1);
    assert_eq!(sent[1].payload, b"e36");
    assert_eq!(sent.last().unwrap().payload, b"e99");
    // Connected again: the retained truth is sent again at the next connection.
    sent.clear();
    let mut up = |m: &Msg| {
        sent.push(m.clone());
        true
    };
    out.reconnected(&mut up);
    assert_eq!(sent, vec![msg("p/state", "99", true)]);
    // An empty retained payload (a removal) is not kept as truth.
    out.send(msg("p/state", "", true), true, &mut |_| true);
    assert!(out.retained("p/state").is_none());
}

#[test]
fn a_refusing_sink_keeps_order_and_the_flush_resumes_where_it_stopped() {
    let mut out = Outbox::default();
    let mut n = 0;
    // Takes two, then refuses (a full channel).
    let mut two = |_: &Msg| {
        n += 1;
        n <= 2
    };
    for i in 0..5 {
        out.send(msg("p/event", &format!("{i}"), false), false, &mut two);
    }
    assert_eq!(out.waiting(), (0, 3));
    let mut got = Vec::new();
    out.flush(&mut |m: &Msg| {
        got.push(String::from_utf8(m.payload.clone()).unwrap());
        true
    });
    assert_eq!(got, ["2", "3", "4"]);
}

#[test]
fn the_shipped_config_documents_every_mqtt_key() {
    let text = include_str!("../../cross/teachcam.toml");
    // Every key of the section (a typo in the list would fail the parse below).
    let keys = [
        "url",
        "client_id",
        "username",
        "password_file",
        "ca_file",
        "client_cert",
        "client_key",
        "topic_prefix",
        "qos",
        "commands",
        "discovery",
        "discovery_prefix",
        "snapshot",
        "snapshot_every_s",
        "stats_every_s",
        "keep_alive_s",
    ];
    assert!(text.contains("# [mqtt]"));
    for k in keys {
        assert!(
            text.contains(&format!("# {k} = ")),
            "cross/teachcam.toml lacks {k}"
        );
    }
    // The commented example, uncommented, is a valid section.
    let section: String = text
        .lines()
        .skip_while(|l| *l != "# [mqtt]")
        .skip(1)
        .map(|l| l.trim_start_matches("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let s: MqttSection = toml::from_str(&section).unwrap();
    let c = s.check().unwrap();
    assert_eq!((c.port, c.tls, c.qos), (8883, true, 1));
}
