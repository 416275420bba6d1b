//! The policy, tested with explicit milliseconds: no clock, no files, no threads. A tiny
//! in-memory "shell" answers the store and imprint requests so whole sequences can be run.

use super::*;
use crate::store::Edit;

fn head(classes: &[&str], samples: usize) -> Arc<Head> {
    Arc::new(Head {
        classes: classes.iter().map(|c| c.to_string()).collect(),
        dim: 1,
        mean: vec![0.0],
        inv_std: vec![1.0],
        weights: vec![1.0; classes.len()],
        bias: vec![0.0; classes.len()],
        threshold: 0.5,
        backbone: Default::default(),
        info: crate::head::TrainInfo {
            samples_per_class: vec![samples / classes.len().max(1); classes.len()],
            ..Default::default()
        },
    })
}

fn origin(at_ms: u64) -> Origin {
    Origin {
        source: Source::Button,
        request: None,
        at_ms,
    }
}

fn http(request: RequestId, at_ms: u64) -> Origin {
    Origin {
        source: Source::Http,
        request: Some(request),
        at_ms,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cfg() -> SessionConfig {
    SessionConfig {
        smoothing: 1,
        // Out of the way of the deadlines these tests look at.
        status_every_ms: 60_000,
        // One frame per press and no inbox, unless a test says otherwise.
        press_frames: 1,
        inbox_every_ms: 0,
        ..SessionConfig::default()
    }
}

/// An in-memory shell: carries out store and imprint requests the simple way and records
/// everything else.
struct Rig {
    s: Session,
    next_id: u64,
    /// Refuse store requests with this while set.
    refuse: Option<Refusal>,
    effects: Vec<Effect>,
    events: Vec<Event>,
    fine_tunes: Vec<u64>,
}

impl Rig {
    fn new(classes: &[&str]) -> Self {
        Rig::with(cfg(), classes)
    }

    fn with(cfg: SessionConfig, classes: &[&str]) -> Self {
        let mut r = Rig {
            s: Session::new(cfg, 0, names(classes), Vec::new(), None),
            next_id: 1,
            refuse: None,
            effects: Vec::new(),
            events: Vec::new(),
            fine_tunes: Vec::new(),
        };
        // A frame, so captures have something to store, and the first tick.
        r.frame(0, None);
        r.tick(0);
        r
    }

    fn feed(&mut self, now: u64, input: Input) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(i) = queue.pop_front() {
            for e in self.s.step(now, i) {
                match &e {
                    Effect::Store(req) => {
                        let outcome = match (&self.refuse, req) {
                            (Some(r), _) => Err(r.clone()),
                            (None, StoreRequest::Capture { label, press, .. }) => {
                                self.next_id += 1;
                                Ok(Some(SampleInfo {
                                    id: self.next_id - 1,
                                    label: label.clone(),
                                    time_ms: now,
                                    thumb_sha256: String::new(),
                                    press: press.unwrap_or(self.next_id - 1),
                                }))
                            }
                            (None, StoreRequest::FromInbox { label, .. }) => {
                                self.next_id += 1;
                                Ok(Some(SampleInfo {
                                    id: self.next_id - 1,
                                    label: label.clone(),
                                    time_ms: now,
                                    thumb_sha256: String::new(),
                                    press: self.next_id - 1,
                                }))
                            }
                            (None, _) => Ok(None),
                        };
                        queue.push_back(Input::Stored {
                            request: req.clone(),
                            outcome,
                        });
                    }
                    Effect::Imprint {
                        generation,
                        classes,
                    } => {
                        let present: Vec<&str> = classes
                            .iter()
                            .filter(|c| self.s.samples().iter().any(|s| &s.label == *c))
                            .map(String::as_str)
                            .collect();
                        let h =
                            (!present.is_empty()).then(|| head(&present, self.s.samples().len()));
                        queue.push_back(Input::Imprinted {
                            generation: *generation,
                            head: Ok(h),
                        });
                    }
                    Effect::FineTune { generation, .. } => self.fine_tunes.push(*generation),
                    Effect::Publish(ev) => self.events.push(ev.clone()),
                    _ => {}
                }
                self.effects.push(e);
            }
        }
    }

    fn act(&mut self, now: u64, action: Action) {
        self.feed(
            now,
            Input::Action {
                action,
                origin: origin(now),
            },
        );
    }

    fn tick(&mut self, now: u64) {
        self.feed(now, Input::Tick);
    }

    fn frame(&mut self, now: u64, class: Option<usize>) {
        self.guess(now, class, class.unwrap_or(0), 1.0);
    }

    fn guess(&mut self, now: u64, class: Option<usize>, best: usize, margin: f32) {
        self.feed(
            now,
            Input::Frame(FrameReport {
                guess: Some(Guess {
                    best,
                    margin,
                    class,
                    confidence: 0.9,
                }),
                tag: "t".into(),
                stages: Stages::default(),
            }),
        );
    }

    fn take_events(&mut self) -> Vec<Event> {
        self.effects.clear();
        std::mem::take(&mut self.events)
    }

    fn labels(&self) -> Vec<(u64, String)> {
        self.s
            .samples()
            .iter()
            .map(|s| (s.id, s.label.clone()))
            .collect()
    }
}

fn fine(h: Arc<Head>, accuracy: Option<f32>, imprint: Option<f32>) -> Result<FineTune, String> {
    Ok(FineTune {
        head: h,
        holdout_accuracy: accuracy,
        imprint_accuracy: imprint,
        confusion: None,
    })
}

#[test]
fn a_capture_is_stored_then_imprinted_used_saved_and_fine_tuned() {
    let mut r = Rig::new(&["cup", "pen"]);
    r.take_events();
    r.act(100, Action::Capture(ClassRef::Index(1)));
    let ev = r.take_events();
    assert!(
        matches!(&ev[..], [Event::CaptureSaved { sample, .. }] if sample.label == "pen"),
        "{ev:?}"
    );
    assert_eq!(r.s.generation(), 1);
    assert!(r.fine_tunes.is_empty(), "learning waits for the tick");
    assert_eq!(r.s.next_deadline(100), 100, "an imprint is due now");
    r.tick(109);
    let used = r
        .effects
        .iter()
        .any(|e| matches!(e, Effect::UseHead(Some(_))));
    let saved = r.effects.iter().any(|e| {
        matches!(
            e,
            Effect::Store(StoreRequest::SaveHead { generation: 1, .. })
        )
    });
    assert!(used && saved, "{:?}", r.effects);
    assert_eq!(r.fine_tunes, vec![1]);
    let ev = r.take_events();
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::HeadSwapped {
                kind: HeadKind::Imprinted,
                after_action_ms: Some(9),
                samples: 1,
                ..
            }
        )),
        "{ev:?}"
    );
}

