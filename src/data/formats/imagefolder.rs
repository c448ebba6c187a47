//! Image folders: `root/train/<class>/*.{png,jpg,jpeg}` and `root/val/<class>/...`. Classes
//! are the sorted directory names under `train/`; `val/` is labelled with the same list.

use std::fs;
use std::path::{Path, PathBuf};

use crate::data::Split;
use crate::data::dataset::Dataset;
use crate::error::{Error, Result};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Decodes every image of `split` to RGB. All images must have the size of the first one.
/// Undecodable files are an error when `strict`, otherwise skipped; the count of skipped
/// files is returned so the caller can warn.
pub fn load_imagefolder(root: &Path, split: Split, strict: bool) -> Result<(Dataset, usize)> {
    let train_dir = root.join("train");
    let class_names = class_dirs(&train_dir)?;
    if class_names.is_empty() {
        return Err(Error::data(
            &train_dir,
            "has no class directories",
            "put each class's images in train/<class name>/",
        ));
    }
    if class_names.len() > u16::MAX as usize + 1 {
        return Err(Error::data(
            &train_dir,
            format!(
                "has {} classes, at most 65536 are supported",
                class_names.len()
            ),
            "merge classes",
        ));
    }
    let dir = match split {
        Split::Train => train_dir,
        Split::Test => {
            let val = root.join("val");
            check_val_classes(&val, &class_names)?;
            val
        }
    };
    let files = list_images(&dir, &class_names)?;
    let mut out = Decoded::default();
    for (path, label) in &files {
        out.add(path, *label, strict)?;
    }
    let Some((width, height, _)) = out.first else {
        return Err(Error::data(
            &dir,
            format!(
                "no readable .png/.jpg/.jpeg images in its class directories ({} skipped)",
                out.skipped
            ),
            "check --data-dir points at a folder with train/<class>/ and val/<class>/",
        ));
    };
    let dataset = Dataset {
        images: out.images,
        labels: out.labels,
        height: height as usize,
        width: width as usize,
        channels: 3,
        class_names,
    };
    Ok((dataset, out.skipped))
}

/// The sorted names of the visible subdirectories of `dir`.
fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(dir).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            _ => format!("cannot list the class directories ({e})"),
        };
        Error::data(
            dir,
            problem,
            "an image folder needs train/<class>/ and val/<class>/ under --data-dir",
        )
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "listing", e))?;
        let path = entry.path();
        // `is_dir` follows symlinks, so linked class directories work.
        if !path.is_dir() || is_hidden(&path) {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|_| {
            Error::data(
                &path,
                "directory name is not valid UTF-8",
                "rename it; class names must be text",
            )
        })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Every class in `val/` must be one the model is trained on.
fn check_val_classes(val: &Path, train_classes: &[String]) -> Result<()> {
    for name in class_dirs(val)? {
        if train_classes.binary_search(&name).is_err() {
            return Err(Error::data(
                &val.join(&name),
                "is a class that train/ does not have",
                "give train/ the same class directories as val/, or remove this one",
            ));
        }
    }
    Ok(())
}

