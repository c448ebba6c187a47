//! Hugging Face hub ids (`google/vit-base-patch16-224-in21k`, `timm/vit_small_patch16_224.augreg_in21k_ft_in1k`)
//! resolved through the standard Hugging Face cache, so files that `huggingface_hub`,
//! transformers or timm downloaded are found, and files vitrs downloads are found by them.
//!
//! Cache location, as `huggingface_hub` computes it: `$HF_HUB_CACHE`, else
//! `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`. Layout: `models--<org>--<name>/refs/<revision>` holds a commit
//! hash, `snapshots/<commit>/<file>` the file (a link into `blobs/<etag>`).
//!
//! A file already in the cached snapshot is used as it is, without asking the network. A
//! missing one is downloaded with `ureq` (already vitrs' HTTP client; the `hf-hub` crate needs
//! tokio/reqwest, or a second HTTP client in its 0.4 line) from
//! `$HF_ENDPOINT/<id>/resolve/<revision>/<file>` (`HF_ENDPOINT` as `huggingface_hub` reads it:
//! a mirror, default `https://huggingface.co`), with `$HF_TOKEN` as bearer token when set. With
//! `HF_HUB_OFFLINE=1` (or no network) a missing file is an error naming the file and the path
//! to put it at.
//!
//! Nothing from the spec or the server becomes a path unchecked: a revision is a git ref
//! name (no `..`, no absolute path), the server's commit must be a commit hash and its etag a
//! hash; a file the hub stores in LFS (its etag is the sha256 of the content) is checked
//! against that sha256 before it enters the cache.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Is `spec` shaped like a hub id (`org/name`, optionally `@revision`) rather than a path?
pub fn looks_like_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or(spec);
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p != &"."
                && p != &".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The hub cache directory, from the environment as `huggingface_hub` reads it.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    cache_dir_from(
        var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")),
        var("HF_HOME"),
        var("XDG_CACHE_HOME"),
        var("HOME"),
    )
}

fn cache_dir_from(
    hub_cache: Option<OsString>,
    hf_home: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    if let Some(c) = hub_cache {
        return PathBuf::from(c);
    }
    if let Some(h) = hf_home {
        return PathBuf::from(h).join("hub");
    }
    let cache = xdg.map(PathBuf::from).unwrap_or_else(|| {
        home.map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache")
    });
    cache.join("huggingface").join("hub")
}

/// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to a true value.
pub fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
            .unwrap_or(false)
    })
}

/// One model repository in one cache.
pub struct Repo {
    pub id: String,
    pub revision: String,
    /// The spec named the revision (`@...`): only that revision will do.
    pub pinned: bool,
    pub cache: PathBuf,
    pub offline: bool,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_commit_hash(s: &str) -> bool {
    is_hex(s, 40)
}

/// A revision as the hub names them (`main`, `v2.0`, `refs/pr/1`, a commit hash): `/`-separated
/// parts of letters, digits, `-`, `_` and `.`, none empty, `.` or `..`, so that joined to the
/// cache's `refs/` and `snapshots/` it stays inside them.
fn valid_revision(rev: &str) -> bool {
    rev.len() <= 255
        && rev.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The hub's base URL: `$HF_ENDPOINT` (a mirror), else huggingface.co.
fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

impl Repo {
    /// `org/name[@revision]` in the environment's cache, offline as the environment says.
    pub fn from_env(spec: &str) -> Result<Repo> {
        Repo::new(spec, cache_dir(), offline())
    }

    pub fn new(spec: &str, cache: PathBuf, offline: bool) -> Result<Repo> {
        let (id, revision, pinned) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev, true),
            _ => (spec.trim_end_matches('@'), "main", false),
        };
        if !valid_revision(revision) {
            return Err(Error::Checkpoint(format!(
                "{id}: revision {revision:?} is not a branch, tag or commit name (letters, digits, -, _, . and /-separated parts, no ..): e.g. {id}@main"
            )));
        }
        Ok(Repo {
            id: id.to_string(),
            revision: revision.to_string(),
            pinned,
            cache,
            offline,
        })
    }

    /// `<cache>/models--org--name`.
    pub fn dir(&self) -> PathBuf {
        self.cache
            .join(format!("models--{}", self.id.replace('/', "--")))
    }

