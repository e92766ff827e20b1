//! Small statistics helpers: percentile bootstrap intervals, AUC, seeded subsampling, stratified folds,
//! repeated cross-validation intervals corrected for overlapping training sets (Nadeau & Bengio 2003,
//! "Inference for the generalization error"; Bouckaert & Frank 2004, the corrected repeated k-fold t-test),
//! Student-t quantiles, and Holm's step-down adjustment (Holm 1979).

use rand::seq::SliceRandom;
use rand::Rng;

/// Family-wise significance level of the MMD² tests (Holm-adjusted across layers): the verdict's level, and
/// what `compare` checks the number of permutations against. It lives here, below both.
pub const ALPHA: f64 = 0.01;

/// Percentile (linear interpolation, like numpy's default) of sorted data, q in [0, 1].
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The 2.5 % and 97.5 % percentiles of replicate values (non-finite replicates are dropped).
pub fn ci95(mut reps: Vec<f64>) -> Option<(f64, f64)> {
    reps.retain(|v| v.is_finite());
    if reps.len() < 2 {
        return None;
    }
    reps.sort_unstable_by(|a, b| a.total_cmp(b));
    Some((
        percentile_sorted(&reps, 0.025),
        percentile_sorted(&reps, 0.975),
    ))
}

/// Area under the ROC curve of `scores` for `positive` labels (Mann–Whitney, ties averaged).
pub fn auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = r;
        }
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let sum_pos: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, &p)| p)
        .map(|(r, _)| r)
        .sum();
    (sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// A sorted seeded subsample of `k` of `n` indices (all of them when k ≥ n).
pub fn subsample<R: Rng>(n: usize, k: usize, rng: &mut R) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    let mut v = rand::seq::index::sample(rng, n, k).into_vec();
    v.sort_unstable();
    v
}

/// Stratified k-fold assignment: each class's items are shuffled, then dealt to folds in turn.
pub fn stratified_folds<R: Rng>(labels: &[usize], k: usize, rng: &mut R) -> Vec<usize> {
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut fold = vec![0usize; labels.len()];
    let mut offset = 0;
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        idx.shuffle(rng);
        for (pos, &i) in idx.iter().enumerate() {
            fold[i] = (pos + offset) % k;
        }
        offset += idx.len();
    }
    fold
}

/// Stratified k-fold that keeps each group within one fold: groups (labelled by their first row's class)
/// are shuffled, then each goes, largest first within its class, to the fold holding the fewest rows of
/// that class so far. With every row its own group this is a stratified k-fold.
pub fn group_stratified_folds<R: Rng>(
    labels: &[usize],
    groups: &[usize],
    k: usize,
    rng: &mut R,
) -> Vec<usize> {
    let mut members: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let mut list: Vec<Vec<usize>> = members.into_values().collect();
    list.shuffle(rng);
    list.sort_by_key(|m| (labels[m[0]], std::cmp::Reverse(m.len())));
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut load = vec![vec![0usize; k]; n_classes];
    let mut fold = vec![0usize; labels.len()];
    for m in list {
        let c = labels[m[0]];
        let f = (0..k).min_by_key(|&f| (load[c][f], f)).unwrap_or(0);
        load[c][f] += m.len();
        for i in m {
            fold[i] = f;
        }
    }
    fold
}

/// Repeated stratified k-fold: `repeats` independent fold assignments (each one [`stratified_folds`]).
pub fn repeated_folds<R: Rng>(
    labels: &[usize],
    k: usize,
    repeats: usize,
    rng: &mut R,
) -> Vec<Vec<usize>> {
    (0..repeats.max(1))
        .map(|_| stratified_folds(labels, k, rng))
        .collect()
}

/// Mean and 95 % interval of per-fold scores from `r` repeats of `k`-fold cross-validation, with the
/// Nadeau–Bengio variance correction `(1/(r·k) + n_test/n_train) · s²` and a t quantile on `r·k − 1` degrees
/// of freedom (Bouckaert & Frank 2004). The plain `s²/(r·k)` ignores that the training sets overlap and
/// under-covers; the correction includes the refitting variance. For paired comparisons pass the per-fold
/// differences of two scores computed on the same folds.
pub fn corrected_cv_ci(scores: &[f64], k: usize) -> Option<(f64, (f64, f64))> {
    corrected_cv_ci_floor(scores, k, 0.0)
}

/// Sample variance (n − 1) of finite values; `None` under 2 values.
pub fn sample_variance(v: &[f64]) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    Some(v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64)
}

