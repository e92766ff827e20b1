//! Pooling a layer's activation into one vector per image.
//!
//! - 4-D: global pooling over the spatial axes of the tensor's own layout (NCHW: axes 2, 3; NHWC: axes 1, 2).
//! - 3-D `(N, T, C)`: pooling over the tokens T.
//! - 2-D: as is. 1-D `(N,)`: one feature.
//! - Higher ranks (NCDHW): pooling over every axis after the channel axis 1.
//!
//! Averages are accumulated in f64 and stored as f32.

use super::{InputContract, Layer, Layout, RawOutput};
use crate::error::{Error, Result};

/// How spatial or token axes are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Global average.
    Avg,
    /// Global maximum.
    Max,
    /// Average and maximum, concatenated (dimension 2C).
    AvgMax,
}

impl Pool {
    /// Parses `avg`, `max` or `avgmax`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "avg" => Some(Pool::Avg),
            "max" => Some(Pool::Max),
            "avgmax" => Some(Pool::AvgMax),
            _ => None,
        }
    }
}

/// How token tensors ((N, T, D) or, tokens first, (T, N, D)) become one vector per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokens {
    /// The first token (a vision transformer's class token, which its classifier reads).
    Cls,
    /// The mean over every token (the class token included).
    Mean,
}

impl Tokens {
    /// Parses `cls` or `mean`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cls" => Some(Tokens::Cls),
            "mean" => Some(Tokens::Mean),
            _ => None,
        }
    }

    /// In words, for the terminal, the page and the manifest.
    pub fn describe(self) -> &'static str {
        match self {
            Tokens::Cls => "the first (class) token",
            Tokens::Mean => "the mean over all tokens, the class token included",
        }
    }
}

/// Moves axis `axis` of a raw output to the front (tokens-first (T, N, D) becomes (N, T, D)).
pub fn batch_first(out: RawOutput, axis: usize) -> RawOutput {
    if axis == 0 || out.pooled || axis >= out.shape.len() {
        return out;
    }
    let s = &out.shape;
    let outer: usize = s[..axis].iter().product();
    let n = s[axis];
    let inner: usize = s[axis + 1..].iter().product();
    let mut data = Vec::with_capacity(out.data.len());
    for b in 0..n {
        for o in 0..outer {
            let start = (o * n + b) * inner;
            data.extend_from_slice(&out.data[start..start + inner]);
        }
    }
    let mut shape = vec![n];
    shape.extend(&s[..axis]);
    shape.extend(&s[axis + 1..]);
    RawOutput {
        shape,
        data,
        pooled: false,
    }
}

/// How a layer's raw tensor maps to (batch, positions, channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorLayout {
    /// (N, C): nothing to pool.
    Flat,
    /// (N, C, ...): channels on axis 1, pooled over the rest.
    ChannelsFirst,
    /// (N, ..., C): channels last, pooled over the middle axes (NHWC maps, and (N, T, C) tokens).
    ChannelsLast,
    /// (N, T, C) tokens: the first token's C values (`--tokens cls`).
    FirstToken,
}

/// Ops whose outputs are NCHW by the ONNX specification.
const NCHW_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "InstanceNormalization",
    "LRN",
];

/// True for the ops whose outputs are channels-first maps by the ONNX specification.
pub fn is_nchw_op(op: &str) -> bool {
    NCHW_OPS.contains(&op)
}

/// Decides the layout of a layer's tensor from its op type, its shape and the model's input contract:
/// rank ≤ 2 is flat; rank 3 is tokens (N, T, C); rank 4 is NCHW for conv-family ops (ONNX mandates it),
/// otherwise the axis pair equal to the input's aspect decides, otherwise the model input's layout.
pub fn tensor_layout(op_type: &str, shape: &[usize], input: &InputContract) -> TensorLayout {
    match shape.len() {
        0..=2 => TensorLayout::Flat,
        3 => TensorLayout::ChannelsLast,
        4 => {
            if NCHW_OPS.contains(&op_type) {
                return TensorLayout::ChannelsFirst;
            }
            let square_in = input.height == input.width;
            let first = shape[2] == shape[3] && shape[1] != shape[2];
            let last = shape[1] == shape[2] && shape[3] != shape[1];
            match (square_in, first, last) {
                (true, true, false) => TensorLayout::ChannelsFirst,
                (true, false, true) => TensorLayout::ChannelsLast,
                _ => match input.layout {
                    Layout::Nchw => TensorLayout::ChannelsFirst,
                    Layout::Nhwc => TensorLayout::ChannelsLast,
                },
            }
        }
        _ => TensorLayout::ChannelsFirst,
    }
}

/// The per-image shape of a layer that can be pooled inside the model graph, or `None`: it must be a map
/// of rank 4 or more whose non-batch dimensions are all known before running, and whose layout
/// ([`tensor_layout`]) is channels-first (channels on axis 1, pooled over every later axis). Then ONNX
/// Runtime returns much less than the whole map (see [`average_row_means`]).
pub fn in_graph_shape(layer: &Layer, input: &InputContract) -> Option<Vec<usize>> {
    let s = &layer.shape;
    if layer.batch_axis != 0 || s.len() < 4 || s[1..].iter().any(|&d| d <= 0) {
        return None;
    }
    let shape: Vec<usize> = std::iter::once(1)
        .chain(s[1..].iter().map(|&d| d as usize))
        .collect();
    (tensor_layout(&layer.op_type, &shape, input) == TensorLayout::ChannelsFirst)
        .then(|| shape[1..].to_vec())
}

