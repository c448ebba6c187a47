//! Weights in and out as safetensors with timm's names and PyTorch's layouts.
//!
//! vitrs' parameter paths already are timm's state-dict keys; the only layout difference is
//! that our `Linear` stores `[in, out]` while PyTorch stores `[out, in]`, so every rank-2
//! `*.weight` is transposed on the way in and out.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use super::params::{map_params, named_params};
use crate::error::{Error, Result, printable};

/// A host tensor: PyTorch layout, f32.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn transpose2(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor {
            shape: vec![c, r],
            data,
        }
    }

    pub fn from_tensor(t: Tensor<1>, shape: &[usize]) -> HostTensor {
        HostTensor {
            shape: shape.to_vec(),
            data: t
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default(),
        }
    }
}

fn is_linear_weight(path: &str, rank: usize) -> bool {
    rank == 2 && path.ends_with("weight")
}

/// The model's weights as a timm state dict.
pub fn state_dict<M: Module>(module: &M) -> BTreeMap<String, HostTensor> {
    named_params(module)
        .into_iter()
        .map(|p| {
            let t = HostTensor::from_tensor(p.value, &p.shape);
            let t = if is_linear_weight(&p.path, p.shape.len()) {
                t.transpose2()
            } else {
                t
            };
            (p.path, t)
        })
        .collect()
}

/// Write tensors (already in file layout) to a safetensors file.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Checkpoint(format!("tensor {k}: {e}")))
        })
        .collect::<Result<_>>()?;
    let data = safetensors::serialize(views, metadata)
        .map_err(|e| Error::Checkpoint(format!("serialising {}: {e}", path.display())))?;
    crate::util::write_file_synced(path, &data)
}

/// Read every tensor of a safetensors file as f32 (f16/bf16/f64 are converted).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "reading", e))?;
    parse_safetensors(&bytes).map_err(|e| {
        Error::Checkpoint(format!(
            "{}: not a valid safetensors file ({e}); it may be truncated or corrupt — re-download or re-export it",
            path.display()
        ))
    })
}

/// Parse safetensors bytes; errors are plain descriptions for the caller to wrap.
pub fn parse_safetensors(
    bytes: &[u8],
) -> std::result::Result<BTreeMap<String, HostTensor>, String> {
    // The crate's errors may quote a tensor name from the file.
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| printable(&e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        // Names end up in error messages and reports; no real checkpoint has such a name.
        if name.chars().any(char::is_control) {
            return Err(format!(
                "tensor name \"{}\" contains control characters",
                printable(&name)
            ));
        }
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            other => return Err(format!("tensor {name} has unsupported dtype {other:?}")),
        };
        out.insert(
            name.to_string(),
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Load a timm-named state dict into `module`. Every parameter must be present with the right
/// shape and no tensor may be left over; otherwise the error names the tensors that differ.
pub fn load_state_dict<M: Module>(
    module: M,
    sd: &BTreeMap<String, HostTensor>,
    device: &Device,
) -> Result<M> {
    load_state_dict_keeping(module, sd, device, |_| false)
}

/// [`load_state_dict`], except that parameters for which `keep(path)` holds may be absent
/// from `sd`: they keep the value they have in `module` (a freshly initialised head, say).
pub fn load_state_dict_keeping<M: Module>(
    module: M,
    sd: &BTreeMap<String, HostTensor>,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<M> {
    let expected: BTreeMap<String, Vec<usize>> = named_params(&module)
        .into_iter()
        .map(|p| {
            let shape = if is_linear_weight(&p.path, p.shape.len()) {
                vec![p.shape[1], p.shape[0]]
            } else {
                p.shape
            };
            (p.path, shape)
        })
        .collect();
    let mut problems = Vec::new();
    for (k, shape) in &expected {
        match sd.get(k) {
            None if keep(k) => {}
            None => problems.push(format!("missing {k} {shape:?}")),
            Some(t) if &t.shape != shape => problems.push(format!(
                "{k}: file has {:?}, model expects {shape:?}",
                t.shape
            )),
            _ => {}
        }
    }
    for k in sd.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("unexpected {k} {:?}", sd[k].shape));
    }
    if !problems.is_empty() {
        let shown: Vec<_> = problems.iter().take(6).cloned().collect();
        let more = problems.len().saturating_sub(6);
        return Err(Error::Checkpoint(format!(
            "weights do not match the model: {}{} (was it saved from a different model shape?)",
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )));
    }
    Ok(map_params(module, |path, _| {
        let t = sd.get(path)?;
        let t = if is_linear_weight(path, t.shape.len()) {
            t.transpose2()
        } else {
            t.clone()
        };
        let n = t.data.len();
        Some(Tensor::from_data(TensorData::new(t.data, [n]), device))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::Ctx;
    use crate::model::{VisionTransformer, VitConfig};

    fn tiny() -> VitConfig {
        VitConfig::with_shape(8, 4, 3, 3, [8, 1, 2, 16])
    }

    #[test]
    fn save_load_round_trip_is_exact_and_linear_weights_are_pytorch_layout() {
        let device = Device::flex();
        let a = VisionTransformer::new(&tiny(), 1, &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let sd = state_dict(&a);
        assert_eq!(sd["blocks.0.mlp.fc1.weight"].shape, vec![16, 8]); // [out, in]
        write_safetensors(&path, &sd, None).unwrap();
        let b = VisionTransformer::new(&tiny(), 2, &device).unwrap();
        let b = load_state_dict(b, &read_safetensors(&path).unwrap(), &device).unwrap();
        assert_eq!(state_dict(&b), sd);
        let x = Tensor::<4>::ones([1, 3, 8, 8], &device);
        let (ya, yb) = (
            a.forward(x.clone(), &Ctx::eval()),
            b.forward(x, &Ctx::eval()),
        );
        assert_eq!(ya.into_data(), yb.into_data());
    }

    #[test]
    fn shape_mismatch_names_the_tensors() {
        let device = Device::flex();
        let sd = state_dict(&VisionTransformer::new(&tiny(), 1, &device).unwrap());
        let other = VitConfig {
            num_classes: 5,
            ..tiny()
        };
        let e = load_state_dict(
            VisionTransformer::new(&other, 1, &device).unwrap(),
            &sd,
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("head.weight: file has [3, 8], model expects [5, 8]"),
            "{e}"
        );
    }

    #[test]
    fn mutated_safetensors_are_errors_not_panics() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let sd = state_dict(&VisionTransformer::new(&tiny(), 1, &device).unwrap());
        write_safetensors(&path, &sd, None).unwrap();
        let valid = std::fs::read(&path).unwrap();
        crate::testing::assert_no_panic_on_mutants("safetensors", &valid, 3000, |b| {
            if let Ok(parsed) = parse_safetensors(b) {
                // What parses must also load or be refused by name, never panic.
                let m = VisionTransformer::new(&tiny(), 1, &device).unwrap();
                let _ = load_state_dict(m, &parsed, &device);
            }
        });
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write_safetensors(
            &path,
            &state_dict(&VisionTransformer::new(&tiny(), 1, &device).unwrap()),
            None,
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_safetensors(&path).unwrap_err().to_string();
        assert!(e.contains("truncated or corrupt"), "{e}");
    }
}
