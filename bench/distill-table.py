#!/usr/bin/env python3
"""Table of bench/distill-fashion-mnist-aug.sh's runs: every run, then mean ± sample std."""
import json, re, statistics, sys
from pathlib import Path

R = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fm-distill-aug")
times = dict(re.findall(r"^(\S+) (\d+) s$", (R / "times.txt").read_text(), re.M))
runs = {}
for f in sorted(R.glob("*.eval.json")):
    name = f.name[: -len(".eval.json")]
    kind, seed = name.rsplit("-s", 1)
    e = json.loads(f.read_text())
    runs.setdefault(kind, []).append((int(seed), e["acc"], e["teacher_agreement"], times.get(name, "?")))
print("| student | seed | test acc | agreement | wall-clock |\n|---|---|---|---|---|")
order = ["alone", "soft", "hard", "hard-token"]
for k in order:
    for seed, acc, agr, t in sorted(runs.get(k, [])):
        print(f"| {k} | {seed} | {100*acc:.2f}% | {100*agr:.2f}% | {t} s |")
print("\n| student | runs | test acc (mean ± std) | agreement (mean ± std) |\n|---|---|---|---|")
def ms(v):
    return f"{100*statistics.mean(v):.2f} ± {100*statistics.stdev(v):.2f}%" if len(v) > 1 else f"{100*v[0]:.2f}%"
for k in order:
    if k in runs:
        r = runs[k]
        print(f"| {k} | {len(r)} | {ms([x[1] for x in r])} | {ms([x[2] for x in r])} |")
# Each distilled student against the student alone: difference of mean accuracy and Welch's t
# (unpaired: a seed gives the two students different initial weights).
print("\n| vs alone | Δ acc (points) | Welch t | dof |\n|---|---|---|---|")
a = [x[1] for x in runs.get("alone", [])]
for k in order[1:]:
    b = [x[1] for x in runs.get(k, [])]
    if len(a) > 1 and len(b) > 1:
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        t = (statistics.mean(b) - statistics.mean(a)) / (va + vb) ** 0.5
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        print(f"| {k} | {100*(statistics.mean(b)-statistics.mean(a)):+.2f} | {t:.2f} | {dof:.1f} |")
