//! CIFAR-10 and CIFAR-100 readers for both official layouts: the binary batches
//! (`cifar-10-batches-bin/`, `cifar-100-binary/`) and the Python pickles that torchvision uses
//! (`cifar-10-batches-py/`, `cifar-100-python/`). The pickles are read by a small interpreter
//! that understands only plain data and numpy arrays, so a hostile file cannot run code.

use std::fs;
use std::path::{Path, PathBuf};

use super::Split;
use super::dataset::Dataset;
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

/// A restricted unpickler: it rebuilds dicts, lists, tuples, strings, ints and numpy arrays,
/// and nothing else. Python's pickle runs arbitrary callables named by GLOBAL opcodes; here
/// only the few numpy constructors that array pickles name are recognised, and they are
/// interpreted, never called, so loading a file cannot execute anything.
mod pickle {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use crate::error::printable;

    type Res<T> = std::result::Result<T, String>;
    type List = Rc<Seq>;
    type Dict = Rc<Map>;

    /// The items of a list or tuple.
    #[derive(Debug, Default)]
    pub struct Seq(RefCell<Vec<Value>>);

    /// The items of a dict, in insertion order.
    #[derive(Debug, Default)]
    pub struct Map(RefCell<Vec<(Value, Value)>>);

    impl Seq {
        fn new(items: Vec<Value>) -> Rc<Self> {
            Rc::new(Seq(RefCell::new(items)))
        }

        pub fn borrow(&self) -> std::cell::Ref<'_, Vec<Value>> {
            self.0.borrow()
        }

