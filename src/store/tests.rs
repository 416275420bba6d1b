use super::batch::{BATCH_PREFIX, UPLOAD_PREFIX};
use super::*;

fn labels(s: &Store) -> Vec<(u64, String)> {
    s.samples()
        .iter()
        .map(|s| (s.id, s.label.clone()))
        .collect()
}

#[test]
fn add_reopen_undo_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, r) = Store::open(d.path()).unwrap();
    assert_eq!(r.samples, 0);
    let a = s.add("cup", &[1.0, 2.0], b"jpg-a", 10).unwrap();
    let b = s.add("pen", &[3.0, 4.0], b"jpg-b", 11).unwrap();
    assert!(b > a);
    drop(s);
    let (mut s, r) = Store::open(d.path()).unwrap();
    assert_eq!((r.samples, r.index_rebuilt), (2, false));
    assert_eq!(s.samples()[1].embedding, vec![3.0, 4.0]);
    assert_eq!(
        s.counts(&["cup".into(), "pen".into(), "x".into()]),
        vec![1, 1, 0]
    );
    s.apply(&Edit::delete(vec![b])).unwrap();
    assert!(
        !d.path().join("journal").exists(),
        "journal removed once done"
    );
    drop(s);
    let (s, _) = Store::open(d.path()).unwrap();
    assert_eq!(s.ids().into_iter().collect::<Vec<_>>(), vec![a]);
    drop(s);
    assert!(matches!(
        Store::open(d.path()).unwrap().0.add("x", &[1.0], b"", 0),
        Err(StoreError::Dim { .. })
    ));
}

/// One writer per state directory, and the refusal names the holder.
#[test]
fn a_second_writer_is_refused_naming_the_holder_until_the_first_closes() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(d.path()).unwrap();
    let e = Store::open(d.path()).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("process {}", std::process::id())) && msg.contains("in use"),
        "{msg}"
    );
    drop(s);
    let (s, _) = Store::open(d.path()).unwrap();
    drop(s);
}

/// A checksum-valid record with an unusable embedding is
/// quarantined at open (never loaded); quarantine never overwrites an earlier one, moves
/// the thumbnail along, and the quarantined ids are never given again.
#[test]
fn unusable_embeddings_are_quarantined_without_overwriting_and_ids_are_not_reused() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    for i in 0..3 {
        s.add("a", &[1.0 + i as f32; 4], format!("t{i}").as_bytes(), i)
            .unwrap();
    }
    let poison = |s: &Store, id: u64, e: Vec<f32>| {
        let mut bad = s.samples().iter().find(|x| x.id == id).unwrap().clone();
        bad.embedding = e;
        write_record(d.path(), &bad).unwrap();
    };
    // The newest record gets a NaN: it is quarantined with its thumbnail.
    poison(&s, 3, vec![f32::NAN; 4]);
    drop(s);
    let (mut s, rep) = Store::open(d.path()).unwrap();
    assert_eq!(
        rep.quarantined,
        vec![d.path().join("quarantine/00000003.rec")]
    );
    assert!(d.path().join("quarantine/00000003.jpg").exists());
    assert!(
        s.samples()
            .iter()
            .all(|x| x.embedding.iter().all(|v| v.is_finite()))
    );
    // Its id is not reused: the next capture is 4, and 3's files stay as they were.
    assert_eq!(s.add("a", &[5.0; 4], b"new", 9).unwrap(), 4);
    // A second record of the same name in quarantine does not replace the first.
    let first = std::fs::read(d.path().join("quarantine/00000003.rec")).unwrap();
    std::fs::copy(
        d.path().join("quarantine/00000003.rec"),
        d.path().join("samples/00000003.rec"),
    )
    .unwrap();
    drop(s);
    let (s, rep) = Store::open(d.path()).unwrap();
    assert_eq!(
        rep.quarantined,
        vec![d.path().join("quarantine/00000003.rec.2")]
    );
    assert_eq!(
        std::fs::read(d.path().join("quarantine/00000003.rec")).unwrap(),
        first
    );
    // An infinite value and an empty embedding are refused too.
    poison(&s, 4, vec![f32::INFINITY; 4]);
    poison(&s, 2, Vec::new());
    drop(s);
    let (mut s, rep) = Store::open(d.path()).unwrap();
    assert_eq!(rep.quarantined.len(), 2);
    assert_eq!(s.ids().into_iter().collect::<Vec<_>>(), vec![1]);
    // Even with the index gone, no id still named in quarantine/ is given again.
    drop(s);
    std::fs::remove_file(d.path().join("index")).unwrap();
    let (mut t, _) = Store::open(d.path()).unwrap();
    assert_eq!(t.add("a", &[1.0; 4], b"later", 10).unwrap(), 5);
    s = t;
    // A record claiming the current backbone with another length is quarantined once
    // the backbone's dimension is known (before it could break every capture).
    s.set_backbone("bb");
    s.add("a", &[1.0; 4], b"four", 11).unwrap();
    let mut wrong = s.samples().last().unwrap().clone();
    wrong.id = 7;
    wrong.embedding = vec![1.0; 3];
    write_record(d.path(), &wrong).unwrap();
    drop(s);
    let (mut s, _) = Store::open(d.path()).unwrap();
    s.set_backbone("bb");
    let moved = s.quarantine_mismatched(4).unwrap();
    assert_eq!(moved, vec![d.path().join("quarantine/00000007.rec")]);
    assert!(s.samples().iter().all(|x| x.embedding.len() == 4));
}

