//! Sharded checkpoints, as transformers and huggingface_hub write them (timm's `save_for_hf`
//! too): `model.safetensors.index.json` maps every tensor to one of several
//! `model-0000N-of-0000M.safetensors` beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{err, read_json};
use crate::error::Result;
use crate::model::io::{HostTensor, read_safetensors};

pub const INDEX: &str = "model.safetensors.index.json";

/// Is `path` an index rather than a weights file?
pub fn is_index(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".safetensors.index.json"))
}

/// The index's map, tensor → shard file name. A shard name is a plain file name ending in
/// `.safetensors` (it is joined to the index's folder, and to a hub URL).
pub fn weight_map(index: &Path) -> Result<BTreeMap<String, String>> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            err(format!(
                "{}: no weight_map object; not a sharded-checkpoint index",
                index.display()
            ))
        })?;
    let mut out = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().filter(|s| {
            s.ends_with(".safetensors")
                && !s.contains(['/', '\\'])
                && !s.starts_with('.')
                && !s.chars().any(char::is_control)
        });
        let Some(shard) = shard else {
            return Err(err(format!(
                "{}: {} maps to {}, which is not a .safetensors file name beside the index",
                index.display(),
                tensor.escape_debug(),
                map[tensor].to_string().escape_debug()
            )));
        };
        out.insert(tensor.clone(), shard.to_string());
    }
    if out.is_empty() {
        return Err(err(format!("{}: the weight_map is empty", index.display())));
    }
    Ok(out)
}

/// The distinct shard names, in order.
pub fn shard_names(map: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = map.values().cloned().collect();
    names.sort();
    names.dedup();
    names
}

/// Every tensor of the sharded checkpoint `index`, each read from the shard the index names
/// (`locate` gives a shard's path: beside the index, or fetched from the hub). A tensor in no
/// shard, in another shard than the index says, or in two shards is an error.
pub fn read(
    index: &Path,
    locate: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<BTreeMap<String, HostTensor>> {
    let map = weight_map(index)?;
    let mut out = BTreeMap::new();
    for shard in shard_names(&map) {
        let path = locate(&shard)?;
        for (name, t) in read_safetensors(&path)? {
            if map.get(&name) != Some(&shard) {
                return Err(err(format!(
                    "{}: holds {}, which {} places {}",
                    path.display(),
                    name.escape_debug(),
                    index.display(),
                    map.get(&name)
                        .map_or("nowhere".into(), |s| format!("in {s}"))
                )));
            }
            out.insert(name, t);
        }
    }
    if let Some((name, shard)) = map.iter().find(|(n, _)| !out.contains_key(*n)) {
        return Err(err(format!(
            "{}: {} is not in {shard}, where the index places it (an incomplete download?)",
            index.display(),
            name.escape_debug()
        )));
    }
    Ok(out)
}

/// The shards beside `index`.
pub fn beside(index: &Path) -> impl Fn(&str) -> Result<PathBuf> + '_ {
    move |name| {
        let p = index.parent().unwrap_or(Path::new(".")).join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(err(format!(
                "{}: shard {name} is missing beside it",
                index.display()
            )))
        }
    }
}
