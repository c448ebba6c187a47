#!/usr/bin/env python3
"""Manual check (needs onnx and onnxruntime; not run in CI): what `vitrs export --format onnx`
writes passes onnx.checker (full check, with shape inference) and onnxruntime computes the
logits `vitrs logits` computes, within 1e-4, at batch 1, 2 and 3, for every ViT fixture, a
PEFT LoRA adapter merged into its base, and vitrs checkpoints of the variants no fixture has
(SwiGLU, tanh-GELU, SiLU, each head of a distilled model, no qkv or patch bias).

    pip install onnx==1.23.2 onnxruntime==1.32.0 safetensors numpy
    cargo build --release
    python3 tests/onnx_check.py ../shared/fixtures [target/release/vitrs]
"""
import subprocess, sys, tempfile

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file

fixtures = sys.argv[1]
vitrs = sys.argv[2] if len(sys.argv) > 2 else "target/release/vitrs"

# (name, --checkpoint, --adapter or None)
CASES = [(n, f"{fixtures}/{n}", None) for n in [
    "timm-vit-tiny", "deit-tiny-distilled", "timm-dinov2-small", "timm-reg4-gap",
    "timm-clip-quickgelu", "hf-dinov2", "hf-deit-distilled", "hf-vit-tiny", "hf-vit-sharded",
]] + [("peft-lora-timm (merged)", f"{fixtures}/timm-vit-tiny", f"{fixtures}/peft-lora-timm")]

# Variants no fixture has, as vitrs checkpoints (config.json is a VitConfig) with random weights:
# the other activations and MLPs, both single heads of a distilled model, no qkv/patch bias.
BASE = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=24, depth=2,
            num_heads=3, mlp_dim=40, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
            drop_path_rate=0.0, layer_norm_eps=1e-6, pool="cls")
VARIANTS = {
    "swiglu-silu-cls-mean": dict(mlp="glu", act="silu", layer_scale=0.1, pool="cls-mean"),
    "gelu-tanh-dist-head": dict(act="gelu_tanh", dist_token=True, eval_head="dist",
                                qkv_bias=False, patch_bias=False, pre_norm=True),
    "cls-head-avg-fc-norm": dict(dist_token=True, eval_head="cls", pool="avg", fc_norm=True,
                                 layer_norm_eps=1e-5),
    "gap-regs-quickgelu": dict(class_token=False, reg_tokens=2, no_embed_class=True,
                               pool="avg", act="quick_gelu", layer_scale=0.5),
}


