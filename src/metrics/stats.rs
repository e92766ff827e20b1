//! Small statistics helpers: percentile bootstrap intervals, AUC, seeded subsampling, stratified folds.

use rand::seq::SliceRandom;
use rand::Rng;

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

/// Percentile bootstrap CI of a statistic of n items, resampling items with replacement.
pub fn bootstrap_ci<R: Rng>(
    n: usize,
    b: usize,
    rng: &mut R,
    stat: impl Fn(&[usize]) -> f64,
) -> Option<(f64, f64)> {
    if n == 0 || b == 0 {
        return None;
    }
    let mut idx = vec![0usize; n];
    let reps = (0..b)
        .map(|_| {
            for v in idx.iter_mut() {
                *v = rng.gen_range(0..n);
            }
            stat(&idx)
        })
        .collect();
    ci95(reps)
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

#[cfg(test)]
mod tests {
    use super::*;

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
