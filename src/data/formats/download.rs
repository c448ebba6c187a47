//! Fetching CIFAR: download the official tarball (with a progress bar), check its MD5, and
//! extract it safely. Every step is skipped when its result is already on disk.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use md5::{Digest, Md5};

use super::cifar::{CifarKind, Format, find_cifar};
use crate::error::{Error, Result};

/// An official archive and the checksum the CIFAR page publishes for it.
#[derive(Clone, Copy, Debug)]
pub struct Archive<'a> {
    pub url: &'a str,
    pub md5: &'a str,
    pub file_name: &'a str,
}

pub fn archive(kind: CifarKind) -> Archive<'static> {
    match kind {
        CifarKind::Ten => Archive {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            md5: "c32a1d4ab5d03f1284b67883e8d87530",
            file_name: "cifar-10-binary.tar.gz",
        },
        CifarKind::Hundred => Archive {
            url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            md5: "03b5dce01913d631647c71ecec9e9cb8",
            file_name: "cifar-100-binary.tar.gz",
        },
    }
}

/// `$VITRS_DATA_DIR`, else `$XDG_CACHE_HOME/vitrs/data`, else `~/.cache/vitrs/data`.
pub fn default_data_dir() -> PathBuf {
    data_dir_from(
        std::env::var_os("VITRS_DATA_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn data_dir_from(
    vitrs: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(vitrs) {
        return dir;
    }
    // The XDG spec says to ignore relative paths in its variables.
    if let Some(cache) = set(xdg).filter(|p| p.is_absolute()) {
        return cache.join("vitrs").join("data");
    }
    match set(home) {
        Some(home) => home.join(".cache").join("vitrs").join("data"),
        None => PathBuf::from("vitrs-data"),
    }
}

/// Makes sure CIFAR-10 or -100 is extracted under `data_dir`, downloading it if needed, and
/// returns the extracted directory (e.g. `<data_dir>/cifar-10-batches-bin`). An existing
/// complete binary or Python layout is used as is.
pub fn ensure_cifar(data_dir: &Path, kind: CifarKind) -> Result<PathBuf> {
    ensure(data_dir, kind, &archive(kind))
}

fn ensure(data_dir: &Path, kind: CifarKind, archive: &Archive<'_>) -> Result<PathBuf> {
    if let Some(dir) = find_cifar(data_dir, kind) {
        return Ok(dir);
    }
    fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, "creating", e))?;
    let tarball = data_dir.join(archive.file_name);
    if tarball.is_file() {
        verify_md5(&tarball, archive.md5)?;
    } else {
        let part = data_dir.join(format!("{}.part", archive.file_name));
        download(archive.url, &part, &tarball)?;
        verify_md5(&part, archive.md5)?;
        fs::rename(&part, &tarball)
            .map_err(|e| Error::io(&tarball, "moving the download to", e))?;
    }
    install(&tarball, data_dir, kind.dir_name(Format::Binary))?;
    find_cifar(data_dir, kind).ok_or_else(|| {
        Error::data(
            &tarball,
            format!(
                "extracting it did not produce a complete {}",
                kind.dir_name(Format::Binary)
            ),
            "delete the file and run the command again",
        )
    })
}

/// Extracts into a staging directory next to the target, then moves `dir_name` into place,
/// so an interrupted extraction never leaves a half-written directory that looks real.
fn install(tarball: &Path, data_dir: &Path, dir_name: &str) -> Result<()> {
    let staging = data_dir.join(format!(".{dir_name}.extracting"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, "removing", e))?;
    }
    extract_tar_gz(tarball, &staging)?;
    let extracted = staging.join(dir_name);
    if !extracted.is_dir() {
        return Err(Error::data(
            tarball,
            format!("the archive has no {dir_name}/ directory"),
            "this is not the official archive; delete it and run the command again",
        ));
    }
    let target = data_dir.join(dir_name);
    if target.exists() {
        // Only reached when `target` is incomplete (see `find_cifar`).
        fs::remove_dir_all(&target).map_err(|e| Error::io(&target, "replacing incomplete", e))?;
    }
    fs::rename(&extracted, &target).map_err(|e| Error::io(&target, "moving into place", e))?;
    fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, "removing", e))
}

/// The lowercase hex MD5 of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(path, "reading", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Fails, telling the user to delete the file, if its MD5 is not `expected`.
pub fn verify_md5(path: &Path, expected: &str) -> Result<()> {
    let found = md5_file(path)?;
    if found.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    Err(Error::data(
        path,
        format!("MD5 is {found}, expected {expected}: the file is corrupt or incomplete"),
        format!("delete {} and run the command again", path.display()),
    ))
}

