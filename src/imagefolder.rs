//! Image-folder datasets: `<root>/<class>/*.{jpg,jpeg,png}`, optionally split into
//! `<root>/train/` and `<root>/val/`.
//!
//! Owns discovering classes and files (sorted, so every run sees the same order), walking a
//! folder tree for images ([`walk_images`], for the `dir:` camera), and decoding one image
//! into packed RGB8 (through [`crate::decode`], so every decode is bounded). A file that
//! cannot be decoded is the caller's to report and skip; a dataset with no classes, or a
//! class with no images, is an error that says what to do.
//!
//! Invariants: nothing found is dropped silently. A class folder whose name is not text (not
//! UTF-8, or with control characters) is an error naming it; an entry that cannot be read
//! (dangling or looping link, permission denied, not a file) is counted in
//! [`ImageFolder::skipped`] and logged. Walks never follow links to directories and are
//! bounded in depth and count. Must not: embed or train.

use std::path::{Path, PathBuf};

use crate::frame::Frame;

/// Which half of a dataset a command wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train/` if present, else the root.
    Train,
    /// `val/` if present, else the root.
    Val,
}

impl Split {
    /// Folder name of this split.
    pub fn dir_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Why a dataset cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The folder does not exist.
    #[error("dataset folder {0} does not exist")]
    NotFound(PathBuf),
    /// The folder has no class subfolders.
    #[error(
        "dataset folder {0} has no class folders; expected <class>/*.jpg (or train/<class>/ and val/<class>/)"
    )]
    NoClasses(PathBuf),
    /// A dataset with the train/val layout lacks the split a command needs.
    #[error(
        "{0} does not exist; this dataset uses train/ and val/ folders, so add it or point the command at a folder of class folders"
    )]
    MissingSplit(PathBuf),
    /// A class folder has no images.
    #[error("class folder {0} has no images (.jpg, .jpeg, .png); add some or remove the folder")]
    EmptyClass(PathBuf),
    /// A class folder's name cannot be a class name.
    #[error("class folder {path} {why}; rename it")]
    BadClassName {
        /// The folder (shown lossily when it is not UTF-8).
        path: String,
        /// What is wrong with the name.
        why: String,
    },
    /// A walk found more than it may hold.
    #[error("{path} holds more than {limit} {what}; point at a smaller folder")]
    TooMany {
        /// Where the walk started.
        path: PathBuf,
        /// The bound that was reached.
        limit: usize,
        /// What was counted.
        what: &'static str,
    },
    /// Listing a folder failed.
    #[error("cannot list {path}: {source}")]
    Io {
        /// Folder involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// One labelled image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Image path.
    pub path: PathBuf,
    /// Index into [`ImageFolder::classes`].
    pub label: usize,
}

/// An entry a scan or walk could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry.
    pub path: PathBuf,
    /// Why it was not used.
    pub why: String,
}

/// A scanned image folder.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The folder that holds the class folders.
    pub root: PathBuf,
    /// Class names, sorted.
    pub classes: Vec<String>,
    /// Files, sorted by class then name.
    pub items: Vec<Item>,
    /// Entries that could not be read (logged as warnings when found).
    pub skipped: Vec<Skipped>,
}

/// True when `root` uses the `train/` + `val/` layout (either folder present).
pub fn has_splits(root: &Path) -> bool {
    root.join("train").is_dir() || root.join("val").is_dir()
}

/// The folder holding class folders for `split` under `root`: `root/<split>/` in the split
/// layout, else `root` itself. In the split layout a missing `<split>/` is an error.
pub fn split_dir(root: &Path, split: Split) -> Result<PathBuf, FolderError> {
    if !has_splits(root) {
        return Ok(root.to_path_buf());
    }
    let sub = root.join(split.dir_name());
    if sub.is_dir() {
        Ok(sub)
    } else {
        Err(FolderError::MissingSplit(sub))
    }
}

