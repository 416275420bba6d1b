//! Image-folder datasets: `<root>/<class>/*.{jpg,jpeg,png}`, optionally split into
//! `<root>/train/` and `<root>/val/`.
//!
//! Owns discovering classes and files (sorted, so every run sees the same order) and decoding
//! one image into packed RGB8. A file that cannot be decoded is the caller's to report and
//! skip; a dataset with no classes, or a class with no images, is an error that says what to
//! do. Must not: embed or train.

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

/// A scanned image folder.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The folder that holds the class folders.
    pub root: PathBuf,
    /// Class names, sorted.
    pub classes: Vec<String>,
    /// Files, sorted by class then name.
    pub items: Vec<Item>,
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

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let rd = std::fs::read_dir(dir).map_err(|source| FolderError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// Scan `dir` (which holds the class folders).
pub fn scan(dir: &Path) -> Result<ImageFolder, FolderError> {
    if !dir.is_dir() {
        return Err(FolderError::NotFound(dir.to_path_buf()));
    }
    let mut classes = Vec::new();
    let mut items = Vec::new();
    for class_dir in sorted_entries(dir)? {
        let name = match class_dir.file_name().and_then(|n| n.to_str()) {
            Some(n) if class_dir.is_dir() && !n.starts_with('.') => n.to_string(),
            _ => continue,
        };
        let label = classes.len();
        let before = items.len();
        for f in sorted_entries(&class_dir)? {
            if f.is_file() && is_image(&f) {
                items.push(Item { path: f, label });
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
    })
}

/// Decode an image file (format guessed from content) into an RGB8 frame tagged with its path.
pub fn load_rgb(path: &Path) -> Result<Frame, image::ImageError> {
    let img = image::ImageReader::open(path)?
        .with_guessed_format()?
        .decode()?
        .into_rgb8();
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