#[test]
fn several_changes_in_one_poll_make_one_imprint_and_one_fine_tune() {
    let mut r = Rig::new(&["a", "b"]);
    for k in [0, 1, 0, 1] {
        r.act(50, Action::Capture(ClassRef::Index(k)));
    }
    r.tick(50);
    let imprints = r
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::Imprint { .. }))
        .count();
    assert_eq!(imprints, 1);
    assert_eq!(
        r.fine_tunes,
        vec![4],
        "one fine-tune, of the newest generation"
    );
}

#[test]
fn a_stale_fine_tune_is_discarded_and_a_current_one_swapped_in() {
    let mut r = Rig::new(&["a", "b"]);
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.tick(10);
    r.act(20, Action::Capture(ClassRef::Index(1)));
    r.tick(20);
    assert_eq!(r.fine_tunes, vec![1, 2]);
    r.take_events();
    // Generation 1's fine-tune arrives after generation 2 exists: discarded.
    let old = head(&["a"], 1);
    r.feed(
        500,
        Input::FineTuned {
            generation: 1,
            outcome: fine(old, Some(1.0), Some(0.5)),
        },
    );
    assert!(!r.effects.iter().any(|e| matches!(e, Effect::UseHead(_))));
    assert!(r.take_events().iter().any(|e| matches!(
        e,
        Event::FineTuneFinished {
            generation: 1,
            result: FineTuneResult::Stale
        }
    )));
    let new = head(&["a", "b"], 2);
    r.feed(
        700,
        Input::FineTuned {
            generation: 2,
            outcome: fine(Arc::clone(&new), Some(0.9), Some(0.8)),
        },
    );
    assert!(r.effects.contains(&Effect::UseHead(Some(Arc::clone(&new)))));
    let ev = r.take_events();
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::HeadSwapped {
                kind: HeadKind::FineTuned,
                after_action_ms: Some(680),
                ..
            }
        )),
        "{ev:?}"
    );
    assert_eq!(r.s.status(700).head.unwrap().holdout_accuracy, Some(0.9));
}

