//! A TensorBoard event-file writer: scalars, a text summary and HParams session info.
//!
//! The format is TFRecord framing around hand-encoded `tensorboard.Event` protobufs, small
//! enough to write directly instead of pulling in a protobuf toolchain:
//!
//! ```text
//! record := u64 LE len | u32 LE masked_crc32c(len bytes) | data | u32 LE masked_crc32c(data)
//! masked_crc(c) := ((c >> 15) | (c << 17)) + 0xa282ead8   (wrapping)
//! ```
//!
//! Protobuf field numbers used (from tensorboard/compat/proto):
//! `Event { wall_time: double = 1, step: int64 = 2, file_version: string = 3, summary = 5 }`,
//! `Summary { repeated Value value = 1 }`,
//! `Value { tag = 1, simple_value: float = 2, tensor: TensorProto = 8, metadata = 9 }`,
//! `SummaryMetadata { plugin_data = 1 }`, `PluginData { plugin_name = 1, content: bytes = 2 }`,
//! `TensorProto { dtype = 1, tensor_shape = 2, string_val: repeated bytes = 8 }`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::report::metrics::MetricRecord;

/// The version string TensorBoard expects in the first event of a file.
const FILE_VERSION: &str = "brain.Event:2";
/// `tensorflow.DataType.DT_STRING`.
const DT_STRING: u64 = 7;
/// Tag under which the HParams plugin looks for a run's hyperparameters.
const HPARAMS_SESSION_START_TAG: &str = "_hparams_/session_start_info";

// ---------------------------------------------------------------------------------------------
// CRC32C (Castagnoli), table driven.

const CRC32C_POLY: u32 = 0x82F6_3B78;

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of `data` (reflected, init and final xor 0xFFFFFFFF).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: a CRC stored next to data that itself contains CRCs is masked so
/// that CRCs of CRCs do not degenerate.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    // ((crc >> 15) | (crc << 17)) + 0xa282ead8, i.e. a rotate right by 15.
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Frames one serialized event as a TFRecord.
fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Minimal protobuf encoding: only the wire types these messages need.

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