/// True for file names this program decodes.
pub fn is_image(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

/// Sorted entries of `dir`; entries the listing itself could not read are added to
/// `skipped`.
fn sorted_entries(dir: &Path, skipped: &mut Vec<Skipped>) -> Result<Vec<PathBuf>, FolderError> {
    let rd = std::fs::read_dir(dir).map_err(|source| FolderError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v = Vec::new();
    for e in rd {
        match e {
            Ok(e) => v.push(e.path()),
            Err(e) => skip(skipped, dir, format!("an entry cannot be listed: {e}")),
        }
    }
    v.sort();
    Ok(v)
}

fn skip(skipped: &mut Vec<Skipped>, path: &Path, why: String) {
    log::warn!("skipping {}: {why}", path.display());
    skipped.push(Skipped {
        path: path.to_path_buf(),
        why,
    });
}

/// Why `path` (an entry that looked like an image or a folder) cannot be used, if it cannot:
/// a dangling or looping link, or an entry whose metadata cannot be read.
fn unusable(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Some("symbolic link loop".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("dangling symbolic link".into()),
        Err(e) => Some(e.to_string()),
    }
}

/// Check that a folder or record name can be a class name: UTF-8 text without control
/// characters (a newline or an escape sequence in a class name would forge output lines and
/// reach the terminal). Returns the name.
pub fn class_name_text(name: &std::ffi::OsStr) -> Result<&str, String> {
    let s = name
        .to_str()
        .ok_or_else(|| "is not valid UTF-8 text, so it cannot be a class name".to_string())?;
    check_label_text(s)?;
    Ok(s)
}

/// Refuse control characters (newlines, escapes, NUL …) in a class name.
pub fn check_label_text(name: &str) -> Result<(), String> {
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character {:?}, which class names may not",
            c
        ));
    }
    Ok(())
}

/// Scan `dir` (which holds the class folders).
pub fn scan(dir: &Path) -> Result<ImageFolder, FolderError> {
    if !dir.is_dir() {
        return Err(FolderError::NotFound(dir.to_path_buf()));
    }
    let mut classes = Vec::new();
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for class_dir in sorted_entries(dir, &mut skipped)? {
        let Some(file_name) = class_dir.file_name() else {
            continue;
        };
        if file_name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        if !class_dir.is_dir() {
            // A file beside the class folders is ignored; a link that leads nowhere is not.
            if let Some(why) = unusable(&class_dir) {
                skip(&mut skipped, &class_dir, why);
            }
            continue;
        }
        let name = class_name_text(file_name)
            .map_err(|why| FolderError::BadClassName {
                path: class_dir.to_string_lossy().into_owned(),
                why,
            })?
            .to_string();
        let label = classes.len();
        let before = items.len();
        for f in sorted_entries(&class_dir, &mut skipped)? {
            if !is_image(&f) {
                continue;
            }
            if f.is_file() {
                items.push(Item { path: f, label });
            } else {
                let why = unusable(&f).unwrap_or_else(|| "not a regular file".into());
                skip(&mut skipped, &f, why);
            }
        }
        if items.len() == before {
            return Err(FolderError::EmptyClass(class_dir));
        }
        classes.push(name);
    }
    if classes.is_empty() {
        return Err(FolderError::NoClasses(dir.to_path_buf()));
    }
    Ok(ImageFolder {
        root: dir.to_path_buf(),
        classes,
        items,
        skipped,
    })
}

/// Every split of a dataset: `[(Some("train"), …), (Some("val"), …)]` (those present) in the
/// split layout, else `[(None, root)]`; each scanned.
pub fn scan_all(root: &Path) -> Result<Vec<(Option<&'static str>, ImageFolder)>, FolderError> {
    if !root.is_dir() {
        return Err(FolderError::NotFound(root.to_path_buf()));
    }
    if !has_splits(root) {
        return Ok(vec![(None, scan(root)?)]);
    }
    [Split::Train, Split::Val]
        .into_iter()
        .map(|s| s.dir_name())
        .filter(|s| root.join(s).is_dir())
        .map(|s| scan(&root.join(s)).map(|f| (Some(s), f)))
        .collect()
}

/// Deepest folder level [`walk_images`] descends to.
pub const WALK_MAX_DEPTH: usize = 16;
/// Most images [`walk_images`] collects.
pub const WALK_MAX_FILES: usize = 100_000;
/// Most folders [`walk_images`] visits.
pub const WALK_MAX_DIRS: usize = 10_000;

