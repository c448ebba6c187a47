//! MNIST and Fashion-MNIST in the IDX format: a big-endian header (magic, then one u32 per
//! dimension) followed by the raw u8 values. Files may be gzipped, whatever their name says.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::data::Split;
use crate::data::dataset::Dataset;
use crate::error::{Error, Result};

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Where Debian's `dataset-fashion-mnist` package installs the four gzipped IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// u8 data (0x08), 3 dimensions: count, rows, columns.
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// u8 data, 1 dimension: count.
const LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` from `dir`. Labels must index
/// into `class_names`.
pub fn load_idx(dir: &Path, split: Split, class_names: &[&str]) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = find_file(dir, prefix, "images", 3)?;
    let labels_path = find_file(dir, prefix, "labels", 1)?;
    let open = |path: &Path| File::open(path).map_err(|e| Error::io(path, "opening", e));
    parse_idx(
        open(&images_path)?,
        &images_path,
        open(&labels_path)?,
        &labels_path,
        class_names,
    )
}

/// [`load_idx`] on an image and a label stream (raw or gzipped IDX); the paths only name the
/// files in errors. Public so the fuzz target drives exactly this code.
pub fn parse_idx(
    images: impl Read,
    images_path: &Path,
    labels: impl Read,
    labels_path: &Path,
    class_names: &[&str],
) -> Result<Dataset> {
    let (images_path, labels_path) = (images_path.to_path_buf(), labels_path.to_path_buf());
    let (dims, images) = read_idx(images, &images_path, IMAGES_MAGIC)?;
    let (label_dims, labels) = read_idx(labels, &labels_path, LABELS_MAGIC)?;
    let (n, height, width) = (dims[0], dims[1], dims[2]);
    if label_dims[0] != n {
        return Err(Error::data(
            &labels_path,
            format!(
                "has {} labels but {} has {n} images",
                label_dims[0],
                images_path.display()
            ),
            "the two files come from different splits or datasets; use the matching pair",
        ));
    }
    if n == 0 || height == 0 || width == 0 {
        return Err(Error::data(
            &images_path,
            format!("holds no pixels ({n} images of {height}x{width})"),
            "the file is empty or corrupt; download it again",
        ));
    }
    if let Some(i) = labels.iter().position(|&l| l as usize >= class_names.len()) {
        return Err(Error::data(
            &labels_path,
            format!(
                "label {} of image {i} is outside 0..{}",
                labels[i],
                class_names.len()
            ),
            "the labels do not belong to this dataset; check --dataset and --data-dir",
        ));
    }
    Ok(Dataset {
        images,
        labels: labels.into_iter().map(u16::from).collect(),
        height,
        width,
        channels: 1,
        class_names: class_names.iter().map(|s| s.to_string()).collect(),
    })
}

/// The first of the usual spellings that exists: `train-images-idx3-ubyte`, the same with
/// `.gz`, and the `train-images.idx3-ubyte` some mirrors use.
fn find_file(dir: &Path, prefix: &str, what: &str, ndims: usize) -> Result<PathBuf> {
    let names = [
        format!("{prefix}-{what}-idx{ndims}-ubyte"),
        format!("{prefix}-{what}-idx{ndims}-ubyte.gz"),
        format!("{prefix}-{what}.idx{ndims}-ubyte"),
        format!("{prefix}-{what}.idx{ndims}-ubyte.gz"),
    ];
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::data(
                dir,
                format!("no IDX {what} file; looked for {} (or .gz)", names[0]),
                format!(
                    "pass the directory holding the MNIST-style files as --data-dir; for Fashion-MNIST `apt-get install dataset-fashion-mnist` puts them in {FASHION_MNIST_DIR}"
                ),
            )
        })
}

/// `r`, transparently decompressed when it starts with the gzip magic.
fn decompress<'a>(mut r: impl Read + 'a, path: &Path) -> Result<Box<dyn Read + 'a>> {
    let mut head = Vec::with_capacity(2);
    r.by_ref()
        .take(2)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, "reading", e))?;
    let gzip = head == GZIP_MAGIC;
    let r = std::io::Cursor::new(head).chain(BufReader::new(r));
    Ok(if gzip {
        Box::new(MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    })
}

/// Reads a whole IDX file of u8 values: its dimensions and data. The data must be exactly as
/// long as the header says.
fn read_idx(r: impl Read, path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |problem: String| {
        Error::data(
            path,
            problem,
            "the file is truncated or not an IDX file; download it again",
        )
    };
    let mut r = decompress(r, path)?;
    let found = read_u32(&mut r, path)?.ok_or_else(|| bad("too short for an IDX header".into()))?;
    if found != magic {
        let hint = match found {
            IMAGES_MAGIC => " (this is an image file)",
            LABELS_MAGIC => " (this is a label file)",
            _ => "",
        };
        return Err(Error::data(
            path,
            format!("IDX magic number is 0x{found:08x}{hint}, expected 0x{magic:08x}"),
            "check the file names: images are *-images-idx3-ubyte, labels *-labels-idx1-ubyte",
        ));
    }
    let mut dims = Vec::new();
    for _ in 0..(magic & 0xff) {
        let d = read_u32(&mut r, path)?.ok_or_else(|| bad("the IDX header is truncated".into()))?;
        dims.push(d as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("header dimensions {dims:?} are impossibly large")))?;
    // Read one byte past the declared size to notice trailing garbage; don't trust the header
    // for the allocation.
    let mut data = Vec::with_capacity(expected.min(64 << 20));
    r.take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("cannot read the data ({e})")))?;
    if data.len() < expected {
        return Err(bad(format!(
            "is truncated: header dimensions {dims:?} need {expected} bytes of data, found {}",
            data.len()
        )));
    }
    if data.len() > expected {
        return Err(bad(format!(
            "is longer than its header says: dimensions {dims:?} need {expected} bytes of data"
        )));
    }
    Ok((dims, data))
}

/// A big-endian u32, or `None` at end of file.
fn read_u32(r: &mut dyn Read, path: &Path) -> Result<Option<u32>> {
    let mut b = [0u8; 4];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(Some(u32::from_be_bytes(b))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::data(
            path,
            format!("cannot read the header ({e})"),
            "the file is corrupt; download it again",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::fs;
    use std::io::Write;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn pixels(n: usize) -> Vec<u8> {
        (0..n * 28 * 28).map(|i| (i * 7 % 256) as u8).collect()
    }

    fn write_split(dir: &Path, prefix: &str, labels: &[u8], gzip: bool) {
        let n = labels.len();
        let images = idx(IMAGES_MAGIC, &[n as u32, 28, 28], &pixels(n));
        let labels = idx(LABELS_MAGIC, &[n as u32], labels);
        let (images, labels, ext) = if gzip {
            (gz(&images), gz(&labels), ".gz")
        } else {
            (images, labels, "")
        };
        fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), images).unwrap();
        fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), labels).unwrap();
    }

    #[test]
    fn mutated_idx_files_are_errors_not_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let images = idx(IMAGES_MAGIC, &[3, 28, 28], &pixels(3));
        let labels = idx(LABELS_MAGIC, &[3], &[1, 2, 3]);
        for (which, valid, gzip) in [
            ("images", &images, false),
            ("labels", &labels, false),
            ("images", &images, true),
        ] {
            let valid = if gzip { gz(valid) } else { valid.clone() };
            crate::testing::assert_no_panic_on_mutants("idx", &valid, 300, |b| {
                write_split(tmp.path(), "t10k", &[1, 2, 3], false);
                let name = format!(
                    "t10k-{which}-idx{}-ubyte",
                    if which == "images" { 3 } else { 1 }
                );
                if gzip {
                    let _ = fs::remove_file(tmp.path().join(&name));
                    fs::write(tmp.path().join(format!("{name}.gz")), b).unwrap();
                } else {
                    let _ = fs::remove_file(tmp.path().join(format!("{name}.gz")));
                    fs::write(tmp.path().join(&name), b).unwrap();
                }
                let _ = load_idx(tmp.path(), Split::Test, &MNIST_CLASSES);
            });
        }
    }

    #[test]
    fn reads_raw_and_gzipped_files() {
        let tmp = tempfile::tempdir().unwrap();
        write_split(tmp.path(), "train", &[3, 1, 4], false);
        write_split(tmp.path(), "t10k", &[9, 0], true);
        let train = load_idx(tmp.path(), Split::Train, &FASHION_MNIST_CLASSES).unwrap();
        assert_eq!(
            (train.len(), train.height, train.width, train.channels),
            (3, 28, 28, 1)
        );
        assert_eq!(train.labels, vec![3, 1, 4]);
        assert_eq!(train.images, pixels(3));
        assert_eq!(train.class_names[9], "Ankle boot");
        let test = load_idx(tmp.path(), Split::Test, &MNIST_CLASSES).unwrap();
        assert_eq!(test.labels, vec![9, 0]);
        assert_eq!(test.images, pixels(2));
        assert_eq!(test.class_names[0], "0");
    }

    #[test]
    fn gzip_is_detected_by_content_not_name() {
        let tmp = tempfile::tempdir().unwrap();
        write_split(tmp.path(), "t10k", &[5], true);
        for what in ["images-idx3", "labels-idx1"] {
            let gz = tmp.path().join(format!("t10k-{what}-ubyte.gz"));
            fs::rename(&gz, tmp.path().join(format!("t10k-{what}-ubyte"))).unwrap();
        }
        let test = load_idx(tmp.path(), Split::Test, &MNIST_CLASSES).unwrap();
        assert_eq!(test.labels, vec![5]);
    }

    fn err(dir: &Path) -> String {
        load_idx(dir, Split::Train, &MNIST_CLASSES)
            .expect_err("expected an error")
            .to_string()
    }

    #[test]
    fn wrong_magic_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_split(tmp.path(), "train", &[1], false);
        // Swap the roles: a label file where the images should be.
        let labels = fs::read(tmp.path().join("train-labels-idx1-ubyte")).unwrap();
        fs::write(tmp.path().join("train-images-idx3-ubyte"), labels).unwrap();
        let e = err(tmp.path());
        assert!(
            e.contains("train-images-idx3-ubyte") && e.contains("0x00000801"),
            "{e}"
        );
        assert!(e.contains("label file"), "{e}");
    }

    #[test]
    fn count_mismatch_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        write_split(tmp.path(), "train", &[1, 2], false);
        let labels = idx(LABELS_MAGIC, &[3], &[1, 2, 3]);
        fs::write(tmp.path().join("train-labels-idx1-ubyte"), labels).unwrap();
        let e = err(tmp.path());
        assert!(
            e.contains("has 3 labels but") && e.contains("has 2 images"),
            "{e}"
        );
    }

    #[test]
    fn length_must_match_the_header() {
        let tmp = tempfile::tempdir().unwrap();
        write_split(tmp.path(), "train", &[1, 2], true);
        let short = gz(&idx(IMAGES_MAGIC, &[2, 28, 28], &pixels(1)));
        let path = tmp.path().join("train-images-idx3-ubyte.gz");
        fs::write(&path, short).unwrap();
        let e = err(tmp.path());
        assert!(
            e.contains("truncated") && e.contains("1568 bytes") && e.contains("found 784"),
            "{e}"
        );
        let long = idx(IMAGES_MAGIC, &[2, 28, 28], &pixels(3));
        fs::write(&path, long).unwrap();
        let e = err(tmp.path());
        assert!(e.contains("longer than"), "{e}");
        fs::write(&path, [0u8, 0]).unwrap();
        let e = err(tmp.path());
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn labels_outside_the_class_list_and_missing_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        write_split(tmp.path(), "train", &[1, 10], false);
        let e = err(tmp.path());
        assert!(e.contains("label 10 of image 1"), "{e}");
        let e = load_idx(tmp.path(), Split::Test, &MNIST_CLASSES)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t10k-images-idx3-ubyte") && e.contains("dataset-fashion-mnist"),
            "{e}"
        );
    }

    /// The real files from Debian's dataset-fashion-mnist, when installed.
    #[test]
    fn reads_the_debian_fashion_mnist_package_if_present() {
        let dir = Path::new(FASHION_MNIST_DIR);
        if !dir.join("t10k-images-idx3-ubyte.gz").is_file() {
            return;
        }
        let test = load_idx(dir, Split::Test, &FASHION_MNIST_CLASSES).unwrap();
        assert_eq!((test.len(), test.height, test.width), (10000, 28, 28));
        let mut counts = [0usize; 10];
        for &l in &test.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [1000; 10]);
    }
}
