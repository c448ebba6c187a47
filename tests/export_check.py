#!/usr/bin/env python3
"""Manual check (needs torch, timm, transformers; not run in CI): the real libraries load what
`vitrs export` writes, as is, and reproduce the fixtures' golden logits.

    vitrs export --checkpoint ../shared/fixtures/hf-vit-tiny --format hf --out /tmp/exp_hf
    vitrs export --checkpoint ../shared/fixtures/timm-vit-tiny --format timm --out /tmp/exp_timm
    vitrs export --checkpoint ../shared/fixtures/hf-vit-tiny --format timm --out /tmp/exp_hf2timm
    python3 tests/export_check.py ../shared/fixtures /tmp/exp_hf /tmp/exp_timm /tmp/exp_hf2timm
"""
import sys

import timm
import torch
import transformers
from safetensors.torch import load_file

fixtures, hf_dir, timm_dir, hf2timm_dir = sys.argv[1:5]
g = load_file(f"{fixtures}/hf-vit-tiny/golden.safetensors")
g2 = load_file(f"{fixtures}/timm-vit-tiny/golden.safetensors")
with torch.no_grad():
    hf = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    d1 = (hf(pixel_values=g["pixel_values"]).logits - g["logits"]).abs().max().item()
    t = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    d2 = (t(g2["pixel_values"]) - g2["logits"]).abs().max().item()
    t3 = timm.create_model(f"local-dir:{hf2timm_dir}", pretrained=True).eval()
    d3 = (t3(g["pixel_values"]) - g["logits"]).abs().max().item()
print(f"transformers {transformers.__version__}: HF export {d1:.2e}; timm {timm.__version__}: timm export {d2:.2e}, HF->timm {d3:.2e}")
assert max(d1, d2, d3) <= 1e-4, "an export does not reproduce the golden logits"