        fn borrow_mut(&self) -> std::cell::RefMut<'_, Vec<Value>> {
            self.0.borrow_mut()
        }
    }

    impl Map {
        fn borrow(&self) -> std::cell::Ref<'_, Vec<(Value, Value)>> {
            self.0.borrow()
        }

        fn borrow_mut(&self) -> std::cell::RefMut<'_, Vec<(Value, Value)>> {
            self.0.borrow_mut()
        }
    }

    impl Drop for Seq {
        fn drop(&mut self) {
            drop_flat(std::mem::take(self.0.get_mut()));
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            let items = std::mem::take(self.0.get_mut());
            drop_flat(items.into_iter().flat_map(|(k, v)| [k, v]).collect());
        }
    }

    /// Drops values without recursing into nested containers: a hostile file can nest lists a
    /// million deep in two bytes per level, and the default recursive drop would overflow the
    /// stack. Containers still shared elsewhere are left alone.
    fn drop_flat(mut work: Vec<Value>) {
        while let Some(v) = work.pop() {
            match v {
                Value::List(s) | Value::Tuple(s) => {
                    if let Ok(mut seq) = Rc::try_unwrap(s) {
                        work.append(seq.0.get_mut());
                    }
                }
                Value::Dict(m) => {
                    if let Ok(mut map) = Rc::try_unwrap(m) {
                        for (k, v) in map.0.get_mut().drain(..) {
                            work.extend([k, v]);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Containers are shared (`Rc`), as in Python: a memoized list that is appended to later
    /// must show the appended items wherever the memo hands it out again.
    #[derive(Clone, Debug)]
    pub enum Value {
        None,
        Bool(bool),
        Int(i64),
        Bytes(Rc<Vec<u8>>),
        Str(Rc<str>),
        Tuple(List),
        List(List),
        Dict(Dict),
        Global(Global),
        Dtype(Rc<RefCell<Dtype>>),
        Array(Rc<RefCell<Array>>),
    }

    /// The only names a GLOBAL may refer to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Global {
        /// `numpy.core.multiarray._reconstruct(ndarray, shape, dtype)`: an empty array that
        /// BUILD then fills.
        Reconstruct,
        NdArray,
        /// `numpy.dtype(descr, align, copy)`.
        Dtype,
        /// Python 3 pickles bytes at protocol 2 as `_codecs.encode(latin1_str, 'latin1')`.
        CodecsEncode,
    }

    /// A numpy dtype such as `u1` or `<i8`: kind letter, item size, byte order.
    #[derive(Clone, Debug)]
    pub struct Dtype {
        pub kind: char,
        pub size: usize,
        pub big_endian: bool,
    }

    /// A C-ordered numpy array with its raw bytes.
    #[derive(Clone, Debug, Default)]
    pub struct Array {
        pub shape: Vec<usize>,
        pub dtype: Option<Dtype>,
        pub data: Rc<Vec<u8>>,
    }

    impl Value {
        pub fn type_name(&self) -> &'static str {
            match self {
                Value::None => "None",
                Value::Bool(_) => "bool",
                Value::Int(_) => "int",
                Value::Bytes(_) => "bytes",
                Value::Str(_) => "str",
                Value::Tuple(_) => "tuple",
                Value::List(_) => "list",
                Value::Dict(_) => "dict",
                Value::Global(_) => "global",
                Value::Dtype(_) => "dtype",
                Value::Array(_) => "array",
            }
        }

        /// The string or bytes as text, for keys and names.
        fn text(&self) -> Option<String> {
            match self {
                Value::Str(s) => Some(s.to_string()),
                Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
                _ => None,
            }
        }

        /// `self[key]` for a dict, matching `key` against str and bytes keys alike (the CIFAR
        /// files were written by Python 2, whose keys are bytes).
        pub fn get(&self, key: &str) -> Option<Value> {
            let Value::Dict(items) = self else {
                return None;
            };
            let items = items.borrow();
            // The last assignment wins, as in Python.
            items
                .iter()
                .rev()
                .find(|(k, _)| k.text().as_deref() == Some(key))
                .map(|(_, v)| v.clone())
        }
    }

    /// The elements of a list or tuple, or the values of a 1-D integer array.
    pub fn int_list(v: &Value) -> Res<Vec<i64>> {
        match v {
            Value::List(items) | Value::Tuple(items) => ints(&items.borrow()),
            Value::Array(a) => a.borrow().to_i64(),
            other => Err(format!(
                "expected a list of ints, found a {}",
                other.type_name()
            )),
        }
    }

    fn ints(items: &[Value]) -> Res<Vec<i64>> {
        items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Ok(*i),
                other => Err(format!("expected an int, found a {}", other.type_name())),
            })
            .collect()
    }

    pub fn text_list(v: &Value) -> Res<Vec<String>> {
        let items = match v {
            Value::List(items) | Value::Tuple(items) => items.borrow().clone(),
            other => return Err(format!("expected a list, found a {}", other.type_name())),
        };
        items
            .iter()
            .map(|v| {
                v.text()
                    .ok_or_else(|| format!("expected a string, found a {}", v.type_name()))
            })
            .collect()
    }

    impl Array {
        /// Checks this is a uint8 array of `row_bytes`-byte rows and returns the row count.
        pub fn u8_rows(&self, row_bytes: usize) -> Res<usize> {
            let dtype = self.dtype.as_ref().ok_or("the array was never filled in")?;
            if !(dtype.kind == 'u' && dtype.size == 1) {
                return Err(format!(
                    "dtype is {}{}, expected uint8",
                    dtype.kind, dtype.size
                ));
            }
            // Checked: with a zero first dimension the rest of the shape can be anything.
            let per_row = (self.shape.iter().skip(1)).try_fold(1usize, |a, &d| a.checked_mul(d));
            if self.shape.is_empty() || per_row != Some(row_bytes) {
                return Err(format!(
                    "shape is {:?}, expected (N, {row_bytes})",
                    self.shape
                ));
            }
            Ok(self.shape[0])
        }

        /// The elements of a 1-D integer array.
        pub fn to_i64(&self) -> Res<Vec<i64>> {
            let dtype = self.dtype.as_ref().ok_or("the array was never filled in")?;
            if self.shape.len() != 1 || !matches!(dtype.kind, 'u' | 'i' | 'b') {
                return Err(format!(
                    "expected a 1-D integer array, found shape {:?} dtype {}{}",
                    self.shape, dtype.kind, dtype.size
                ));
            }
            self.data
                .chunks_exact(dtype.size)
                .map(|c| {
                    let mut le = [0u8; 8];
                    le[..c.len()].copy_from_slice(c);
                    if dtype.big_endian {
                        le[..c.len()].reverse();
                    }
                    // Sign-extend signed values narrower than 8 bytes.
                    if dtype.kind == 'i' && c.len() < 8 && le[c.len() - 1] & 0x80 != 0 {
                        le[c.len()..].fill(0xff);
                    }
                    let v = i64::from_le_bytes(le);
                    if dtype.kind == 'u' && c.len() == 8 && v < 0 {
                        Err("an array value does not fit in 64 bits".to_string())
                    } else {
                        Ok(v)
                    }
                })
                .collect()
        }
    }

    /// Reads one pickle and returns the object it describes.
    pub fn load(bytes: &[u8]) -> Res<Value> {
        let mut m = Machine {
            input: bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        };
        loop {
            let at = m.pos;
            let op = m
                .take(1)
                .map_err(|_| "the pickle ends without a STOP opcode")?[0];
            match m.step(op) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(format!("{e} (pickle opcode 0x{op:02x} at byte {at})")),
            }
        }
    }

    struct Machine<'a> {
        input: &'a [u8],
        pos: usize,
        stack: Vec<Value>,
        /// Stack heights at each MARK.
        marks: Vec<usize>,
        memo: HashMap<u32, Value>,
    }

    impl<'a> Machine<'a> {
        /// Executes one opcode; `Some` at STOP.
        fn step(&mut self, op: u8) -> Res<Option<Value>> {
            match op {
                0x80 => {
                    // PROTO: protocols 2..=5 share the opcodes used here.
                    let p = self.take(1)?[0];
                    if p > 5 {
                        return Err(format!("pickle protocol {p} is not supported"));
                    }
                }
                0x95 => {
                    // FRAME (protocol 4): only a length hint.
                    self.take(8)?;
                }
                b'.' => return self.pop().map(Some),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'}' => self.stack.push(Value::Dict(Default::default())),
                b']' => self.stack.push(Value::List(Default::default())),
                b')' => self.stack.push(Value::Tuple(Default::default())),
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.take(1)?[0];
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'I' => {
                    let v = self.int_line()?;
                    self.stack.push(v);
                }
                0x8a => {
                    let v = self.long1()?;
                    self.stack.push(Value::Int(v));
                }
                b'X' => {
                    let n = self.len_u32()?;
                    self.push_unicode(n)?;
                }
                0x8c => {
                    let n = self.take(1)?[0] as usize;
                    self.push_unicode(n)?;
                }
                b'U' | b'C' => {
                    // SHORT_BINSTRING (a Python 2 str) / SHORT_BINBYTES: raw bytes.
                    let n = self.take(1)?[0] as usize;
                    self.push_bytes(n)?;
                }
                b'T' | b'B' => {
                    // BINSTRING / BINBYTES.
                    let n = self.len_u32()?;
                    self.push_bytes(n)?;
                }
                b'q' => {
                    let i = self.take(1)?[0] as u32;
                    self.put(i)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.put(i)?;
                }
                0x94 => {
                    // MEMOIZE (protocol 4): PUT at the next free index.
                    self.put(self.memo.len() as u32)?;
                }
                b'h' => {
                    let i = self.take(1)?[0] as u32;
                    self.get(i)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.get(i)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.list_top()?.borrow_mut().push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.list_top()?.borrow_mut().extend(items);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.dict_top()?.borrow_mut().push((k, v));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let dict = self.dict_top()?;
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.borrow_mut().push((k, v));
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Seq::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Seq::new(items)));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(resolve(&module, &name)?));
                }
                0x93 => {
                    // STACK_GLOBAL (protocol 4): module and name come from the stack.
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL needs two strings".into());
                    };
                    self.stack.push(Value::Global(resolve(&module, &name)?));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.stack.last().ok_or("stack underflow")?;
                    build(target, state)?;
                }
                _ => return Err("unsupported pickle opcode".into()),
            }
            Ok(None)
        }

        fn take(&mut self, n: usize) -> Res<&'a [u8]> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|&e| e <= self.input.len())
                .ok_or("the pickle is truncated")?;
            let s = &self.input[self.pos..end];
            self.pos = end;
            Ok(s)
        }

        fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
            let mut a = [0u8; N];
            a.copy_from_slice(self.take(N)?);
            Ok(a)
        }

        fn len_u32(&mut self) -> Res<usize> {
            Ok(u32::from_le_bytes(self.array()?) as usize)
        }

        /// A newline-terminated ASCII argument (GLOBAL, INT).
        fn line(&mut self) -> Res<String> {
            let rest = &self.input[self.pos..];
            let n = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("the pickle is truncated")?;
            let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a name is not text")?;
            self.pos += n + 1;
            Ok(s.to_string())
        }

        /// INT: Python 2 writes booleans as `I00`/`I01`.
        fn int_line(&mut self) -> Res<Value> {
            let s = self.line()?;
            Ok(match s.as_str() {
                "00" => Value::Bool(false),
                "01" => Value::Bool(true),
                _ => Value::Int(s.trim().parse().map_err(|_| format!("bad INT {s:?}"))?),
            })
        }

        /// LONG1: little-endian two's complement of up to 8 bytes here.
        fn long1(&mut self) -> Res<i64> {
            let n = self.take(1)?[0] as usize;
            if n > 8 {
                return Err(format!("a {n}-byte integer is too large"));
            }
            let b = self.take(n)?;
            let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut le = [fill; 8];
            le[..n].copy_from_slice(b);
            Ok(i64::from_le_bytes(le))
        }

        fn push_unicode(&mut self, n: usize) -> Res<()> {
            let s = std::str::from_utf8(self.take(n)?).map_err(|_| "a string is not UTF-8")?;
            self.stack.push(Value::Str(s.into()));
            Ok(())
        }

        fn push_bytes(&mut self, n: usize) -> Res<()> {
            let b = self.take(n)?.to_vec();
            self.stack.push(Value::Bytes(Rc::new(b)));
            Ok(())
        }

        fn pop(&mut self) -> Res<Value> {
            match self.marks.last() {
                Some(&m) if m >= self.stack.len() => Err("stack underflow at a MARK".into()),
                _ => self.stack.pop().ok_or_else(|| "stack underflow".into()),
            }
        }

        fn pop_mark(&mut self) -> Res<Vec<Value>> {
            let m = self.marks.pop().ok_or("no MARK to pop to")?;
            if m > self.stack.len() {
                return Err("stack underflow".into());
            }
            Ok(self.stack.split_off(m))
        }

        fn put(&mut self, i: u32) -> Res<()> {
            let top = self.stack.last().ok_or("PUT on an empty stack")?;
            self.memo.insert(i, top.clone());
            Ok(())
        }

        fn get(&mut self, i: u32) -> Res<()> {
            let v = self
                .memo
                .get(&i)
                .ok_or(format!("memo entry {i} is not set"))?;
            self.stack.push(v.clone());
            Ok(())
        }

        fn list_top(&self) -> Res<List> {
            match self.stack.last() {
                Some(Value::List(l)) => Ok(l.clone()),
                _ => Err("APPEND to something that is not a list".into()),
            }
        }

        fn dict_top(&self) -> Res<Dict> {
            match self.stack.last() {
                Some(Value::Dict(d)) => Ok(d.clone()),
                _ => Err("SETITEM on something that is not a dict".into()),
            }
        }
    }

    /// The allow-list. numpy 2 renamed `numpy.core` to `numpy._core`.
    fn resolve(module: &str, name: &str) -> Res<Global> {
        Ok(match (module, name) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                Global::Reconstruct
            }
            ("numpy", "ndarray") => Global::NdArray,
            ("numpy", "dtype") => Global::Dtype,
            ("_codecs", "encode") => Global::CodecsEncode,
            _ => {
                return Err(format!(
                    "pickle references {}.{}, refusing to execute code",
                    printable(module),
                    printable(name)
                ));
            }
        })
    }

    /// The items of a tuple (shallow copies).
    fn tuple(v: &Value, what: &str) -> Res<Vec<Value>> {
        match v {
            Value::Tuple(t) => Ok(t.borrow().clone()),
            other => Err(format!(
                "{what} is a {}, expected a tuple",
                other.type_name()
            )),
        }
    }

    /// REDUCE, interpreted for the allowed callables only.
    fn reduce(callable: Value, args: Value) -> Res<Value> {
        let Value::Global(g) = callable else {
            return Err(format!(
                "REDUCE on a {}, not an allowed global",
                callable.type_name()
            ));
        };
        let args = tuple(&args, "REDUCE arguments")?;
        match g {
            Global::Reconstruct => match args.first() {
                Some(Value::Global(Global::NdArray)) => {
                    Ok(Value::Array(Rc::new(RefCell::new(Array::default()))))
                }
                _ => Err("_reconstruct of something other than numpy.ndarray".into()),
            },
            Global::Dtype => {
                let descr = args
                    .first()
                    .and_then(Value::text)
                    .ok_or("dtype without a name")?;
                Ok(Value::Dtype(Rc::new(RefCell::new(parse_dtype(&descr)?))))
            }
            Global::CodecsEncode => match (args.first(), args.get(1).and_then(Value::text)) {
                (Some(Value::Str(s)), Some(enc))
                    if matches!(enc.as_str(), "latin1" | "latin-1") =>
                {
                    let bytes: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    let bytes = bytes.ok_or("_codecs.encode of a non-latin1 string")?;
                    Ok(Value::Bytes(Rc::new(bytes)))
                }
                _ => Err("_codecs.encode is only supported for latin1 strings".into()),
            },
            Global::NdArray => Err("numpy.ndarray is only supported inside _reconstruct".into()),
        }
    }

    /// `u1`, `i8`, `<i8`, `b1`...; the byte order normally comes later, from BUILD.
    fn parse_dtype(descr: &str) -> Res<Dtype> {
        let (big_endian, rest) = match descr.as_bytes().first() {
            Some(b'>') => (true, &descr[1..]),
            Some(b'<' | b'|' | b'=') => (false, &descr[1..]),
            _ => (false, descr),
        };
        let mut chars = rest.chars();
        let kind = chars.next().ok_or("empty dtype")?;
        let size: usize = chars
            .as_str()
            .parse()
            .map_err(|_| format!("unsupported dtype {descr:?}"))?;
        if !matches!(kind, 'u' | 'i' | 'b' | 'f') || !matches!(size, 1 | 2 | 4 | 8) {
            return Err(format!("unsupported dtype {descr:?}"));
        }
        Ok(Dtype {
            kind,
            size,
            big_endian,
        })
    }

    /// BUILD: `__setstate__` of a dtype or an array, interpreted.
    fn build(target: &Value, state: Value) -> Res<()> {
        let state = tuple(&state, "BUILD state")?;
        match target {
            Value::Dtype(d) => {
                // (version, byteorder, subarray, names, fields, elsize, alignment, flags...)
                let order = state
                    .get(1)
                    .and_then(Value::text)
                    .ok_or("dtype state without a byte order")?;
                let mut d = d.borrow_mut();
                d.big_endian = match order.as_str() {
                    ">" => true,
                    "<" => false,
                    "=" => cfg!(target_endian = "big"),
                    _ => d.big_endian,
                };
                Ok(())
            }
            Value::Array(a) => {
                let array = array_from_state(&state)?;
                *a.borrow_mut() = array;
                Ok(())
            }
            other => Err(format!("BUILD on a {}", other.type_name())),
        }
    }

    /// `(version, shape, dtype, is_fortran, rawdata)`, or the 4-tuple of old numpy.
    fn array_from_state(state: &[Value]) -> Res<Array> {
        let fields = match state.len() {
            5 => &state[1..],
            4 => state,
            n => return Err(format!("array state has {n} fields")),
        };
        let shape = tuple(&fields[0], "array shape")?
            .iter()
            .map(|v| match v {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err("bad array shape".to_string()),
            })
            .collect::<Res<Vec<usize>>>()?;
        let Value::Dtype(dtype) = &fields[1] else {
            return Err("array state without a dtype".into());
        };
        let dtype = dtype.borrow().clone();
        let fortran = matches!(fields[2], Value::Bool(true) | Value::Int(1));
        if fortran && shape.len() > 1 {
            return Err("Fortran-ordered arrays are not supported".into());
        }
        let Value::Bytes(data) = &fields[3] else {
            return Err(format!(
                "array data is a {}, expected bytes",
                fields[3].type_name()
            ));
        };
        let expected = shape
            .iter()
            .try_fold(dtype.size, |acc, &d| acc.checked_mul(d))
            .ok_or("array shape overflows")?;
        if data.len() != expected {
            return Err(format!(
                "array of shape {shape:?} needs {expected} bytes, found {}",
                data.len()
            ));
        }
        Ok(Array {
            shape,
            dtype: Some(dtype),
            data: data.clone(),
        })
    }
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
    fn unknown_opcodes_and_truncation_are_errors() {
        let e = pickle::load(b"\x80\x02}q\x01(U\x01aK\x01G").unwrap_err();
        assert!(e.contains("opcode 0x47 at byte 11"), "{e}");
        let e = pickle::load(b"\x80\x02T\xff\xff\x00\x00abc").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = pickle::load(b"\x80\x02K\x01").unwrap_err();
        assert!(e.contains("without a STOP"), "{e}");
        let e = pickle::load(b"\x80\x02(\x85.").unwrap_err();
        assert!(e.contains("underflow"), "{e}");
    }

    #[test]
    fn deep_nesting_neither_overflows_the_stack_nor_fails() {
        let depth = 1_000_000;
        let mut lists = b"\x80\x02".to_vec();
        lists.extend(std::iter::repeat_n(b']', depth));
        lists.extend(std::iter::repeat_n(b'a', depth - 1));
        lists.push(b'.');
        let mut tuples = b"\x80\x02)".to_vec();
        tuples.extend(std::iter::repeat_n(0x85, depth));
        tuples.push(b'.');
        // A small stack, so a recursive drop would crash here rather than pass by luck.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                assert!(matches!(pickle::load(&lists), Ok(pickle::Value::List(_))));
                assert!(matches!(pickle::load(&tuples), Ok(pickle::Value::Tuple(_))));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn memo_hands_out_the_same_list_after_it_grew() {
        // {'a': [1, 2], 'b': <memo 2>}: 'b' is stored before it is filled.
        let v = pickle::load(b"\x80\x02}q\x01(X\x01\x00\x00\x00a]q\x02(K\x01K\x02eU\x01bh\x02u.")
            .unwrap();
        assert_eq!(pickle::int_list(&v.get("b").unwrap()).unwrap(), vec![1, 2]);
        assert_eq!(pickle::int_list(&v.get("a").unwrap()).unwrap(), vec![1, 2]);
    }

    /// Checks one of the fixtures below: `{b'batch_label': b'testing', b'labels': [3, 1],
    /// b'data': uint8 [[1, 2, 3], [250, 251, 252]], b'filenames': [b'a.png', b'b.png'],
    /// b'ids': int64 [-5, 7]}`.
    fn check_real_pickle(bytes: &[u8]) {
        let v = pickle::load(bytes).unwrap();
        assert_eq!(
            pickle::int_list(&v.get("labels").unwrap()).unwrap(),
            vec![3, 1]
        );
        assert_eq!(
            pickle::int_list(&v.get("ids").unwrap()).unwrap(),
            vec![-5, 7]
        );
        let files = pickle::text_list(&v.get("filenames").unwrap()).unwrap();
        assert_eq!(files, vec!["a.png", "b.png"]);
        let Some(pickle::Value::Array(data)) = v.get("data") else {
            panic!("no data array");
        };
        let data = data.borrow();
        assert_eq!(data.u8_rows(3).unwrap(), 2);
        assert_eq!(data.data.as_slice(), &[1, 2, 3, 250, 251, 252]);
    }

    #[test]
    fn mutated_pickles_are_errors_not_panics() {
        let valid = batch_pickle(&[("labels", vec![1, 2, 3])], &[0, 1, 2]);
        crate::util::assert_no_panic_on_mutants("cifar pickle", &valid, 4000, |b| {
            let _ = pickle::load(b);
        });
        crate::util::assert_no_panic_on_mutants("python 2 pickle", PY2_FIXTURE, 4000, |b| {
            let _ = pickle::load(b);
        });
    }

    /// Written by Python 2.7's cPickle at protocol 2 (as the official files were), from a
    /// stand-in numpy module whose `__reduce__` matches numpy's.
    #[test]
    fn reads_a_real_python2_pickle() {
        check_real_pickle(PY2_FIXTURE);
    }

    /// The same dict from Python 3.11 at protocol 2: bytes go through `_codecs.encode` and
    /// repeated objects through BINGET.
    #[test]
    fn reads_a_real_python3_protocol2_pickle() {
        check_real_pickle(PY3_FIXTURE);
    }

    const PY2_FIXTURE: &[u8] = b"\x80\x02\x7d\x71\x01\x28\x55\x04\x64\x61\x74\x61\x71\x02\x63\x6e\x75\x6d\x70\x79\x2e\x63\x6f\x72\
          \x65\x2e\x6d\x75\x6c\x74\x69\x61\x72\x72\x61\x79\x0a\x5f\x72\x65\x63\x6f\x6e\x73\x74\x72\x75\x63\
          \x74\x0a\x71\x03\x63\x6e\x75\x6d\x70\x79\x0a\x6e\x64\x61\x72\x72\x61\x79\x0a\x71\x04\x4b\x00\x85\
          \x71\x05\x55\x01\x62\x87\x52\x71\x06\x28\x4b\x01\x4b\x02\x4b\x03\x86\x71\x07\x63\x6e\x75\x6d\x70\
          \x79\x0a\x64\x74\x79\x70\x65\x0a\x71\x08\x55\x02\x75\x31\x71\x09\x89\x88\x87\x52\x71\x0a\x28\x4b\
          \x03\x55\x01\x7c\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\x4b\x00\x74\x62\x89\x55\x06\
          \x01\x02\x03\xfa\xfb\xfc\x71\x0b\x74\x62\x55\x06\x6c\x61\x62\x65\x6c\x73\x71\x0c\x5d\x71\x0d\x28\
          \x4b\x03\x4b\x01\x65\x55\x0b\x62\x61\x74\x63\x68\x5f\x6c\x61\x62\x65\x6c\x71\x0e\x55\x07\x74\x65\
          \x73\x74\x69\x6e\x67\x71\x0f\x55\x03\x69\x64\x73\x71\x10\x68\x03\x68\x04\x68\x05\x55\x01\x62\x87\
          \x52\x71\x11\x28\x4b\x01\x4b\x02\x85\x71\x12\x68\x08\x55\x02\x69\x38\x71\x13\x89\x88\x87\x52\x71\
          \x14\x28\x4b\x03\x55\x01\x3c\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\x4b\x00\x74\x62\
          \x89\x55\x10\xfb\xff\xff\xff\xff\xff\xff\xff\x07\x00\x00\x00\x00\x00\x00\x00\x71\x15\x74\x62\x55\
          \x09\x66\x69\x6c\x65\x6e\x61\x6d\x65\x73\x71\x16\x5d\x71\x17\x28\x55\x05\x61\x2e\x70\x6e\x67\x71\
          \x18\x55\x05\x62\x2e\x70\x6e\x67\x71\x19\x65\x75\x2e";

    const PY3_FIXTURE: &[u8] = b"\x80\x02\x7d\x71\x00\x28\x63\x5f\x63\x6f\x64\x65\x63\x73\x0a\x65\x6e\x63\x6f\x64\x65\x0a\x71\x01\
          \x58\x0b\x00\x00\x00\x62\x61\x74\x63\x68\x5f\x6c\x61\x62\x65\x6c\x71\x02\x58\x06\x00\x00\x00\x6c\
          \x61\x74\x69\x6e\x31\x71\x03\x86\x71\x04\x52\x71\x05\x68\x01\x58\x07\x00\x00\x00\x74\x65\x73\x74\
          \x69\x6e\x67\x71\x06\x68\x03\x86\x71\x07\x52\x71\x08\x68\x01\x58\x06\x00\x00\x00\x6c\x61\x62\x65\
          \x6c\x73\x71\x09\x68\x03\x86\x71\x0a\x52\x71\x0b\x5d\x71\x0c\x28\x4b\x03\x4b\x01\x65\x68\x01\x58\
          \x04\x00\x00\x00\x64\x61\x74\x61\x71\x0d\x68\x03\x86\x71\x0e\x52\x71\x0f\x63\x6e\x75\x6d\x70\x79\
          \x2e\x63\x6f\x72\x65\x2e\x6d\x75\x6c\x74\x69\x61\x72\x72\x61\x79\x0a\x5f\x72\x65\x63\x6f\x6e\x73\
          \x74\x72\x75\x63\x74\x0a\x71\x10\x63\x6e\x75\x6d\x70\x79\x0a\x6e\x64\x61\x72\x72\x61\x79\x0a\x71\
          \x11\x4b\x00\x85\x71\x12\x68\x01\x58\x01\x00\x00\x00\x62\x71\x13\x68\x03\x86\x71\x14\x52\x71\x15\
          \x87\x71\x16\x52\x71\x17\x28\x4b\x01\x4b\x02\x4b\x03\x86\x71\x18\x63\x6e\x75\x6d\x70\x79\x0a\x64\
          \x74\x79\x70\x65\x0a\x71\x19\x58\x02\x00\x00\x00\x75\x31\x71\x1a\x89\x88\x87\x71\x1b\x52\x71\x1c\
          \x28\x4b\x03\x58\x01\x00\x00\x00\x7c\x71\x1d\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\
          \x4b\x00\x74\x71\x1e\x62\x89\x68\x01\x58\x09\x00\x00\x00\x01\x02\x03\xc3\xba\xc3\xbb\xc3\xbc\x71\
          \x1f\x68\x03\x86\x71\x20\x52\x71\x21\x74\x71\x22\x62\x68\x01\x58\x09\x00\x00\x00\x66\x69\x6c\x65\
          \x6e\x61\x6d\x65\x73\x71\x23\x68\x03\x86\x71\x24\x52\x71\x25\x5d\x71\x26\x28\x68\x01\x58\x05\x00\
          \x00\x00\x61\x2e\x70\x6e\x67\x71\x27\x68\x03\x86\x71\x28\x52\x71\x29\x68\x01\x58\x05\x00\x00\x00\
          \x62\x2e\x70\x6e\x67\x71\x2a\x68\x03\x86\x71\x2b\x52\x71\x2c\x65\x68\x01\x58\x03\x00\x00\x00\x69\
          \x64\x73\x71\x2d\x68\x03\x86\x71\x2e\x52\x71\x2f\x68\x10\x68\x11\x68\x12\x68\x15\x87\x71\x30\x52\
          \x71\x31\x28\x4b\x01\x4b\x02\x85\x71\x32\x68\x19\x58\x02\x00\x00\x00\x69\x38\x71\x33\x89\x88\x87\
          \x71\x34\x52\x71\x35\x28\x4b\x03\x58\x01\x00\x00\x00\x3c\x71\x36\x4e\x4e\x4e\x4a\xff\xff\xff\xff\
          \x4a\xff\xff\xff\xff\x4b\x00\x74\x71\x37\x62\x89\x68\x01\x58\x18\x00\x00\x00\xc3\xbb\xc3\xbf\xc3\
          \xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\x07\x00\x00\x00\x00\x00\x00\x00\x71\x38\x68\x03\x86\
          \x71\x39\x52\x71\x3a\x74\x71\x3b\x62\x75\x2e";
}
