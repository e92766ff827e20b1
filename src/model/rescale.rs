//! Bringing a network with permuted weights back to the pretrained network's activation scale.
//!
//! Permuting each weight tensor keeps its distribution but not the cancellations training put into it: on
//! the bundled EfficientNet-Lite0 the weight layers' outputs grow to a median 3.8× (up to 20×) the
//! pretrained network's, and 15 % of the ReLU6 outputs sit at the clip, against 0.3 % pretrained. A probe
//! on such features measures saturation as much as the lack of training.
//!
//! [`match_scale`] rescales each weight layer (`Conv`, `Gemm`, … : its weights and bias together, by one
//! factor) so that its output's root mean square on a few images matches the pretrained network's at the
//! same tensor. This is LSUV (Mishkin & Matas 2016, "All you need is a good init") aimed at the pretrained
//! network's scale rather than at unit variance, and done for all layers at once: each pass multiplies a
//! layer by the square root of (wanted RMS / measured RMS), a damped step, because correcting a layer also
//! corrects every layer after it (the undamped step oscillates). [`PASSES`] passes bring every layer of
//! the bundled model within about 0.8–1.5× of the pretrained scale, and the clipped share to about 1 %.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{onnx, InputBatch, OnnxModel};

/// Damped passes over all weight layers.
pub const PASSES: usize = 3;

/// Images the scales are measured on.
pub const IMAGES: usize = 8;

/// What [`match_scale`] did: the weight layers rescaled and the range of their output RMS ratios
/// (rescaled / pretrained) before and after.
#[derive(Debug, Clone)]
pub struct Rescaled {
    /// Weight layers rescaled.
    pub layers: usize,
    /// Images the scales were measured on.
    pub images: usize,
    /// Smallest and largest ratio before rescaling.
    pub before: (f64, f64),
    /// Smallest and largest ratio after.
    pub after: (f64, f64),
}

impl Rescaled {
    /// One clause for a note.
    pub fn describe(&self) -> String {
        format!(
            "each of the {} weight layers rescaled (weights and bias by one factor, {PASSES} damped passes on {} target images, LSUV-like) to the pretrained network's output RMS: the ratio permuted / pretrained was {:.2}–{:.2}× before, {:.2}–{:.2}× after",
            self.layers, self.images, self.before.0, self.before.1, self.after.0, self.after.1
        )
    }
}

fn ratio_range(have: &[f64], want: &[f64]) -> (f64, f64) {
    have.iter()
        .zip(want)
        .map(|(h, w)| h / w)
        .filter(|r| r.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r), hi.max(r))
        })
}

/// What every permuted network is rescaled towards: the pretrained network's output RMS at each weight layer
/// on one batch of images, measured once and shared by all the networks.
pub struct Calibration {
    batch: InputBatch,
    n: usize,
    names: Vec<String>,
    want: Vec<f64>,
}

impl Calibration {
    /// Measures `pretrained` (the original model bytes of `model`'s graph) on `batch` (`n` images).
    pub fn new(
        model: &OnnxModel,
        pretrained: &[u8],
        batch: InputBatch,
        n: usize,
        ort_lib: Option<&Path>,
    ) -> Result<Self> {
        let names: Vec<String> = weight_layers(model)?
            .iter()
            .map(|l| l.output.clone())
            .collect();
        let want = model.tensor_rms(pretrained, &names, batch.clone(), n, ort_lib)?;
        Ok(Calibration {
            batch,
            n,
            names,
            want,
        })
    }
}

/// The weight layers of `model`'s current bytes.
fn weight_layers(model: &OnnxModel) -> Result<Vec<onnx::WeightLayer>> {
    onnx::weight_layers(&model.bytes).ok_or_else(|| Error::Model {
        path: model.path.clone(),
        message: "cannot read its weight layers to rescale them".into(),
    })
}

/// Rescales `model`'s weights in place (its `bytes`) so that each weight layer's output RMS on the
/// calibration batch matches the pretrained network's ([`Calibration`]; see the module docs). Layers whose
/// output is zero or not finite keep their weights.
pub fn match_scale(
    model: &mut OnnxModel,
    cal: &Calibration,
    ort_lib: Option<&Path>,
) -> Result<Rescaled> {
    let layers = weight_layers(model)?;
    if layers.iter().map(|l| &l.output).ne(cal.names.iter()) {
        return Err(Error::Model {
            path: model.path.clone(),
            message: "its weight layers are not those of the calibrated network".into(),
        });
    }
    let (names, want, n) = (&cal.names, &cal.want, cal.n);
    let mut have = model.tensor_rms(&model.bytes, names, cal.batch.clone(), n, ort_lib)?;
    let before = ratio_range(&have, want);
    for _ in 0..PASSES {
        for (l, (h, w)) in layers.iter().zip(have.iter().zip(want)) {
            let f = (w / h).sqrt();
            if f.is_finite() && f > 0.0 {
                for r in &l.tensors {
                    onnx::scale_floats(&mut model.bytes, r.clone(), f as f32);
                }
            }
        }
        have = model.tensor_rms(&model.bytes, names, cal.batch.clone(), n, ort_lib)?;
    }
    Ok(Rescaled {
        layers: layers.len(),
        images: n,
        before,
        after: ratio_range(&have, want),
    })
}