#[test]
fn a_fine_tune_is_swapped_in_only_if_no_worse() {
    let mut r = Rig::new(&["a", "b"]);
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.tick(10);
    // Worse than the imprint on the same folds: the imprinted head stays.
    r.take_events();
    r.feed(
        100,
        Input::FineTuned {
            generation: 1,
            outcome: fine(head(&["a"], 1), Some(0.70), Some(0.80)),
        },
    );
    assert!(!r.effects.iter().any(|e| matches!(e, Effect::UseHead(_))));
    assert!(r.take_events().iter().any(|e| matches!(
        e,
        Event::FineTuneFinished {
            result: FineTuneResult::KeptOut { .. },
            ..
        }
    )));
    assert_eq!(r.s.status(100).head.unwrap().kind, HeadKind::Imprinted);
    // Equal is no worse: swapped. A later one of the same generation must then beat 0.8.
    r.feed(
        200,
        Input::FineTuned {
            generation: 1,
            outcome: fine(head(&["a"], 1), Some(0.80), Some(0.80)),
        },
    );
    assert_eq!(r.s.status(200).head.unwrap().kind, HeadKind::FineTuned);
    r.take_events();
    r.feed(
        300,
        Input::FineTuned {
            generation: 1,
            outcome: fine(head(&["a"], 1), Some(0.79), Some(0.95)),
        },
    );
    assert!(!r.effects.iter().any(|e| matches!(e, Effect::UseHead(_))));
    // Without any held-out estimate (too few samples), nothing says it is worse.
    r.feed(
        400,
        Input::FineTuned {
            generation: 1,
            outcome: fine(head(&["a"], 1), None, None),
        },
    );
    assert!(
        r.effects
            .iter()
            .any(|e| matches!(e, Effect::UseHead(Some(_))))
    );
    // A failed fine-tune is counted and changes nothing.
    r.take_events();
    r.feed(
        500,
        Input::FineTuned {
            generation: 1,
            outcome: Err("budget".into()),
        },
    );
    assert!(!r.effects.iter().any(|e| matches!(e, Effect::UseHead(_))));
    assert_eq!(r.s.status(500).errors.training, 1);
}

#[test]
fn a_press_is_a_burst_whose_frames_share_the_press_and_undo_takes_it_whole() {
    let mut r = Rig::with(
        SessionConfig {
            press_frames: 3,
            press_every_ms: 100,
            ..cfg()
        },
        &["a", "b"],
    );
    r.act(10, Action::Capture(ClassRef::Index(0)));
    for t in [10, 60, 110, 160, 210, 260] {
        r.frame(t, None);
        r.tick(t);
    }
    r.act(300, Action::Capture(ClassRef::Index(1)));
    for t in [300, 400, 500, 600] {
        r.frame(t, None);
        r.tick(t);
    }
    let presses: Vec<(u64, String, u64)> =
        r.s.samples()
            .iter()
            .map(|s| (s.id, s.label.clone(), s.press))
            .collect();
    let want: Vec<(u64, String, u64)> = [
        (1, "a", 1),
        (2, "a", 1),
        (3, "a", 1),
        (4, "b", 4),
        (5, "b", 4),
        (6, "b", 4),
    ]
    .into_iter()
    .map(|(i, l, p)| (i, l.to_string(), p))
    .collect();
    assert_eq!(
        presses, want,
        "three frames a press, 100 ms apart, one press id each"
    );
    r.take_events();
    r.act(700, Action::Undo);
    assert!(matches!(
        &r.take_events()[..],
        [Event::Undone { sample, ids, .. }] if sample.id == 6 && ids == &[4, 5, 6]
    ));
    assert_eq!(r.labels().len(), 3);
    r.act(710, Action::Undo);
    assert!(r.labels().is_empty(), "the first press went whole too");
    // An explicit burst request keeps its own count, and a single-frame configuration
    // stores one sample a press.
    let mut one = Rig::new(&["a"]);
    one.act(10, Action::Capture(ClassRef::Index(0)));
    one.tick(500);
    assert_eq!(one.labels().len(), 1);
}