    /// The cached snapshot directory of the revision, if there is one: `refs/<revision>`
    /// names it; a revision that is a commit hash names itself; failing both, a lone snapshot
    /// directory is taken (a cache filled by hand) — unless the spec named its revision, which
    /// another snapshot is not (it would be silently wrong weights).
    pub fn snapshot(&self) -> Option<PathBuf> {
        let dir = self.dir();
        let snapshots = dir.join("snapshots");
        if let Ok(commit) = fs::read_to_string(dir.join("refs").join(&self.revision)) {
            let p = snapshots.join(commit.trim());
            if p.is_dir() {
                return Some(p);
            }
        }
        if is_commit_hash(&self.revision) && snapshots.join(&self.revision).is_dir() {
            return Some(snapshots.join(&self.revision));
        }
        if self.pinned {
            return None;
        }
        let dirs: Vec<PathBuf> = fs::read_dir(&snapshots)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        (dirs.len() == 1).then(|| dirs[0].clone())
    }

    /// Where a user placing `file` by hand should put it.
    pub fn expected_path(&self, file: &str) -> PathBuf {
        self.snapshot()
            .unwrap_or_else(|| self.dir().join("snapshots").join(&self.revision))
            .join(file)
    }

    /// The cached path of `file`, if it is there.
    pub fn cached(&self, file: &str) -> Option<PathBuf> {
        let p = self.snapshot()?.join(file);
        p.is_file().then_some(p)
    }

    fn missing(&self, file: &str, why: &str) -> Error {
        Error::Checkpoint(format!(
            "{}: {file} is not in the Hugging Face cache and {why}; put {file} at {} (e.g. `hf download {} {file}` on a machine with network, then copy the cache), or give --pretrained a local directory holding config.json and model.safetensors",
            self.id,
            self.expected_path(file).display(),
            self.id
        ))
    }

