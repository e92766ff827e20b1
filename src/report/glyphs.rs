//! Text for the charts, placed glyph by glyph with each glyph's own bearing.
//!
//! plotters 0.3.7 draws an ab_glyph outline at the pen position without its left-side bearing
//! (`px_bounds().min.x`), so a glyph with a wide bearing lands on its neighbour ("a nd", "la yer") and a
//! period drifts toward the character before it. [`Glyphs`] wraps the bitmap backend and draws text itself:
//! the same layout box, anchor and rotation as plotters (so labels sit where plotters placed them), with
//! each glyph at its pen position plus its bearing, from the bundled DejaVu Sans. Every other drawing call
//! goes straight to the wrapped backend.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, ScaleFont};
use plotters_backend::{
    text_anchor::{HPos, VPos},
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// The bundled font (DejaVu Sans), parsed once.
fn font(bytes: &'static [u8]) -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(bytes).expect("the bundled font parses"))
}

/// A drawing backend that draws text with correct glyph placement and delegates everything else.
pub struct Glyphs<B> {
    inner: B,
    font: &'static FontRef<'static>,
}

impl<B> Glyphs<B> {
    /// Wraps `inner`; `font_bytes` is the TrueType font registered with plotters as `sans-serif`.
    pub fn new(inner: B, font_bytes: &'static [u8]) -> Self {
        Glyphs {
            inner,
            font: font(font_bytes),
        }
    }
}

/// Every glyph's coverage of the pixels it touches, with the pen starting at x = 0 and the baseline at
/// y = `size / 2` (plotters' own vertical placement): `(x, y, coverage)`.
pub fn rasterize(font: &FontRef<'_>, size: f32, text: &str) -> Vec<(i32, i32, f32)> {
    let scaled = font.as_scaled(size);
    let mut out = Vec::new();
    let mut caret = 0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(size, ab_glyph::point(caret, size / 2.0));
        if let Some(outline) = scaled.outline_glyph(glyph) {
            let b = outline.px_bounds();
            let (x0, y0) = (b.min.x as i32, b.min.y as i32);
            outline.draw(|x, y, cov| {
                if cov > 0.0 {
                    out.push((x0 + x as i32, y0 + y as i32, cov));
                }
            });
        }
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
    out
}

impl<B: DrawingBackend> DrawingBackend for Glyphs<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.present()
    }
    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (iw, ih): (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.blit_bitmap(pos, (iw, ih), src)
    }
    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<B::ErrorType>> {
        self.inner.estimate_text_size(text, style)
    }

    /// plotters' own anchoring and rotation around [`rasterize`]d glyphs.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let ((min_x, min_y), (max_x, max_y)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let trans = style.transform();
        let (w, h) = self.get_size();
        for (x, y, cov) in rasterize(self.font, style.size() as f32, text) {
            let (x, y) = trans.transform(x + dx - min_x, y + dy - min_y);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if x >= 0 && x < w as i32 && y >= 0 && y < h as i32 {
                let c = BackendColor {
                    alpha: color.alpha * f64::from(cov.min(1.0)),
                    rgb: color.rgb,
                };
                self.inner.draw_pixel((x, y), c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");

    /// Columns holding ink, left to right.
    fn ink_columns(px: &[(i32, i32, f32)]) -> Vec<i32> {
        let mut xs: Vec<i32> = px.iter().filter(|p| p.2 > 0.3).map(|p| p.0).collect();
        xs.sort_unstable();
        xs.dedup();
        xs
    }

    /// Each glyph starts at its pen position plus its bearing: a period drawn after "a" starts right of the
    /// "a"'s ink, and "l" (a wide bearing in DejaVu Sans) does not touch the preceding glyph.
    #[test]
    fn glyphs_keep_their_bearing() {
        let f = font(BYTES);
        let size = 40.0;
        let a = ink_columns(&rasterize(f, size, "a"));
        let a_dot = ink_columns(&rasterize(f, size, "a."));
        let a_right = *a.last().unwrap();
        let dot: Vec<i32> = a_dot.into_iter().filter(|x| !a.contains(x)).collect();
        assert!(
            !dot.is_empty() && dot[0] > a_right,
            "the period overlaps the a: {dot:?} after {a_right}"
        );
        // the period sits on the baseline (y = size / 2), not at mid-height
        let dot_rows: Vec<i32> = rasterize(f, size, ".")
            .iter()
            .filter(|p| p.2 > 0.3)
            .map(|p| p.1)
            .collect();
        assert!(
            dot_rows
                .iter()
                .all(|&y| y <= (size / 2.0) as i32 + 1 && y >= (size / 2.0) as i32 - 7),
            "{dot_rows:?}"
        );
        // the period's ink starts at the pen (the a's advance) plus the period's left-side bearing (about
        // 3.7 px at 40 px in DejaVu Sans); without the bearing it would start at the pen itself
        let scaled = f.as_scaled(size);
        let pen = scaled.h_advance(scaled.glyph_id('a'))
            + scaled.kern(scaled.glyph_id('a'), scaled.glyph_id('.'));
        let bearing = scaled.h_side_bearing(scaled.glyph_id('.'));
        assert!(bearing >= 3.0, "{bearing}");
        assert!(
            (dot[0] as f32 - (pen + bearing)).abs() <= 1.0,
            "period at {} (pen {pen}, bearing {bearing})",
            dot[0]
        );
        // the text is no wider than plotters' layout box says (the sum of advances)
        let advance: f32 = "layer 0.95"
            .chars()
            .map(|c| scaled.h_advance(scaled.glyph_id(c)))
            .sum();
        let ink = ink_columns(&rasterize(f, size, "layer 0.95"));
        assert!(
            (*ink.last().unwrap() as f32) < advance + 1.0,
            "{ink:?} vs {advance}"
        );
    }
}
