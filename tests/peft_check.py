#!/usr/bin/env python3
"""Manual check (needs torch, timm, peft; not run in CI): HF PEFT loads the adapter checkpoint
of a vitrs LoRA run as it is, on the run's base exported as timm weights, and gives the logits
vitrs gives.

    vitrs train --dataset synthetic --synthetic-size 256 --img-size 32 --patch-size 4 \
        --embed-dim 48 --depth 2 --num-heads 3 --mlp-dim 96 --epochs 1 --batch-size 32 \
        --warmup-epochs 0 --lr 1e-2 --adapter lora --lora-rank 4 --lora-targets qkv,fc1 \
        --quiet --out-dir /tmp/peft_run
    vitrs export --checkpoint /tmp/peft_run/base_model --format timm --out /tmp/peft_base
    python3 tests/peft_check.py /tmp/peft_run/checkpoints/last /tmp/peft_base
"""
import subprocess, sys, tempfile

import peft
import timm
import torch
from safetensors.torch import load_file, save_file

ckpt, base = sys.argv[1:3]
vitrs = sys.argv[3] if len(sys.argv) > 3 else "target/release/vitrs"
torch.manual_seed(0)
model = timm.create_model(f"local-dir:{base}", pretrained=True)
cfg = model.pretrained_cfg
size = model.patch_embed.img_size[0]
x = torch.randn(4, 3, size, size)
with torch.no_grad():
    plain = model.eval()(x)
    lora = peft.PeftModel.from_pretrained(model, ckpt).eval()
    y = lora(x)
with tempfile.TemporaryDirectory() as d:
    save_file({"pixel_values": x.contiguous()}, f"{d}/x.safetensors")
    subprocess.run([vitrs, "logits", "--pretrained", base, "--adapter", ckpt,
                    "--input", f"{d}/x.safetensors", "--output", f"{d}/y.safetensors"], check=True)
    ours = load_file(f"{d}/y.safetensors")["logits"]
diff = (y - ours).abs().max().item()
moved = (y - plain).abs().max().item()
print(f"peft {peft.__version__}, timm {timm.__version__}: max |PEFT - vitrs| = {diff:.2e} "
      f"(the adapter moves the logits by {moved:.2e})")
assert moved > 1e-3, "the adapter did nothing; the check would be vacuous"
assert diff <= 1e-4, "PEFT and vitrs disagree on the adapter"