/// A protobuf message being built field by field.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    fn uint(mut self, field: u32, v: u64) -> Self {
        self.key(field, WIRE_VARINT);
        self.varint(v);
        self
    }

    /// int64 fields encode negatives as 10-byte two's complement varints.
    fn int64(self, field: u32, v: i64) -> Self {
        self.uint(field, v as u64)
    }

    fn double(mut self, field: u32, v: f64) -> Self {
        self.key(field, WIRE_FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(mut self, field: u32, v: f32) -> Self {
        self.key(field, WIRE_FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, WIRE_LEN);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    fn string(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }

    fn msg(self, field: u32, m: Msg) -> Self {
        self.bytes(field, &m.0)
    }
}

/// `SummaryMetadata { plugin_data { plugin_name, content } }`.
fn plugin_metadata(plugin: &str, content: &[u8]) -> Msg {
    let plugin_data = Msg::default().string(1, plugin).bytes(2, content);
    Msg::default().msg(1, plugin_data)
}

/// `Event { wall_time, step, summary { value } }`.
fn summary_event(wall_time: f64, step: i64, value: Msg) -> Msg {
    let summary = Msg::default().msg(1, value);
    Msg::default()
        .double(1, wall_time)
        .int64(2, step)
        .msg(5, summary)
}

// ---------------------------------------------------------------------------------------------

/// A hyperparameter value for [`EventWriter::hparams`].
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl std::fmt::Display for HParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HParam::Number(x) => write!(f, "{x}"),
            HParam::Text(s) => f.write_str(s),
            HParam::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl HParam {
    /// `google.protobuf.Value { number_value = 2 | string_value = 3 | bool_value = 4 }`.
    fn to_proto(&self) -> Msg {
        match self {
            HParam::Number(x) => Msg::default().double(2, *x),
            HParam::Text(s) => Msg::default().string(3, s),
            HParam::Bool(b) => Msg::default().uint(4, u64::from(*b)),
        }
    }
}

/// Writes one TensorBoard event file. Every event is flushed as it is written so TensorBoard
/// shows a live run and a crash loses nothing already logged.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` if needed and a new file
    /// `events.out.tfevents.<unix_secs>.<hostname>.<pid>.vitrs` in it, starting with the
    /// file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e))?;
        let now = now_secs();
        let base = format!(
            "events.out.tfevents.{}.{}.{}.vitrs",
            now as u64,
            hostname(),
            std::process::id()
        );
        let (file, path) = create_unique(dir, &base)?;
        let mut w = EventWriter {
            out: BufWriter::new(file),
            path,
        };
        w.write_event(
            &Msg::default()
                .double(1, now)
                .int64(2, 0)
                .string(3, FILE_VERSION),
        )?;
        Ok(w)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar point; `wall_time` is Unix seconds (see [`now_secs`]).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32, wall_time: f64) -> Result<()> {
        let value = Msg::default().string(1, tag).float(2, value);
        self.write_event(&summary_event(wall_time, step, value))
    }

    /// A markdown text summary for TensorBoard's Text tab (a scalar `DT_STRING` tensor tagged
    /// with the "text" plugin).
    pub fn text(&mut self, tag: &str, step: i64, markdown: &str) -> Result<()> {
        let shape = Msg::default(); // no dims: a scalar
        let tensor = Msg::default()
            .uint(1, DT_STRING)
            .msg(2, shape)
            .bytes(8, markdown.as_bytes());
        let value = Msg::default()
            .string(1, tag)
            .msg(9, plugin_metadata("text", &[]))
            .msg(8, tensor);
        self.write_event(&summary_event(now_secs(), step, value))
    }

    /// Records the run's hyperparameters twice: as a markdown table under `tag` (Text tab), and
    /// as HParams-plugin session start info so the HParams tab can compare runs.
    pub fn hparams(&mut self, tag: &str, params: &[(String, HParam)]) -> Result<()> {
        self.text(tag, 0, &hparams_markdown(params))?;
        let now = now_secs();
        // SessionStartInfo { map<string, Value> hparams = 1; double start_time_secs = 5 }
        let mut info = Msg::default();
        for (name, value) in params {
            let entry = Msg::default().string(1, name).msg(2, value.to_proto());
            info = info.msg(1, entry);
        }
        let info = info.double(5, now);
        // HParamsPluginData { int32 version = 1 (0, omitted); session_start_info = 3 }
        let content = Msg::default().msg(3, info);
        let value = Msg::default()
            .string(1, HPARAMS_SESSION_START_TAG)
            .msg(9, plugin_metadata("hparams", &content.0));
        self.write_event(&summary_event(now, 0, value))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io(&self.path, "flushing", e))
    }

    fn write_event(&mut self, event: &Msg) -> Result<()> {
        self.out
            .write_all(&tfrecord(&event.0))
            .map_err(|e| Error::io(&self.path, "writing", e))?;
        self.flush()
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Best effort: every event is already flushed, errors here have nowhere to go.
        let _ = self.out.flush();
    }
}

/// A markdown table of hyperparameters, as shown in TensorBoard's Text tab.
pub fn hparams_markdown(params: &[(String, HParam)]) -> String {
    let mut md = String::from("| hyperparameter | value |\n|---|---|\n");
    for (name, value) in params {
        let value = value.to_string().replace('|', "\\|");
        md.push_str(&format!("| {name} | {value} |\n"));
    }
    md
}

/// The TensorBoard tag for `key` of a record's split, e.g. `train/loss`. Defined once so the
/// trainer, the checker script and the docs agree.
pub fn tag(split: &str, key: &str) -> String {
    format!("{split}/{key}")
}

/// Logs one metrics record: `<split>/loss`, `<split>/acc` (a fraction), `<split>/lr` and
/// `<split>/img_s` when present, and every `extra` key as `<split>/<key>`, all at the record's
/// step with the current wall time.
pub fn log_record(w: &mut EventWriter, r: &MetricRecord) -> Result<()> {
    let wall = now_secs();
    let step = r.step as i64;
    let split = r.split.as_str();
    w.scalar(&tag(split, "loss"), step, r.loss as f32, wall)?;
    w.scalar(&tag(split, "acc"), step, r.acc as f32, wall)?;
    if let Some(lr) = r.lr {
        w.scalar(&tag(split, "lr"), step, lr as f32, wall)?;
    }
    if let Some(img_s) = r.img_s {
        w.scalar(&tag(split, "img_s"), step, img_s as f32, wall)?;
    }
    for (key, &value) in &r.extra {
        w.scalar(&tag(split, key), step, value as f32, wall)?;
    }
    Ok(())
}