#[test]
fn torn_index_is_rebuilt_and_corrupt_records_quarantined() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    for i in 0..5 {
        s.add("a", &[1.0 + i as f32; 4], b"t", i).unwrap();
    }
    drop(s);
    // Tear the index and flip a byte in one record; leave stray temp files (ours, and
    // a user's file that only looks like one).
    let idx = d.path().join("index");
    let bytes = std::fs::read(&idx).unwrap();
    std::fs::write(&idx, &bytes[..bytes.len() / 2]).unwrap();
    let rec = d.path().join("samples/00000003.rec");
    let mut r = std::fs::read(&rec).unwrap();
    let n = r.len();
    r[n - 40] ^= 1;
    std::fs::write(&rec, r).unwrap();
    std::fs::write(d.path().join("samples/.00000006.rec.tmp123"), b"partial").unwrap();
    std::fs::write(d.path().join(".head.current.tmp77"), b"partial").unwrap();
    std::fs::write(d.path().join(".notes.tmp"), b"mine").unwrap();
    let (s, rep) = Store::open(d.path()).unwrap();
    assert!(rep.index_rebuilt);
    assert_eq!(rep.quarantined.len(), 1);
    assert_eq!(rep.temp_removed, 2);
    assert!(d.path().join(".notes.tmp").exists(), "not ours: kept");
    assert_eq!(s.ids().into_iter().collect::<Vec<_>>(), vec![1, 2, 4, 5]);
    assert!(
        d.path().join("quarantine/00000003.rec").exists(),
        "corrupt data is kept"
    );
    // The next capture never reuses an id that is still on disk.
    drop(s);
    let (mut s, rep) = Store::open(d.path()).unwrap();
    assert!(!rep.index_rebuilt);
    assert_eq!(s.add("a", &[0.0; 4], b"t", 9).unwrap(), 6);
}

#[test]
fn only_temp_files_this_program_names_are_removed() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    s.add("a", &[1.0], b"t", 1).unwrap();
    drop(s);
    let sdir = d.path().join("samples");
    for user in [".my.tmpnotes", ".notes.tmp", ".00000001.txt.tmp5", "x.tmp1"] {
        std::fs::write(sdir.join(user), b"mine").unwrap();
    }
    let ours = [".00000002.rec.teachcam-tmp.77.0", ".00000002.jpg.tmp42"];
    for t in ours {
        std::fs::write(sdir.join(t), b"partial").unwrap();
    }
    let (_, rep) = Store::open(d.path()).unwrap();
    assert_eq!(rep.temp_removed, 2);
    for user in [".my.tmpnotes", ".notes.tmp", ".00000001.txt.tmp5", "x.tmp1"] {
        assert!(sdir.join(user).exists(), "{user} was deleted");
    }
    for t in ours {
        assert!(!sdir.join(t).exists(), "{t} left behind");
    }
}

