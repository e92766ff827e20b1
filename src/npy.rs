//! The NPY format (numpy `format.py`, version 1.0 writer; 1.0–3.0 reader): 2-D little-endian float32 (or,
//! on request, float16) matrices written row by row with bounded memory, and float16/32/64 matrices read
//! back.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ndarray::Array2;

use crate::error::{input_err, Error, Result};
use crate::output::{persist, temp_file};

/// Fixed header size, large enough for any 2-D shape, so the row count can be filled in at the end.
const HEADER_LEN: usize = 128;

/// How matrix values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE binary32 (`<f4`), exact for what ONNX Runtime returns.
    #[default]
    Float32,
    /// IEEE binary16 (`<f2`), rounded to nearest even: relative error at most 2^-11 (4.9e-4), half the
    /// size. Used for the bundled source reference.
    Float16,
}

impl Dtype {
    /// "float32" or "float16", as in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Float16 => "float16",
        }
    }

    fn descr(self) -> &'static str {
        match self {
            Dtype::Float32 => "<f4",
            Dtype::Float16 => "<f2",
        }
    }

    fn push(self, out: &mut Vec<u8>, v: f32) {
        match self {
            Dtype::Float32 => out.extend_from_slice(&v.to_le_bytes()),
            Dtype::Float16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        }
    }
}

fn header(rows: usize, cols: usize, dtype: Dtype) -> Vec<u8> {
    header_descr(rows, cols, dtype.descr())
}

fn header_descr(rows: usize, cols: usize, descr: &str) -> Vec<u8> {
    let dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    while h.len() < HEADER_LEN - 1 {
        h.push(b' ');
    }
    h.push(b'\n');
    h
}

/// Streams an n × d matrix to a temp file; [`NpyWriter::finish`] fills in n and renames it into place.
pub struct NpyWriter {
    out: BufWriter<tempfile::NamedTempFile>,
    tmp: PathBuf,
    dest: PathBuf,
    cols: usize,
    rows: usize,
    dtype: Dtype,
}

impl NpyWriter {
    /// Starts `dest` (written as a temp file beside it).
    pub fn create(dest: &Path, cols: usize, dtype: Dtype) -> Result<Self> {
        let f = temp_file(dest)?;
        let tmp = f.path().to_path_buf();
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&header(0, cols, dtype))
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        Ok(NpyWriter {
            out,
            tmp,
            dest: dest.to_path_buf(),
            cols,
            rows: 0,
            dtype,
        })
    }

    /// Appends rows (a multiple of `cols` values).
    pub fn write_rows(&mut self, data: &[f32]) -> Result<()> {
        debug_assert_eq!(data.len() % self.cols.max(1), 0);
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for &v in data {
            self.dtype.push(&mut bytes, v);
        }
        self.out
            .write_all(&bytes)
            .map_err(|e| Error::io("cannot write", &self.tmp, e))?;
        self.rows += data.len().checked_div(self.cols).unwrap_or(0);
        Ok(())
    }

    /// Writes the final header, syncs, and renames the file into place.
    pub fn finish(self) -> Result<()> {
        let NpyWriter {
            out,
            tmp,
            dest,
            cols,
            rows,
            dtype,
        } = self;
        let mut f = out
            .into_inner()
            .map_err(|e| Error::io("cannot write", &tmp, e.into_error()))?;
        let io = |e| Error::io("cannot write", &tmp, e);
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&header(rows, cols, dtype)).map_err(io)?;
        f.as_file().sync_all().map_err(io)?;
        persist(f, &dest)
    }
}

/// Encodes a whole matrix as NPY bytes (float32).
pub fn to_bytes(a: &Array2<f32>) -> Vec<u8> {
    to_bytes_as(a, Dtype::Float32)
}