/// Seconds since the Unix epoch, as TensorBoard's `wall_time`.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The machine's name for the file name, without libc: Linux exposes it in /proc; elsewhere
/// fall back to the environment. Characters that are awkward in file names are replaced.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Two writers created in the same second by the same process would collide: number them.
fn create_unique(dir: &Path, base: &str) -> Result<(File, PathBuf)> {
    for n in 0..1000 {
        let name = if n == 0 {
            base.to_string()
        } else {
            format!("{base}.{n}")
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&path, "creating", e)),
        }
    }
    Err(Error::Io(format!(
        "{}: too many event files named {base}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b"a"), 0xC1D0_4330);
        // RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8 (mod 2^32), worked out by
        // hand from TensorFlow's crc32c::Mask.
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn varints_encode_like_protobuf() {
        let mut m = Msg::default();
        m.varint(300);
        assert_eq!(m.0, [0xAC, 0x02]);
        let m = Msg::default().int64(2, -1);
        assert_eq!(m.0.len(), 1 + 10);
    }

    // -----------------------------------------------------------------------------------------
    // A tiny reader, independent of the writer's encoder, to check files without Python.

    fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc32c(len_bytes), "length crc at {at}");
            let data = &bytes[at + 12..at + 12 + len];
            let data_crc =
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc32c(data), "data crc at {at}");
            records.push(data.to_vec());
            at += 16 + len;
        }
        assert_eq!(at, bytes.len(), "trailing bytes");
        records
    }

    #[derive(Debug, PartialEq)]
    enum Field {
        Varint(u64),
        Fixed64([u8; 8]),
        Fixed32([u8; 4]),
        Len(Vec<u8>),
    }

    fn read_varint(b: &[u8], at: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    fn parse(b: &[u8]) -> Vec<(u32, Field)> {
        let mut fields = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let key = read_varint(b, &mut at);
            let (num, wire) = ((key >> 3) as u32, (key & 7) as u32);
            let field = match wire {
                0 => Field::Varint(read_varint(b, &mut at)),
                1 => {
                    at += 8;
                    Field::Fixed64(b[at - 8..at].try_into().unwrap())
                }
                5 => {
                    at += 4;
                    Field::Fixed32(b[at - 4..at].try_into().unwrap())
                }
                2 => {
                    let len = read_varint(b, &mut at) as usize;
                    at += len;
                    Field::Len(b[at - len..at].to_vec())
                }
                w => panic!("unexpected wire type {w}"),
            };
            fields.push((num, field));
        }
        fields
    }

    fn get(fields: &[(u32, Field)], num: u32) -> &Field {
        &fields
            .iter()
            .find(|(n, _)| *n == num)
            .unwrap_or_else(|| panic!("field {num}"))
            .1
    }

    fn len_field(fields: &[(u32, Field)], num: u32) -> &[u8] {
        match get(fields, num) {
            Field::Len(b) => b,
            f => panic!("field {num} is {f:?}"),
        }
    }

    /// (tag, step, value) of a scalar event.
    fn decode_scalar(event: &[u8]) -> (String, i64, f32) {
        let e = parse(event);
        let Field::Varint(step) = get(&e, 2) else {
            panic!("step")
        };
        let summary = parse(len_field(&e, 5));
        let value = parse(len_field(&summary, 1));
        let tag = String::from_utf8(len_field(&value, 1).to_vec()).unwrap();
        let Field::Fixed32(v) = get(&value, 2) else {
            panic!("simple_value")
        };
        (tag, *step as i64, f32::from_le_bytes(*v))
    }

    #[test]
    fn event_file_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(
            name.ends_with(&format!(".{}.vitrs", std::process::id())),
            "{name}"
        );

        log_record(
            &mut w,
            &MetricRecord::train(1, 50, 2.25, 0.3125, 3e-4, 400.0, 1.0),
        )
        .unwrap();
        log_record(&mut w, &MetricRecord::val(1, 390, 1.5, 0.5, 2.0)).unwrap();
        w.text("hparams", 0, "| a | b |").unwrap();
        drop(w);

        let records = read_records(&std::fs::read(dir.path().join(&name)).unwrap());
        assert_eq!(records.len(), 1 + 4 + 2 + 1);

        let first = parse(&records[0]);
        assert_eq!(len_field(&first, 3), FILE_VERSION.as_bytes());
        assert!(matches!(get(&first, 1), Field::Fixed64(_)));

        let scalars: Vec<_> = records[1..7].iter().map(|r| decode_scalar(r)).collect();
        assert_eq!(
            scalars,
            vec![
                ("train/loss".to_string(), 50, 2.25),
                ("train/acc".to_string(), 50, 0.3125),
                ("train/lr".to_string(), 50, 3e-4),
                ("train/img_s".to_string(), 50, 400.0),
                ("val/loss".to_string(), 390, 1.5),
                ("val/acc".to_string(), 390, 0.5),
            ]
        );

        // Text: Value { tag, metadata.plugin_data.plugin_name = "text", tensor.string_val }.
        let e = parse(&records[7]);
        let value = parse(len_field(&parse(len_field(&e, 5)), 1));
        assert_eq!(len_field(&value, 1), b"hparams");
        let plugin = parse(len_field(&parse(len_field(&value, 9)), 1));
        assert_eq!(len_field(&plugin, 1), b"text");
        let tensor = parse(len_field(&value, 8));
        assert_eq!(get(&tensor, 1), &Field::Varint(DT_STRING));
        assert_eq!(len_field(&tensor, 8), b"| a | b |");
    }

    #[test]
    fn extra_keys_become_split_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let mut r = MetricRecord::val(2, 780, 1.0, 0.6, 3.0);
        r.extra.insert("distill_loss".into(), 0.5);
        log_record(&mut w, &r).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let records = read_records(&std::fs::read(path).unwrap());
        assert_eq!(
            decode_scalar(&records[3]),
            ("val/distill_loss".to_string(), 780, 0.5)
        );
    }

    #[test]
    fn hparams_writes_text_and_session_start_info() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let params = vec![
            ("lr".to_string(), HParam::Number(3e-4)),
            ("model".to_string(), HParam::Text("vit-tiny".into())),
            ("amp".to_string(), HParam::Bool(true)),
        ];
        w.hparams("hparams", &params).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let records = read_records(&std::fs::read(path).unwrap());
        assert_eq!(records.len(), 3);
        let value = parse(len_field(&parse(len_field(&parse(&records[2]), 5)), 1));
        assert_eq!(len_field(&value, 1), HPARAMS_SESSION_START_TAG.as_bytes());
        let plugin = parse(len_field(&parse(len_field(&value, 9)), 1));
        assert_eq!(len_field(&plugin, 1), b"hparams");
        let info = parse(len_field(&parse(len_field(&plugin, 2)), 3));
        let entries: Vec<_> = info.iter().filter(|(n, _)| *n == 1).collect();
        assert_eq!(entries.len(), 3);
        assert!(hparams_markdown(&params).contains("| model | vit-tiny |"));
    }

    /// Writes a run directory (event file + matching metrics.jsonl) for
    /// `tests/tensorboard_check.py`. Set `VITRS_TB_CHECK_DIR` to keep it there, then run
    /// `python3 tests/tensorboard_check.py $VITRS_TB_CHECK_DIR`.
    #[test]
    fn run_directory_for_the_python_checker() {
        use crate::report::metrics::{MetricsWriter, read_metrics};
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::env::var_os("VITRS_TB_CHECK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| tmp.path().to_path_buf());
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().contains("tfevents") {
                std::fs::remove_file(path).unwrap();
            }
        }

        let mut metrics = MetricsWriter::create(&dir.join("metrics.jsonl")).unwrap();
        let mut events = EventWriter::create(&dir).unwrap();
        events
            .hparams(
                "hparams",
                &[
                    ("lr".into(), HParam::Number(3e-4)),
                    ("model".into(), HParam::Text("vit-tiny".into())),
                ],
            )
            .unwrap();
        let mut written = Vec::new();
        for epoch in 1..=3usize {
            for k in 1..=4u64 {
                let step = (epoch as u64 - 1) * 200 + k * 50;
                let t = step as f64;
                // Values that are not exact in float32, to exercise the tolerance.
                let r = MetricRecord::train(
                    epoch,
                    step,
                    2.3 / (1.0 + t / 300.0),
                    0.1 + t / 1000.0,
                    3e-4 * (1.0 - t / 700.0),
                    411.7,
                    t / 10.0,
                );
                written.push(r);
            }
            let step = epoch as u64 * 200;
            let mut r = MetricRecord::val(
                epoch,
                step,
                1.9 / epoch as f64,
                0.3 + 0.1 * epoch as f64,
                step as f64 / 10.0 + 1.0,
            );
            r.extra.insert("top5".into(), 0.7 + 0.05 * epoch as f64);
            written.push(r);
        }
        // A diverged last log point: NaN is `null` in JSON and NaN in TensorBoard.
        written.push(MetricRecord::train(
            3,
            650,
            f64::NAN,
            0.1,
            1e-4,
            400.0,
            70.0,
        ));
        for r in &written {
            metrics.write(r).unwrap();
            log_record(&mut events, r).unwrap();
        }
        drop(events);
        assert_eq!(
            read_metrics(&dir.join("metrics.jsonl")).unwrap().len(),
            written.len()
        );
    }

    #[test]
    fn two_writers_in_one_second_get_distinct_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(dir.path()).unwrap();
        let b = EventWriter::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
    }
}