    /// The local path of `file`: from the cache, else downloaded into it. `Ok(None)` when the
    /// repository has no such file (only for files that are optional: `required = false`).
    pub fn get(&self, file: &str, required: bool) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cached(file) {
            return Ok(Some(p));
        }
        if self.offline {
            return if required {
                Err(self.missing(file, "HF_HUB_OFFLINE is set"))
            } else {
                Ok(None)
            };
        }
        match self.download(file) {
            Ok(p) => Ok(Some(p)),
            Err(Fetch::NotFound) if !required => Ok(None),
            Err(Fetch::NotFound) => Err(Error::Checkpoint(format!(
                "{}: the repository has no {file} (vitrs reads safetensors weights only; a repository with only pytorch_model.bin must be converted first)",
                self.id
            ))),
            Err(Fetch::Denied(code)) => Err(Error::Checkpoint(format!(
                "{}: the hub refused {file} (HTTP {code}): the repository is private, gated or misspelt; set HF_TOKEN to a token with access, or check the id",
                self.id
            ))),
            Err(Fetch::Network(_)) if !required => Ok(None),
            Err(Fetch::Network(e)) => {
                Err(self.missing(file, &format!("the download failed ({e})")))
            }
            Err(Fetch::Local(e)) => Err(e),
        }
    }

    fn download(&self, file: &str) -> std::result::Result<PathBuf, Fetch> {
        let url = format!(
            "{}/{}/resolve/{}/{file}",
            endpoint(),
            self.id,
            self.revision
        );
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        let with_auth = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &token {
            Some(t) => r.header("Authorization", format!("Bearer {t}")),
            None => r,
        };
        // Metadata first, without following the redirect to the storage backend: the commit
        // and the blob's etag are on the hub's own answer.
        let head = with_auth(agent.head(&url))
            .config()
            .max_redirects(0)
            .build()
            .call()
            .map_err(|e| Fetch::Network(e.to_string()))?;
        let status = head.status().as_u16();
        match status {
            404 => return Err(Fetch::NotFound),
            401 | 403 => return Err(Fetch::Denied(status)),
            s if s >= 400 => return Err(Fetch::Network(format!("HTTP {s}"))),
            _ => {}
        }
        let header = |k: &str| {
            head.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(|s| {
                    s.trim()
                        .trim_start_matches("W/")
                        .trim_matches('"')
                        .to_string()
                })
        };
        // Both become path names: a commit hash and a hash-shaped etag, or an error.
        let commit = match header("x-repo-commit") {
            Some(c) if is_commit_hash(&c) => c,
            Some(c) => {
                return Err(Fetch::Network(format!(
                    "the hub answered {:?} as the commit of {file}, which is not a commit hash",
                    c.escape_debug().to_string()
                )));
            }
            None if is_commit_hash(&self.revision) => self.revision.clone(),
            None => {
                return Err(Fetch::Network(format!(
                    "the hub did not say which commit {} is (no x-repo-commit header)",
                    self.revision
                )));
            }
        };
        let linked = header("x-linked-etag");
        // An LFS file's etag is the sha256 of its content: checked after the download.
        let sha256 = linked.clone().filter(|e| is_hex(e, 64));
        let etag = linked
            .or_else(|| header("etag"))
            .filter(|e| is_hex(e, 40) || is_hex(e, 64))
            .unwrap_or_else(|| format!("{commit}-{}", file.replace('/', "_")));
        let dir = self.dir();
        let blobs = dir.join("blobs");
        let snapshot = dir.join("snapshots").join(&commit);
        let local = |e: std::io::Error, p: &Path, doing: &str| Fetch::Local(Error::io(p, doing, e));
        fs::create_dir_all(&blobs).map_err(|e| local(e, &blobs, "creating"))?;
        let blob = blobs.join(&etag);
        if !blob.is_file() {
            let mut response = with_auth(agent.get(&url))
                .call()
                .map_err(|e| Fetch::Network(e.to_string()))?;
            let code = response.status().as_u16();
            if code >= 400 {
                return Err(Fetch::Network(format!("HTTP {code}")));
            }
            let part = blobs.join(format!("{etag}.incomplete"));
            let mut out = fs::File::create(&part).map_err(|e| local(e, &part, "creating"))?;
            let mut reader = response.body_mut().as_reader();
            let mut buf = vec![0u8; 1 << 16];
            let mut hash = Sha256::new();
            crate::log_line!("downloading {}/{file}", self.id);
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| Fetch::Network(e.to_string()))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|e| local(e, &part, "writing"))?;
            }
            out.sync_all().map_err(|e| local(e, &part, "writing"))?;
            let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if let Some(want) = sha256.filter(|w| !w.eq_ignore_ascii_case(&got)) {
                let _ = fs::remove_file(&part);
                return Err(Fetch::Network(format!(
                    "{file} arrived with sha256 {got}, not the hub's {want} (a broken download or proxy); try again"
                )));
            }
            fs::rename(&part, &blob).map_err(|e| local(e, &blob, "moving the download to"))?;
        }
        let target = snapshot.join(file);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| local(e, parent, "creating"))?;
        }
        let _ = fs::remove_file(&target);
        link_or_copy(&blob, &target).map_err(|e| local(e, &target, "linking"))?;
        if !is_commit_hash(&self.revision) || self.revision != commit {
            // `refs/pr/1` is a file in refs/pr/ (a checked revision: it stays in refs/).
            let r#ref = dir.join("refs").join(&self.revision);
            let refs = r#ref.parent().unwrap_or(&dir);
            fs::create_dir_all(refs).map_err(|e| local(e, refs, "creating"))?;
            fs::write(&r#ref, &commit).map_err(|e| local(e, &r#ref, "writing"))?;
        }
        Ok(target)
    }
}

enum Fetch {
    NotFound,
    Denied(u16),
    Network(String),
    Local(Error),
}