/// Extracts a .tar.gz into `dest`. Only plain files and directories with relative paths that
/// stay inside `dest` are accepted; anything else (absolute paths, `..`, links, devices) is
/// refused rather than skipped, since the official archives contain none.
pub fn extract_tar_gz(tarball: &Path, dest: &Path) -> Result<()> {
    let file = File::open(tarball).map_err(|e| Error::io(tarball, "opening", e))?;
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let bad = |problem: String| {
        Error::data(
            tarball,
            problem,
            "the archive is corrupt or not the official one; delete it and run the command again",
        )
    };
    fs::create_dir_all(dest).map_err(|e| Error::io(dest, "creating", e))?;
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("cannot read the archive ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("cannot read the archive ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad entry name ({e})")))?
            .into_owned();
        if !is_safe_relative(&path) {
            return Err(bad(format!(
                "entry {} is absolute or leaves the target directory, refusing to extract it",
                path.display()
            )));
        }
        let target = dest.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(|e| Error::io(&target, "creating", e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| Error::io(parent, "creating", e))?;
                }
                entry
                    .unpack(&target)
                    .map_err(|e| Error::io(&target, "extracting", e))?;
            }
            // Metadata records that carry no file of their own.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(bad(format!(
                    "entry {} is a {other:?}, only files and directories are extracted",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Relative, and no component climbs out (`..`) or names a root or drive.
fn is_safe_relative(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)))
}

/// Streams `url` to `part` with a progress bar. `dest` is where the finished file goes, which
/// is where a user downloading by hand should put it.
fn download(url: &str, part: &Path, dest: &Path) -> Result<()> {
    let net_error = |e: &dyn std::fmt::Display| {
        Error::Io(
            format!(
                "downloading {url} failed: {e}; download it by hand and place it at {}",
                dest.display()
            )
            .replace('\n', " "),
        )
    };
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(url).call().map_err(|e| net_error(&e))?;
    let bar = progress_bar(response.body().content_length(), url);
    let mut reader = response.body_mut().as_reader();
    let file = File::create(part).map_err(|e| Error::io(part, "creating", e))?;
    let mut out = BufWriter::new(file);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| net_error(&e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(part, "writing", e))?;
        bar.inc(n as u64);
    }
    out.flush().map_err(|e| Error::io(part, "writing", e))?;
    bar.finish_and_clear();
    Ok(())
}

