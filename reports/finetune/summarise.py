"""Summarises results.csv against domsim's verdicts on the same training splits.

Writes summary.csv, ground_truth.json (read by tests/finetune_guard.rs), agreement.md and
finetune_by_depth.png, and copies domsim's metrics.csv / verdict.json per target under domsim/<target>/.

Tie set: the configurations not significantly worse than the best one (highest mean test balanced accuracy):
a one-sided paired t-test across seeds (pairs share the seed: same head initialisation and batch order),
alpha = 0.05; a configuration with fewer than 2 seeds is not judged. With 3 seeds the test has 2 degrees of
freedom and little power: the tie set is generous, and that is stated next to every figure.
"""

import csv
import json
import os
import shutil
import subprocess

import numpy as np
from scipy import stats

import study

TIE_ALPHA = 0.05
SCORES = ["target_probe_bal_acc", "target_knn_bal_acc", "logme_target", "hscore_target"]


def load_results():
    by = {}
    with open(study.RESULTS) as f:
        for r in csv.DictReader(f):
            by.setdefault(r["target"], {}).setdefault(r["config"], {})[int(r["seed"])] = float(r["test_bal_acc"])
    return by


def tie_set(cfgs):
    """(best config, {config: (mean, sd, n, p vs best, tied)})."""
    means = {c: np.mean(list(v.values())) for c, v in cfgs.items() if len(v) >= 2}
    if not means:
        return None, {}
    best = max(means, key=lambda c: (means[c], c))
    out = {}
    for c, v in cfgs.items():
        vals = list(v.values())
        common = sorted(set(v) & set(cfgs[best]))
        if len(v) < 2 or len(common) < 2:
            out[c] = (np.mean(vals), np.std(vals, ddof=1) if len(vals) > 1 else float("nan"), len(v), None, None)
            continue
        d = np.array([v[s] - cfgs[best][s] for s in common])
        if c == best:
            p = 1.0
        elif np.all(d == 0):
            p = 1.0
        elif d.std(ddof=1) == 0:
            p = 0.0 if d.mean() < 0 else 1.0
        else:
            p = float(stats.ttest_1samp(d, 0.0, alternative="less").pvalue)
        out[c] = (np.mean(vals), np.std(vals, ddof=1), len(v), p, p >= TIE_ALPHA)
    return best, out


def run_domsim(t, domsim_bin):
    out = os.path.join(study.WORK, "domsim", t)
    subprocess.run([domsim_bin, "--quiet", "analyze", "--source", os.path.join(study.DATA, "animals"),
                    "--target", os.path.join(study.WORK, "trainsets", t), "--out", out, "--force"], check=True)
    keep = os.path.join(study.HERE, "domsim", t)
    os.makedirs(keep, exist_ok=True)
    for f in ["metrics.csv", "verdict.json"]:
        shutil.copy(os.path.join(out, f), os.path.join(keep, f))
    with open(os.path.join(out, "verdict.json")) as f:
        verdict = json.load(f)
    metrics = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    return verdict, metrics


def layer_depths(domsim_bin):
    names = json.loads(subprocess.run([domsim_bin, "layers", "--json"], check=True, capture_output=True,
                                      text=True).stdout)
    return {l["name"]: i for i, l in enumerate(names)}


def config_of_depth(d):
    """The study's run for "freeze through depth d" of the 19-layer default selection."""
    return "freeze_all" if d >= 17 else f"freeze_through_{d}"


def plan_config(verdict, depth_of):
    plan = verdict.get("plan", {})
    if plan.get("kind") == "train_all":
        return "train_all"
    if plan.get("kind") == "surgical_first":
        return "surgical_first"
    cut = verdict.get("cut")
    if cut is None:
        return None
    return config_of_depth(depth_of[cut["layer"]])


