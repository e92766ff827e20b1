//! Image decoding and preprocessing: decode (with a memory limit), apply EXIF orientation, convert to the
//! model's channels (grey is replicated to RGB), resize the shorter side to the model's input size and
//! centre-crop (bilinear, antialiased, via `fast_image_resize`), normalise, and lay out as NCHW or NHWC.

use std::cell::RefCell;
use std::io::Cursor;
use std::path::Path;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::model::{ElemType, InputContract, Layout};

/// Normalisation applied to float inputs: `(pixel / 255 − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Preset name (`imagenet`, `pm1`, `unit`, `raw`) or `custom`.
    pub preset: String,
    /// Per-channel mean on the 0–1 scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation on the 0–1 scale.
    pub std: [f32; 3],
}

/// The named normalisations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// ImageNet mean/std.
    Imagenet,
    /// x/127.5 − 1 (the bundled model's own).
    Pm1,
    /// x/255.
    Unit,
    /// 0–255, unchanged.
    Raw,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 4] = [Preset::Imagenet, Preset::Pm1, Preset::Unit, Preset::Raw];

    /// The name written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Imagenet => "imagenet",
            Preset::Pm1 => "pm1",
            Preset::Unit => "unit",
            Preset::Raw => "raw",
        }
    }
}

impl Normalization {
    /// A named preset.
    pub fn preset(p: Preset) -> Self {
        let (mean, std) = match p {
            Preset::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Preset::Pm1 => ([0.5; 3], [0.5; 3]),
            Preset::Unit => ([0.0; 3], [1.0; 3]),
            Preset::Raw => ([0.0; 3], [1.0 / 255.0; 3]),
        };
        Normalization {
            preset: p.name().to_string(),
            mean,
            std,
        }
    }

    /// A custom mean and std per channel (0–1 scale), checked ([`Normalization::validate`]).
    pub fn custom(mean: [f32; 3], std: [f32; 3]) -> crate::error::Result<Self> {
        let n = Normalization {
            preset: "custom".into(),
            mean,
            std,
        };
        n.validate()?;
        Ok(n)
    }

    /// Finite means, and finite standard deviations of at least 1e-6 (a smaller one makes every pixel
    /// non-finite).
    pub fn validate(&self) -> crate::error::Result<()> {
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(crate::error::Error::Input(format!(
                "--mean values must be finite numbers (got {:?})",
                self.mean
            )));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s < 1e-6) {
            return Err(crate::error::Error::Input(format!(
                "--std values must be finite and at least 1e-6 (got {:?}): a smaller std makes every pixel non-finite",
                self.std
            )));
        }
        Ok(())
    }
}

/// A controlled change applied to every image right after decoding, before the usual resize: how domsim
/// makes the *controls* of a source (the source as it would look greyscale, or at the target's resolution),
/// to measure how much of a gap colour or resolution explains ([`crate::controls`]). The default changes
/// nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transform {
    /// Convert to grey (luma, the `image` crate's Rec. 709 weights), then replicate it to the model's channels.
    #[serde(default)]
    pub grey: bool,
    /// Downsample so that the shorter side is this many pixels (bilinear, antialiased, aspect kept), when it
    /// is longer; the usual resize then scales it back up to the model's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shorter_side: Option<u32>,
}

impl Transform {
    /// True when it changes nothing.
    pub fn is_none(&self) -> bool {
        *self == Transform::default()
    }

    /// Its name in folder names and reports: `grey`, `px56`, `px56_grey`.
    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        if let Some(px) = self.shorter_side {
            parts.push(format!("px{px}"));
        }
        if self.grey {
            parts.push("grey".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("_")
        }
    }

    /// The change a name from [`Transform::name`] stands for (`grey`, `px56`, `px56_grey`).
    pub fn from_name(name: &str) -> Option<Self> {
        let (px, grey) = match name.strip_suffix("_grey") {
            Some(rest) => (Some(rest), true),
            None if name == "grey" => (None, true),
            None => (Some(name), false),
        };
        let shorter_side = match px {
            None => None,
            Some(p) => Some(
                p.strip_prefix("px")?
                    .parse::<u32>()
                    .ok()
                    .filter(|&v| v > 0)?,
            ),
        };
        let t = Transform { grey, shorter_side };
        (!t.is_none() && t.name() == name).then_some(t)
    }

    /// Applies it to a decoded image.
    pub fn apply(&self, img: DynamicImage) -> Result<DynamicImage, String> {
        let mut img = img;
        if let Some(px) = self.shorter_side {
            let (w, h) = (img.width(), img.height());
            let short = w.min(h);
            if short > px {
                let scale = f64::from(px) / f64::from(short);
                let nw = ((f64::from(w) * scale).round() as u32).max(1);
                let nh = ((f64::from(h) * scale).round() as u32).max(1);
                let src = fr::images::Image::from_vec_u8(
                    w,
                    h,
                    img.to_rgb8().into_raw(),
                    fr::PixelType::U8x3,
                )
                .map_err(|e| format!("cannot downsample: {e}"))?;
                let mut dst = fr::images::Image::new(nw, nh, fr::PixelType::U8x3);
                let opts = fr::ResizeOptions::new()
                    .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
                RESIZER
                    .with(|r| r.borrow_mut().resize(&src, &mut dst, &opts))
                    .map_err(|e| format!("cannot downsample: {e}"))?;
                let buf = image::RgbImage::from_raw(nw, nh, dst.into_vec())
                    .ok_or_else(|| "cannot downsample: buffer size".to_string())?;
                img = DynamicImage::ImageRgb8(buf);
            }
        }
        if self.grey {
            img = DynamicImage::ImageLuma8(img.to_luma8());
        }
        Ok(img)
    }
}

