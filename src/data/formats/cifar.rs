//! CIFAR-10 and CIFAR-100 readers for both official layouts: the binary batches
//! (`cifar-10-batches-bin/`, `cifar-100-binary/`) and the Python pickles that torchvision uses
//! (`cifar-10-batches-py/`, `cifar-100-python/`). The pickles are read by a small interpreter
//! that understands only plain data and numpy arrays, so a hostile file cannot run code.

use std::fs;
use std::path::{Path, PathBuf};

use super::pickle;
use crate::data::Split;
use crate::data::dataset::Dataset;
use crate::error::{Error, Result};

/// Images are 32x32 RGB, stored planar (all R, then G, then B), row-major.
const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE;
pub const IMAGE_BYTES: usize = 3 * PIXELS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CifarKind {
    Ten,
    Hundred,
}

/// CIFAR-100 labels every image with one of 100 fine classes and one of 20 superclasses.
/// CIFAR-10 has fine labels only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelType {
    Fine,
    Coarse,
}

/// On-disk format of an extracted CIFAR directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    Python,
}

impl CifarKind {
    /// The name used on the command line (`--dataset cifar10`).
    pub fn name(self) -> &'static str {
        match self {
            CifarKind::Ten => "cifar10",
            CifarKind::Hundred => "cifar100",
        }
    }

    /// The human name, for messages.
    pub fn title(self) -> &'static str {
        match self {
            CifarKind::Ten => "CIFAR-10",
            CifarKind::Hundred => "CIFAR-100",
        }
    }

    /// The directory the official tarball of `format` extracts to.
    pub fn dir_name(self, format: Format) -> &'static str {
        match (self, format) {
            (CifarKind::Ten, Format::Binary) => "cifar-10-batches-bin",
            (CifarKind::Ten, Format::Python) => "cifar-10-batches-py",
            (CifarKind::Hundred, Format::Binary) => "cifar-100-binary",
            (CifarKind::Hundred, Format::Python) => "cifar-100-python",
        }
    }

    pub fn num_classes(self, label_type: LabelType) -> usize {
        match (self, label_type) {
            (CifarKind::Ten, _) => 10,
            (CifarKind::Hundred, LabelType::Fine) => 100,
            (CifarKind::Hundred, LabelType::Coarse) => 20,
        }
    }

    /// The data files of one split, in reading order.
    pub fn data_files(self, format: Format, split: Split) -> &'static [&'static str] {
        match (self, format, split) {
            (CifarKind::Ten, Format::Binary, Split::Train) => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (CifarKind::Ten, Format::Binary, Split::Test) => &["test_batch.bin"],
            (CifarKind::Ten, Format::Python, Split::Train) => &[
                "data_batch_1",
                "data_batch_2",
                "data_batch_3",
                "data_batch_4",
                "data_batch_5",
            ],
            (CifarKind::Ten, Format::Python, Split::Test) => &["test_batch"],
            (CifarKind::Hundred, Format::Binary, Split::Train) => &["train.bin"],
            (CifarKind::Hundred, Format::Binary, Split::Test) => &["test.bin"],
            (CifarKind::Hundred, Format::Python, Split::Train) => &["train"],
            (CifarKind::Hundred, Format::Python, Split::Test) => &["test"],
        }
    }

    /// The file holding the class names for `label_type`.
    pub fn meta_file(self, format: Format, label_type: LabelType) -> &'static str {
        match (self, format, label_type) {
            (CifarKind::Ten, Format::Binary, _) => "batches.meta.txt",
            (CifarKind::Ten, Format::Python, _) => "batches.meta",
            (CifarKind::Hundred, Format::Binary, LabelType::Fine) => "fine_label_names.txt",
            (CifarKind::Hundred, Format::Binary, LabelType::Coarse) => "coarse_label_names.txt",
            (CifarKind::Hundred, Format::Python, _) => "meta",
        }
    }

    /// Every file a complete extracted directory of `format` has.
    pub fn all_files(self, format: Format) -> Vec<&'static str> {
        let mut files: Vec<&str> = [Split::Train, Split::Test]
            .iter()
            .flat_map(|&s| self.data_files(format, s).iter().copied())
            .collect();
        for label_type in [LabelType::Fine, LabelType::Coarse] {
            let meta = self.meta_file(format, label_type);
            if !files.contains(&meta) {
                files.push(meta);
            }
        }
        files
    }

    /// The byte size of one binary record: the label byte(s) and the image.
    pub(super) fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }

    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Ten => 1,
            CifarKind::Hundred => 2,
        }
    }
}

