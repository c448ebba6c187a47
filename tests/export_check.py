#!/usr/bin/env python3
"""Manual check (needs torch, timm 1.0.31, transformers 5.25; not run in CI): the real libraries
load what `vitrs export` writes, as is, and reproduce every fixture's golden logits; and timm
computes at another resolution what `vitrs logits` computes.

    cargo build --release
    python3 tests/export_check.py target/release/vitrs ../shared/fixtures

For each fixture and each format vitrs can write it in, `vitrs export` goes to a temporary
folder; timm loads it with `create_model("local-dir:DIR", pretrained=True)`, transformers
with `AutoModelForImageClassification.from_pretrained(DIR)`. A fixture with a distillation
token is compared on the mean of both heads (timm's and HF's eval output).
"""
import os
import subprocess
import sys
import tempfile

try:
    import torchvision  # noqa: F401  (timm imports it; only its model code is used here)
except ImportError:  # a machine with torch but no torchvision: timm's models need none of it
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "python"))
    import torchvision_stub  # noqa: F401

import timm
import torch
import transformers
from safetensors.torch import load_file, save_file

vitrs, fixtures = sys.argv[1:3]
CASES = {
    # fixture: formats vitrs writes it in (HF's classes hold no registers, fc_norm or norm_pre;
    # timm has no class-token-plus-mean pooling).
    "timm-vit-tiny": ["timm", "hf"],
    "hf-vit-tiny": ["timm", "hf"],
    "deit-tiny-distilled": ["timm", "hf"],
    "timm-dinov2-small": ["timm"],
    "timm-reg4-gap": ["timm"],
    "timm-clip-quickgelu": ["timm"],
    "hf-vit-sharded": ["timm", "hf"],
    "hf-deit-distilled": ["timm", "hf"],
    "hf-dinov2": ["hf"],
}
worst = 0.0
with tempfile.TemporaryDirectory() as tmp:
    for name, formats in CASES.items():
        g = load_file(f"{fixtures}/{name}/golden.safetensors")
        for fmt in formats:
            out = os.path.join(tmp, f"{name}-{fmt}")
            subprocess.run([vitrs, "export", "--checkpoint", f"{fixtures}/{name}", "--format", fmt,
                            "--out", out], check=True, capture_output=True)
            with torch.no_grad():
                if fmt == "timm":
                    m = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
                    logits = m(g["pixel_values"])
                else:
                    m = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
                    logits = m(pixel_values=g["pixel_values"]).logits
            d = (logits - g["logits"]).abs().max().item()
            worst = max(worst, d)
            print(f"{name:22s} -> {fmt:4s} {type(m).__name__:40s} max |diff| {d:.2e}")
    # Another resolution: timm's own load-time resampling against `vitrs logits`.
    for name in ["timm-dinov2-small", "timm-reg4-gap", "timm-clip-quickgelu"]:
        g = load_file(f"{fixtures}/{name}/golden.safetensors")
        x = torch.nn.functional.interpolate(g["pixel_values"], scale_factor=1.5, mode="bilinear")
        px, out = os.path.join(tmp, "px.safetensors"), os.path.join(tmp, "out.safetensors")
        save_file({"pixel_values": x.contiguous()}, px)
        subprocess.run([vitrs, "logits", "--pretrained", f"{fixtures}/{name}", "--input", px,
                        "--output", out], check=True, capture_output=True)
        size = x.shape[-1]
        m = timm.create_model(f"local-dir:{fixtures}/{name}", pretrained=True, img_size=size).eval()
        with torch.no_grad():
            d = (m(x) - load_file(out)["logits"]).abs().max().item()
        worst = max(worst, d)
        print(f"{name:22s} at {size}px: timm's resampling vs vitrs logits, max |diff| {d:.2e}")
    # HF DINOv2 with SwiGLU (no fixture has one): made here by transformers, read by vitrs.
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                    mlp_ratio=4, image_size=28, patch_size=14, num_labels=5,
                                    use_swiglu_ffn=True, layerscale_value=0.5)
    m = transformers.Dinov2ForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # random norms and biases too, as the fixtures have
            p.add_(torch.randn_like(p) * 0.1)
    swiglu = os.path.join(tmp, "hf-dinov2-swiglu")
    m.save_pretrained(swiglu)
    x = torch.randn(2, 3, 28, 28)
    px, out = os.path.join(tmp, "px.safetensors"), os.path.join(tmp, "out.safetensors")
    save_file({"pixel_values": x}, px)
    subprocess.run([vitrs, "logits", "--pretrained", swiglu, "--input", px, "--output", out],
                   check=True, capture_output=True)
    with torch.no_grad():
        d = (m(pixel_values=x).logits - load_file(out)["logits"]).abs().max().item()
    worst = max(worst, d)
    print(f"{'hf dinov2 swiglu':22s} transformers vs vitrs logits, max |diff| {d:.2e}")
print(f"timm {timm.__version__}, transformers {transformers.__version__}: worst {worst:.2e}")
assert worst <= 1e-4, "an export or a resampling does not reproduce the library"