/// A relative symlink `snapshots/<commit>/<file>` → `../../blobs/<etag>` as huggingface_hub
/// makes it; a copy where links are not possible.
fn link_or_copy(blob: &Path, target: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let depth = target
            .strip_prefix(
                blob.parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("")),
            )
            .map(|p| p.components().count().saturating_sub(1))
            .unwrap_or(0);
        let mut rel = PathBuf::new();
        for _ in 0..depth {
            rel.push("..");
        }
        rel.push("blobs");
        rel.push(blob.file_name().unwrap_or_default());
        if std::os::unix::fs::symlink(&rel, target).is_ok() && target.is_file() {
            return Ok(());
        }
        let _ = fs::remove_file(target);
    }
    fs::copy(blob, target).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths_are_told_apart() {
        assert!(looks_like_id("google/vit-base-patch16-224-in21k"));
        assert!(looks_like_id(
            "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"
        ));
        assert!(looks_like_id("org/name@v1.0"));
        assert!(!looks_like_id("weights/model.safetensors/x"));
        assert!(!looks_like_id("./model"));
        assert!(!looks_like_id("/abs/path"));
        assert!(!looks_like_id("../x"));
        assert!(!looks_like_id("model.safetensors"));
    }

    #[test]
    fn cache_dir_precedence_follows_huggingface_hub() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            cache_dir_from(s("/c"), s("/h"), s("/x"), s("/home")),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(None, s("/h"), s("/x"), s("/home")),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            cache_dir_from(None, None, s("/x"), s("/home")),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(
            cache_dir_from(None, None, None, s("/home")),
            PathBuf::from("/home/.cache/huggingface/hub")
        );
    }

    /// A cache laid out as huggingface_hub lays it: refs/main → snapshots/<commit>/<file>
    /// linking into blobs/.
    #[test]
    fn snapshot_layout_resolves_through_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo_dir = tmp.path().join("models--org--tiny-vit");
        fs::create_dir_all(repo_dir.join("refs")).unwrap();
        fs::create_dir_all(repo_dir.join("blobs")).unwrap();
        let snap = repo_dir.join("snapshots").join(commit);
        fs::create_dir_all(&snap).unwrap();
        // A stale second snapshot must not be chosen: refs/main decides.
        fs::create_dir_all(repo_dir.join("snapshots").join("f".repeat(40))).unwrap();
        fs::write(repo_dir.join("refs/main"), format!("{commit}\n")).unwrap();
        fs::write(repo_dir.join("blobs/abc123"), b"{}").unwrap();
        link_or_copy(&repo_dir.join("blobs/abc123"), &snap.join("config.json")).unwrap();
        let repo = Repo::new("org/tiny-vit", tmp.path().to_path_buf(), true).unwrap();
        assert_eq!(repo.snapshot().unwrap(), snap);
        let p = repo.get("config.json", true).unwrap().unwrap();
        assert_eq!(p, snap.join("config.json"));
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        // Optional and missing, offline: none, quietly.
        assert!(
            repo.get("preprocessor_config.json", false)
                .unwrap()
                .is_none()
        );
        // Required and missing, offline: names the file and where it goes.
        let e = repo.get("model.safetensors", true).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors is not in the Hugging Face cache"),
            "{e}"
        );
        assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
        assert!(
            e.contains(&snap.join("model.safetensors").display().to_string()),
            "{e}"
        );
        // A pinned revision by commit hash.
        let pinned = Repo::new(
            &format!("org/tiny-vit@{commit}"),
            tmp.path().to_path_buf(),
            true,
        )
        .unwrap();
        assert_eq!(pinned.snapshot().unwrap(), snap);
    }

    /// A named revision the cache does not hold is not replaced by the snapshot it does
    /// hold (issue 23, case 5): offline, it is an error naming where that revision goes.
    #[test]
    fn a_named_revision_is_that_revision_or_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp
            .path()
            .join("models--org--m/snapshots")
            .join("0123456789abcdef0123456789abcdef01234567");
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join("config.json"), b"{}").unwrap();
        // Unnamed: the lone snapshot of a cache filled by hand is taken.
        let any = Repo::new("org/m", tmp.path().to_path_buf(), true).unwrap();
        assert_eq!(any.snapshot().unwrap(), snap);
        for rev in ["v2.0-does-not-exist", &"a".repeat(40)] {
            let named = Repo::new(&format!("org/m@{rev}"), tmp.path().to_path_buf(), true).unwrap();
            assert!(named.snapshot().is_none(), "{rev}");
            let e = named.get("config.json", true).unwrap_err().to_string();
            assert!(e.contains(&format!("snapshots/{rev}/config.json")), "{e}");
        }
    }

    /// A revision that would lead out of the cache (issue 23, case 5) is refused.
    #[test]
    fn revisions_are_ref_names_not_paths() {
        for ok in ["main", "v2.0", "refs/pr/1", &"a".repeat(40)] {
            assert!(
                Repo::new(&format!("org/m@{ok}"), "/c".into(), true).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "../../x",
            "..",
            "a//b",
            "/abs",
            "a/./b",
            "v1\n",
            "a b",
            "x\u{1b}[2J",
        ] {
            let e = Repo::new(&format!("org/m@{bad}"), "/c".into(), true).err();
            let e = e
                .unwrap_or_else(|| panic!("{bad:?} was accepted"))
                .to_string();
            assert!(
                e.contains("is not a branch, tag or commit name") && e.lines().count() == 1,
                "{e}"
            );
        }
    }

    #[test]
    fn empty_cache_offline_says_where_the_file_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::new("google/vit-base-patch16-224-in21k", tmp.path().into(), true).unwrap();
        let e = repo.get("model.safetensors", true).unwrap_err().to_string();
        let want = tmp
            .path()
            .join("models--google--vit-base-patch16-224-in21k/snapshots/main/model.safetensors");
        assert!(e.contains(&want.display().to_string()), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
}