#[test]
fn unsure_frames_go_to_the_inbox_at_most_once_a_period_and_only_with_a_head() {
    let mut r = Rig::with(
        SessionConfig {
            inbox_every_ms: 1000,
            inbox_margin: 0.2,
            ..cfg()
        },
        &["a", "b"],
    );
    let inboxed = |r: &mut Rig| -> Vec<(crate::inbox::Reason, Option<String>)> {
        let v = r
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Inbox { reason, guess, .. } => Some((*reason, guess.clone())),
                _ => None,
            })
            .collect();
        r.effects.clear();
        v
    };
    // No head yet: every frame is "unknown", and none is worth keeping.
    r.guess(5, None, 0, 0.0);
    assert!(inboxed(&mut r).is_empty());
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.act(20, Action::Capture(ClassRef::Index(1)));
    r.tick(30);
    assert!(r.s.head().is_some());
    r.effects.clear();
    use crate::inbox::Reason;
    r.guess(100, None, 1, 0.05);
    assert_eq!(inboxed(&mut r), [(Reason::Unknown, Some("b".to_string()))]);
    // Within the period nothing more, however unsure.
    r.guess(600, None, 1, 0.0);
    assert!(inboxed(&mut r).is_empty());
    r.guess(1100, Some(0), 0, 0.1);
    assert_eq!(
        inboxed(&mut r),
        [(Reason::LowMargin, Some("a".to_string()))]
    );
    // A sure answer that stays is not unsure; one that changes is a flip.
    r.guess(2200, Some(0), 0, 0.9);
    assert!(inboxed(&mut r).is_empty());
    r.guess(2300, Some(1), 1, 0.9);
    assert_eq!(inboxed(&mut r), [(Reason::Flip, Some("b".to_string()))]);
    // Off: nothing.
    let mut off = Rig::new(&["a"]);
    off.act(10, Action::Capture(ClassRef::Index(0)));
    off.tick(20);
    off.effects.clear();
    off.guess(100, None, 0, 0.0);
    assert!(inboxed(&mut off).is_empty());
}

#[test]
fn an_inbox_frame_labelled_becomes_a_sample_of_its_own_press() {
    let mut r = Rig::new(&["a", "b"]);
    r.act(
        10,
        Action::LabelInbox {
            id: 7,
            class: ClassRef::Name("b".into()),
        },
    );
    assert!(r.effects.iter().any(|e| matches!(e,
        Effect::Store(StoreRequest::FromInbox { id: 7, label, .. }) if label == "b")));
    assert!(
        r.take_events()
            .iter()
            .any(|e| matches!(e, Event::CaptureSaved { sample, .. } if sample.label == "b"))
    );
    assert_eq!(r.labels(), [(1, "b".to_string())]);
    // An unknown class is refused before the store is asked.
    r.act(
        20,
        Action::LabelInbox {
            id: 8,
            class: ClassRef::Name("nope".into()),
        },
    );
    assert!(!r.effects.iter().any(|e| matches!(e, Effect::Store(_))));
    assert!(
        r.take_events()
            .iter()
            .any(|e| matches!(e, Event::CaptureRefused { .. }))
    );
}

#[test]
fn undo_removes_the_newest_sample_and_says_when_there_is_none() {
    let mut r = Rig::new(&["a", "b"]);
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.act(20, Action::Capture(ClassRef::Index(1)));
    r.tick(25);
    assert!(r.s.head().is_some());
    r.take_events();
    r.act(30, Action::Undo);
    assert!(matches!(
        &r.take_events()[..],
        [Event::Undone { sample, .. }] if sample.id == 2 && sample.label == "b"
    ));
    assert_eq!(r.labels(), vec![(1, "a".to_string())]);
    assert_eq!(r.s.generation(), 3);
    r.act(40, Action::Undo);
    r.act(50, Action::Undo);
    assert!(matches!(
        &r.take_events()[..],
        [Event::Undone { .. }, Event::NothingToUndo { .. }]
    ));
    // With nothing left, the next imprint clears the head: "unknown".
    r.tick(60);
    assert!(r.effects.contains(&Effect::UseHead(None)));
    assert!(r.take_events().contains(&Event::HeadCleared));
    assert!(r.s.head().is_none());
}

#[test]
fn a_burst_captures_on_schedule_and_stops_at_a_refusal() {
    let mut r = Rig::new(&["a", "b"]);
    r.take_events();
    r.feed(
        1000,
        Input::Action {
            action: Action::Burst {
                class: ClassRef::Name("b".into()),
                count: 5,
                every_ms: 200,
            },
            origin: http(7, 1000),
        },
    );
    assert!(r.take_events().is_empty(), "captures happen at ticks");
    let mut saved_at = Vec::new();
    for t in (1000..=1600).step_by(50) {
        r.frame(t, None);
        r.tick(t);
        for e in r.take_events() {
            if let Event::CaptureSaved { sample, origin } = e {
                assert_eq!((sample.label.as_str(), origin.request), ("b", Some(7)));
                saved_at.push(t);
            }
        }
    }
    assert_eq!(saved_at, vec![1000, 1200, 1400, 1600]);
    // The disk fills up before the last one: refused, and the burst ends there.
    r.refuse = Some(Refusal::DiskFull);
    r.frame(1800, None);
    r.tick(1800);
    assert!(r.take_events().iter().any(|e| matches!(
        e,
        Event::CaptureRefused {
            reason: Refusal::DiskFull,
            origin: Origin {
                request: Some(7),
                ..
            },
            ..
        }
    )));
    r.refuse = None;
    r.frame(2000, None);
    r.tick(2000);
    assert!(
        !r.take_events()
            .iter()
            .any(|e| matches!(e, Event::CaptureSaved { .. }))
    );
    // Out-of-range bursts are refused.
    r.act(
        2100,
        Action::Burst {
            class: ClassRef::Index(0),
            count: 0,
            every_ms: 200,
        },
    );
    assert!(matches!(
        &r.take_events()[..],
        [Event::CaptureRefused { .. }]
    ));
}

