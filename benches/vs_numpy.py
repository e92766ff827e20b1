"""domsim's metric kernels against the numpy code users write, on the same data, in the same run.

Run from the repository root (after scripts/pyenv.sh):
    .venv/bin/python benches/vs_numpy.py [--n 5000] [--d 512] [--threads 2]
Prints seconds (best of 3; the numpy permutation loop, which takes minutes, once) and the ratio numpy/domsim (> 1 means domsim is faster), and checks that both
compute the same numbers. numpy's own BLAS threads are set to --threads too.
"""
import argparse, json, os, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=5000)
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()
for k in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MATMUL_NUM_THREADS", "RAYON_NUM_THREADS"]:
    os.environ[k] = str(a.threads)
import numpy as np  # noqa: E402  (after the thread settings)


def best(f, reps=None):
    ts = []
    for _ in range(reps or a.reps):
        t = time.perf_counter()
        v = f()
        ts.append(time.perf_counter() - t)
    return min(ts), v


def linear_cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def frechet(x, y):
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(cx)
    s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s @ cy @ s
    return float(((mx - my) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def mmd_loop(x, y, sigma, perms=200):
    """The straightforward version users write: one kernel matrix, then a loop over permutations."""
    z = np.vstack([x, y])
    sq = (z * z).sum(1)
    k = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0) / (2 * sigma ** 2))
    m = len(x)

    def stat(idx):
        a, b = idx[:m], idx[m:]
        kxx, kyy, kxy = k[np.ix_(a, a)], k[np.ix_(b, b)], k[np.ix_(a, b)]
        return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (len(b) * (len(b) - 1)) - 2 * kxy.mean())

    rng = np.random.default_rng(0)
    obs = stat(np.arange(len(z)))
    cnt = sum(stat(rng.permutation(len(z))) >= obs for _ in range(perms))
    return obs, (1 + cnt) / (1 + perms)


rng = np.random.default_rng(0)
x = rng.standard_normal((a.n, a.d))
y = rng.standard_normal((a.n, a.d)) + 0.1
sigma = float(np.sqrt(2 * a.d))
with tempfile.TemporaryDirectory() as tmp:
    np.save(os.path.join(tmp, "x.npy"), x)
    np.save(os.path.join(tmp, "y.npy"), y)
    open(os.path.join(tmp, "sigma.txt"), "w").write(repr(sigma))
    out = subprocess.run(["cargo", "run", "--quiet", "--release", "--example", "time_kernels", "--", tmp, str(a.reps)],
                         check=True, capture_output=True, text=True).stdout
rs = json.loads(out)
t_cka, v_cka = best(lambda: linear_cka(x, y))
t_fd, v_fd = best(lambda: frechet(x, y))
t_mmd, (v_mmd, _) = best(lambda: mmd_loop(x, y, sigma), reps=1)  # minutes: timed once
print(f"n = {a.n} per set, d = {a.d}, {a.threads} threads, best of {a.reps}; numpy {np.__version__}")
print(f"{'kernel':<28}{'numpy s':>10}{'domsim s':>10}{'numpy/domsim':>14}")
for name, tn, key in [("linear CKA", t_cka, "linear_cka"), ("Frechet distance", t_fd, "frechet"),
                      ("MMD2 + 200 permutations", t_mmd, "mmd2_200perm")]:
    print(f"{name:<28}{tn:>10.3f}{rs[key]:>10.3f}{tn / rs[key]:>14.2f}")
vals = rs["values"]
print(f"agreement: CKA {abs(vals['linear_cka'] - v_cka):.1e}, Frechet {abs(vals['frechet'] - v_fd):.1e}, MMD2 {abs(vals['mmd2'] - v_mmd):.1e}")
sys.exit(0)