#[test]
fn a_batch_adds_all_or_nothing_with_one_index_write() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    s.add("a", &[1.0, 0.0], b"first", 1).unwrap();
    // Dropped before commit: nothing added, nothing left.
    let mut b = s.begin_batch().unwrap();
    b.stage(Capture {
        label: "b",
        embedding: &[0.0, 1.0],
        thumb_jpeg: b"x",
        time_ms: 2,
        press: None,
    })
    .unwrap();
    assert!(matches!(
        b.stage(Capture {
            label: "b",
            embedding: &[0.0, 1.0, 2.0],
            thumb_jpeg: b"y",
            time_ms: 2,
            press: None,
        }),
        Err(StoreError::Dim { want: 2, got: 3 })
    ));
    drop(b);
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(BATCH_PREFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(s.samples().len(), 1);
    // Committed: every sample arrives, ids continue, the reopened store agrees.
    let mut b = s.begin_batch().unwrap();
    for i in 0..5 {
        b.stage(Capture {
            label: "b",
            embedding: &[i as f32, 1.0],
            thumb_jpeg: format!("t{i}").as_bytes(),
            time_ms: 10 + i,
            press: None,
        })
        .unwrap();
    }
    assert_eq!(b.len(), 5);
    assert_eq!(s.commit_batch(b).unwrap(), 5);
    assert_eq!(s.add("c", &[1.0, 1.0], b"after", 3).unwrap(), 7);
    drop(s);
    let (s, rep) = Store::open(d.path()).unwrap();
    assert!(!rep.index_rebuilt, "the batch wrote the index");
    assert_eq!(
        s.ids().into_iter().collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(s.samples()[3].time_ms, 12);
    assert_eq!(s.thumbnail(4).unwrap(), b"t2");
}

#[test]
fn a_reserved_batch_staged_beside_captures_takes_ids_no_capture_takes() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    s.add("a", &[1.0, 0.0], b"first", 1).unwrap();
    let ids = s.id_reserver().reserve(3);
    assert_eq!(ids, 2..5);
    // Captures while the batch is staged (on another thread in the console) go after it.
    assert_eq!(s.add("a", &[1.0, 1.0], b"during", 2).unwrap(), 5);
    let mut b = Batch::begin_reserved(d.path(), ids, "", 2).unwrap();
    fn cap<'a>(embedding: &'a [f32], thumb_jpeg: &'a [u8], time_ms: u64) -> Capture<'a> {
        Capture {
            label: "b",
            embedding,
            thumb_jpeg,
            time_ms,
            press: None,
        }
    }
    for i in 0..3 {
        let thumb = format!("t{i}");
        b.stage(cap(&[i as f32, 1.0], thumb.as_bytes(), 10 + i))
            .unwrap();
    }
    assert!(
        b.stage(cap(&[9.0, 1.0], b"extra", 20)).is_err(),
        "no more than the ids reserved"
    );
    assert!(
        matches!(
            b.stage(cap(&[1.0], b"short", 20)),
            Err(StoreError::Dim { .. })
        ),
        "the dimension it was told"
    );
    assert_eq!(
        b.infos().iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(s.commit_batch(b).unwrap(), 3);
    assert_eq!(
        s.samples().iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "kept in id order"
    );
    assert_eq!(s.add("c", &[0.5, 0.5], b"after", 3).unwrap(), 6);
    // A refused capture takes no id.
    assert!(s.add("bad/name", &[0.5, 0.5], b"x", 4).is_err());
    drop(s);
    let (s, rep) = Store::open(d.path()).unwrap();
    assert!(!rep.index_rebuilt, "the index was written in id order");
    assert_eq!(
        s.ids().into_iter().collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(s.thumbnail(3).unwrap(), b"t1");
    // Reserved ids never committed are not reused either.
    let r = s.id_reserver().reserve(2);
    assert_eq!(r, 7..9);
    let mut s = s;
    drop(Batch::begin_reserved(d.path(), r, "", 2).unwrap());
    assert_eq!(s.add("c", &[0.5, 0.5], b"later", 5).unwrap(), 9);
}

#[test]
fn a_batch_abandoned_by_a_dead_process_is_removed_on_open() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(d.path()).unwrap();
    drop(s);
    // A process id that cannot be alive (above the kernel's pid_max).
    let dead = d.path().join(format!("{BATCH_PREFIX}{}", i32::MAX));
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("00000001.rec"), b"staged").unwrap();
    // And an upload the web console of a dead process was checking.
    let upload = d.path().join(format!("{UPLOAD_PREFIX}{}.tar", i32::MAX));
    std::fs::write(&upload, b"tar").unwrap();
    let (s, rep) = Store::open(d.path()).unwrap();
    assert!(!dead.exists() && !upload.exists());
    assert_eq!((rep.temp_removed, s.samples().len()), (2, 0));
    // This process's upload is not touched.
    std::fs::write(upload_path(d.path()), b"tar").unwrap();
    drop(s);
    Store::open(d.path()).unwrap();
    assert!(upload_path(d.path()).exists());
}

#[test]
fn thumbnails_are_checked_and_embeddings_replaced_in_place() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    s.set_backbone("old");
    let id = s.add("cup", &[1.0, 2.0], b"thumb", 5).unwrap();
    assert_eq!(s.thumbnail(id).unwrap(), b"thumb");
    s.set_backbone("new");
    s.replace_embedding(id, &[7.0, 8.0, 9.0]).unwrap();
    drop(s);
    let (s, _) = Store::open(d.path()).unwrap();
    let got = &s.samples()[0];
    assert_eq!(
        (got.embedding.as_slice(), got.backbone.as_str()),
        (&[7.0, 8.0, 9.0][..], "new")
    );
    assert_eq!((got.label.as_str(), got.time_ms), ("cup", 5));
    std::fs::write(d.path().join(format!("samples/{id:08}.jpg")), b"other").unwrap();
    assert!(
        s.thumbnail(id)
            .unwrap_err()
            .to_string()
            .contains("checksum")
    );
    assert!(matches!(s.thumbnail(99), Err(StoreError::NoSample(99))));
}