/// [`corrected_cv_ci`] with the variance floored at `var_floor`: never narrower than the plain interval.
pub fn corrected_cv_ci_floor(
    scores: &[f64],
    k: usize,
    var_floor: f64,
) -> Option<(f64, (f64, f64))> {
    let n = scores.len();
    if n < 2 || k < 2 || scores.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mean = scores.iter().sum::<f64>() / n as f64;
    let var = sample_variance(scores)?.max(var_floor);
    let ratio = 1.0 / (k - 1) as f64; // n_test / n_train for k folds
    let se = ((1.0 / n as f64 + ratio) * var).sqrt();
    let t = student_t_quantile(0.975, (n - 1) as f64);
    Some((mean, (mean - t * se, mean + t * se)))
}

/// The floor on the fold scores' sample variance under [`corrected_cv_ci_floor`] for a proportion (accuracy,
/// balanced accuracy) that keeps the interval at least as wide as the binomial one of the pooled score:
/// standard error² ≥ `p(1 − p)/n` for the `n` rows each repeat scores, with `p` the Jeffreys-adjusted
/// proportion `(n·mean + 1/2)/(n + 1)` (Brown, Cai & DasGupta 2001). `scores` fold scores from `k`-fold
/// cross-validation enter the corrected interval as `(1/scores + 1/(k − 1))·s²`, so the floor on `s²` is
/// `p(1 − p)/n` divided by that factor. Folds that all score 1.0 have `s² = 0`, and without the floor the
/// interval is [1, 1] at any size: 40 rows a probe gets right in every fold would carry the certainty of 4000.
/// Where the folds vary by chance the corrected interval is already wider, and the floor does not bind. The
/// adjustment was chosen by simulation (`tests/metrics.rs`): at 20 + 20 rows and a true accuracy of 0.94 the
/// interval covers in 280 of 300 draws (93 %; Agresti–Coull's `(n·mean + 2)/(n + 4)` covered in 300 of 300,
/// over-wide; no floor, 279, 13 of them of zero width), and under the null in 379 of 400.
pub fn proportion_variance_floor(mean: f64, n: usize, k: usize, scores: usize) -> f64 {
    if n == 0 || k < 2 || scores == 0 || !mean.is_finite() {
        return 0.0;
    }
    let n = n as f64;
    let p = (n * mean.clamp(0.0, 1.0) + 0.5) / (n + 1.0);
    p * (1.0 - p) / n / (1.0 / scores as f64 + 1.0 / (k - 1) as f64)
}

