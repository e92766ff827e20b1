"""How many seeds per cell would let the study confirm the verdict's statement cell by cell.

For each cell, the claim that matches the study's point estimates (the oracle's: a new head within δ of the best,
or the best configuration within δ and a new head more than δ behind) is scored in replicate studies that draw M
seeds with replacement from the five measured (M = 5, 10, 20: an m-out-of-n bootstrap, optimistic for M > 5, as
it treats the five seeds as the population) and the test images within class. Prints, per M, the oracle's
expected number of cells right and the probability that it is right in at least 90 % of the cells.

    reports/finetune/.venv/bin/python reports/finetune/ceiling_seeds.py
"""
import math
import os

import numpy as np

import study
import summarise as S

REPS = 400


def oracle_right(correct, y, M, reps, rng):
    """[reps] bool: whether the claim matching the cell's point estimates (correct[c, s, i], test labels y)
    holds in each replicate study of M seeds drawn with replacement and test images drawn within class."""
    m = S.bal_by_seed(correct, y).mean(1)
    head_i = S.CONSTANTS.index("freeze_all")
    head, best = m.max() - m[head_i], int(m.argmax())
    idx = [np.flatnonzero(y == k) for k in np.unique(y)]
    ok = np.zeros(reps, bool)
    for r in range(reps):
        s_idx = rng.integers(0, correct.shape[1], M)
        acc = S.bal_by_seed(correct[:, s_idx], y, S.resample_test(idx, len(y), rng)).mean(1)
        ok[r] = S.oracle_holds(head, acc.max() - acc[head_i], acc.max() - acc[best])
    return ok


def main():
    rng = np.random.default_rng(S.BOOT_SEED)
    right = {}
    for name in sorted(f[:-5] for f in os.listdir(study.SPLITS) if f.endswith(".json")):
        split = study.read_split(name)
        for b in split["budgets"]:
            got = S.load_cell(name, b, split)
            if got is None or len(got[0]) < len(study.SEEDS):
                continue
            _, correct, y, _ = got
            for M in (5, 10, 20):
                right.setdefault(M, []).append(oracle_right(correct, y, M, REPS, rng))
    for M, v in right.items():
        tot = np.sum(v, axis=0)
        print(f"{M:2d} seeds per cell: the oracle right in {tot.mean():.1f} of {len(v)} cells on average; "
              f"in at least 90 % of them in {np.mean(tot >= math.ceil(0.9 * len(v))):.0%} of replicate studies")


if __name__ == "__main__":
    main()