/// Every image file under `root` (sorted), for replaying a folder. Links to files are
/// followed; links to directories are not (so a link cycle cannot make the walk endless or
/// show an image twice); depth, folder and file counts are bounded. Unreadable entries are
/// logged and returned in the second list.
pub fn walk_images(root: &Path) -> Result<(Vec<PathBuf>, Vec<Skipped>), FolderError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut dirs = 0usize;
    // Only a link given as the root itself is followed (`dir:/path/to/link` is a choice).
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        dirs += 1;
        if dirs > WALK_MAX_DIRS {
            return Err(FolderError::TooMany {
                path: root.to_path_buf(),
                limit: WALK_MAX_DIRS,
                what: "folders",
            });
        }
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(source) if d == root => {
                return Err(FolderError::Io { path: d, source });
            }
            Err(e) => {
                skip(&mut skipped, &d, e.to_string());
                continue;
            }
        };
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    skip(
                        &mut skipped,
                        &d,
                        format!("an entry cannot be listed: {err}"),
                    );
                    continue;
                }
            };
            let p = e.path();
            // `file_type` does not follow links.
            let Ok(ft) = e.file_type() else {
                skip(&mut skipped, &p, "cannot read its type".into());
                continue;
            };
            if ft.is_dir() {
                if depth + 1 > WALK_MAX_DEPTH {
                    skip(
                        &mut skipped,
                        &p,
                        format!("deeper than {WALK_MAX_DEPTH} levels"),
                    );
                } else {
                    stack.push((p, depth + 1));
                }
            } else if is_image(&p) {
                if ft.is_file() || (ft.is_symlink() && p.is_file()) {
                    files.push(p);
                    if files.len() > WALK_MAX_FILES {
                        return Err(FolderError::TooMany {
                            path: root.to_path_buf(),
                            limit: WALK_MAX_FILES,
                            what: "images",
                        });
                    }
                } else {
                    let why = unusable(&p).unwrap_or_else(|| "not a regular file".into());
                    skip(&mut skipped, &p, why);
                }
            } else if ft.is_symlink() && p.is_dir() {
                // Not entered: a link back up the tree would loop, and one beside the tree
                // would show the same images twice.
                log::info!("not following the link to a folder {}", p.display());
            }
        }
    }
    files.sort();
    Ok((files, skipped))
}