#[test]
fn class_edits_are_validated_and_follow_the_store() {
    let mut r = Rig::new(&["cup", "pen"]);
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.act(20, Action::Capture(ClassRef::Index(1)));
    r.act(30, Action::Capture(ClassRef::Index(0)));
    r.take_events();
    // Add: at the end, so buttons keep their classes.
    r.feed(
        40,
        Input::Action {
            action: Action::AddClass("mug".into()),
            origin: http(1, 40),
        },
    );
    assert!(matches!(
        &r.take_events()[..],
        [Event::ClassAdded { name, origin }] if name == "mug" && origin.request == Some(1)
    ));
    assert_eq!(r.s.classes(), ["cup", "pen", "mug"]);
    // Rename: same position, samples follow, one journaled edit.
    r.act(
        50,
        Action::RenameClass {
            from: "cup".into(),
            to: "glass".into(),
        },
    );
    let edit = r.effects.iter().find_map(|e| match e {
        Effect::Store(StoreRequest::Edit { edit, .. }) => Some(edit.clone()),
        _ => None,
    });
    assert_eq!(
        edit.unwrap(),
        Edit {
            relabel: vec![(1, "glass".into()), (3, "glass".into())],
            delete: vec![],
            classes: Some(names(&["glass", "pen", "mug"])),
        }
    );
    assert_eq!(r.s.classes(), ["glass", "pen", "mug"]);
    assert_eq!(
        r.labels(),
        vec![(1, "glass".into()), (2, "pen".into()), (3, "glass".into())]
    );
    // Relabel and delete samples.
    r.act(
        60,
        Action::RelabelSamples {
            ids: vec![3],
            to: "mug".into(),
        },
    );
    r.act(70, Action::DeleteSamples(vec![2, 2]));
    assert_eq!(r.labels(), vec![(1, "glass".into()), (3, "mug".into())]);
    // Remove a class: its samples go with it.
    r.take_events();
    r.act(80, Action::RemoveClass("glass".into()));
    assert!(matches!(
        &r.take_events()[..],
        [Event::ClassRemoved { name, samples: 1, .. }] if name == "glass"
    ));
    assert_eq!(r.s.classes(), ["pen", "mug"]);
    assert_eq!(r.labels(), vec![(3, "mug".into())]);
    // Refused, with nothing changed: bad names, duplicates, unknown classes and samples.
    let before = (r.s.classes().to_vec(), r.labels(), r.s.generation());
    for bad in [
        Action::AddClass("unknown".into()),
        Action::AddClass("a/b".into()),
        Action::AddClass("pen".into()),
        Action::RenameClass {
            from: "nope".into(),
            to: "x".into(),
        },
        Action::RenameClass {
            from: "pen".into(),
            to: "mug".into(),
        },
        Action::RemoveClass("nope".into()),
        Action::DeleteSamples(vec![99]),
        Action::DeleteSamples(vec![]),
        Action::RelabelSamples {
            ids: vec![3],
            to: "nope".into(),
        },
    ] {
        r.act(90, bad.clone());
        let ev = r.take_events();
        assert!(
            matches!(&ev[..], [Event::ActionRefused { .. }]),
            "{bad:?} gave {ev:?}"
        );
    }
    assert_eq!(
        (r.s.classes().to_vec(), r.labels(), r.s.generation()),
        before
    );
}

