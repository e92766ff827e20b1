"""Reads target/stability/seed*/verdict.json and prints the stability table (standard library only)."""
import collections
import json
import os
import sys

work = sys.argv[1]
runs = {}
for d in sorted(os.listdir(work)):
    p = os.path.join(work, d, "verdict.json")
    if d.startswith("seed") and os.path.exists(p):
        runs[int(d[4:])] = json.load(open(p))
seeds = sorted(runs)
plans = {s: (runs[s]["plan"]["kind"], (runs[s].get("cut") or {}).get("depth")) for s in seeds}
common = collections.Counter(plans.values()).most_common(1)[0]
print(f"# Seed stability: animals -> chest X-rays, default settings, seeds {seeds[0]}-{seeds[-1]}\n")
print("| seed | plan | cut depth | labels by depth (t = transfers, p = partial, d = domain-specific) | compare wall s |")
print("|---|---|---|---|---|")
for s in seeds:
    labels = "".join(l["label"][0] for l in runs[s]["layers"])
    t = open(os.path.join(work, f"seed{s}.time")).read().strip() if os.path.exists(os.path.join(work, f"seed{s}.time")) else ""
    print(f"| {s} | {plans[s][0]} | {plans[s][1]} | `{labels}` | {t} |")
n_layers = len(runs[seeds[0]]["layers"])
flips = []
for i in range(n_layers):
    c = collections.Counter(runs[s]["layers"][i]["label"] for s in seeds)
    flips.append(len(seeds) - c.most_common(1)[0][1])
print()
print(f"- the most common plan `{common[0]}` is recommended on {common[1]} of {len(seeds)} seeds")
print(f"- largest number of seeds on which one layer's label differs from its most common label: {max(flips)}"
      f" (per layer: {flips})")