fn progress_bar(len: Option<u64>, url: &str) -> indicatif::ProgressBar {
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let (bar, template) = match len {
        Some(len) => (
            indicatif::ProgressBar::new(len),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{msg} {spinner} {bytes} {bytes_per_sec}",
        ),
    };
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(name);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::data::formats::cifar::{LabelType, load_cifar};
    use flate2::Compression;
    use flate2::write::GzEncoder;

    #[test]
    fn data_dir_precedence() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            data_dir_from(s("/d"), s("/x"), s("/h")),
            PathBuf::from("/d")
        );
        assert_eq!(
            data_dir_from(s(""), s("/x"), s("/h")),
            PathBuf::from("/x/vitrs/data")
        );
        assert_eq!(
            data_dir_from(None, s("rel"), s("/h")),
            PathBuf::from("/h/.cache/vitrs/data")
        );
        assert_eq!(
            data_dir_from(None, None, s("/h")),
            PathBuf::from("/h/.cache/vitrs/data")
        );
    }

    #[test]
    fn md5_of_known_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, "").unwrap();
        assert_eq!(md5_file(&path).unwrap(), "d41d8cd98f00b204e9800998ecf8427e");
        fs::write(&path, "hello world\n").unwrap();
        assert_eq!(md5_file(&path).unwrap(), "6f5902ac237024bdd0c176cb93063dc4");
        verify_md5(&path, "6F5902AC237024BDD0C176CB93063DC4").unwrap();
        let e = verify_md5(&path, "00000000000000000000000000000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MD5 is 6f5902ac") && e.contains("delete"), "{e}");
    }

    /// A .tar.gz holding `files` (path, contents); `raw_names` are written without the tar
    /// crate's path checks, as a hostile archive would be.
    fn tarball(path: &Path, files: &[(&str, Vec<u8>)], raw_names: &[&str]) {
        let gz = GzEncoder::new(File::create(path).unwrap(), Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        for name in raw_names {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    /// A miniature cifar-10-batches-bin: one record per batch.
    fn cifar10_files() -> Vec<(&'static str, Vec<u8>)> {
        let record = |label: u8| {
            let mut r = vec![label];
            r.extend(vec![label * 10; 3072]);
            r
        };
        let mut files: Vec<(&str, Vec<u8>)> = [
            "cifar-10-batches-bin/data_batch_1.bin",
            "cifar-10-batches-bin/data_batch_2.bin",
            "cifar-10-batches-bin/data_batch_3.bin",
            "cifar-10-batches-bin/data_batch_4.bin",
            "cifar-10-batches-bin/data_batch_5.bin",
            "cifar-10-batches-bin/test_batch.bin",
        ]
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, record(i as u8)))
        .collect();
        let names: String = (0..10).map(|i| format!("c{i}\n")).collect();
        files.push(("cifar-10-batches-bin/batches.meta.txt", names.into_bytes()));
        files.push(("cifar-10-batches-bin/readme.html", b"<html/>".to_vec()));
        files
    }

    /// Nothing listens on port 1, so any attempt to download fails fast.
    fn offline_archive(md5: &str) -> Archive<'_> {
        Archive {
            url: "http://127.0.0.1:1/cifar-10-binary.tar.gz",
            md5,
            file_name: "cifar-10-binary.tar.gz",
        }
    }

    #[test]
    fn ensure_extracts_a_verified_tarball_and_then_skips_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let tgz = data.join("cifar-10-binary.tar.gz");
        tarball(&tgz, &cifar10_files(), &[]);
        let md5 = md5_file(&tgz).unwrap();
        let archive = offline_archive(&md5);
        let dir = ensure(&data, CifarKind::Ten, &archive).unwrap();
        assert_eq!(dir, data.join("cifar-10-batches-bin"));
        assert!(!data.join(".cifar-10-batches-bin.extracting").exists());
        let test = load_cifar(&data, CifarKind::Ten, Split::Test, LabelType::Fine).unwrap();
        assert_eq!((test.labels.clone(), test.image(0)[0]), (vec![5], 50));
        // Complete now: neither the tarball nor the network is needed again.
        fs::remove_file(&tgz).unwrap();
        assert_eq!(ensure(&data, CifarKind::Ten, &archive).unwrap(), dir);
    }

    #[test]
    fn incomplete_extraction_is_redone_from_the_tarball() {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tmp.path().join("cifar-10-binary.tar.gz");
        tarball(&tgz, &cifar10_files(), &[]);
        let md5 = md5_file(&tgz).unwrap();
        let archive = offline_archive(&md5);
        let dir = ensure(tmp.path(), CifarKind::Ten, &archive).unwrap();
        // A batch cut short mid-record.
        fs::write(dir.join("data_batch_2.bin"), [1u8; 100]).unwrap();
        assert!(find_cifar(tmp.path(), CifarKind::Ten).is_none());
        ensure(tmp.path(), CifarKind::Ten, &archive).unwrap();
        assert_eq!(
            fs::metadata(dir.join("data_batch_2.bin")).unwrap().len(),
            3073
        );
    }

    #[test]
    fn a_tarball_with_the_wrong_md5_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tmp.path().join("cifar-10-binary.tar.gz");
        tarball(&tgz, &cifar10_files(), &[]);
        let e = ensure(tmp.path(), CifarKind::Ten, &offline_archive("0123"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cifar-10-binary.tar.gz") && e.contains("expected 0123"),
            "{e}"
        );
        assert!(e.contains("delete"), "{e}");
        assert!(!tmp.path().join("cifar-10-batches-bin").exists());
    }

    #[test]
    fn a_failed_download_says_where_to_put_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let e = ensure(tmp.path(), CifarKind::Ten, &offline_archive("0123"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http://127.0.0.1:1/cifar-10-binary.tar.gz"),
            "{e}"
        );
        let dest = tmp.path().join("cifar-10-binary.tar.gz");
        assert!(
            e.contains(&format!("place it at {}", dest.display())),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn hostile_entries_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        for name in ["../evil", "/tmp/evil-abs", "a/../../evil"] {
            let tgz = tmp.path().join("bad.tar.gz");
            tarball(&tgz, &[("ok.txt", b"fine".to_vec())], &[name]);
            let e = extract_tar_gz(&tgz, &dest).unwrap_err().to_string();
            assert!(e.contains("refusing") && e.contains(name), "{name}: {e}");
            assert!(!tmp.path().join("evil").exists());
        }
        assert!(!Path::new("/tmp/evil-abs").exists());
        assert_eq!(fs::read(dest.join("ok.txt")).unwrap(), b"fine");
        // Links are refused too.
        let tgz = tmp.path().join("link.tar.gz");
        let gz = GzEncoder::new(File::create(&tgz).unwrap(), Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "/etc/passwd").unwrap();
        b.into_inner().unwrap().finish().unwrap();
        let e = extract_tar_gz(&tgz, &dest).unwrap_err().to_string();
        assert!(e.contains("Symlink"), "{e}");
    }
}
