//! Downloads from the Hugging Face hub (issue 23, case 5), against a local HTTP server that
//! answers as the hub does (`HEAD` with `x-repo-commit` and `x-linked-etag`, then `GET`), set
//! through `HF_ENDPOINT` as `huggingface_hub` reads it: the hub itself is not reachable from
//! tests. What must hold: the right files arrive and give the fixture's logits; a file whose
//! sha256 is not the hub's, or a commit that is not a hash, never enters the cache; a signal
//! during a download ends the command at once with the signal's exit code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

mod common;
use common::{fixture, max_abs};
use vitrs::model::io::read_safetensors;

/// One file as the server gives it: its bytes, and the headers of its `HEAD` answer.
#[derive(Clone)]
struct Served {
    body: Vec<u8>,
    commit: String,
    /// `x-linked-etag`: the sha256 the hub says an LFS file has.
    sha256: Option<String>,
    /// Pause between 64 KiB pieces of the body (a slow link).
    pause: Duration,
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Serves `files` (path after `/acme/tiny/resolve/main/`) until the test ends; 404 for others.
fn serve(files: BTreeMap<String, Served>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let files = files.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                }
                let mut parts = request.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let name = path.trim_start_matches("/acme/tiny/resolve/main/");
                let Some(f) = files.get(name) else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                };
                let mut head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-repo-commit: {}\r\netag: \"{}\"\r\nconnection: close\r\n",
                    f.body.len(),
                    f.commit,
                    &hex_sha256(&f.body)[..40]
                );
                if let Some(s) = &f.sha256 {
                    head.push_str(&format!("x-linked-etag: \"{s}\"\r\n"));
                }
                head.push_str("\r\n");
                if stream.write_all(head.as_bytes()).is_err() || method == "HEAD" {
                    return;
                }
                for piece in f.body.chunks(1 << 16) {
                    if stream.write_all(piece).is_err() {
                        return;
                    }
                    std::thread::sleep(f.pause);
                }
            });
        }
    });
    format!("http://{addr}")
}

/// The timm fixture's two files, as the hub would serve them (weights in LFS).
fn fixture_files(commit: &str) -> BTreeMap<String, Served> {
    let dir = fixture("timm-vit-tiny");
    ["config.json", "model.safetensors"]
        .into_iter()
        .map(|f| {
            let body = std::fs::read(dir.join(f)).unwrap();
            let sha256 = (f == "model.safetensors").then(|| hex_sha256(&body));
            let served = Served {
                body,
                commit: commit.into(),
                sha256,
                pause: Duration::ZERO,
            };
            (f.to_string(), served)
        })
        .collect()
}

fn logits_cmd(endpoint: &str, cache: &Path, out: &Path) -> Command {
    let input = fixture("timm-vit-tiny").join("golden.safetensors");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrs"));
    cmd.args(["logits", "--pretrained", "acme/tiny", "--input"])
        .arg(input)
        .arg("--output")
        .arg(out)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN");
    cmd
}

/// `vitrs logits` from `endpoint` with its cache in `tmp`, which must fail with exit 1:
/// its stderr, the cache and the output it must not have written.
fn logits_refused(endpoint: &str, tmp: &Path) -> (String, PathBuf, PathBuf) {
    let (cache, out) = (tmp.join("cache"), tmp.join("logits.safetensors"));
    let run = logits_cmd(endpoint, &cache, &out).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(run.status.code(), Some(1), "{err}");
    (err, cache, out)
}

/// Every file under `dir` (the cache), relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn downloaded_weights_are_checked_and_give_the_fixtures_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let endpoint = serve(fixture_files(commit));
    let (cache, out) = (
        tmp.path().join("cache"),
        tmp.path().join("logits.safetensors"),
    );
    let run = logits_cmd(&endpoint, &cache, &out).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("downloading acme/tiny/model.safetensors"),
        "{err}"
    );
    let got = read_safetensors(&out).unwrap();
    let golden = read_safetensors(&fixture("timm-vit-tiny").join("golden.safetensors")).unwrap();
    assert!(max_abs(&got["logits"], &golden["logits"]) <= 1e-4);
    // Laid out as huggingface_hub lays it: the ref, the snapshot links, the blobs by etag.
    let sha =
        hex_sha256(&std::fs::read(fixture("timm-vit-tiny").join("model.safetensors")).unwrap());
    let files = files_under(&cache.join("models--acme--tiny"));
    for want in [
        "refs/main".to_string(),
        format!("snapshots/{commit}/model.safetensors"),
        format!("snapshots/{commit}/config.json"),
        format!("blobs/{sha}"),
    ] {
        assert!(files.contains(&want), "{want} not in {files:?}");
    }
}

#[test]
fn a_download_whose_sha256_is_not_the_hubs_never_enters_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = fixture_files("0123456789abcdef0123456789abcdef01234567");
    let weights = files.get_mut("model.safetensors").unwrap();
    let n = weights.body.len();
    weights.body[n - 1] ^= 1; // one flipped bit on the way
    let endpoint = serve(files);
    let (err, cache, out) = logits_refused(&endpoint, tmp.path());
    assert!(
        err.contains("model.safetensors arrived with sha256"),
        "{err}"
    );
    assert!(
        err.lines().filter(|l| l.starts_with("error")).count() == 1,
        "{err}"
    );
    // Only config.json arrived: no weights in the snapshot, no blob or partial file of them.
    let cached = files_under(&cache.join("models--acme--tiny"));
    let blobs: Vec<_> = cached.iter().filter(|f| f.starts_with("blobs/")).collect();
    assert_eq!(blobs.len(), 1, "{cached:?}");
    assert!(
        !cached.iter().any(|f| f.contains("model.safetensors")),
        "{cached:?}"
    );
    assert!(!out.exists());
}

#[test]
fn a_commit_that_is_not_a_hash_is_not_made_a_path() {
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = serve(fixture_files("../../../../escaped"));
    let (err, _cache, out) = logits_refused(&endpoint, tmp.path());
    assert!(err.contains("which is not a commit hash"), "{err}");
    assert!(!tmp.path().join("escaped").exists() && !out.exists());
    assert!(
        files_under(tmp.path())
            .iter()
            .all(|f| !f.contains("config.json"))
    );
}

#[test]
fn a_signal_during_a_download_exits_at_once_with_its_code() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = fixture_files("0123456789abcdef0123456789abcdef01234567");
    // 16 pieces of 64 KiB, 1 s apart: the download takes far longer than the test waits.
    let weights = files.get_mut("model.safetensors").unwrap();
    weights.body.resize(16 << 16, 0);
    weights.sha256 = Some(hex_sha256(&weights.body));
    weights.pause = Duration::from_secs(1);
    let endpoint = serve(files);
    let (cache, out) = (
        tmp.path().join("cache"),
        tmp.path().join("logits.safetensors"),
    );
    let mut child = logits_cmd(&endpoint, &cache, &out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the download has begun (its partial file exists), then SIGTERM.
    let blobs = cache.join("models--acme--tiny/blobs");
    let start = std::time::Instant::now();
    while !files_under(&blobs)
        .iter()
        .any(|f| f.ends_with(".incomplete"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the download never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("interrupt: quitting now"), "{err}");
    // ("quitting now", not "finishing the current step": nothing waits for the download.)
    // Nothing half-downloaded passes for the file: it stays `.incomplete`, out of the snapshot.
    let cached = files_under(&cache);
    assert!(
        !cached.iter().any(|f| f.ends_with("/model.safetensors")),
        "{cached:?}"
    );
}
