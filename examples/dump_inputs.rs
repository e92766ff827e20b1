//! Writes domsim's preprocessed input tensors for the bundled default model as one NPY matrix
//! (n × 3·224·224, NCHW per row), so that `tests/fixtures/default_model/make_golden.py` can run Python
//! onnxruntime on exactly the tensors domsim feeds.
//!
//! Usage: cargo run --release --example dump_inputs -- OUT.npy IMAGE...

use domsim::model::{ElemType, InputContract, Layout};
use domsim::preprocess::{load, Normalization, Pixels, Preprocess};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, files) = args
        .split_first()
        .ok_or("usage: dump_inputs OUT.npy IMAGE...")?;
    let pre = Preprocess::new(
        InputContract {
            name: "input".into(),
            layout: Layout::Nchw,
            elem: ElemType::F32,
            channels: 3,
            height: 224,
            width: 224,
            fixed_batch: None,
            dynamic_size: false,
        },
        Normalization::preset(domsim::preprocess::Preset::Pm1),
        512 << 20,
    );
    let mut rows = Vec::new();
    for f in files {
        match load(std::path::Path::new(f), &pre)? {
            (Pixels::F32(v), _) => rows.extend(v),
            _ => return Err("expected float pixels".into()),
        }
    }
    let a = ndarray::Array2::from_shape_vec((files.len(), 3 * 224 * 224), rows)?;
    std::fs::write(out, domsim::npy::to_bytes(&a))?;
    Ok(())
}
