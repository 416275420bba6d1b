//! Hostile inputs and real faults: each test drives the real executable the way a hostile
//! probe would, and asserts what a user must get instead. Inputs are
//! made here (synthetic scenes, crafted files); nothing outside the repository is read except
//! `/etc/passwd` (as a file that is not a tarball) and `/dev/null`.
//!
//! Also here: the crash test run under more faults than `tests/cli.rs`'s (SIGKILL during
//! imports, and with a full disk part of the time), parameterised by `TEACHCAM_KILLS` and
//! `TEACHCAM_KILL_SEED` (`make kill-test` runs 1000 kills).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_teachcam"));
    c.env_remove("TEACHCAM_MODELS")
        .env_remove("TEACHCAM_MAX_PIXELS");
    c
}

fn teachcam(args: &[&str]) -> Output {
    bin().args(args).output().expect("run teachcam")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn ok(args: &[&str]) -> String {
    let o = teachcam(args);
    assert!(o.status.success(), "teachcam {args:?} failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// Exit code 2 with a one-line error; returns it.
fn fails(args: &[&str]) -> String {
    let o = teachcam(args);
    assert_eq!(o.status.code(), Some(2), "teachcam {args:?}: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The lines `child` prints on its (piped) stdout, read on a thread of their own; the
/// channel ends when the output does.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn synth(dir: &Path, train: usize, val: usize, seed: u64) -> PathBuf {
    let d = dir.join(format!("data{seed}"));
    ok(&[
        "synth",
        s(&d),
        "--train",
        &train.to_string(),
        "--val",
        &val.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    d
}

/// Sample ids in a state directory (opened read-write, as the program does).
fn ids(state: &Path) -> Vec<u64> {
    let (store, rep) = teachcam::store::Store::open(state).unwrap();
    assert!(rep.quarantined.is_empty(), "{rep:?}");
    store.ids().into_iter().collect()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 60]));
    teachcam::frame::encode_jpeg(&img).unwrap()
}

/// A head trained on a small synthetic set (for classify).
fn head(dir: &Path) -> (PathBuf, PathBuf) {
    let data = synth(dir, 2, 1, 1);
    let h = dir.join("h.head");
    ok(&["train", s(&data), "--out", s(&h), "--val-split", "0"]);
    (data, h)
}

/// Truncated images and decompression bombs are refused with the file named, in
/// classify, embed and image-folder import; the pixel limit is configurable.
#[test]
fn truncated_images_and_pixel_bombs_are_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let (data, h) = head(t.path());
    let good = std::fs::read(data.join("val/ball/000.jpg")).unwrap();
    let cut = t.path().join("cut.jpg");
    std::fs::write(&cut, &good[..700.min(good.len() / 2)]).unwrap();
    let e = fails(&["classify", "--head", s(&h), s(&cut)]);
    assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");

    // 22000 x 22000 declared in the header of a tiny PNG, and a 12000^2 JPEG header.
    let mut png = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&22000u32.to_be_bytes());
    png[20..24].copy_from_slice(&22000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let bomb = t.path().join("bomb.png");
    std::fs::write(&bomb, &png).unwrap();
    let mut j = jpeg(8, 8);
    let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    j[sof + 5..sof + 9].copy_from_slice(&[0x2E, 0xE0, 0x2E, 0xE0]);
    let jbomb = t.path().join("bomb.jpg");
    std::fs::write(&jbomb, &j).unwrap();
    let (o, rss) = run_measured(bin().args(["classify", "--head", s(&h), s(&jbomb)]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = text(&o);
    assert!(
        e.contains("bomb.jpg") && e.contains("megapixel limit"),
        "{e}"
    );
    assert!(
        rss < 400 << 20,
        "decoding was attempted: {rss} bytes resident"
    );
    let e = fails(&["classify", "--head", s(&h), s(&bomb)]);
    assert!(
        e.contains("22000x22000") && e.contains("TEACHCAM_MAX_PIXELS"),
        "{e}"
    );
    // The limit is a setting: a 256x192 image is refused under a 10 000-pixel limit.
    let o = bin()
        .args([
            "classify",
            "--head",
            s(&h),
            s(&data.join("val/ball/000.jpg")),
        ])
        .env("TEACHCAM_MAX_PIXELS", "10000")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // embed skips them, naming each; image-folder import refuses the whole folder.
    std::fs::copy(&cut, data.join("train/ball/zz_cut.jpg")).unwrap();
    std::fs::copy(&bomb, data.join("train/ring/zz_bomb.png")).unwrap();
    let o = teachcam(&["embed", s(&data), "--out", s(&t.path().join("c.tce"))]);
    let e = text(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("zz_cut.jpg") && e.contains("zz_bomb.png") && e.contains("2 of"),
        "{e}"
    );
    let state = t.path().join("state");
    let e = fails(&[
        "dataset",
        "import",
        "--state",
        s(&state),
        s(&data.join("train")),
    ]);
    assert!(
        e.contains("zz_") && e.contains("nothing was imported"),
        "{e}"
    );
    assert!(ids(&state).is_empty());
}

/// The CRC-32 of PNG chunks (a patched header must still be a valid chunk).
fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Peak resident memory of a child (from `wait4`'s rusage) and its output.
// The child is reaped by `wait4` below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (Output, u64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; the pid is our own unreaped child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: valid pointers to locals for the duration of the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    use std::os::unix::process::ExitStatusExt;
    let o = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: out,
        stderr: err,
    };
    (o, ru.ru_maxrss as u64 * 1024)
}

/// Datasets: a non-UTF-8 class folder is named, never
/// dropped; dangling links are named; what `synth` writes (train/ and val/) imports.
#[test]
fn image_folders_name_what_they_cannot_use_and_the_split_layout_imports() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let data = synth(t.path(), 2, 1, 4);
    let state = t.path().join("state");
    let out = ok(&["dataset", "import", "--state", s(&state), s(&data)]);
    assert!(out.contains("imported 9 samples"), "{out}");
    let raw = data
        .join("train")
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&raw).unwrap();
    std::fs::copy(data.join("train/ball/000.jpg"), raw.join("1.jpg")).unwrap();
    for args in [
        vec!["embed", s(&data), "--out", s(&t.path().join("never.tce"))],
        vec!["dataset", "import", "--state", s(&state), s(&data)],
    ] {
        let e = fails(&args);
        assert!(
            e.contains("caf\u{fffd}") && e.contains("UTF-8"),
            "{args:?}: {e}"
        );
    }
    std::fs::remove_dir_all(&raw).unwrap();
    std::os::unix::fs::symlink("missing.jpg", data.join("train/ring/zz.jpg")).unwrap();
    let o = teachcam(&["embed", s(&data), "--out", s(&t.path().join("c.tce"))]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("zz.jpg") && text(&o).contains("dangling"),
        "{}",
        text(&o)
    );
    assert_eq!(ids(&state).len(), 9, "refused imports added nothing");
}

/// A `dir:` camera over a tree with link cycles starts at once and shows each image
/// once (doctor and run both walk it).
#[test]
fn a_dir_camera_with_link_cycles_terminates_and_counts_each_image_once() {
    let t = tempfile::tempdir().unwrap();
    let data = synth(t.path(), 2, 0, 5);
    std::os::unix::fs::symlink(&data, data.join("train/ball/loop")).unwrap();
    std::os::unix::fs::symlink("..", data.join("train/up")).unwrap();
    let cam = format!("dir:{}", data.display());
    let state = t.path().join("state");
    let o = bin()
        .args(["doctor", "--state", s(&state), "--camera", &cam])
        .output()
        .unwrap();
    assert!(text(&o).contains("images found"), "{}", text(&o));
    let o = bin()
        .args([
            "run",
            "--state",
            s(&state),
            "--camera",
            &cam,
            "--duration",
            "1",
            "-v",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(6 images)"), "{}", text(&o));
}

/// `--out` and `--status` never replace a device or a link; a link is followed.
#[test]
fn outputs_never_replace_devices_and_follow_links() {
    let t = tempfile::tempdir().unwrap();
    let data = synth(t.path(), 1, 0, 6);
    let state = t.path().join("state");
    ok(&[
        "dataset",
        "import",
        "--state",
        s(&state),
        s(&data.join("train")),
    ]);
    let e = fails(&["dataset", "export", "--state", s(&state), "/dev/null"]);
    assert!(
        e.contains("/dev/null") && e.contains("character device"),
        "{e}"
    );
    {
        use std::os::unix::fs::FileTypeExt;
        let m = std::fs::metadata("/dev/null").unwrap();
        assert!(m.file_type().is_char_device(), "/dev/null was replaced");
    }
    // Exporting through a link writes the file it points to and keeps the link.
    let real = t.path().join("real.tar");
    let link = t.path().join("link.tar");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    ok(&["dataset", "export", "--state", s(&state), s(&link)]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::metadata(&real).unwrap().len() > 1024);
    // The status file: through a link, the target is written and the link kept.
    let status_real = t.path().join("status-real.json");
    let status_link = t.path().join("status.json");
    std::os::unix::fs::symlink(&status_real, &status_link).unwrap();
    ok(&[
        "run",
        "--state",
        s(&state),
        "--status",
        s(&status_link),
        "--duration",
        "1.5",
    ]);
    assert!(
        std::fs::symlink_metadata(&status_link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status_real).unwrap()).unwrap();
    assert!(v["frames"].is_u64(), "{v}");
}

/// Minor: a user's `.my.tmpnotes` in samples/ survives; only this program's temp names go.
#[test]
fn a_users_dot_tmp_file_in_the_state_survives() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    std::fs::create_dir_all(state.join("samples")).unwrap();
    std::fs::write(state.join("samples/.my.tmpnotes"), b"mine").unwrap();
    ok(&["run", "--state", s(&state), "--duration", "0.5"]);
    assert_eq!(
        std::fs::read(state.join("samples/.my.tmpnotes")).unwrap(),
        b"mine"
    );
}

/// A tarball's entries as (name, data).
type Entries = Vec<(String, Vec<u8>)>;

/// A tarball's entries as (name, data), in order, read with the `tar` crate (which accepts
/// everything it can, unlike the importer).
fn entries(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(tar_bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            (name, d)
        })
        .collect()
}

fn build(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn manifest_of(e: &[(String, Vec<u8>)]) -> serde_json::Value {
    serde_json::from_slice(&e.last().unwrap().1).unwrap()
}

fn set_manifest(e: &mut [(String, Vec<u8>)], m: &serde_json::Value) {
    e.last_mut().unwrap().1 = serde_json::to_vec(m).unwrap();
}

/// Replace sample `k`'s record with one whose embedding is `emb` (checksums all valid).
fn swap_embedding(e: &mut [(String, Vec<u8>)], k: usize, emb: &[f32]) {
    let rec_i = 2 * k + 1;
    let rec = &e[rec_i].1;
    let nl = rec.iter().position(|&b| b == b'\n').unwrap();
    let rest = &rec[nl + 1..];
    let nl2 = rest.iter().position(|&b| b == b'\n').unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&rest[..nl2]).unwrap();
    meta["dim"] = emb.len().into();
    let new = teachcam::framed::encode("teachcam-sample", 1, &meta, emb);
    let sha = teachcam::fsutil::sha256_hex(&new);
    e[rec_i].1 = new;
    let mut m = manifest_of(e);
    m["samples"][k]["rec_sha256"] = sha.into();
    set_manifest(e, &m);
}

/// Imports: crafted tarballs are refused whole,
/// nothing is added, nothing of the input is echoed, memory stays bounded.
#[test]
fn crafted_tarballs_are_refused_whole_and_nothing_is_added() {
    let t = tempfile::tempdir().unwrap();
    let data = synth(t.path(), 2, 0, 7);
    let a = t.path().join("a");
    ok(&[
        "dataset",
        "import",
        "--state",
        s(&a),
        s(&data.join("train")),
    ]);
    let tar = t.path().join("a.tar");
    ok(&["dataset", "export", "--state", s(&a), s(&tar)]);
    let base = entries(&std::fs::read(&tar).unwrap());
    assert_eq!(base.len(), 13, "6 samples x 2 files + manifest");
    let b = t.path().join("b");
    let try_import = |bytes: &[u8], name: &str| -> String {
        let p = t.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = fails(&["dataset", "import", "--state", s(&b), s(&p)]);
        assert!(ids(&b).is_empty(), "{name}: something was imported");
        e
    };
    let mut cases: Vec<(&str, Entries, &str)> = Vec::new();
    let mut m = base.clone();
    swap_embedding(&mut m, 3, &[f32::NAN; 1280]);
    cases.push(("nan.tar", m, "not a finite"));
    let mut m = base.clone();
    swap_embedding(&mut m, 1, &[1.0, 2.0, 3.0]);
    cases.push(("dim.tar", m, "3 values"));
    let mut m = base.clone();
    swap_embedding(&mut m, 2, &[0.0; 1280]);
    cases.push(("zero.tar", m, "norm"));
    let mut m = base.clone();
    let mut man = manifest_of(&m);
    man["samples"][4]["label"] = "ring".into();
    man["samples"][5]["label"] = "ball".into();
    set_manifest(&mut m, &man);
    cases.push(("label.tar", m, "contradicts"));
    let mut m = base.clone();
    let mut man = manifest_of(&m);
    man["samples"][0]["time_ms"] = 5.into();
    set_manifest(&mut m, &man);
    cases.push(("time.tar", m, "capture time"));
    let mut m = base.clone();
    let mut man = manifest_of(&m);
    man["classes"] = serde_json::json!(["ball", "block", "ring", "ghost"]);
    set_manifest(&mut m, &man);
    cases.push(("classes.tar", m, "class list"));
    let mut m = base.clone();
    m.insert(
        0,
        (
            "teachcam-dataset/samples/99999999.jpg".into(),
            b"x".to_vec(),
        ),
    );
    cases.push(("extra.tar", m, "not in the manifest"));
    let mut m = base.clone();
    let mut man = manifest_of(&m);
    man["samples"][2]["label"] = "a\u{1b}[31mred".into();
    set_manifest(&mut m, &man);
    cases.push(("ansi.tar", m, "control character"));
    for (name, e, want) in cases {
        let err = try_import(&build(&e), name);
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
    }
    // Entry types other than files and directories, by patching one header's type flag.
    let good = build(&base);
    for (flag, what) in [(b'S', "sparse"), (b'2', "symbolic link"), (b'x', "PAX")] {
        let mut bytes = good.clone();
        let hdr = find_header(&bytes, "samples/00000002.jpg");
        bytes[hdr + 156] = flag;
        fix_checksum(&mut bytes[hdr..hdr + 512]);
        let err = try_import(&bytes, "type.tar");
        assert!(err.contains(what), "{err}");
    }
    // A name climbing out of the tree (the tar crate refuses to write one: patched in).
    let mut bytes = good.clone();
    let hdr = find_header(&bytes, "samples/00000001.jpg");
    let evil = b"teachcam-dataset/../../etc/evil";
    bytes[hdr..hdr + 100].fill(0);
    bytes[hdr..hdr + evil.len()].copy_from_slice(evil);
    fix_checksum(&mut bytes[hdr..hdr + 512]);
    let err = try_import(&bytes, "dotdot.tar");
    assert!(err.contains("unsafe") && err.contains(".."), "{err}");
    // A header claiming a 2 GB entry: refused from the header, in bounded memory.
    let mut bytes = good.clone();
    let hdr = find_header(&bytes, "samples/00000001.jpg");
    bytes[hdr + 124..hdr + 136].copy_from_slice(b"17777777777\0");
    fix_checksum(&mut bytes[hdr..hdr + 512]);
    let p = t.path().join("huge.tar");
    std::fs::write(&p, &bytes).unwrap();
    let (o, rss) = run_measured(bin().args(["dataset", "import", "--state", s(&b), s(&p)]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("limit"), "{}", text(&o));
    assert!(rss < 400 << 20, "{rss} bytes resident");
    // /etc/passwd is not a tarball, and its content is not echoed.
    let e = fails(&["dataset", "import", "--state", s(&b), "/etc/passwd"]);
    assert!(
        e.contains("not a tar header") && !e.contains("root:"),
        "{e}"
    );
    // The untouched tarball still imports, all of it.
    let out = ok(&["dataset", "import", "--state", s(&b), s(&tar)]);
    assert!(out.contains("imported 6 samples"), "{out}");
}

fn find_header(tar: &[u8], suffix: &str) -> usize {
    (0..tar.len() / 512)
        .map(|i| i * 512)
        .find(|&o| {
            let name = &tar[o..o + 100];
            let end = name.iter().position(|&b| b == 0).unwrap_or(100);
            std::str::from_utf8(&name[..end]).is_ok_and(|n| n.ends_with(suffix))
        })
        .unwrap()
}

fn fix_checksum(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Minor: a damaged thumbnail is named and left out of an export instead of failing it; a
/// failing folder export (full disk) leaves no partial folder.
#[test]
fn exports_skip_damaged_thumbnails_and_never_leave_a_partial_folder() {
    let t = tempfile::tempdir().unwrap();
    let data = synth(t.path(), 2, 0, 8);
    let state = t.path().join("state");
    ok(&[
        "dataset",
        "import",
        "--state",
        s(&state),
        s(&data.join("train")),
    ]);
    std::fs::write(state.join("samples/00000003.jpg"), b"damaged").unwrap();
    let folder = t.path().join("folder");
    let o = teachcam(&[
        "dataset",
        "export",
        "--state",
        s(&state),
        "--image-folder",
        s(&folder),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("exported 5 samples") && text(&o).contains("sample 3"),
        "{}",
        text(&o)
    );
    let o = teachcam(&[
        "dataset",
        "export",
        "--state",
        s(&state),
        s(&t.path().join("x.tar")),
    ]);
    assert!(
        o.status.success() && text(&o).contains("exported 5"),
        "{}",
        text(&o)
    );
    // On a full disk, the export fails and leaves nothing behind.
    let Some(disk) = SmallDisk::mount(&t.path().join("disk"), 16 << 10) else {
        eprintln!("skipped the full-disk export check: cannot mount a tmpfs here");
        return;
    };
    let out = disk.path.join("export");
    let e = fails(&[
        "dataset",
        "export",
        "--state",
        s(&state),
        "--image-folder",
        s(&out),
    ]);
    assert!(e.contains("No space left"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&disk.path).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A small tmpfs (root only): a real ENOSPC without filling the machine's disk.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "tmpfs",
                s(path),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
        ok.then(|| SmallDisk {
            path: path.to_path_buf(),
        })
    }

    fn free(&self) -> u64 {
        // SAFETY: statvfs is plain data the kernel fills; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(s(&self.path)).unwrap();
        // SAFETY: valid pointers for the duration of the call.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_bsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Hostile numbers for every numeric flag: a clear error (exit 2) or a normal run, never
/// a panic (exit 101).
#[test]
fn hostile_numbers_in_flags_never_panic() {
    let t = tempfile::tempdir().unwrap();
    let (data, h) = head(t.path());
    let img = data.join("val/ball/000.jpg");
    let state = t.path().join("state");
    let st = s(&state);
    let (dh, di) = (s(&h), s(&img));
    // Train and eval on a cache: the flags are what is tested, not the embedding.
    let cache = t.path().join("c.tce");
    ok(&["embed", s(&data), "--out", s(&cache)]);
    let dc = s(&cache);
    let xh = t.path().join("x.head");
    let xh = s(&xh);
    let never = t.path().join("never");
    let never = s(&never);
    let nums = [
        "0",
        "-1",
        "nan",
        "inf",
        "-inf",
        "1e308",
        "18446744073709551616",
        "abc",
        "",
    ];
    let mut runs: Vec<Vec<String>> = Vec::new();
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for n in nums {
        runs.push(v(&["classify", "--head", dh, di, "--top-k", n]));
        runs.push(v(&["train", dc, "--out", xh, "--val-split", n]));
        runs.push(v(&["train", dc, "--out", xh, "--threshold", n]));
        runs.push(v(&["train", dc, "--out", xh, "--l2", n]));
        runs.push(v(&["train", dc, "--out", xh, "--seed", n]));
        runs.push(v(&["eval", dc, "--head", dh, "--jobs", n]));
        runs.push(v(&["run", "--state", st, "--duration", "0.3", "--fps", n]));
        runs.push(v(&[
            "run",
            "--state",
            st,
            "--duration",
            "0.3",
            "--threshold",
            n,
        ]));
        runs.push(v(&[
            "run",
            "--state",
            st,
            "--duration",
            "0.3",
            "--camera",
            &format!("synthetic:{n}"),
        ]));
        runs.push(v(&[
            "run",
            "--state",
            st,
            "--duration",
            "0.3",
            "--gpio",
            &format!("script:{n}@1"),
        ]));
        runs.push(v(&[
            "run",
            "--state",
            st,
            "--duration",
            "0.3",
            "--gpio",
            &format!("script:5@{n}"),
        ]));
        runs.push(v(&["classify", "--head", dh, di, "--input-size", n]));
        runs.push(v(&["synth", never, "--train", n, "--val", "0"]));
    }
    for n in ["nan", "inf", "-1", "0", "abc", "1e-300"] {
        runs.push(v(&["run", "--state", st, "--duration", n]));
    }
    let mut panics = Vec::new();
    for args in &runs {
        let o = bin()
            .args(args)
            .env("TEACHCAM_MAX_PIXELS", "bogus")
            .output()
            .unwrap();
        let code = o.status.code();
        if code == Some(101) || text(&o).contains("panicked") || code.is_none() {
            panics.push(format!("{args:?} -> {code:?}: {}", text(&o)));
        }
    }
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
}

/// Hostile numbers, the cases whose validation lives in the command-line layer (core's checked value
/// types; `synth` counts are bounded so a huge one is refused instead of writing forever).
#[test]
fn hostile_numbers_handled_in_the_cli_layer() {
    for args in [
        &[
            "run",
            "--state",
            "/tmp/teachcam-never",
            "--duration",
            "1e20",
        ][..],
        &[
            "synth",
            "/tmp/teachcam-never",
            "--train",
            "18446744073709551615",
        ][..],
        &["--input-size", "0", "info"][..],
    ] {
        let o = teachcam(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
}

/// The crash test under more faults: SIGKILL at random moments while the daemon captures and
/// fine-tunes, while an import stages or commits, and with a full disk part of the time.
/// After every kill: every acknowledged capture and every acknowledged import is there,
/// nothing is quarantined, every thumbnail matches its record. `TEACHCAM_KILLS` (default 24)
/// and `TEACHCAM_KILL_SEED` (default 7) choose the run.
#[test]
fn sigkill_during_captures_imports_and_a_full_disk_loses_nothing() {
    use std::collections::BTreeSet;

    let kills: usize = std::env::var("TEACHCAM_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("TEACHCAM_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let t = tempfile::tempdir().unwrap();
    // The state lives on a small tmpfs when this machine allows mounting one (as root), so
    // the disk can be filled without touching the real one.
    let disk = SmallDisk::mount(&t.path().join("disk"), 256 << 20);
    let state = match &disk {
        Some(d) => d.path.join("state"),
        None => t.path().join("state"),
    };
    let script: Vec<String> = (0..660)
        .map(|k| format!("{}@{}+60", k * 90, 1 + k % 3))
        .collect();
    let buttons = format!("script:{}", script.join(","));
    let mut rng = teachcam::rng::Rng::new(seed);
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let (mut n_capture, mut n_import, mut n_full, mut imports_done) = (0, 0, 0, 0);
    for round in 0..kills {
        let full = disk.is_some() && rng.below(4) == 0;
        let filler = disk.as_ref().map(|d| d.path.join("filler"));
        if full && let (Some(d), Some(f)) = (&disk, &filler) {
            // Leave 0 to 96 kB free: some writes fit, the next ones hit ENOSPC.
            let leave = rng.below(96 << 10) as u64;
            let n = d.free().saturating_sub(leave);
            let file = std::fs::File::create(f).unwrap();
            file.set_len(0).unwrap();
            // fallocate reserves real blocks on tmpfs (a sparse set_len would not).
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor and in-range sizes.
            unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, n as libc::off_t) };
            n_full += 1;
        }
        let import = rng.below(3) == 0;
        let mut child = if import {
            n_import += 1;
            let src = synth(t.path(), 3, 0, 1000 + round as u64);
            bin()
                .args([
                    "dataset",
                    "import",
                    "--state",
                    s(&state),
                    s(&src.join("train")),
                    "-q",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        } else {
            n_capture += 1;
            bin()
                .args([
                    "run",
                    "--state",
                    s(&state),
                    "--camera",
                    "synthetic:300",
                    "--fps",
                    "0",
                ])
                .args([
                    "--buttons",
                    &buttons,
                    "--classes",
                    "a,b,c",
                    "--duration",
                    "60",
                    "-q",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let rx = stdout_lines(&mut child);
        let mut lines = Vec::new();
        if !import {
            // Kill once the loop runs (or it already exited, e.g. the disk was full).
            let started = Instant::now();
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
                let running = l.starts_with("teachcam: running");
                lines.push(l);
                if running {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(60));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500) as u64));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Every line up to the end of its output (the reader ends with the pipe).
        lines.extend(rx.iter());
        if let Some(f) = &filler {
            let _ = std::fs::remove_file(f);
        }
        let (store, report) = teachcam::store::Store::open(&state).unwrap();
        assert!(
            report.quarantined.is_empty(),
            "round {round}: corrupt records {:?}",
            report.quarantined
        );
        let now: BTreeSet<u64> = store.ids();
        for l in &lines {
            if let Some(id) = l
                .strip_prefix("captured id=")
                .and_then(|r| r.split(' ').next())
            {
                acked.insert(id.parse().unwrap());
            }
        }
        let lost: Vec<_> = acked.difference(&now).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged samples lost: {lost:?}"
        );
        for id in &now {
            store
                .thumbnail(*id)
                .unwrap_or_else(|e| panic!("round {round}: sample {id}: {e}"));
        }
        if import && status.success() {
            // Exit 0 = acknowledged: everything it added is there (checked next rounds).
            imports_done += 1;
        }
        acked = now;
    }
    assert!(
        acked.len() >= kills / 2,
        "captures and imports happened: {}",
        acked.len()
    );
    eprintln!(
        "kill test: {kills} kills (seed {seed}; {n_capture} during captures, {n_import} during imports, \
         {n_full} with a full disk{}), {imports_done} imports finished before their kill, \
         {} samples kept, 0 lost, 0 corrupt",
        if disk.is_none() {
            ": no tmpfs, skipped"
        } else {
            ""
        },
        acked.len()
    );
}

/// One writer per state directory. While `run` has the state open, `dataset import` into
/// it is refused, naming the running process's id, and changes nothing; after the appliance
/// stops, the same import succeeds.
#[test]
fn import_into_a_running_appliances_state_is_refused_naming_its_pid() {
    use std::io::{BufRead, BufReader};
    let t = tempfile::tempdir().unwrap();
    let data = synth(t.path(), 2, 0, 5);
    let state = t.path().join("state");
    let mut child = bin()
        .args(["run", "--state", s(&state), "--camera", "synthetic:300"])
        .args(["--classes", "a,b", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("teachcam: running") {
        line.clear();
    }
    assert!(
        line.contains("teachcam: running"),
        "the appliance did not start"
    );
    let e = fails(&[
        "dataset",
        "import",
        "--state",
        s(&state),
        s(&data.join("train")),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        e.contains(&format!("in use by process {}", child.id())),
        "{e}"
    );
    assert!(ids(&state).is_empty(), "nothing imported while refused");
    let o = ok(&[
        "dataset",
        "import",
        "--state",
        s(&state),
        s(&data.join("train")),
    ]);
    assert!(o.contains("imported 6 samples"), "{o}");
}

/// A full disk through the real binary, and SIGHUP: with the state on a full disk a press is refused
/// (console line, status counters, `last_error`) while the loop keeps recognising; freed, the
/// next press is stored. SIGHUP then stops it cleanly with exit code 3 (the unit restarts on
/// it), the status file carrying the time of its last write. Without a tmpfs (not root), the
/// disk part is skipped and said so.
#[test]
fn a_full_disk_refuses_captures_the_loop_keeps_going_and_sighup_stops_for_a_reload() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&t.path().join("disk"), 64 << 20);
    let state = match &disk {
        Some(d) => d.path.join("state"),
        None => t.path().join("state"),
    };
    let status = t.path().join("status.json");
    let mut child = bin()
        .args(["run", "--state", s(&state), "--camera", "synthetic:1000"])
        .args(["--fps", "10", "--gpio", "keyboard", "--classes", "a,b,c"])
        .args(["--status", s(&status), "--duration", "120"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut keys = child.stdin.take().unwrap();
    let rx = stdout_lines(&mut child);
    let line = |prefix: &str| -> String {
        let t0 = Instant::now();
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line starting {prefix:?}"));
            if l.starts_with(prefix) {
                return l;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no {prefix:?}");
        }
    };
    let read_status = || -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            if let Ok(b) = std::fs::read(&status)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && v["frames"].as_u64().unwrap_or(0) > 0
            {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no status");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    line("teachcam: running");
    read_status();
    writeln!(keys, "1").unwrap();
    line("captured id=");
    let mut stored = 1;
    match &disk {
        Some(d) => {
            // Fill it to the last block: big writes, then small ones, until ENOSPC.
            let filler = d.path.join("filler");
            let mut file = std::fs::File::create(&filler).unwrap();
            for chunk in [1 << 20, 4096, 512] {
                let zeros = vec![0u8; chunk];
                while file.write_all(&zeros).is_ok() {}
            }
            assert!(d.free() < 4096, "{} bytes still free", d.free());
            std::thread::sleep(Duration::from_millis(400));
            writeln!(keys, "2").unwrap();
            let refused = line("capture refused:");
            assert!(refused.contains("disk is full"), "{refused}");
            std::thread::sleep(Duration::from_millis(1500));
            let before = read_status();
            assert!(before["errors"]["captures_refused"].as_u64().unwrap() >= 1);
            assert!(
                before["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("full") || e.contains("space")),
                "{before}"
            );
            // Still recognising: frames keep coming, the process is alive.
            std::thread::sleep(Duration::from_millis(1500));
            let after = read_status();
            assert!(after["frames"].as_u64() > before["frames"].as_u64());
            assert!(child.try_wait().unwrap().is_none(), "the appliance exited");
            // Space again: the next press is stored.
            drop(file);
            std::fs::remove_file(&filler).unwrap();
            writeln!(keys, "3").unwrap();
            line("captured id=");
            stored += 1;
        }
        None => eprintln!("skipped the full-disk part: cannot mount a tmpfs here"),
    }
    // SIGHUP: a clean stop with the reload exit code.
    // SAFETY: signalling our own child, whose pid is valid until it is waited for.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    let t0 = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "SIGHUP did not stop it"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(3), "exit code after SIGHUP");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let written = v["updated_unix_ms"].as_u64().expect("updated_unix_ms");
    assert!(now_ms.abs_diff(written) < 60_000, "{written} vs {now_ms}");
    assert_eq!(ids(&state).len(), stored);
}

/// A valid record that merely cannot be read (EACCES) is not quarantined: the start
/// fails naming it (after retries), the record stays where it is, and once it is readable
/// again every sample is there. As root the program runs as `nobody` (root reads anything).
#[test]
fn an_unreadable_record_stops_the_start_naming_it_and_is_kept_not_quarantined() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let src = synth(t.path(), 1, 0, 31);
    ok(&[
        "dataset",
        "import",
        "--state",
        s(&state),
        s(&src.join("train")),
    ]);
    let before = ids(&state);
    assert_eq!(before.len(), 3);
    let rec = state.join("samples").join(format!("{:08}.rec", before[0]));
    let bytes = std::fs::read(&rec).unwrap();
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = t.path().join("out.tar");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let o = if root {
        // The whole tree belongs to nobody, who must not be able to read the one record.
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "65534:65534", s(t.path())])
            .status()
            .unwrap();
        assert!(chown.success());
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_teachcam"))
            .args(["dataset", "export", "--state", s(&state), s(&out)])
            .env_remove("TEACHCAM_MODELS")
            .output()
            .unwrap()
    } else {
        teachcam(&["dataset", "export", "--state", s(&state), s(&out)])
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(s(&rec)), "names the record: {err}");
    assert!(err.contains("ermission denied"), "says why: {err}");
    assert!(err.contains("trying again"), "retried first: {err}");
    // Kept in place, byte for byte; nothing quarantined.
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(std::fs::read(&rec).unwrap(), bytes);
    let quarantined = std::fs::read_dir(state.join("quarantine"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(quarantined, 0);
    assert_eq!(ids(&state), before);
}
