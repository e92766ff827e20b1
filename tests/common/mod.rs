//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The shared datasets: `$DOMSIM_DATASETS`, else `../shared/datasets` beside the checkout.
pub fn datasets() -> PathBuf {
    match std::env::var_os("DOMSIM_DATASETS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"),
    }
}

/// A fixture path.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The domsim binary, one thread (tests run in parallel), quiet.
pub fn domsim() -> Command {
    let mut c = Command::cargo_bin("domsim").expect("binary builds");
    c.args(["--threads", "1", "--quiet"]);
    c
}

/// Copies `n` files of a shared dataset folder, every `step`-th starting at `offset`, into `dest`.
pub fn copy_subset(src: &Path, dest: &Path, offset: usize, step: usize, n: usize) -> Vec<String> {
    std::fs::create_dir_all(dest).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let picked: Vec<String> = files
        .into_iter()
        .skip(offset)
        .step_by(step)
        .take(n)
        .collect();
    for f in &picked {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }
    picked
}

/// Reads an NPY matrix as f64 via the library's reader.
pub fn npy(path: &Path) -> ndarray::Array2<f64> {
    domsim::npy::read(path).unwrap_or_else(|e| panic!("{e}"))
}

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header claims `w` × `h` 8-bit RGB pixels but holds almost no data.
pub fn huge_png(w: u32, h: u32) -> Vec<u8> {
    png_header(w, h, 8, 2)
}

/// A PNG with the given bit depth and colour type (2 = RGB, 6 = RGBA) whose header claims `w` × `h` pixels,
/// followed by a token IDAT and IEND: a decoder reads the header and learns the size before any pixel.
pub fn png_header(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for (kind, data) in [
        (&b"IDAT"[..], &[0x78u8, 0x9c, 0x03, 0x00][..]),
        (b"IEND", b""),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(&chunk);
        v.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    v
}

/// An embedding folder's `manifest.json`, parsed.
pub fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Writes a matrix as a float32 NPY file (f64 values are rounded to f32, as `extract` stores them).
#[allow(dead_code)]
pub fn write_npy<T: Copy + Into<f64>>(path: &Path, a: &ndarray::Array2<T>) {
    std::fs::write(path, domsim::npy::to_bytes(&a.mapv(|v| v.into() as f32))).unwrap();
}

/// Copies a folder tree.
#[allow(dead_code)]
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
}

/// Renders an HTML page in headless Chromium (Debian's `chromium` package) and checks the screenshot as a
/// reader would see it: it holds text at the top, and its images load (the same page without its `<img>`
/// elements looks clearly emptier). Without a browser on the machine it says so on stderr and checks
/// nothing else, unless `DOMSIM_REQUIRE_BROWSER` is set (`scripts/test.sh` installs Debian's chromium and
/// sets it).
pub fn page_renders(html: &Path) {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var_os("DOMSIM_REQUIRE_BROWSER").is_none(),
            "DOMSIM_REQUIRE_BROWSER is set but no chromium runs"
        );
        eprintln!("page_renders: no headless browser installed (apt-get install chromium); screenshot not checked");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let shot = |page: &Path, name: &str| -> image::RgbImage {
        let png = tmp.path().join(name);
        let out = std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,3000",
            ])
            .arg(format!(
                "--user-data-dir={}",
                tmp.path().join("profile").display()
            ))
            .arg(format!("--screenshot={}", png.display()))
            .arg(format!("file://{}", page.canonicalize().unwrap().display()))
            .env("HOME", tmp.path())
            .output()
            .unwrap();
        assert!(
            png.is_file(),
            "{browser} wrote no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        image::open(&png).unwrap().to_rgb8()
    };
    let inked = |img: &image::RgbImage, rows: std::ops::Range<u32>| -> usize {
        rows.flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().any(|&c| c < 200))
            .count()
    };
    let page = shot(html, "page.png");
    assert_eq!((page.width(), page.height()), (1280, 3000));
    assert!(
        inked(&page, 0..150) > 500,
        "no title or text at the top of the page"
    );
    // the same page with every <img> removed
    let text = std::fs::read_to_string(html).unwrap();
    let mut bare = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<img ") {
        bare.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = &rest[rest.find('>').unwrap() + 1..];
    }
    bare.push_str(rest);
    let bare_page = html.with_file_name("bare_for_screenshot.html");
    std::fs::write(&bare_page, bare).unwrap();
    let without = shot(&bare_page, "bare.png");
    std::fs::remove_file(&bare_page).unwrap();
    let (a, b) = (inked(&page, 0..3000), inked(&without, 0..3000));
    eprintln!("page_renders: {a} inked pixels with the page's images, {b} without");
    assert!(
        a > b + 100_000,
        "the page's images do not render: {a} inked pixels with them, {b} without"
    );
}