/// The image files of each class, sorted by name so the order is the same on every machine.
/// A class with no directory in this split contributes nothing.
fn list_images(dir: &Path, class_names: &[String]) -> Result<Vec<(PathBuf, u16)>> {
    let mut files = Vec::new();
    for (label, name) in class_names.iter().enumerate() {
        let class_dir = dir.join(name);
        if !class_dir.is_dir() {
            continue;
        }
        let mut paths = Vec::new();
        for entry in fs::read_dir(&class_dir).map_err(|e| Error::io(&class_dir, "listing", e))? {
            let path = entry
                .map_err(|e| Error::io(&class_dir, "listing", e))?
                .path();
            if path.is_file() && !is_hidden(&path) && has_image_extension(&path) {
                paths.push(path);
            }
        }
        paths.sort();
        files.extend(paths.into_iter().map(|p| (p, label as u16)));
    }
    Ok(files)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Guesses the format from the content, so a PNG named .jpg is still read.
fn decode(path: &Path) -> std::result::Result<image::DynamicImage, String> {
    image::ImageReader::open(path)
        .map_err(|e| format!("cannot open image ({e})"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read image ({e})"))?
        .decode()
        .map_err(|e| format!("cannot decode image ({e})"))
}

/// The images decoded so far.
#[derive(Default)]
struct Decoded {
    images: Vec<u8>,
    labels: Vec<u16>,
    /// Width, height and file of the first image, which fixes the size of all others.
    first: Option<(u32, u32, PathBuf)>,
    skipped: usize,
}

impl Decoded {
    fn add(&mut self, path: &Path, label: u16, strict: bool) -> Result<()> {
        let img = match decode(path) {
            Ok(img) => img.to_rgb8(),
            Err(problem) if strict => {
                return Err(Error::data(
                    path,
                    problem,
                    "fix or remove the file; non-strict loading skips unreadable images",
                ));
            }
            Err(_) => {
                self.skipped += 1;
                return Ok(());
            }
        };
        let (w, h) = img.dimensions();
        match &self.first {
            None => self.first = Some((w, h, path.to_path_buf())),
            Some((fw, fh, first)) if (w, h) != (*fw, *fh) => {
                return Err(Error::data(
                    path,
                    format!(
                        "image is {w}x{h} but {} is {fw}x{fh}; all images must have one size",
                        first.display()
                    ),
                    "resize the images to one size first, e.g. the --img-size you train at",
                ));
            }
            Some(_) => {}
        }
        self.images.extend_from_slice(img.as_raw());
        self.labels.push(label);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn rgb(seed: u8) -> RgbImage {
        RgbImage::from_fn(4, 3, |x, y| Rgb([seed, (x * 10) as u8, (y * 20) as u8]))
    }

    fn save(root: &Path, split: &str, class: &str, file: &str, img: &RgbImage) {
        let dir = root.join(split).join(class);
        fs::create_dir_all(&dir).unwrap();
        img.save(dir.join(file)).unwrap();
    }

    /// train: cat (2 images), dog (1 grayscale), plus noise files; val: dog only.
    fn write_folder(root: &Path) {
        save(root, "train", "dog", "b.png", &rgb(30));
        save(root, "train", "cat", "2.png", &rgb(20));
        save(root, "train", "cat", "1.png", &rgb(10));
        let gray = GrayImage::from_pixel(4, 3, Luma([77]));
        gray.save(root.join("train/dog/a.PNG")).unwrap();
        fs::write(root.join("train/cat/notes.txt"), "not an image").unwrap();
        fs::create_dir_all(root.join("train/.cache")).unwrap();
        save(root, "val", "dog", "v.png", &rgb(40));
    }

    #[test]
    fn reads_sorted_classes_and_files_as_rgb() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path());
        let (train, skipped) = load_imagefolder(tmp.path(), Split::Train, true).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(train.class_names, vec!["cat", "dog"]);
        assert_eq!(train.labels, vec![0, 0, 1, 1]);
        assert_eq!((train.height, train.width, train.channels), (3, 4, 3));
        assert_eq!(train.image(0), rgb(10).as_raw().as_slice());
        assert_eq!(train.image(1), rgb(20).as_raw().as_slice());
        assert_eq!(train.image(2), [77; 36].as_slice(), "grayscale becomes RGB");
        let (val, _) = load_imagefolder(tmp.path(), Split::Test, true).unwrap();
        assert_eq!(val.class_names, vec!["cat", "dog"]);
        assert_eq!(val.labels, vec![1]);
        assert_eq!(val.image(0), rgb(40).as_raw().as_slice());
    }

    #[test]
    fn corrupt_images_fail_when_strict_and_are_counted_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path());
        let bad = tmp.path().join("train/cat/3.jpg");
        fs::write(&bad, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
        let e = load_imagefolder(tmp.path(), Split::Train, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3.jpg") && e.contains("cannot decode"), "{e}");
        let (train, skipped) = load_imagefolder(tmp.path(), Split::Train, false).unwrap();
        assert_eq!((train.len(), skipped), (4, 1));
    }

    #[test]
    fn a_different_size_is_an_error_naming_both_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path());
        let big = RgbImage::from_pixel(5, 5, Rgb([1, 2, 3]));
        save(tmp.path(), "train", "dog", "c.jpg", &big);
        let e = load_imagefolder(tmp.path(), Split::Train, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.jpg") && e.contains("5x5") && e.contains("4x3"),
            "{e}"
        );
        assert!(e.contains("--img-size"), "{e}");
    }

    #[test]
    fn val_classes_must_exist_in_train_and_folders_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        write_folder(tmp.path());
        save(tmp.path(), "val", "bird", "x.png", &rgb(1));
        let e = load_imagefolder(tmp.path(), Split::Test, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bird") && e.contains("train/ does not have"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        let e = load_imagefolder(empty.path(), Split::Train, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train") && e.contains("val/<class>"), "{e}");
        fs::create_dir_all(empty.path().join("train/cat")).unwrap();
        let e = load_imagefolder(empty.path(), Split::Train, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no readable"), "{e}");
    }
}
