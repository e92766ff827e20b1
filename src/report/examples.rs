//! A few example images for the page, as embedded thumbnails: the first images of each class on each side
//! (the side's image folder, when `analyze` extracted it), and the target images nearest to and farthest
//! from the source at the layer the plan acts on (Euclidean distance of each target embedding to the mean
//! source embedding there). Kept in `examples.json`, so that `domsim report` redraws the page without the
//! images. An image that cannot be read is left out, never an error.

use std::path::Path;

use ndarray::Axis;

use crate::compare::Side;
use crate::embeddings::EmbeddingSet;
use crate::error::Result;

/// Images per class and side.
pub const PER_CLASS: usize = 3;
/// Target images at each end of the distance to the source.
pub const EXTREMES: usize = 4;
/// Thumbnail side, pixels.
pub const THUMB: u32 = 112;

/// One example image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    /// Which set it comes from.
    pub set: Side,
    /// Why it is shown: `class NORMAL`, `nearest to the source (depth 8)`, …
    pub role: String,
    /// The image, relative to the side's image folder.
    pub file: String,
    /// Distance to the mean source embedding, for the nearest/farthest examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<f64>,
    /// The thumbnail: a `data:image/jpeg;base64,…` URI.
    pub thumbnail: String,
}

/// A JPEG thumbnail (at most [`THUMB`] px a side) as a data URI; `None` when the file cannot be decoded.
pub fn thumbnail(path: &Path) -> Option<String> {
    let mut reader = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader.decode().ok()?.thumbnail(THUMB, THUMB).to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&img)
        .ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        super::html::base64(&jpeg)
    ))
}

/// Rows to show per class (the first [`PER_CLASS`] in file order), or the first rows when unlabelled.
fn first_of_each_class(set: &EmbeddingSet) -> Vec<(usize, String)> {
    let n = set.paths.as_ref().map_or(0, Vec::len);
    match &set.labels {
        Some(labels) => {
            let mut classes: Vec<&String> = labels.iter().collect();
            classes.sort();
            classes.dedup();
            classes
                .into_iter()
                .flat_map(|c| {
                    (0..n)
                        .filter(move |&i| &labels[i] == c)
                        .take(PER_CLASS)
                        .map(move |i| (i, format!("class {c}")))
                })
                .collect()
        }
        None => (0..n.min(PER_CLASS))
            .map(|i| (i, "first images".into()))
            .collect(),
    }
}

/// The examples of both sides. `images` holds each side's image folder when it has one (the bundled
/// reference has none); `at` is the layer the plan acts on (depth, name).
pub fn pick(
    src: &EmbeddingSet,
    tgt: &EmbeddingSet,
    images: [Option<&Path>; 2],
    at: Option<(usize, &str)>,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    let mut add = |set: Side, dir: &Path, paths: &[String], row: usize, role: String, d| {
        let Some(file) = paths.get(row) else { return };
        if let Some(t) = thumbnail(&dir.join(file)) {
            out.push(Example {
                set,
                role,
                file: file.clone(),
                distance: d,
                thumbnail: t,
            });
        }
    };
    for (side, set, dir) in [
        (Side::Source, src, images[0]),
        (Side::Target, tgt, images[1]),
    ] {
        let (Some(dir), Some(paths)) = (dir, set.paths.as_ref()) else {
            continue;
        };
        for (row, role) in first_of_each_class(set) {
            add(side, dir, paths, row, role, None);
        }
    }
    let (Some((d, name)), Some(dir), Some(paths)) = (at, images[1], tgt.paths.as_ref()) else {
        return Ok(out);
    };
    let index = |set: &EmbeddingSet| set.layers.iter().position(|l| l.name == name);
    let (Some(si), Some(ti)) = (index(src), index(tgt)) else {
        return Ok(out);
    };
    let (xs, xt) = (src.read_layer(si)?, tgt.read_layer(ti)?);
    if crate::compare::non_finite(&xs) + crate::compare::non_finite(&xt) > 0 || xs.nrows() == 0 {
        return Ok(out); // never computed on; compare reports the layer
    }
    let mean = xs.mean_axis(Axis(0)).expect("rows");
    let mut dist: Vec<(usize, f64)> = xt
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i, (&r - &mean).mapv(|v| v * v).sum().sqrt()))
        .collect();
    dist.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let k = EXTREMES.min(dist.len() / 2);
    let ends = dist[..k].iter().map(|&(i, v)| (i, v, "nearest to")).chain(
        dist[dist.len() - k..]
            .iter()
            .rev()
            .map(|&(i, v)| (i, v, "farthest from")),
    );
    for (row, v, which) in ends {
        let role = format!("{which} the source (depth {d})");
        add(Side::Target, dir, paths, row, role, Some(v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbnail_is_a_small_jpeg_and_a_bad_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        image::RgbImage::from_pixel(400, 200, image::Rgb([200, 10, 10]))
            .save(&p)
            .unwrap();
        let uri = thumbnail(&p).unwrap();
        let b64 = uri.strip_prefix("data:image/jpeg;base64,").unwrap();
        assert!(b64.len() < 8000, "{}", b64.len());
        std::fs::write(dir.path().join("bad.jpg"), b"not an image").unwrap();
        assert!(thumbnail(&dir.path().join("bad.jpg")).is_none());
        assert!(thumbnail(&dir.path().join("missing.jpg")).is_none());
    }
}