def synthetic(cfg, out):
    """A vitrs checkpoint of `cfg` with random weights (timm names, PyTorch layouts)."""
    import json, os
    rng = np.random.default_rng(len(out))
    c = {**BASE, **cfg}
    d, p, m, k = c["embed_dim"], c["patch_size"], c["mlp_dim"], c["num_classes"]
    prefix = c.get("class_token", True) + c.get("dist_token", False) + c.get("reg_tokens", 0)
    patches = (c["img_size"] // p) ** 2
    w = {"patch_embed.proj.weight": (d, c["in_chans"], p, p),
         "pos_embed": (1, patches + (0 if c.get("no_embed_class") else prefix), d)}
    if c.get("patch_bias", True):
        w["patch_embed.proj.bias"] = (d,)
    for name, on, n in [("cls_token", c.get("class_token", True), 1),
                        ("dist_token", c.get("dist_token", False), 1),
                        ("reg_token", c.get("reg_tokens", 0) > 0, c.get("reg_tokens", 0))]:
        if on:
            w[name] = (1, n, d)
    norms = ["norm_pre"] * c.get("pre_norm", False) + ["fc_norm" if c.get("fc_norm") else "norm"]
    fc1 = 2 * m if c.get("mlp") == "glu" else m
    for i in range(c["depth"]):
        b = f"blocks.{i}"
        norms += [f"{b}.norm1", f"{b}.norm2"]
        w |= {f"{b}.attn.qkv.weight": (3 * d, d), f"{b}.attn.proj.weight": (d, d),
              f"{b}.attn.proj.bias": (d,), f"{b}.mlp.fc1.weight": (fc1, d), f"{b}.mlp.fc1.bias": (fc1,),
              f"{b}.mlp.fc2.weight": (d, m), f"{b}.mlp.fc2.bias": (d,)}
        if c["qkv_bias"]:
            w[f"{b}.attn.qkv.bias"] = (3 * d,)
        if c.get("layer_scale"):
            w |= {f"{b}.ls1.gamma": (d,), f"{b}.ls2.gamma": (d,)}
    head_in = 2 * d if c["pool"] == "cls-mean" else d
    for h in ["head"] + ["head_dist"] * c.get("dist_token", False):
        w |= {f"{h}.weight": (k, head_in), f"{h}.bias": (k,)}
    t = {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in w.items()}
    for n in norms:
        t[f"{n}.weight"] = (1 + 0.2 * rng.standard_normal(d)).astype(np.float32)
        t[f"{n}.bias"] = (0.2 * rng.standard_normal(d)).astype(np.float32)
    os.makedirs(out)
    save_file(t, f"{out}/model.safetensors")
    with open(f"{out}/config.json", "w") as f:
        json.dump(c, f)
    x = rng.standard_normal((2, c["in_chans"], c["img_size"], c["img_size"])).astype(np.float32)
    save_file({"pixel_values": x}, f"{out}/golden.safetensors")


worst = 0.0
with tempfile.TemporaryDirectory() as d:
    for name, cfg in VARIANTS.items():
        synthetic(cfg, f"{d}/{name}")
        CASES.append((f"{name} (synthetic)", f"{d}/{name}", None))
    for i, (name, ckpt, adapter) in enumerate(CASES):
        extra = ["--adapter", adapter] if adapter else []
        out = f"{d}/model{i}"
        subprocess.run([vitrs, "export", "--checkpoint", ckpt, "--format", "onnx", "--out", out,
                        *extra, *(["--merge"] if adapter else [])],
                       check=True, stdout=subprocess.DEVNULL)
        path = f"{out}/model.onnx"
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param == "batch" and not batch.HasField("dim_value"), batch
        assert len(model.graph.initializer) > 0
        meta = {p.key: p.value for p in model.metadata_props}
        assert {"mean", "std", "img_size", "num_classes"} <= meta.keys(), meta
        eval_head = VARIANTS.get(name.split(" ")[0], {}).get("eval_head", "avg")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        pv = load_file(f"{(adapter or ckpt)}/golden.safetensors")["pixel_values"]
        inputs = {1: pv[:1], 2: pv, 3: np.concatenate([pv, pv[:1] * 0.5], 0)}
        diffs = []
        for b, x in inputs.items():
            x = np.ascontiguousarray(x, dtype=np.float32)
            save_file({"pixel_values": x}, f"{d}/x.safetensors")
            subprocess.run([vitrs, "logits", "--pretrained", ckpt, *extra,
                            "--input", f"{d}/x.safetensors", "--output", f"{d}/y.safetensors"],
                           check=True, stdout=subprocess.DEVNULL)
            # `vitrs logits` writes every head; the graph computes the one eval_head names.
            head = {"cls": "logits_cls", "dist": "logits_dist"}.get(eval_head, "logits")
            ours = load_file(f"{d}/y.safetensors")[head]
            (theirs,) = sess.run(["logits"], {"pixel_values": x})
            assert theirs.shape == ours.shape == (b, ours.shape[1]), (theirs.shape, ours.shape)
            diff = float(np.abs(theirs - ours).max())
            diffs.append(f"batch {b}: {diff:.1e}")
            worst = max(worst, diff)
            assert diff <= 1e-4, f"{name} at batch {b}: onnxruntime and vitrs differ by {diff}"
        print(f"{name:34} {len(model.graph.node):4} nodes  " + ", ".join(diffs))
print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}: max |onnxruntime - vitrs| = {worst:.1e}")