#[test]
fn an_import_adds_staged_samples_and_their_new_classes_once_the_store_commits() {
    let mut r = Rig::new(&["cup", "pen"]);
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.take_events();
    let gen0 = r.s.generation();
    let info = |id, label: &str| SampleInfo {
        id,
        label: label.into(),
        time_ms: 5,
        thumb_sha256: format!("t{id}"),
        press: id,
    };
    // Staged with ids reserved past the capture; one brings a new class.
    let staged = vec![info(3, "pen"), info(4, "mug"), info(5, "mug")];
    r.feed(
        20,
        Input::Action {
            action: Action::Import(staged.clone()),
            origin: http(7, 20),
        },
    );
    let req = r.effects.iter().find_map(|e| match e {
        Effect::Store(StoreRequest::Import {
            samples, classes, ..
        }) => Some((samples.len(), classes.clone())),
        _ => None,
    });
    assert_eq!(req, Some((3, Some(names(&["cup", "pen", "mug"])))));
    assert!(matches!(
        &r.take_events()[..],
        [Event::Imported { samples: 3, classes_added, origin }, ..]
            if *classes_added == names(&["mug"]) && origin.request == Some(7)
    ));
    assert_eq!(r.s.classes(), ["cup", "pen", "mug"]);
    assert_eq!(
        r.labels(),
        vec![
            (1, "cup".into()),
            (3, "pen".into()),
            (4, "mug".into()),
            (5, "mug".into())
        ]
    );
    assert!(r.s.generation() > gen0, "learned from at the next tick");
    // Refused, nothing changed: nothing to import, an id it has, a bad label, too many classes.
    let before = (r.s.classes().to_vec(), r.labels(), r.s.generation());
    let too_many: Vec<SampleInfo> = (0..MAX_CLASSES as u64)
        .map(|k| info(100 + k, &format!("c{k}")))
        .collect();
    for bad in [vec![], vec![info(4, "mug")], vec![info(9, "a/b")], too_many] {
        r.act(30, Action::Import(bad));
        let ev = r.take_events();
        assert!(matches!(&ev[..], [Event::ActionRefused { .. }]), "{ev:?}");
    }
    // A store refusal (the disk filled up while renaming) is told and changes nothing.
    r.refuse = Some(Refusal::DiskFull);
    r.act(40, Action::Import(vec![info(10, "cup")]));
    assert!(matches!(
        &r.take_events()[..],
        [Event::ActionRefused { action, .. }, ..] if action.contains("Import(1 samples)")
    ));
    assert_eq!(
        (r.s.classes().to_vec(), r.labels(), r.s.generation()),
        before
    );
}

#[test]
fn the_mirrors_change_only_when_the_store_acknowledges() {
    let mut r = Rig::new(&["cup"]);
    r.take_events();
    r.refuse = Some(Refusal::ReadOnly);
    r.act(10, Action::AddClass("pen".into()));
    r.act(20, Action::Capture(ClassRef::Index(0)));
    let ev = r.take_events();
    assert!(
        matches!(&ev[0], Event::ActionRefused { reason, .. } if reason.contains("cannot be written"))
    );
    assert!(matches!(
        &ev[1],
        Event::CaptureRefused {
            reason: Refusal::ReadOnly,
            ..
        }
    ));
    assert_eq!(
        (r.s.classes(), r.s.samples().len(), r.s.generation()),
        (&names(&["cup"])[..], 0, 0)
    );
    let st = r.s.status(30);
    assert_eq!((st.errors.store, st.errors.captures_refused), (2, 1));
    assert!(st.last_error.unwrap().contains("cannot be written"));
}

#[test]
fn a_full_disk_refuses_the_capture_with_an_alert_and_the_next_press_retries() {
    let mut r = Rig::new(&["a"]);
    r.take_events();
    r.refuse = Some(Refusal::DiskFull);
    r.act(100, Action::Capture(ClassRef::Index(0)));
    assert!(r.effects.contains(&Effect::Show(Lamp::Alert)));
    assert!(matches!(
        &r.take_events()[..],
        [Event::CaptureRefused {
            reason: Refusal::DiskFull,
            ..
        }]
    ));
    // The alert ends on its own and the class is shown again.
    assert_eq!(r.s.next_deadline(100), 100 + cfg().alert_ms);
    r.tick(100 + cfg().alert_ms);
    assert!(r.effects.contains(&Effect::Show(Lamp::Class(None))));
    // Space was freed: the next press is stored.
    r.refuse = None;
    r.frame(2000, None);
    r.act(2000, Action::Capture(ClassRef::Index(0)));
    assert!(
        r.take_events()
            .iter()
            .any(|e| matches!(e, Event::CaptureSaved { .. }))
    );
    assert_eq!(r.s.status(2000).errors.captures_refused, 1);
}