#[test]
fn heads_keep_the_previous_one_and_fall_back_to_it() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(d.path()).unwrap();
    assert!(s.load_head().is_none());
    let mut h = Head {
        classes: vec!["a".into()],
        dim: 1,
        mean: vec![0.0],
        inv_std: vec![1.0],
        weights: vec![1.0],
        bias: vec![0.0],
        threshold: 0.5,
        backbone: Default::default(),
        info: Default::default(),
    };
    s.save_head(&h).unwrap();
    h.bias = vec![1.0];
    s.save_head(&h).unwrap();
    assert_eq!(s.load_head().unwrap().bias, vec![1.0]);
    std::fs::write(d.path().join("head.current"), b"garbage").unwrap();
    assert_eq!(
        s.load_head().unwrap().bias,
        vec![0.0],
        "falls back to head.previous"
    );
}

#[test]
fn edits_relabel_delete_and_keep_the_class_list() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    assert_eq!(s.classes(), None);
    for (i, l) in ["a", "b", "a", "c"].iter().enumerate() {
        s.add(l, &[1.0 + i as f32], b"t", i as u64).unwrap();
    }
    let edit = Edit {
        relabel: vec![(1, "z".into()), (3, "z".into())],
        delete: vec![4],
        classes: Some(vec!["z".into(), "b".into()]),
    };
    s.apply(&edit).unwrap();
    let want = vec![(1, "z".to_string()), (2, "b".into()), (3, "z".into())];
    assert_eq!(labels(&s), want);
    drop(s);
    let (s, rep) = Store::open(d.path()).unwrap();
    assert!(!rep.edit_completed && !rep.index_rebuilt);
    assert_eq!(labels(&s), want);
    assert_eq!(s.classes().unwrap(), ["z", "b"]);
    // Unknown samples and bad labels are refused and change nothing.
    let mut s = s;
    assert!(matches!(
        s.apply(&Edit::delete(vec![1, 42])),
        Err(StoreError::NoSample(42))
    ));
    let bad = Edit {
        relabel: vec![(1, "a/b".into())],
        ..Edit::default()
    };
    assert!(matches!(s.apply(&bad), Err(StoreError::BadLabel { .. })));
    assert_eq!(labels(&s), want);
}

#[test]
fn a_crash_after_the_journal_is_completed_at_the_next_open() {
    // Simulate a kill after the commit point: the journal is written and only the first
    // record was relabelled before the process died.
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(d.path()).unwrap();
    for i in 0..4 {
        s.add("old", &[1.0 + i as f32], b"t", i).unwrap();
    }
    drop(s);
    let edit = Edit {
        relabel: vec![(1, "new".into()), (2, "new".into())],
        delete: vec![3],
        classes: Some(vec!["new".into()]),
    };
    let meta = serde_json::to_value(&edit).unwrap();
    atomic_write(
        &d.path().join("journal"),
        &framed::encode(JOURNAL_KIND, 1, &meta, &[]),
    )
    .unwrap();
    let first = Edit {
        relabel: vec![(1, "new".into())],
        ..Edit::default()
    };
    complete(d.path(), &first).unwrap();
    let (s, rep) = Store::open(d.path()).unwrap();
    assert!(rep.edit_completed);
    assert!(!d.path().join("journal").exists());
    assert_eq!(
        labels(&s),
        vec![(1, "new".into()), (2, "new".into()), (4, "old".into())]
    );
    assert_eq!(s.classes().unwrap(), ["new"]);
    // Completing again (a second crash during completion) changes nothing more.
    complete(d.path(), &edit).unwrap();
    let before = labels(&s);
    drop(s);
    let (s2, _) = Store::open(d.path()).unwrap();
    assert_eq!(labels(&s2), before);
    drop(s2);
    // A journal that fails its checksum is not guessed at: the open names it.
    std::fs::write(d.path().join("journal"), b"teachcam-journal 1\n{}\nxx").unwrap();
    let e = Store::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("journal") && e.contains("corrupt"), "{e}");
}

#[test]
fn io_failures_are_classified_for_the_appliance() {
    let full = StoreError::Io {
        path: "x".into(),
        source: std::io::Error::from(std::io::ErrorKind::StorageFull),
    };
    let ro = StoreError::Io {
        path: "x".into(),
        source: std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem),
    };
    assert_eq!(full.cause(), Cause::DiskFull);
    assert_eq!(ro.cause(), Cause::ReadOnly);
    assert_eq!(StoreError::NoSample(1).cause(), Cause::Other);
}