impl LabelType {
    fn name(self) -> &'static str {
        match self {
            LabelType::Fine => "fine",
            LabelType::Coarse => "coarse",
        }
    }
}

/// The split of CIFAR-10 or CIFAR-100 found under `root` (the binary layout is preferred
/// over the Python one). `root` may also be the extracted directory itself.
pub fn load_cifar(
    root: &Path,
    kind: CifarKind,
    split: Split,
    label_type: LabelType,
) -> Result<Dataset> {
    if kind == CifarKind::Ten && label_type == LabelType::Coarse {
        return Err(Error::Config(
            "CIFAR-10 has only fine labels; coarse labels (20 superclasses) exist for CIFAR-100 only"
                .into(),
        ));
    }
    let (dir, format) = find_dir(root, kind, split, label_type)?;
    let class_names = read_class_names(&dir, kind, format, label_type)?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in kind.data_files(format, split) {
        let path = dir.join(name);
        match format {
            Format::Binary => {
                read_binary(&path, kind, label_type, &mut images, &mut labels)?;
            }
            Format::Python => {
                read_pickle_batch(&path, kind, label_type, &mut images, &mut labels)?;
            }
        }
    }
    Ok(Dataset {
        images,
        labels,
        height: SIDE,
        width: SIDE,
        channels: 3,
        class_names,
    })
}

/// A complete extracted CIFAR directory under `root` (binary layout first), or `root` itself
/// if it is one. Binary batches must also be whole records, which catches a copy cut short.
pub fn find_cifar(root: &Path, kind: CifarKind) -> Option<PathBuf> {
    [Format::Binary, Format::Python]
        .into_iter()
        .flat_map(|format| candidates(root, kind, format).map(move |dir| (dir, format)))
        .find(|(dir, format)| is_complete(dir, kind, *format))
        .map(|(dir, _)| dir)
}

/// `root/<dir name>`, and `root` itself when it has that name.
fn candidates(root: &Path, kind: CifarKind, format: Format) -> impl Iterator<Item = PathBuf> {
    let name = kind.dir_name(format);
    let itself = root.file_name().is_some_and(|n| n == name);
    std::iter::once(root.join(name)).chain(itself.then(|| root.to_path_buf()))
}

fn is_complete(dir: &Path, kind: CifarKind, format: Format) -> bool {
    let record = kind.record_bytes() as u64;
    kind.all_files(format)
        .iter()
        .all(|f| match fs::metadata(dir.join(f)) {
            Ok(m) if !m.is_file() => false,
            Ok(m) if format == Format::Binary && f.ends_with(".bin") => {
                m.len() > 0 && m.len() % record == 0
            }
            Ok(_) => true,
            Err(_) => false,
        })
}

/// The directory to read: the first candidate holding every file the request needs. A
/// directory that exists but lacks a file is reported as such rather than skipped silently.
fn find_dir(
    root: &Path,
    kind: CifarKind,
    split: Split,
    label_type: LabelType,
) -> Result<(PathBuf, Format)> {
    let mut looked = Vec::new();
    let mut incomplete = None;
    for format in [Format::Binary, Format::Python] {
        for dir in candidates(root, kind, format) {
            if dir.is_dir() {
                let needed = kind.data_files(format, split).iter().copied();
                let mut needed = needed.chain([kind.meta_file(format, label_type)]);
                match needed.find(|f| !dir.join(f).is_file()) {
                    None => return Ok((dir, format)),
                    Some(missing) => {
                        incomplete.get_or_insert(dir.join(missing));
                    }
                }
            }
            looked.push(dir.display().to_string());
        }
    }
    let fix = format!(
        "run `vitrs data download --dataset {} --data-dir {}` or pass the right --data-dir",
        kind.name(),
        root.display()
    );
    Err(match incomplete {
        Some(missing) => Error::data(
            &missing,
            format!(
                "{} file missing, the extracted data is incomplete",
                kind.title()
            ),
            fix,
        ),
        None => Error::data(
            root,
            format!(
                "no {} data here; looked for {}",
                kind.title(),
                looked.join(" and ")
            ),
            fix,
        ),
    })
}