/// Regularised incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes §6.4).
fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let cf = |x: f64, a: f64, b: f64| {
        let tiny = 1e-300;
        let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
        let mut c = 1.0;
        let mut d = 1.0 - qab * x / qap;
        if d.abs() < tiny {
            d = tiny;
        }
        d = 1.0 / d;
        let mut h = d;
        for m in 1..300 {
            let m = m as f64;
            let m2 = 2.0 * m;
            let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
            d = 1.0 + aa * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = 1.0 + aa / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            h *= d * c;
            let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
            d = 1.0 + aa * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = 1.0 + aa / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        h
    };
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * cf(1.0 - x, b, a) / b
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let s = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// CDF of Student's t with `df` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * inc_beta(x, df / 2.0, 0.5);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Quantile `q` (0 < q < 1) of Student's t with `df` degrees of freedom (bisection on the CDF, 1e-12).
pub fn student_t_quantile(q: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (-1e3, 1e3);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < q {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Holm's step-down adjusted p-values (same order as the input; `None` stays `None`).
pub fn holm(p: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_some()).collect();
    idx.sort_by(|&a, &b| p[a].unwrap().total_cmp(&p[b].unwrap()).then(a.cmp(&b)));
    let m = idx.len();
    let mut out = vec![None; p.len()];
    let mut running = 0.0f64;
    for (rank, &i) in idx.iter().enumerate() {
        let adj = ((m - rank) as f64 * p[i].unwrap()).min(1.0);
        running = running.max(adj);
        out[i] = Some(running);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_never_straddle_folds_and_classes_stay_balanced() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i >= 50)).collect();
        // rows 0..12 are one near-duplicate group, 50..55 another, the rest singletons
        let groups: Vec<usize> = (0..100)
            .map(|i| {
                if i < 12 {
                    1000
                } else if (50..55).contains(&i) {
                    2000
                } else {
                    i
                }
            })
            .collect();
        let f = group_stratified_folds(&labels, &groups, 5, &mut rng);
        assert!((0..12).all(|i| f[i] == f[0]));
        assert!((50..55).all(|i| f[i] == f[50]));
        for c in 0..2 {
            let per: Vec<usize> = (0..5)
                .map(|k| (0..100).filter(|&i| labels[i] == c && f[i] == k).count())
                .collect();
            assert!(per.iter().all(|&n| (8..=12).contains(&n)), "{per:?}");
        }
    }

    #[test]
    fn t_quantiles_match_tables() {
        // scipy.stats.t.ppf(0.975, df) for df = 1, 2, 4, 9, 14, 30, 1e6
        for (df, want) in [
            (1.0, 12.706204736174707),
            (2.0, 4.302652729749464),
            (4.0, 2.7764451051977934),
            (9.0, 2.2621571628540993),
            (14.0, 2.1447866879169273),
            (30.0, 2.0422724563012373),
            (1e6, 1.959966432),
        ] {
            let got = student_t_quantile(0.975, df);
            assert!((got - want).abs() < 1e-6, "df {df}: {got} vs {want}");
        }
        assert!((student_t_cdf(0.0, 5.0) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn holm_matches_the_definition() {
        // statsmodels multipletests([0.01, 0.04, 0.03, 0.005], method="holm") = [0.03, 0.06, 0.06, 0.02]
        let got = holm(&[Some(0.01), Some(0.04), Some(0.03), None, Some(0.005)]);
        let want = [Some(0.03), Some(0.06), Some(0.06), None, Some(0.02)];
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.is_some(), w.is_some());
            if let (Some(g), Some(w)) = (g, w) {
                assert!((g - w).abs() < 1e-12, "{got:?}");
            }
        }
    }

    #[test]
    fn corrected_interval_is_wider_than_naive() {
        let s = [0.80, 0.82, 0.78, 0.81, 0.79, 0.83, 0.80, 0.77, 0.82, 0.80];
        let (m, (lo, hi)) = corrected_cv_ci(&s, 5).unwrap();
        assert!((m - 0.802).abs() < 1e-12);
        let sd = (s.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 9.0).sqrt();
        let naive = student_t_quantile(0.975, 9.0) * sd / 10f64.sqrt();
        assert!(hi - m > 1.5 * naive && (hi - m - (m - lo)).abs() < 1e-12);
        assert!(corrected_cv_ci(&[0.5], 5).is_none());
    }

    #[test]
    fn identical_folds_get_the_binomial_floor_not_a_zero_width_interval() {
        // 3 repeats x 5 folds of 20 + 20 rows (10 labelled images per class), every fold right: the sample
        // variance is 0. The floor keeps the standard error at the binomial one of 40 rows:
        // p = (40 + 1/2) / (40 + 1), se = sqrt(p (1 - p) / 40) = 0.017 354; half width t(0.975, 14) * se = 0.037 221
        let folds = [1.0; 15];
        assert_eq!(corrected_cv_ci(&folds, 5).unwrap().1, (1.0, 1.0));
        let floor = proportion_variance_floor(1.0, 40, 5, 15);
        let p = 40.5 / 41.0;
        assert!((floor * (1.0 / 15.0 + 0.25) - p * (1.0 - p) / 40.0).abs() < 1e-15);
        let (m, (lo, _)) = corrected_cv_ci_floor(&folds, 5, floor).unwrap();
        assert_eq!(m, 1.0);
        assert!((lo - 0.962_779).abs() < 1e-5, "{lo}");
        // 50 + 50 rows: [0.985, 1]; 200 + 200: [0.996, 1]
        let lo = |n: usize| {
            let f = proportion_variance_floor(1.0, n, 5, 15);
            corrected_cv_ci_floor(&folds, 5, f).unwrap().1 .0
        };
        assert!((lo(100) - 0.984_947).abs() < 1e-5 && (lo(400) - 0.996_216).abs() < 1e-5);
        // folds that vary by chance (two sets a probe cannot tell apart, 40 rows): the floor does not bind
        let s = [0.5, 0.25, 0.75, 0.5, 0.375, 0.625, 0.5, 0.625, 0.375, 0.5];
        let f = proportion_variance_floor(0.5, 40, 5, 10);
        assert!(f < sample_variance(&s).unwrap());
        assert_eq!(corrected_cv_ci(&s, 5), corrected_cv_ci_floor(&s, 5, f));
        assert_eq!(proportion_variance_floor(f64::NAN, 40, 5, 15), 0.0);
    }

    #[test]
    fn auc_known_values() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]), 0.5);
    }

    #[test]
    fn percentiles_like_numpy() {
        // numpy.percentile([1,2,3,4], [2.5, 97.5]) = [1.075, 3.925]
        let (lo, hi) = ci95(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert!((lo - 1.075).abs() < 1e-12 && (hi - 3.925).abs() < 1e-12);
    }
}