/// Decode an image file (format told by content) into an RGB8 frame tagged with its path,
/// within the pixel limit and refusing truncated data (see [`crate::decode`]).
pub fn load_rgb(path: &Path) -> Result<Frame, crate::decode::DecodeError> {
    let img = crate::decode::decode_file(path)?;
    let (w, h) = img.dimensions();
    Ok(Frame {
        width: w as usize,
        height: h as usize,
        rgb: img.into_raw(),
        tag: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_png(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]))
            .save(p)
            .unwrap();
    }

    #[test]
    fn scans_sorted_classes_and_picks_split() {
        let d = tempfile::tempdir().unwrap();
        touch_png(&d.path().join("train/b/1.png"));
        touch_png(&d.path().join("train/a/2.PNG"));
        touch_png(&d.path().join("train/a/1.png"));
        std::fs::write(d.path().join("train/a/notes.txt"), "x").unwrap();
        let f = scan(&split_dir(d.path(), Split::Train).unwrap()).unwrap();
        assert_eq!(f.classes, vec!["a", "b"]);
        let names: Vec<_> = f
            .items
            .iter()
            .map(|i| i.path.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["1.png", "2.PNG", "1.png"]);
        assert_eq!(
            f.items.iter().map(|i| i.label).collect::<Vec<_>>(),
            [0, 0, 1]
        );
        // train/ but no val/: asking for val is an error naming the missing folder.
        let e = split_dir(d.path(), Split::Val).unwrap_err();
        assert!(e.to_string().contains("val"), "{e}");
        // A plain folder of class folders serves both splits.
        assert_eq!(
            split_dir(&d.path().join("train"), Split::Val).unwrap(),
            d.path().join("train")
        );
        let rgb = load_rgb(&f.items[0].path).unwrap();
        assert_eq!(
            (rgb.width, rgb.height, &rgb.rgb[..3]),
            (4, 3, &[1u8, 2, 3][..])
        );
    }

    #[test]
    fn class_folders_that_are_not_text_are_named_never_dropped() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        touch_png(&d.path().join("good/1.png"));
        let raw = d.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        touch_png(&raw.join("1.png"));
        let e = scan(d.path()).unwrap_err();
        assert!(matches!(e, FolderError::BadClassName { .. }), "{e}");
        assert!(
            e.to_string().contains("caf\u{fffd}") && e.to_string().contains("UTF-8"),
            "{e}"
        );
        std::fs::remove_dir_all(&raw).unwrap();
        touch_png(&d.path().join("two\nlines/1.png"));
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("control character"), "{e}");
        std::fs::remove_dir_all(d.path().join("two\nlines")).unwrap();
        assert_eq!(scan(d.path()).unwrap().classes, ["good"]);
    }

    #[test]
    fn dangling_and_looping_links_are_counted_and_named() {
        let d = tempfile::tempdir().unwrap();
        touch_png(&d.path().join("a/1.png"));
        std::os::unix::fs::symlink("nowhere.png", d.path().join("a/2.png")).unwrap();
        std::os::unix::fs::symlink("3.png", d.path().join("a/3.png")).unwrap();
        std::os::unix::fs::symlink("gone", d.path().join("b")).unwrap();
        let f = scan(d.path()).unwrap();
        assert_eq!(f.items.len(), 1);
        let whys: Vec<String> = f
            .skipped
            .iter()
            .map(|s| format!("{} {}", s.path.display(), s.why))
            .collect();
        assert_eq!(whys.len(), 3, "{whys:?}");
        assert!(
            whys.iter()
                .any(|w| w.contains("2.png") && w.contains("dangling")),
            "{whys:?}"
        );
        assert!(
            whys.iter()
                .any(|w| w.contains("3.png") && w.contains("loop")),
            "{whys:?}"
        );
        assert!(
            whys.iter()
                .any(|w| w.ends_with("gone") || w.contains("/b ")),
            "{whys:?}"
        );
    }

    #[test]
    fn the_split_layout_is_scanned_split_by_split() {
        let d = tempfile::tempdir().unwrap();
        touch_png(&d.path().join("train/a/1.png"));
        touch_png(&d.path().join("val/a/1.png"));
        touch_png(&d.path().join("val/b/1.png"));
        let all = scan_all(d.path()).unwrap();
        let names: Vec<_> = all.iter().map(|(s, f)| (*s, f.classes.clone())).collect();
        assert_eq!(
            names,
            [
                (Some("train"), vec!["a".to_string()]),
                (Some("val"), vec!["a".to_string(), "b".to_string()])
            ]
        );
        assert_eq!(scan_all(&d.path().join("val")).unwrap()[0].0, None);
    }

    #[test]
    fn a_walk_does_not_follow_folder_links_and_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        touch_png(&d.path().join("x/1.png"));
        touch_png(&d.path().join("x/y/2.png"));
        // Cycles: to the root, to a parent, to itself; and a link to an image file.
        std::os::unix::fs::symlink(d.path(), d.path().join("x/y/up")).unwrap();
        std::os::unix::fs::symlink("..", d.path().join("x/parent")).unwrap();
        std::os::unix::fs::symlink(".", d.path().join("x/self")).unwrap();
        std::os::unix::fs::symlink("1.png", d.path().join("x/alias.png")).unwrap();
        std::os::unix::fs::symlink("missing.png", d.path().join("x/dangling.png")).unwrap();
        let (files, skipped) = walk_images(d.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| {
                p.strip_prefix(d.path())
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["x/1.png", "x/alias.png", "x/y/2.png"]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        // Depth is bounded: a chain deeper than the limit is cut and reported.
        let mut deep = d.path().join("deep");
        for _ in 0..WALK_MAX_DEPTH + 2 {
            deep = deep.join("d");
        }
        touch_png(&deep.join("z.png"));
        let (files, skipped) = walk_images(d.path()).unwrap();
        assert_eq!(files.len(), 3);
        assert!(
            skipped.iter().any(|s| s.why.contains("deeper")),
            "{skipped:?}"
        );
    }

    #[test]
    fn empty_class_and_empty_root_are_errors_naming_the_folder() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(scan(d.path()), Err(FolderError::NoClasses(_))));
        std::fs::create_dir_all(d.path().join("cats")).unwrap();
        let e = scan(d.path()).unwrap_err();
        assert!(matches!(e, FolderError::EmptyClass(_)));
        assert!(e.to_string().contains("cats"));
        assert!(matches!(
            scan(&d.path().join("nope")),
            Err(FolderError::NotFound(_))
        ));
    }
}