fn read_class_names(
    dir: &Path,
    kind: CifarKind,
    format: Format,
    label_type: LabelType,
) -> Result<Vec<String>> {
    let path = dir.join(kind.meta_file(format, label_type));
    let names = match format {
        Format::Binary => {
            let text = fs::read_to_string(&path)
                .map_err(|e| Error::io(&path, "reading class names from", e))?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        }
        Format::Python => parse_pickle_class_names(&path, &read_bytes(&path)?, kind, label_type)?,
    };
    let expected = kind.num_classes(label_type);
    if names.len() != expected {
        return Err(corrupt(
            &path,
            format!(
                "has {} {} class names, {} has {expected}",
                names.len(),
                label_type.name(),
                kind.title()
            ),
        ));
    }
    Ok(names)
}

/// The class names in a pickled `meta` / `batches.meta` file (not yet checked against the
/// expected count); public so the fuzz target drives exactly this code.
pub fn parse_pickle_class_names(
    path: &Path,
    bytes: &[u8],
    kind: CifarKind,
    label_type: LabelType,
) -> Result<Vec<String>> {
    let key = match (kind, label_type) {
        (CifarKind::Ten, _) => "label_names",
        (CifarKind::Hundred, LabelType::Fine) => "fine_label_names",
        (CifarKind::Hundred, LabelType::Coarse) => "coarse_label_names",
    };
    let meta = pickle::load(bytes).map_err(|e| corrupt(path, e))?;
    let list = meta
        .get(key)
        .ok_or_else(|| corrupt(path, format!("the pickle has no '{key}' entry")))?;
    Ok(pickle::text_list(&list)
        .map_err(|e| corrupt(path, format!("'{key}': {e}")))?
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A data error for a file that is not what it should be; the fix is always a fresh copy.
fn corrupt(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::data(
        path,
        problem,
        "the file is corrupt or not from the official archive; delete it and download again",
    )
}

/// Appends the records of one binary batch to `images` (as HWC) and `labels`.
fn read_binary(
    path: &Path,
    kind: CifarKind,
    label_type: LabelType,
    images: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<()> {
    parse_binary(path, &read_bytes(path)?, kind, label_type, images, labels)
}

/// [`read_binary`] on bytes already in memory (`path` only names the file in errors); public
/// so the fuzz target drives exactly this code.
pub fn parse_binary(
    path: &Path,
    bytes: &[u8],
    kind: CifarKind,
    label_type: LabelType,
    images: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<()> {
    let record = kind.record_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(corrupt(
            path,
            format!(
                "size {} bytes is not a whole, non-zero number of {}-byte {} records (a full batch of 10000 is {} bytes)",
                bytes.len(),
                record,
                kind.title(),
                10000 * record
            ),
        ));
    }
    // CIFAR-100 records are [coarse, fine, pixels...].
    let label_at = match (kind, label_type) {
        (CifarKind::Hundred, LabelType::Fine) => 1,
        _ => 0,
    };
    let num_classes = kind.num_classes(label_type);
    images.reserve(bytes.len() / record * IMAGE_BYTES);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[label_at] as usize;
        check_label(path, i, label as i64, num_classes, label_type)?;
        labels.push(label as u16);
        planar_to_hwc(&rec[kind.label_bytes()..], images);
    }
    Ok(())
}

fn check_label(
    path: &Path,
    index: usize,
    label: i64,
    num_classes: usize,
    label_type: LabelType,
) -> Result<()> {
    if label < 0 || label as usize >= num_classes {
        return Err(corrupt(
            path,
            format!(
                "image {index} has {} label {label}, outside 0..{num_classes}",
                label_type.name()
            ),
        ));
    }
    Ok(())
}

/// CIFAR stores each image as three 32x32 planes; the rest of vitrs wants RGB triples.
fn planar_to_hwc(planar: &[u8], out: &mut Vec<u8>) {
    let (r, rest) = planar.split_at(PIXELS);
    let (g, b) = rest.split_at(PIXELS);
    for p in 0..PIXELS {
        out.extend_from_slice(&[r[p], g[p], b[p]]);
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, "reading", e))
}

/// Appends one pickled batch (`{b'data': uint8 (N, 3072), b'labels': [..], ...}`).
fn read_pickle_batch(
    path: &Path,
    kind: CifarKind,
    label_type: LabelType,
    images: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<()> {
    let bytes = read_bytes(path)?;
    parse_pickle_batch(path, &bytes, kind, label_type, images, labels)
}

/// [`read_pickle_batch`] on bytes already in memory (`path` only names the file in errors);
/// public so the fuzz target drives exactly this code.
pub fn parse_pickle_batch(
    path: &Path,
    bytes: &[u8],
    kind: CifarKind,
    label_type: LabelType,
    images: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<()> {
    let batch = pickle::load(bytes).map_err(|e| corrupt(path, e))?;
    let key = match (kind, label_type) {
        (CifarKind::Ten, _) => "labels",
        (CifarKind::Hundred, LabelType::Fine) => "fine_labels",
        (CifarKind::Hundred, LabelType::Coarse) => "coarse_labels",
    };
    let data = batch
        .get("data")
        .ok_or_else(|| corrupt(path, "the pickle has no 'data' entry"))?;
    let label_list = batch
        .get(key)
        .ok_or_else(|| corrupt(path, format!("the pickle has no '{key}' entry")))?;
    let label_values =
        pickle::int_list(&label_list).map_err(|e| corrupt(path, format!("'{key}': {e}")))?;
    let pickle::Value::Array(array) = data else {
        return Err(corrupt(
            path,
            format!("'data' is a {}, expected a numpy array", data.type_name()),
        ));
    };
    let array = array.borrow();
    let rows = array
        .u8_rows(IMAGE_BYTES)
        .map_err(|e| corrupt(path, format!("'data': {e}")))?;
    if rows == 0 {
        return Err(corrupt(path, "'data' holds no images"));
    }
    if rows != label_values.len() {
        return Err(corrupt(
            path,
            format!(
                "'data' has {rows} images but '{key}' has {} labels",
                label_values.len()
            ),
        ));
    }
    let num_classes = kind.num_classes(label_type);
    for (i, &label) in label_values.iter().enumerate() {
        check_label(path, i, label, num_classes, label_type)?;
        labels.push(label as u16);
    }
    images.reserve(rows * IMAGE_BYTES);
    for row in array.data.chunks_exact(IMAGE_BYTES) {
        planar_to_hwc(row, images);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Planar pixel value of channel `c` at pixel `p` of image `i`, distinct enough that a
    /// wrong transpose or offset shows up.
    fn px(i: usize, p: usize, c: usize) -> u8 {
        ((i * 37 + p * 3 + c * 101) % 256) as u8
    }

    fn planar(i: usize) -> Vec<u8> {
        (0..3)
            .flat_map(|c| (0..PIXELS).map(move |p| px(i, p, c)))
            .collect()
    }

    fn assert_hwc(ds: &Dataset, pos: usize, i: usize) {
        let img = ds.image(pos);
        for p in [0, 1, 31, 32, 500, PIXELS - 1] {
            for c in 0..3 {
                assert_eq!(
                    img[p * 3 + c],
                    px(i, p, c),
                    "image {pos} pixel {p} channel {c}"
                );
            }
        }
    }

    fn names(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    /// CIFAR-10 binary batches: batch b holds images 2b and 2b+1, the test batch image 100.
    fn write_cifar10_bin(root: &Path) -> PathBuf {
        let dir = root.join("cifar-10-batches-bin");
        fs::create_dir_all(&dir).unwrap();
        for b in 0..5 {
            let mut bytes = Vec::new();
            for i in [2 * b, 2 * b + 1] {
                bytes.push((i % 10) as u8);
                bytes.extend(planar(i));
            }
            fs::write(dir.join(format!("data_batch_{}.bin", b + 1)), bytes).unwrap();
        }
        let mut test = vec![7u8];
        test.extend(planar(100));
        fs::write(dir.join("test_batch.bin"), test).unwrap();
        // The real file ends with blank lines; names may carry stray whitespace.
        let meta = names(10, "class").join("\n") + "\n \n\n";
        fs::write(dir.join("batches.meta.txt"), meta).unwrap();
        dir
    }

    #[test]
    fn binary_cifar10_gives_hwc_images_labels_and_names() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10_bin(tmp.path());
        let train = load_cifar(tmp.path(), CifarKind::Ten, Split::Train, LabelType::Fine).unwrap();
        assert_eq!(
            (train.len(), train.height, train.width, train.channels),
            (10, 32, 32, 3)
        );
        assert_eq!(train.images.len(), 10 * IMAGE_BYTES);
        assert_eq!(train.labels, (0..10).collect::<Vec<u16>>());
        assert_eq!(train.class_names, names(10, "class"));
        for i in 0..10 {
            assert_hwc(&train, i, i);
        }
        let test = load_cifar(tmp.path(), CifarKind::Ten, Split::Test, LabelType::Fine).unwrap();
        assert_eq!(test.labels, vec![7]);
        assert_hwc(&test, 0, 100);
    }

    #[test]
    fn find_cifar_wants_every_file_and_whole_records() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(find_cifar(tmp.path(), CifarKind::Ten), None);
        let dir = write_cifar10_bin(tmp.path());
        assert_eq!(find_cifar(tmp.path(), CifarKind::Ten), Some(dir.clone()));
        assert_eq!(find_cifar(&dir, CifarKind::Ten), Some(dir.clone()));
        assert_eq!(find_cifar(tmp.path(), CifarKind::Hundred), None);
        fs::write(dir.join("test_batch.bin"), [0u8; 3000]).unwrap();
        assert_eq!(find_cifar(tmp.path(), CifarKind::Ten), None);
        let py = write_cifar10_py(tmp.path());
        assert_eq!(find_cifar(tmp.path(), CifarKind::Ten), Some(py));
    }

    #[test]
    fn the_extracted_directory_itself_is_accepted_as_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_cifar10_bin(tmp.path());
        let test = load_cifar(&dir, CifarKind::Ten, Split::Test, LabelType::Fine).unwrap();
        assert_eq!(test.len(), 1);
    }

    fn write_cifar100_bin(root: &Path) {
        let dir = root.join("cifar-100-binary");
        fs::create_dir_all(&dir).unwrap();
        for (file, ids) in [("train.bin", 0..3), ("test.bin", 3..5)] {
            let mut bytes = Vec::new();
            for i in ids {
                bytes.extend([(i % 20) as u8, (90 + i) as u8]);
                bytes.extend(planar(i));
            }
            fs::write(dir.join(file), bytes).unwrap();
        }
        fs::write(
            dir.join("fine_label_names.txt"),
            names(100, "fine").join("\n"),
        )
        .unwrap();
        fs::write(
            dir.join("coarse_label_names.txt"),
            names(20, "coarse").join("\r\n"),
        )
        .unwrap();
    }

    #[test]
    fn binary_cifar100_reads_fine_or_coarse_labels() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar100_bin(tmp.path());
        let fine = load_cifar(
            tmp.path(),
            CifarKind::Hundred,
            Split::Train,
            LabelType::Fine,
        )
        .unwrap();
        assert_eq!(fine.labels, vec![90, 91, 92]);
        assert_eq!(fine.class_names, names(100, "fine"));
        for i in 0..3 {
            assert_hwc(&fine, i, i);
        }
        let coarse = load_cifar(
            tmp.path(),
            CifarKind::Hundred,
            Split::Test,
            LabelType::Coarse,
        )
        .unwrap();
        assert_eq!(coarse.labels, vec![3, 4]);
        assert_eq!(coarse.class_names, names(20, "coarse"));
        assert_hwc(&coarse, 1, 4);
    }

    fn err(r: Result<Dataset>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn truncated_or_empty_binary_file_is_an_error_naming_it_and_the_record_size() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_cifar10_bin(tmp.path());
        let path = dir.join("data_batch_3.bin");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Ten,
            Split::Train,
            LabelType::Fine,
        ));
        assert!(
            e.contains("data_batch_3.bin") && e.contains("3073-byte"),
            "{e}"
        );
        assert!(
            e.contains("30730000 bytes") && e.contains("download again"),
            "{e}"
        );
        fs::write(&path, b"").unwrap();
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Ten,
            Split::Train,
            LabelType::Fine,
        ));
        assert!(e.contains("size 0 bytes"), "{e}");
    }

    #[test]
    fn out_of_range_label_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_cifar10_bin(tmp.path());
        let mut rec = vec![10u8];
        rec.extend(planar(0));
        fs::write(dir.join("test_batch.bin"), rec).unwrap();
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Ten,
            Split::Test,
            LabelType::Fine,
        ));
        assert!(
            e.contains("test_batch.bin") && e.contains("label 10"),
            "{e}"
        );
    }

    #[test]
    fn wrong_number_of_class_names_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_cifar10_bin(tmp.path());
        fs::write(dir.join("batches.meta.txt"), "a\nb\n").unwrap();
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Ten,
            Split::Test,
            LabelType::Fine,
        ));
        assert!(
            e.contains("batches.meta.txt") && e.contains("has 2 fine class names"),
            "{e}"
        );
    }

    #[test]
    fn missing_data_names_both_layouts_and_the_download_command() {
        let tmp = tempfile::tempdir().unwrap();
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Ten,
            Split::Train,
            LabelType::Fine,
        ));
        assert!(
            e.contains("cifar-10-batches-bin") && e.contains("cifar-10-batches-py"),
            "{e}"
        );
        let cmd = format!(
            "vitrs data download --dataset cifar10 --data-dir {}",
            tmp.path().display()
        );
        assert!(e.contains(&cmd), "{e}");
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Hundred,
            Split::Train,
            LabelType::Fine,
        ));
        assert!(
            e.contains("cifar-100-binary") && e.contains("--dataset cifar100"),
            "{e}"
        );
    }

    #[test]
    fn incomplete_directory_names_the_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_cifar10_bin(tmp.path());
        fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Ten,
            Split::Train,
            LabelType::Fine,
        ));
        assert!(
            e.contains("data_batch_4.bin") && e.contains("incomplete"),
            "{e}"
        );
        // The test split does not need that file.
        load_cifar(tmp.path(), CifarKind::Ten, Split::Test, LabelType::Fine).unwrap();
    }

    #[test]
    fn coarse_labels_for_cifar10_are_a_config_error() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10_bin(tmp.path());
        let e = load_cifar(tmp.path(), CifarKind::Ten, Split::Test, LabelType::Coarse);
        assert!(matches!(e, Err(Error::Config(_))));
    }

    /// Writes protocol-2 pickles shaped like the official CIFAR files, which Python 2's
    /// cPickle wrote: str (bytes) keys and values, memo PUTs after every object, lists filled
    /// by APPENDS in batches of 1000, numpy arrays as `_reconstruct` + BUILD with raw bytes.
    struct Pickler {
        out: Vec<u8>,
        memo: u32,
    }

    impl Pickler {
        fn new() -> Self {
            Pickler {
                out: vec![0x80, 2],
                memo: 0,
            }
        }

        fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.out.extend_from_slice(bytes);
            self
        }

        /// BINPUT, or LONG_BINPUT past 255 memo entries, as cPickle does.
        fn put(&mut self) -> &mut Self {
            self.memo += 1;
            let m = self.memo;
            match u8::try_from(m) {
                Ok(m) => self.op(&[b'q', m]),
                Err(_) => self.op(b"r").op(&m.to_le_bytes()),
            }
        }

        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(format!("c{module}\n{name}\n").as_bytes()).put()
        }

        /// A Python 2 `str`.
        fn string(&mut self, s: &[u8]) -> &mut Self {
            match u8::try_from(s.len()) {
                Ok(n) => self.op(&[b'U', n]),
                Err(_) => self.op(b"T").op(&(s.len() as u32).to_le_bytes()),
            };
            self.op(s).put()
        }

        fn int(&mut self, v: i64) -> &mut Self {
            match v {
                0..=255 => self.op(&[b'K', v as u8]),
                256..=65535 => self.op(b"M").op(&(v as u16).to_le_bytes()),
                _ if i32::try_from(v).is_ok() => self.op(b"J").op(&(v as i32).to_le_bytes()),
                _ => self.op(&[0x8a, 8]).op(&v.to_le_bytes()),
            }
        }

        fn int_list(&mut self, v: &[i64]) -> &mut Self {
            self.op(b"]").put();
            for chunk in v.chunks(1000) {
                if let [one] = chunk {
                    self.int(*one).op(b"a");
                } else {
                    self.op(b"(");
                    for &x in chunk {
                        self.int(x);
                    }
                    self.op(b"e");
                }
            }
            self
        }

        fn string_list(&mut self, v: &[&str]) -> &mut Self {
            self.op(b"]").put().op(b"(");
            for s in v {
                self.string(s.as_bytes());
            }
            self.op(b"e")
        }

        /// `numpy.ndarray` of `dtype` ("u1" or "i8") with C-order raw bytes.
        fn ndarray(&mut self, shape: &[usize], dtype: &str, raw: &[u8]) -> &mut Self {
            self.global("numpy.core.multiarray", "_reconstruct");
            self.global("numpy", "ndarray");
            self.int(0).op(&[0x85]).string(b"b").op(&[0x87, b'R']).put();
            self.op(b"(").int(1).op(b"(");
            for &d in shape {
                self.int(d as i64);
            }
            self.op(b"t").put();
            self.global("numpy", "dtype");
            self.string(dtype.as_bytes())
                .int(0)
                .int(1)
                .op(&[0x87, b'R'])
                .put();
            let order: &[u8] = if dtype == "u1" { b"|" } else { b"<" };
            self.op(b"(").int(3).string(order).op(b"NNN");
            self.op(b"J\xff\xff\xff\xffJ\xff\xff\xff\xff")
                .int(0)
                .op(b"tb");
            self.op(&[0x89]).string(raw).op(b"tb")
        }

        fn dict(&mut self) -> &mut Self {
            self.op(b"}").put().op(b"(")
        }

        fn finish(&mut self) -> Vec<u8> {
            self.op(b"u.");
            std::mem::take(&mut self.out)
        }
    }

    fn batch_pickle(label_keys: &[(&str, Vec<i64>)], ids: &[usize]) -> Vec<u8> {
        let mut p = Pickler::new();
        p.dict()
            .string(b"batch_label")
            .string(b"training batch 1 of 5");
        for (key, labels) in label_keys {
            p.string(key.as_bytes()).int_list(labels);
        }
        let raw: Vec<u8> = ids.iter().flat_map(|&i| planar(i)).collect();
        p.string(b"data")
            .ndarray(&[ids.len(), IMAGE_BYTES], "u1", &raw);
        let files: Vec<String> = ids.iter().map(|i| format!("img_{i}.png")).collect();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        p.string(b"filenames").string_list(&files);
        p.finish()
    }

    fn write_cifar10_py(root: &Path) -> PathBuf {
        let dir = root.join("cifar-10-batches-py");
        fs::create_dir_all(&dir).unwrap();
        for b in 0..5 {
            let ids = [3 * b, 3 * b + 1, 3 * b + 2];
            let labels = ids.iter().map(|&i| (i % 10) as i64).collect();
            let bytes = batch_pickle(&[("labels", labels)], &ids);
            fs::write(dir.join(format!("data_batch_{}", b + 1)), bytes).unwrap();
        }
        fs::write(
            dir.join("test_batch"),
            batch_pickle(&[("labels", vec![9])], &[50]),
        )
        .unwrap();
        let class_names = names(10, "py");
        let class_names: Vec<&str> = class_names.iter().map(String::as_str).collect();
        let mut p = Pickler::new();
        p.dict().string(b"num_cases_per_batch").int(10000);
        p.string(b"label_names").string_list(&class_names);
        p.string(b"num_vis").int(3072);
        fs::write(dir.join("batches.meta"), p.finish()).unwrap();
        dir
    }

    #[test]
    fn python_cifar10_pickles_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10_py(tmp.path());
        let train = load_cifar(tmp.path(), CifarKind::Ten, Split::Train, LabelType::Fine).unwrap();
        assert_eq!(train.len(), 15);
        assert_eq!(train.labels, (0..15).map(|i| i % 10).collect::<Vec<u16>>());
        assert_eq!(train.class_names, names(10, "py"));
        for i in 0..15 {
            assert_hwc(&train, i, i);
        }
        let test = load_cifar(tmp.path(), CifarKind::Ten, Split::Test, LabelType::Fine).unwrap();
        assert_eq!(test.labels, vec![9]);
        assert_hwc(&test, 0, 50);
    }

    #[test]
    fn binary_layout_is_preferred_over_python() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10_py(tmp.path());
        write_cifar10_bin(tmp.path());
        let test = load_cifar(tmp.path(), CifarKind::Ten, Split::Test, LabelType::Fine).unwrap();
        assert_eq!(test.class_names[0], "class0");
    }

    #[test]
    fn python_cifar100_pickles_with_many_labels_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar-100-python");
        fs::create_dir_all(&dir).unwrap();
        // 1001 images: the label lists need two APPENDS batches and a trailing APPEND.
        let n = 1001;
        let ids: Vec<usize> = (0..n).collect();
        let fine: Vec<i64> = ids.iter().map(|&i| (i % 100) as i64).collect();
        let coarse: Vec<i64> = ids.iter().map(|&i| (i % 20) as i64).collect();
        let train = batch_pickle(&[("fine_labels", fine), ("coarse_labels", coarse)], &ids);
        fs::write(dir.join("train"), train).unwrap();
        let (f, c) = (names(100, "f"), names(20, "c"));
        let mut p = Pickler::new();
        p.dict();
        p.string(b"fine_label_names")
            .string_list(&f.iter().map(String::as_str).collect::<Vec<_>>());
        p.string(b"coarse_label_names")
            .string_list(&c.iter().map(String::as_str).collect::<Vec<_>>());
        fs::write(dir.join("meta"), p.finish()).unwrap();

        let fine = load_cifar(
            tmp.path(),
            CifarKind::Hundred,
            Split::Train,
            LabelType::Fine,
        )
        .unwrap();
        assert_eq!(fine.len(), n);
        assert_eq!(fine.labels[1000], 0);
        assert_eq!(fine.labels[999], 99);
        assert_eq!(fine.class_names, f);
        assert_hwc(&fine, 1000, 1000);
        let coarse = load_cifar(
            tmp.path(),
            CifarKind::Hundred,
            Split::Train,
            LabelType::Coarse,
        )
        .unwrap();
        assert_eq!(coarse.labels[39], 19);
        assert_eq!(coarse.class_names, c);
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Hundred,
            Split::Test,
            LabelType::Fine,
        ));
        assert!(e.contains("cifar-100-python") && e.contains("test"), "{e}");
    }

    #[test]
    fn an_empty_array_whose_other_dimensions_overflow_is_an_error() {
        // (0, 4, 2^62 + 768) holds no bytes, but 4 * (2^62 + 768) wraps to 3072 in u64, so an
        // unchecked product took it for a batch of 3072-byte images (and panicked in debug).
        let mut p = Pickler::new();
        p.dict().string(b"labels").int_list(&[]);
        p.string(b"data")
            .ndarray(&[0, 4, (1 << 62) + 768], "u1", b"");
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        let path = Path::new("data_batch_1");
        let (kind, label_type) = (CifarKind::Ten, LabelType::Fine);
        let r = parse_pickle_batch(
            path,
            &p.finish(),
            kind,
            label_type,
            &mut images,
            &mut labels,
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("'data': shape is [0, 4, 4611686018427388672], expected (N, 3072)"),
            "{e}"
        );
    }

    #[test]
    fn pickled_label_arrays_and_label_count_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_cifar10_py(tmp.path());
        // Labels as an int64 numpy array instead of a list.
        let mut p = Pickler::new();
        let labels: Vec<u8> = [4i64, 2].iter().flat_map(|l| l.to_le_bytes()).collect();
        p.dict().string(b"labels").ndarray(&[2], "i8", &labels);
        let raw: Vec<u8> = [60, 61].iter().flat_map(|&i| planar(i)).collect();
        p.string(b"data").ndarray(&[2, IMAGE_BYTES], "u1", &raw);
        fs::write(dir.join("test_batch"), p.finish()).unwrap();
        let test = load_cifar(tmp.path(), CifarKind::Ten, Split::Test, LabelType::Fine).unwrap();
        assert_eq!(test.labels, vec![4, 2]);
        assert_hwc(&test, 1, 61);

        fs::write(
            dir.join("test_batch"),
            batch_pickle(&[("labels", vec![1, 2])], &[0]),
        )
        .unwrap();
        let e = err(load_cifar(
            tmp.path(),
            CifarKind::Ten,
            Split::Test,
            LabelType::Fine,
        ));
        assert!(
            e.contains("test_batch") && e.contains("1 images but 'labels' has 2"),
            "{e}"
        );
    }

    #[test]
    fn pickles_naming_other_globals_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_cifar10_py(tmp.path());
        for (module, name) in [("os", "system"), ("builtins", "eval"), ("posix", "system")] {
            let mut p = Pickler::new();
            p.global(module, name)
                .string(b"touch /tmp/pwned")
                .op(&[0x85, b'R', b'.']);
            fs::write(dir.join("test_batch"), &p.out).unwrap();
            let e = err(load_cifar(
                tmp.path(),
                CifarKind::Ten,
                Split::Test,
                LabelType::Fine,
            ));
            let want = format!("pickle references {module}.{name}, refusing to execute code");
            assert!(e.contains(&want) && e.contains("test_batch"), "{e}");
        }
    }

    #[test]
    fn mutated_pickles_are_errors_not_panics() {
        let valid = batch_pickle(&[("labels", vec![1, 2, 3])], &[0, 1, 2]);
        crate::testing::assert_no_panic_on_mutants("cifar pickle", &valid, 4000, |b| {
            let _ = pickle::load(b);
        });
    }
}
