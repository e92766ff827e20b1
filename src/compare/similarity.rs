//! Layer × layer CKA within one set (`similarity.csv`).

use ndarray::{Array2, Axis};

use super::{progress, CompareOptions, Side, Similarity, SimilarityValue};
use crate::embeddings::EmbeddingSet;
use crate::error::Result;
use crate::metrics::cka::{centred_rbf_gram, gram_cka, linear_cka_pair, LinearRep};
use crate::metrics::stats::subsample;
use crate::metrics::{Ctx, Params};

/// Layer × layer CKA (linear, debiased linear, RBF) within one set.
pub fn within_set(
    side: Side,
    set: &EmbeddingSet,
    layer_idx: &[usize],
    params: &Params,
    show: bool,
) -> Result<Vec<SimilarityValue>> {
    let bar = progress(show, layer_idx.len() as u64, &format!("CKA within {side}"));
    let mut raws = Vec::new();
    let mut grams = Vec::new();
    let mut sub: Option<Vec<usize>> = None;
    for &i in layer_idx {
        let x: Array2<f64> = set.read_layer(i)?;
        let idx = sub.get_or_insert_with(|| {
            let ctx = Ctx { params, depth: 0 };
            let mut rng = ctx.rng(&format!("within_set_{side}"));
            subsample(x.nrows(), params.cka_rbf_max_n, &mut rng)
        });
        grams.push(centred_rbf_gram(&x.select(Axis(0), idx), params.cka_rbf_t));
        raws.push(x);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let reps: Vec<LinearRep> = raws.iter().map(LinearRep::new).collect();
    let names: Vec<&str> = layer_idx
        .iter()
        .map(|&i| set.layers[i].name.as_str())
        .collect();
    let l = names.len();
    let mut lin = vec![vec![0.0; l]; l];
    let mut deb = vec![vec![0.0; l]; l];
    let mut rbf = vec![vec![0.0; l]; l];
    for a in 0..l {
        for b in a..l {
            (lin[a][b], deb[a][b]) = linear_cka_pair(&reps[a], &reps[b]);
            rbf[a][b] = gram_cka(&grams[a], &grams[b]);
            lin[b][a] = lin[a][b];
            deb[b][a] = deb[a][b];
            rbf[b][a] = rbf[a][b];
        }
    }
    let mut out = Vec::new();
    for (measure, m) in [
        (Similarity::CkaLinear, &lin),
        (Similarity::CkaLinearDebiased, &deb),
        (Similarity::CkaRbf, &rbf),
    ] {
        for a in 0..l {
            for b in 0..l {
                out.push(SimilarityValue {
                    set: side,
                    layer_a: names[a].into(),
                    layer_b: names[b].into(),
                    measure,
                    value: m[a][b],
                });
            }
        }
    }
    Ok(out)
}

/// The layer × layer CKA of the source and of the target, over the measured layers (`kept`: source and
/// target indices); `n_rows` (the rows per set) decides the subsampling note.
pub(super) fn both_sets(
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    kept: &[(usize, usize)],
    n_rows: (usize, usize),
    cfg: &CompareOptions,
    notes: &mut Vec<String>,
) -> Result<Vec<SimilarityValue>> {
    let mut out = Vec::new();
    let (ks, kt): (Vec<usize>, Vec<usize>) = kept.iter().copied().unzip();
    for (side, set, idx) in [(Side::Source, src, &ks), (Side::Target, tgt, &kt)] {
        out.extend(within_set(side, set, idx, &cfg.params, cfg.progress)?);
    }
    let cap = cfg.params.cka_rbf_max_n;
    if n_rows.0 > cap || n_rows.1 > cap {
        notes.push(format!(
            "cka_rbf uses a seeded subsample of at most {cap} rows per set (n x n kernels); linear CKA uses all rows"
        ));
    }
    Ok(out)
}
