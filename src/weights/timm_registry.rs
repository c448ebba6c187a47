//! What timm registers for its ViT architecture names (`timm_vits.json`, written from timm
//! 1.0.31's sources by `tools/timm_vit_registry.py`). A timm `config.json` names the
//! architecture and carries `model_args` with only what differs from the registration, so
//! the arguments of a model are: `VisionTransformer`'s defaults < the name's registered
//! arguments < top-level keys of a plain config < `model_args`.

use std::sync::OnceLock;

use serde_json::{Map, Value};

fn table() -> &'static Value {
    static TABLE: OnceLock<Value> = OnceLock::new();
    TABLE.get_or_init(|| {
        // Compiled in and parsed by a test (`the_table_parses_and_knows_the_fixture_names`).
        serde_json::from_str(include_str!("timm_vits.json")).unwrap_or(Value::Null)
    })
}

/// The timm version the table was written from.
pub fn timm_version() -> &'static str {
    table()["timm_version"].as_str().unwrap_or("?")
}

/// A name's registration: its arguments, default image size and mean/std.
pub fn registered(name: &str) -> Option<&'static Value> {
    table()["models"].get(name)
}

/// How many names the table knows.
pub fn known_names() -> usize {
    table()["models"].as_object().map_or(0, Map::len)
}

/// The constructor arguments of a model: defaults, then `architecture`'s registration (when
/// known), then `overrides` in order. Returns them and whether the name was known.
pub fn resolve(
    architecture: Option<&str>,
    overrides: &[&Map<String, Value>],
) -> (Map<String, Value>, bool) {
    let mut args = table()["defaults"].as_object().cloned().unwrap_or_default();
    let reg = architecture.and_then(registered);
    if let Some(r) = reg.and_then(|r| r["args"].as_object()) {
        args.extend(r.clone());
    }
    for o in overrides {
        args.extend((*o).clone());
        // A config's `act_layer` is timm's own argument; the table holds it as `act`.
        if let Some(a) = o.get("act_layer").filter(|a| a.is_string()) {
            args.insert("act".into(), a.clone());
        }
    }
    (args, reg.is_some())
}

/// The arguments a name or the overrides set explicitly (not `VisionTransformer`'s defaults):
/// what the tensors cannot show must come from here.
pub fn explicit(
    architecture: Option<&str>,
    overrides: &[&Map<String, Value>],
    key: &str,
) -> Option<Value> {
    overrides
        .iter()
        .rev()
        .find_map(|o| o.get(key).cloned())
        .or_else(|| registered(architecture?)?["args"].get(key).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_knows_the_fixture_names() {
        assert_eq!(timm_version(), "1.0.31");
        assert_eq!(known_names(), 179);
        let d = registered("vit_small_patch14_dinov2").unwrap();
        assert_eq!(d["args"]["patch_size"], 14);
        assert_eq!(d["args"]["init_values"], 1e-5);
        assert_eq!(d["img_size"], 518);
        let g = registered("vit_little_patch16_reg4_gap_256").unwrap();
        assert_eq!(g["args"]["reg_tokens"], 4);
        assert_eq!(g["args"]["class_token"], false);
        let c = registered("vit_base_patch16_clip_quickgelu_224").unwrap();
        assert_eq!(c["args"]["act"], "quick_gelu");
        assert_eq!(c["args"]["norm_eps"], 1e-5);
        assert_eq!(
            registered("deit_tiny_distilled_patch16_224").unwrap()["distilled"],
            true
        );
        // Overrides win over the registration, which wins over the defaults.
        let over: Map<String, Value> = serde_json::from_str(r#"{"embed_dim": 48}"#).unwrap();
        let (a, known) = resolve(Some("vit_small_patch14_dinov2"), &[&over]);
        assert!(known);
        assert_eq!(
            (a["embed_dim"].as_u64(), a["num_heads"].as_u64()),
            (Some(48), Some(6))
        );
        assert_eq!(a["act"], "gelu");
        let (_, known) = resolve(Some("vit_unheard_of"), &[]);
        assert!(!known);
    }
}