/// What was found about one image while decoding it.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    /// Width after EXIF orientation.
    pub width: u32,
    /// Height after EXIF orientation.
    pub height: u32,
    /// Grey: a grey colour mode, or RGB with three identical channels.
    pub grey: bool,
    /// The file had an alpha channel (dropped).
    pub alpha: bool,
    /// Smaller than the model's input on some side (upscaled).
    pub upscaled: bool,
}

/// One preprocessed image in the model's layout.
pub enum Pixels {
    /// float32 values.
    F32(Vec<f32>),
    /// uint8 values.
    U8(Vec<u8>),
}

/// Preprocessing settings.
#[derive(Debug, Clone)]
pub struct Preprocess {
    /// The model's input.
    pub contract: InputContract,
    /// Normalisation (ignored for uint8 models, which take raw pixels).
    pub norm: Normalization,
    /// Decoder memory limit in bytes; larger images are skipped.
    pub max_alloc: u64,
    /// Memory shared by all decoding threads (see [`DecodeBudget`]).
    pub budget: std::sync::Arc<DecodeBudget>,
    /// A control's change to every image (none by default).
    pub transform: Transform,
}

impl Preprocess {
    /// Settings with a fresh shared decoding budget of `max(DECODE_BUDGET, max_alloc)`.
    pub fn new(contract: InputContract, norm: Normalization, max_alloc: u64) -> Self {
        Preprocess {
            contract,
            norm,
            max_alloc,
            budget: std::sync::Arc::new(DecodeBudget::new(DECODE_BUDGET.max(max_alloc))),
            transform: Transform::default(),
        }
    }
}

/// Decoding memory shared by all threads: each image reserves what its decode needs before decoding and
/// returns it after, so the peak over all threads stays under the budget whatever the thread count (one
/// image alone may need up to `max_alloc`, which is at most the budget).
#[derive(Debug)]
pub struct DecodeBudget {
    total: u64,
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
}

/// Decoding memory shared by all threads, bytes (the README's limit).
pub const DECODE_BUDGET: u64 = 1 << 30;

impl DecodeBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Self {
        DecodeBudget {
            total,
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits until `n` bytes (at most the total) are free and reserves them until the guard drops.
    pub fn reserve(&self, n: u64) -> BudgetGuard<'_> {
        let n = n.min(self.total);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + n > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
        BudgetGuard { budget: self, n }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reservation in a [`DecodeBudget`], returned on drop.
pub struct BudgetGuard<'a> {
    budget: &'a DecodeBudget,
    n: u64,
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.n;
        self.budget.freed.notify_all();
    }
}