#[test]
fn a_head_that_cannot_be_saved_is_retried_with_backoff() {
    let mut r = Rig::new(&["a"]);
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.refuse = Some(Refusal::DiskFull);
    r.tick(10);
    assert!(r.s.head().is_some(), "the head is used even if not saved");
    let retries = |r: &mut Rig, t: u64| {
        r.frame(t, None);
        r.effects.clear();
        r.tick(t);
        r.effects
            .iter()
            .filter(|e| matches!(e, Effect::Store(StoreRequest::SaveHead { .. })))
            .count()
    };
    // 1 s after the failure, then 2 s after that (the alert's end at 1510 retries nothing).
    assert!(r.s.next_deadline(10) <= 10 + SAVE_RETRY_MS);
    assert_eq!(retries(&mut r, 1009), 0);
    assert_eq!(retries(&mut r, 1010), 1);
    assert_eq!(retries(&mut r, 1510), 0);
    assert_eq!(retries(&mut r, 3009), 0, "backoff doubles");
    r.refuse = None;
    assert_eq!(retries(&mut r, 3010), 1);
    assert_eq!(retries(&mut r, 9000), 0, "saved: no more retries");
    assert_eq!(r.s.status(9000).errors.store, 2);
}

#[test]
fn camera_loss_is_an_alert_and_its_return_shows_the_class_again() {
    let mut r = Rig::new(&["a"]);
    r.act(10, Action::Capture(ClassRef::Index(0)));
    r.tick(10);
    r.frame(100, Some(0));
    r.take_events();
    let timeout = cfg().camera_timeout_ms;
    assert_eq!(r.s.next_deadline(200), 100 + timeout + 1);
    r.tick(100 + timeout);
    assert!(r.take_events().is_empty(), "not yet");
    r.tick(101 + timeout);
    assert!(r.effects.contains(&Effect::Show(Lamp::Alert)));
    assert!(matches!(
        &r.take_events()[..],
        [Event::CameraLost { silent_ms }] if *silent_ms == timeout + 1
    ));
    assert_eq!(r.s.status(4000).camera, CameraState::Lost);
    // No frame: a capture is refused, not stored from a stale frame.
    r.act(5000, Action::Capture(ClassRef::Index(0)));
    assert!(matches!(
        &r.take_events()[..],
        [Event::CaptureRefused {
            reason: Refusal::NoFrame,
            ..
        }]
    ));
    // Camera errors keep it lost; a frame brings it back and the class is shown again.
    r.feed(6000, Input::Fault(Fault::Camera("gone".into())));
    r.take_events();
    r.frame(7000, Some(0));
    assert!(r.effects.contains(&Effect::Show(Lamp::Class(Some(0)))));
    assert!(matches!(
        &r.take_events()[..],
        [Event::CameraBack { after_ms: 6900 }]
    ));
    assert_eq!(r.s.status(7000).camera, CameraState::Live);
}

#[test]
fn a_camera_that_never_starts_is_lost_after_the_timeout() {
    let mut s = Session::new(cfg(), 1000, names(&["a"]), Vec::new(), None);
    let fx = s.step(1000 + cfg().camera_timeout_ms + 1, Input::Tick);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Publish(Event::CameraLost { .. })))
    );
}

#[test]
fn faults_are_counted_every_time_and_reported_at_most_every_ten_seconds() {
    let mut r = Rig::new(&["a"]);
    r.take_events();
    for t in 0..100 {
        r.feed(
            1000 + t * 10,
            Input::Fault(Fault::Backbone(format!("err {t}"))),
        );
    }
    let ev = r.take_events();
    assert!(
        matches!(
            &ev[..],
            [Event::Fault {
                kind: FaultKind::Backbone,
                count: 1,
                ..
            }]
        ),
        "{ev:?}"
    );
    r.feed(11_000, Input::Fault(Fault::Backbone("again".into())));
    assert!(matches!(
        &r.take_events()[..],
        [Event::Fault { count: 100, message, .. }] if message == "again"
    ));
    let st = r.s.status(11_000);
    assert_eq!(st.errors.backbone, 101);
    assert_eq!(
        st.camera,
        CameraState::Live,
        "a model error is not a camera problem"
    );
    // Torn frames are counted as frame faults, and do not count as camera life.
    r.feed(20_000, Input::Fault(Fault::Frame("torn".into())));
    assert_eq!(r.s.status(20_000).errors.frame, 1);
}