/// The global averages of `n` channels-first maps of per-image shape `dims` = (C, ..., W), from their means
/// along the last axis (`means`: n × C × (positions / W), float32 means of W values each): the rest is
/// averaged in float64, as [`pool`] does. Returns n × C values.
pub fn average_row_means(means: &[f32], n: usize, dims: &[usize]) -> Vec<f32> {
    let c = dims[0];
    let positions: usize = dims[1..].iter().product();
    let rows = (positions / dims[dims.len() - 1].max(1)).max(1);
    means
        .chunks_exact(rows)
        .take(n * c)
        .map(|plane| (plane.iter().map(|&v| v as f64).sum::<f64>() / rows as f64) as f32)
        .collect()
}

/// Pools a batch; returns (dimension, rows as n × dimension, C-order). An output the backend pooled
/// already (`out.pooled`) is returned as it is.
pub fn pool(
    out: &RawOutput,
    layout: TensorLayout,
    mode: Pool,
    layer: &str,
) -> Result<(usize, Vec<f32>)> {
    let s = &out.shape;
    if s.is_empty() {
        return Err(Error::Analysis(format!(
            "layer '{layer}' is a scalar; it has no batch axis and cannot be embedded"
        )));
    }
    let n = s[0];
    let per = out.data.len().checked_div(n).unwrap_or(0);
    if out.pooled {
        return Ok((per, out.data.clone()));
    }
    if layout == TensorLayout::FirstToken {
        let c = s[s.len() - 1];
        let mut rows = Vec::with_capacity(n * c);
        for i in 0..n {
            rows.extend_from_slice(&out.data[i * per..i * per + c.min(per)]);
        }
        return Ok((c, rows));
    }
    let (c, positions) = match layout {
        TensorLayout::FirstToken => unreachable!("returned above"),
        TensorLayout::Flat => (per, 1),
        TensorLayout::ChannelsFirst => (s[1], per / s[1].max(1)),
        TensorLayout::ChannelsLast => (s[s.len() - 1], per / s[s.len() - 1].max(1)),
    };
    let dim = if mode == Pool::AvgMax { 2 * c } else { c };
    let mut rows = vec![0f32; n * dim];
    if c == 0 || positions == 0 {
        return Ok((dim, rows));
    }
    for i in 0..n {
        let x = &out.data[i * per..(i + 1) * per];
        let mut sum = vec![0f64; c];
        let mut max = vec![f32::NEG_INFINITY; c];
        let mut add = |k: usize, v: f32| {
            sum[k] += v as f64;
            if v > max[k] {
                max[k] = v;
            }
        };
        // walk memory in order: channel by channel for channels-first, position by position otherwise
        match layout {
            TensorLayout::ChannelsFirst => {
                for (k, plane) in x.chunks_exact(positions).enumerate() {
                    plane.iter().for_each(|&v| add(k, v));
                }
            }
            _ => {
                for pix in x.chunks_exact(c) {
                    pix.iter().enumerate().for_each(|(k, &v)| add(k, v));
                }
            }
        }
        let row = &mut rows[i * dim..(i + 1) * dim];
        for k in 0..c {
            let avg = (sum[k] / positions as f64) as f32;
            match mode {
                Pool::Avg => row[k] = avg,
                Pool::Max => row[k] = max[k],
                Pool::AvgMax => {
                    row[k] = avg;
                    row[c + k] = max[k];
                }
            }
        }
    }
    Ok((dim, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_and_nhwc_pool_to_the_same_vector() {
        // 1 image, C = 2, H = W = 2: channel 0 = 1..4, channel 1 = 10..40.
        let nchw = RawOutput {
            shape: vec![1, 2, 2, 2],
            data: vec![1., 2., 3., 4., 10., 20., 30., 40.],
            pooled: false,
        };
        let nhwc = RawOutput {
            shape: vec![1, 2, 2, 2],
            data: vec![1., 10., 2., 20., 3., 30., 4., 40.],
            pooled: false,
        };
        let a = pool(&nchw, TensorLayout::ChannelsFirst, Pool::AvgMax, "x").unwrap();
        let b = pool(&nhwc, TensorLayout::ChannelsLast, Pool::AvgMax, "x").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.1, vec![2.5, 25., 4., 40.]);
    }

    #[test]
    fn tokens_first_is_moved_and_the_class_token_taken() {
        // (T = 2, N = 2, D = 3): token t of image b is [10t + b, 10t + b + 0.5, 10t + b + 0.25]
        let mut data = Vec::new();
        for t in 0..2 {
            for b in 0..2 {
                let v = (10 * t + b) as f32;
                data.extend([v, v + 0.5, v + 0.25]);
            }
        }
        let raw = RawOutput {
            shape: vec![2, 2, 3],
            data,
            pooled: false,
        };
        let moved = batch_first(raw, 1);
        assert_eq!(moved.shape, vec![2, 2, 3]);
        let (d, rows) = pool(&moved, TensorLayout::FirstToken, Pool::Avg, "t").unwrap();
        assert_eq!(d, 3);
        assert_eq!(rows, vec![0., 0.5, 0.25, 1., 1.5, 1.25]);
        let (_, mean) = pool(&moved, TensorLayout::ChannelsLast, Pool::Avg, "t").unwrap();
        assert_eq!(mean, vec![5., 5.5, 5.25, 6., 6.5, 6.25]);
    }

    #[test]
    fn tokens_are_averaged() {
        let t = RawOutput {
            shape: vec![1, 3, 2],
            data: vec![1., 2., 3., 4., 5., 6.],
            pooled: false,
        };
        assert_eq!(
            pool(&t, TensorLayout::ChannelsLast, Pool::Avg, "t").unwrap(),
            (2, vec![3., 4.])
        );
    }
}