/// True when a JPEG's data stops before its end-of-image marker: no `FF D9` after the start of the last
/// scan (`FF DA`). Inside entropy-coded data a `FF` byte is always stuffed or a restart marker, so this finds
/// truncation without decoding; bytes appended after a complete image are allowed.
pub fn jpeg_truncated(b: &[u8]) -> bool {
    let find_last = |m: [u8; 2]| b.windows(2).rposition(|w| w == m);
    match find_last([0xFF, 0xDA]) {
        Some(sos) => !b[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false, // no scan at all: the decoder reports it
    }
}

/// Largest width or height accepted (larger is skipped as absurd).
pub const MAX_SIDE: u32 = 30_000;

thread_local! {
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Decodes and preprocesses one file. The error is a one-line reason for `skipped.csv`.
pub fn load(path: &Path, p: &Preprocess) -> Result<(Pixels, ImageInfo), String> {
    decode(std::fs::read(path), p)
}

/// The SHA-256 of a file's bytes as read (an unreadable file digests as its error kind): what the cache's
/// fingerprint holds per image. Extraction takes it from the very bytes it decodes, so a file changed while
/// domsim runs can never leave embeddings of one content under the fingerprint of another.
pub fn digest(read: &std::io::Result<Vec<u8>>) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    match read {
        Ok(b) => Sha256::digest(b).to_vec(),
        Err(e) => format!("unreadable: {}", e.kind()).into_bytes(),
    }
}

/// Reads one file once, and returns its [`digest`] with the result of decoding those same bytes.
pub fn load_with_digest(
    path: &Path,
    p: &Preprocess,
) -> (Vec<u8>, Result<(Pixels, ImageInfo), String>) {
    let read = std::fs::read(path);
    (digest(&read), decode(read, p))
}

/// Decodes and preprocesses the bytes of one file (or the error reading it).
pub fn decode(
    read: std::io::Result<Vec<u8>>,
    p: &Preprocess,
) -> Result<(Pixels, ImageInfo), String> {
    let bytes = read.map_err(|e| format!("cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    if image::guess_format(&bytes).ok() == Some(image::ImageFormat::Jpeg) && jpeg_truncated(&bytes)
    {
        return Err("truncated JPEG (the data ends before the end-of-image marker); re-copy or re-export the file".into());
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not an image (unrecognised format)".into());
    }

    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(p.max_alloc);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode: {e}"))?;
    // what decoding needs: the decoded buffer, plus its conversion to 8-bit RGB
    let (w, h) = decoder.dimensions();
    let need = decoder
        .total_bytes()
        .saturating_add(u64::from(w) * u64::from(h) * 3);
    if need > p.max_alloc {
        return Err(format!(
            "needs {} MiB to decode ({w}x{h}, {:?}), over the {} MiB limit per image; downscale it first",
            need >> 20,
            decoder.color_type(),
            p.max_alloc >> 20
        ));
    }
    let _reserved = p.budget.reserve(need);
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode: {e}"))?;
    img.apply_orientation(orientation);
    if !p.transform.is_none() {
        img = p.transform.apply(img)?;
    }
    let color = img.color();
    let mut info = ImageInfo {
        width: img.width(),
        height: img.height(),
        grey: !color.has_color(),
        alpha: color.has_alpha(),
        ..Default::default()
    };
    if info.width == 0 || info.height == 0 {
        return Err("image has zero width or height".into());
    }
    let c = &p.contract;
    info.upscaled = (info.width as usize) < c.width || (info.height as usize) < c.height;
    let (src, pt, ch) = if c.channels == 1 {
        (img.to_luma8().into_raw(), fr::PixelType::U8, 1)
    } else {
        (img.to_rgb8().into_raw(), fr::PixelType::U8x3, 3)
    };
    let src = fr::images::Image::from_vec_u8(info.width, info.height, src, pt)
        .map_err(|e| format!("cannot resize: {e}"))?;
    let mut dst = fr::images::Image::new(c.width as u32, c.height as u32, pt);
    let opts = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .fit_into_destination(Some((0.5, 0.5)));
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &opts))
        .map_err(|e| format!("cannot resize: {e}"))?;
    let px = dst.buffer();
    if ch == 3 && !info.grey {
        info.grey = px.chunks_exact(3).all(|q| q[0] == q[1] && q[1] == q[2]);
    }
    Ok((layout_pixels(px, c, &p.norm), info))
}

/// Lays out interleaved (HWC) 8-bit pixels as the model wants them, normalising float inputs.
pub fn layout_pixels(px: &[u8], c: &InputContract, norm: &Normalization) -> Pixels {
    let (h, w, ch) = (c.height, c.width, c.channels);
    match c.elem {
        ElemType::U8 => match c.layout {
            Layout::Nhwc => Pixels::U8(px.to_vec()),
            Layout::Nchw => {
                let mut out = vec![0u8; h * w * ch];
                for (i, q) in px.chunks_exact(ch).enumerate() {
                    for k in 0..ch {
                        out[k * h * w + i] = q[k];
                    }
                }
                Pixels::U8(out)
            }
        },
        ElemType::F32 => {
            let a: Vec<f32> = (0..ch).map(|k| 1.0 / (255.0 * norm.std[k])).collect();
            let b: Vec<f32> = (0..ch).map(|k| -norm.mean[k] / norm.std[k]).collect();
            let mut out = vec![0f32; h * w * ch];
            for (i, q) in px.chunks_exact(ch).enumerate() {
                for k in 0..ch {
                    let v = q[k] as f32 * a[k] + b[k];
                    match c.layout {
                        Layout::Nchw => out[k * h * w + i] = v,
                        Layout::Nhwc => out[i * ch + k] = v,
                    }
                }
            }
            Pixels::F32(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decode_budget_bounds_the_peak_over_threads() {
        let b = DecodeBudget::new(100);
        let peak = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (b, peak) = (&b, &peak);
                s.spawn(move || {
                    for i in 0..50u64 {
                        let _g = b.reserve(20 + (t * 7 + i) % 40);
                        peak.fetch_max(b.in_use(), std::sync::atomic::Ordering::SeqCst);
                        std::thread::yield_now();
                    }
                });
            }
        });
        assert!(peak.into_inner() <= 100);
        assert_eq!(b.in_use(), 0);
        // a request larger than the whole budget waits for all of it, then proceeds alone
        let _g = b.reserve(1000);
        assert_eq!(b.in_use(), 100);
    }

    #[test]
    fn truncation_is_found_before_decoding() {
        let whole = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD9,
        ];
        assert!(!jpeg_truncated(&whole));
        assert!(jpeg_truncated(&whole[..10]));
        let mut trailing = whole.to_vec();
        trailing.extend_from_slice(b"trailer");
        assert!(!jpeg_truncated(&trailing));
        // a thumbnail's markers before the main scan do not count
        let thumb_then_cut = [
            0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xDA, 0x01, 0xFF, 0xD9, 0xFF, 0xDA, 0x00, 0x12,
        ];
        assert!(jpeg_truncated(&thumb_then_cut));
    }
}