#[test]
fn the_display_needs_a_majority_and_reports_only_changes() {
    let mut s = Session::new(
        SessionConfig::default(),
        0,
        names(&["a", "b", "c"]),
        Vec::new(),
        Some(head(&["a", "b", "c"], 3)),
    );
    let mut shown = |t: u64, class: Option<usize>| -> Option<Option<String>> {
        s.step(
            t,
            Input::Frame(FrameReport {
                guess: Some(Guess {
                    best: 0,
                    margin: 1.0,
                    class,
                    confidence: 0.8,
                }),
                tag: String::new(),
                stages: Stages::default(),
            }),
        )
        .into_iter()
        .find_map(|e| match e {
            Effect::Publish(Event::ClassShown { class, .. }) => Some(class),
            _ => None,
        })
    };
    assert_eq!(shown(0, Some(1)), Some(Some("b".into())));
    assert_eq!(shown(1, Some(1)), None);
    assert_eq!(
        shown(2, Some(2)),
        None,
        "one odd frame does not flip the display"
    );
    assert_eq!(shown(3, Some(2)), None);
    assert_eq!(shown(4, Some(2)), Some(Some("c".into())));
    assert_eq!(shown(5, None), None);
}

#[test]
fn the_smoothing_window_is_configurable() {
    let one = SessionConfig {
        smoothing: 1,
        ..SessionConfig::default()
    };
    let three = SessionConfig {
        smoothing: 3,
        ..SessionConfig::default()
    };
    for (cfg, flips_at) in [(one, 1), (three, 2)] {
        let mut s = Session::new(
            cfg,
            0,
            names(&["a", "b"]),
            Vec::new(),
            Some(head(&["a", "b"], 2)),
        );
        let frame = |class| {
            Input::Frame(FrameReport {
                guess: Some(Guess {
                    best: 0,
                    margin: 1.0,
                    class: Some(class),
                    confidence: 0.8,
                }),
                tag: String::new(),
                stages: Stages::default(),
            })
        };
        for t in 0..10 {
            s.step(t, frame(0));
        }
        let mut n = 0;
        loop {
            n += 1;
            let fx = s.step(100 + n, frame(1));
            if fx
                .iter()
                .any(|e| matches!(e, Effect::Publish(Event::ClassShown { .. })))
            {
                break;
            }
        }
        assert_eq!(n, flips_at, "old votes beyond the window do not count");
    }
}

#[test]
fn status_and_watchdog_come_on_schedule() {
    let c = SessionConfig {
        watchdog_every_ms: Some(200),
        camera_timeout_ms: 60_000,
        ..SessionConfig::default()
    };
    let mut s = Session::new(c, 0, names(&["a"]), Vec::new(), None);
    let mut pings = 0;
    let mut statuses = Vec::new();
    let mut t = 0;
    while t <= 3000 {
        for e in s.step(t, Input::Tick) {
            match e {
                Effect::PingWatchdog => pings += 1,
                Effect::Publish(Event::Status(st)) => statuses.push((t, st.uptime_s)),
                _ => {}
            }
        }
        t = s.next_deadline(t).max(t + 1);
    }
    assert_eq!(pings, 16, "every 200 ms from 0 to 3000");
    assert_eq!(statuses, vec![(0, 0), (1000, 1), (2000, 2), (3000, 3)]);
}

#[test]
fn fps_is_measured_from_the_frame_times() {
    let mut r = Rig::new(&["a"]);
    for t in (100..=2000).step_by(100) {
        r.frame(t, None);
        r.tick(t);
    }
    // The window from 1000 to 2000 saw the frames of 1100..=2000.
    assert_eq!(r.s.status(2000).fps, 10.0);
}

#[test]
fn a_loaded_head_is_used_at_once_and_without_one_the_samples_are_imprinted() {
    let samples = vec![SampleInfo {
        id: 4,
        label: "a".into(),
        time_ms: 1,
        thumb_sha256: String::new(),
        press: 4,
    }];
    let s = Session::new(
        cfg(),
        0,
        names(&["a"]),
        samples.clone(),
        Some(head(&["a"], 1)),
    );
    assert!(s.head().is_some());
    assert_eq!(s.next_deadline(0), 0, "status at once");
    let mut s = Session::new(cfg(), 0, names(&["a"]), samples, None);
    let fx = s.step(0, Input::Tick);
    assert!(fx.contains(&Effect::Imprint {
        generation: 0,
        classes: names(&["a"])
    }));
}

#[test]
fn the_state_directory_class_list_wins_over_the_configured_one() {
    let cfgd = names(&["a", "b"]);
    assert_eq!(
        resolve_classes(&cfgd, Some(&names(&["x"])), &["a"]),
        (names(&["x"]), false)
    );
    // First start: the configuration, plus labels of imported samples it lacks.
    assert_eq!(
        resolve_classes(&cfgd, None, &["b", "imported", "bad/name"]),
        (names(&["a", "b", "imported"]), true)
    );
}