def main(targets):
    domsim_bin = os.path.join(study.ROOT, "target", "release", "domsim")
    res = load_results()
    depth_of = layer_depths(domsim_bin)
    gt, lines, rows = {"tie_alpha": TIE_ALPHA, "test": "one-sided paired t-test across seeds vs the best config",
                       "targets": {}}, [], []
    panels = []
    for t in targets:
        if t not in res:
            continue
        best, table = tie_set(res[t])
        if best is None:
            continue
        verdict, metrics = run_domsim(t, domsim_bin)
        rec = plan_config(verdict, depth_of)
        for c, (m, sd, n, p, tied) in sorted(table.items()):
            rows.append(dict(target=t, config=c, n_seeds=n, mean_bal_acc=f"{m:.4f}", sd=f"{sd:.4f}",
                             p_vs_best="" if p is None else f"{p:.4f}", tied_with_best="" if tied is None else tied))
        judged = {c: v for c, v in table.items() if v[4] is not None}
        ties = sorted(c for c, v in judged.items() if v[4])
        excluded = sorted(c for c, v in judged.items() if not v[4])
        # per-layer scores vs "freeze through that depth"
        prof = {}
        for r in metrics:
            if r["metric"] in SCORES and r["value"]:
                prof.setdefault(r["metric"], []).append((depth_of[r["layer"]], float(r["value"])))
        ft = {d: np.mean(list(res[t][config_of_depth(d)].values()))
              for d in range(19) if config_of_depth(d) in res[t] and len(res[t][config_of_depth(d)]) >= 1}
        taus = {}
        for sname, pts in prof.items():
            pts = [(d, v) for d, v in pts if d in ft]
            if len(pts) >= 4:
                x, y = [v for _, v in pts], [ft[d] for d, _ in pts]
                taus[sname] = (stats.kendalltau(x, y).statistic, stats.spearmanr(x, y).statistic, len(pts))
        # noise ceiling: leave-one-seed-out tau between one seed's profile and the mean of the others
        seeds = sorted({s for c in res[t].values() for s in c})
        ceil = []
        ds = [d for d in range(17)] + [17]
        for s in seeds:
            a, b = [], []
            for d in ds:
                c = res[t].get(config_of_depth(d), {})
                others = [v for k, v in c.items() if k != s]
                if s in c and others:
                    a.append(c[s])
                    b.append(np.mean(others))
            if len(a) >= 4:
                ceil.append(stats.kendalltau(a, b).statistic)
        labels = {l["layer"]: l["label"] for l in verdict["layers"]}
        by_label = {}
        for name, lab in labels.items():
            d = depth_of[name]
            if d in ft:
                by_label.setdefault(lab, []).append(ft[d])
        surg = {c: table[c][0] for c in ("surgical_first", "surgical_middle") if c in table}
        best_prefix = max((c for c in table if c.startswith("freeze") or c == "train_all"),
                          key=lambda c: table[c][0])
        gt["targets"][t] = dict(best=best, tie_set=ties, excluded=excluded, n_seeds=len(seeds),
                                domsim_recommendation=rec, recommendation_in_tie_set=rec in ties if rec else None,
                                discriminating=bool(excluded), split=f"splits/{t}.csv",
                                best_prefix=best_prefix, surgical=surg)
        lines.append(f"### {t}\n")
        lines.append(f"- best: `{best}` ({table[best][0]:.3f} ± {table[best][1]:.3f}, {table[best][2]} seeds); "
                     f"tie set ({len(ties)} of {len(judged)} judged configurations): {', '.join(f'`{c}`' for c in ties)}")
        lines.append(f"- domsim recommends `{rec}` → {'**in** the tie set' if rec in ties else '**outside** the tie set'}"
                     f" ({verdict.get('plan', {}).get('text', verdict.get('summary', ''))[:200]})")
        for lab, v in sorted(by_label.items()):
            lines.append(f"- layers labelled `{lab}`: freeze-through accuracy {np.mean(v):.3f} (mean over {len(v)} depths)")
        for sname, (tau, rho, n) in taus.items():
            lines.append(f"- {sname}: Kendall τ {tau:+.2f}, Spearman ρ {rho:+.2f} over {n} depths")
        if ceil:
            lines.append(f"- noise ceiling (leave-one-seed-out τ of the fine-tuned profile): {np.mean(ceil):+.2f}")
        for c, m in surg.items():
            beats = m > table[best_prefix][0]
            lines.append(f"- `{c}` {m:.3f} vs best prefix-freezing config `{best_prefix}` {table[best_prefix][0]:.3f}"
                         f": {'beats it' if beats else 'does not beat it'}")
        lines.append("")
        panels.append((t, table, prof, depth_of, rec, ties))
    with open(os.path.join(study.HERE, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(study.HERE, "ground_truth.json"), "w") as f:
        json.dump(gt, f, indent=1, sort_keys=True)
    secs = sum(float(r["seconds"]) for r in csv.DictReader(open(study.RESULTS)))
    if os.path.exists(study.LR_GRID_CSV):
        secs += sum(float(r["seconds"]) for r in csv.DictReader(open(study.LR_GRID_CSV)))
    n_runs = sum(len(v) for c in res.values() for v in c.values())
    lines.append(f"Total: {n_runs} fine-tuning runs plus the learning-rate grid, {secs / 3600:.2f} h of wall time on "
                 "2 CPU cores (the `seconds` column of results.csv and lr_grid.csv).")
    with open(os.path.join(study.HERE, "agreement.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    chart(panels)


def chart(panels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 3.6 * len(panels)), squeeze=False)
    for ax, (t, table, prof, depth_of, rec, ties) in zip(axes[:, 0], panels):
        xs, ms, sds = [], [], []
        for d in range(-1, 19):
            c = "train_all" if d < 0 else config_of_depth(d)
            if c in table:
                xs.append(d)
                ms.append(table[c][0])
                sds.append(table[c][1] if np.isfinite(table[c][1]) else 0)
        ax.errorbar(xs, ms, yerr=sds, fmt="o-", color="black", capsize=3,
                    label="fine-tuned: freeze through depth (−1 = train all), mean ± sd over seeds")
        for x, c in zip(xs, ["train_all" if d < 0 else config_of_depth(d) for d in xs]):
            if c in ties:
                ax.plot([x], [table[c][0]], "o", ms=11, mfc="none", color="green")
        for c, col in (("surgical_first", "tab:purple"), ("surgical_middle", "tab:brown")):
            if c in table:
                ax.axhline(table[c][0], ls=":", color=col, label=f"{c} {table[c][0]:.3f}")
        for sname, col in (("target_probe_bal_acc", "tab:blue"), ("target_knn_bal_acc", "tab:orange")):
            if sname in prof:
                pts = sorted(prof[sname])
                ax.plot([d for d, _ in pts], [v for _, v in pts], "s--", color=col, ms=4,
                        label=f"domsim {sname} (frozen features, training split)")
        if rec:
            x = -1 if rec == "train_all" else (-0.5 if rec == "surgical_first" else
                                                 (18 if rec == "freeze_all" else int(rec.split("_")[-1])))
            ax.axvline(x, color="red", lw=2, alpha=0.6, label=f"domsim's recommendation: {rec}")
        ax.set_title(f"{t}: green rings = tie set (paired t-test across seeds, α = {TIE_ALPHA})")
        ax.set_xlabel("depth of the last frozen layer")
        ax.set_ylabel("test balanced accuracy")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(study.HERE, "finetune_by_depth.png"), dpi=90)