/// Encodes a float64 matrix as NPY bytes (`<f8`), e.g. the moment files of `extract --stats`.
pub fn to_bytes_f64(a: &Array2<f64>) -> Vec<u8> {
    let (r, c) = a.dim();
    let mut v = header_descr(r, c, "<f8");
    for &x in a.iter() {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// Encodes a whole matrix as NPY bytes of the given type.
pub fn to_bytes_as(a: &Array2<f32>, dtype: Dtype) -> Vec<u8> {
    let (r, c) = a.dim();
    let mut v = header(r, c, dtype);
    for &x in a.iter() {
        dtype.push(&mut v, x);
    }
    v
}

/// Reads a 2-D float16, float32 or float64 C-order NPY file as f64. A 1-D array is read as one column.
pub fn read(path: &Path) -> Result<Array2<f64>> {
    let mut f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| Error::io("cannot read", path, e))?;
    parse(&bytes).map_err(|m| Error::Input(format!("'{}': {m}", path.display())))
}

/// The header of an NPY file: (offset of the data, rows, columns, bytes per element).
fn parse_header(b: &[u8]) -> std::result::Result<(usize, usize, usize, usize), String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not an NPY file (bad magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported NPY version {v}")),
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or("truncated header")?)
        .map_err(|_| "header is not text")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[i..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or("no descr")?;
    let elem = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else if descr.starts_with("'<f2'") {
        2
    } else {
        return Err(format!(
            "unsupported dtype {}; save float16, float32 or float64 (little-endian)",
            descr.split(',').next().unwrap_or("")
        ));
    };
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err("Fortran-order array; save with np.ascontiguousarray".into());
    }
    let shape_s = field("shape").ok_or("no shape")?;
    let inner = shape_s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("bad shape")?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape '{inner}'"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let (r, c) = match dims.as_slice() {
        [n] => (*n, 1),
        [n, d] => (*n, *d),
        _ => return Err(format!("expected a 2-D matrix (n × d), got shape {dims:?}")),
    };
    Ok((start + hlen, r, c, elem))
}

/// The shape (rows, columns) of an NPY matrix, from its header alone.
pub fn shape(path: &Path) -> Result<(usize, usize)> {
    let mut f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut b = Vec::with_capacity(4096);
    (&mut f)
        .take(1 << 16)
        .read_to_end(&mut b)
        .map_err(|e| Error::io("cannot read", path, e))?;
    let (_, r, c, _) =
        parse_header(&b).map_err(|m| Error::Input(format!("'{}': {m}", path.display())))?;
    Ok((r, c))
}

fn parse(b: &[u8]) -> std::result::Result<Array2<f64>, String> {
    let (data_start, r, c, elem) = parse_header(b)?;
    let data = &b[data_start..];
    let need = r
        .checked_mul(c)
        .and_then(|n| n.checked_mul(elem))
        .ok_or_else(|| format!("shape ({r}, {c}) is too large"))?;
    if data.len() < need {
        return Err(format!(
            "truncated data: shape ({r}, {c}) needs {need} bytes, file has {}",
            data.len()
        ));
    }
    let v: Vec<f64> = match elem {
        2 => data
            .chunks_exact(2)
            .take(r * c)
            .map(|q| half::f16::from_le_bytes([q[0], q[1]]).to_f64())
            .collect(),
        4 => data
            .chunks_exact(4)
            .take(r * c)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]) as f64)
            .collect(),
        _ => data
            .chunks_exact(8)
            .take(r * c)
            .map(|q| f64::from_le_bytes(q.try_into().expect("8 bytes")))
            .collect(),
    };
    Array2::from_shape_vec((r, c), v).map_err(|e| e.to_string())
}

/// Checks that `b` parses; used by tests.
pub fn parse_bytes(b: &[u8]) -> Result<Array2<f64>> {
    match parse(b) {
        Ok(a) => Ok(a),
        Err(m) => input_err(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let a = Array2::from_shape_fn((3, 4), |(i, j)| (i * 10 + j) as f32);
        let b = parse_bytes(&to_bytes(&a)).unwrap();
        assert_eq!(b, a.mapv(|x| x as f64));
        assert_eq!(to_bytes(&a).len(), HEADER_LEN + 48);
    }

    #[test]
    fn float16_roundtrip_within_its_precision() {
        let a = Array2::from_shape_fn((5, 7), |(i, j)| ((i * 7 + j) as f32 - 11.3) * 0.37);
        let b = parse_bytes(&to_bytes_as(&a, Dtype::Float16)).unwrap();
        assert_eq!(to_bytes_as(&a, Dtype::Float16).len(), HEADER_LEN + 70);
        for (x, y) in a.iter().zip(b.iter()) {
            assert!((*x as f64 - y).abs() <= x.abs() as f64 * 2f64.powi(-11) + 1e-7);
        }
        // exactly representable values survive unchanged
        let c = Array2::from_shape_vec((1, 3), vec![0.5f32, -2.0, 1024.0]).unwrap();
        assert_eq!(
            parse_bytes(&to_bytes_as(&c, Dtype::Float16)).unwrap(),
            c.mapv(|x| x as f64)
        );
    }

    #[test]
    fn overflowing_shape_is_an_error_not_a_panic() {
        let mut b = to_bytes(&Array2::<f32>::zeros((1, 1)));
        let h = String::from_utf8_lossy(&b[10..HEADER_LEN])
            .replace("(1, 1)", "(99999999999, 99999999999)");
        b.splice(10..HEADER_LEN, h.bytes().take(HEADER_LEN - 10));
        assert!(parse_bytes(&b).is_err());
    }
}
