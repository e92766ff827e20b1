//! PNG charts (plotters, bitmap backend, the bundled DejaVu Sans font): metrics by depth, layer × layer CKA
//! heatmaps with a colour bar, and 2-D PCA scatters of the embeddings.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::glyphs::Glyphs;
use super::PcaPoint;
use crate::compare::CompareReport;
use crate::error::{Error, Result};
use crate::metrics::{Output, Panel};
use crate::verdict::Verdict;

static FONT: Once = Once::new();
const FONT_BYTES: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");

fn font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT_BYTES);
    });
}

fn perr<E: std::fmt::Display>(e: E) -> Error {
    Error::Analysis(format!("cannot draw chart: {e}"))
}

/// A short, legible layer name: `/_blocks.4/Add_output_0` → `_blocks.4/Add`.
pub fn short_name(name: &str) -> String {
    let s = name.trim_start_matches('/').trim_end_matches("_output_0");
    if s.chars().count() > 40 {
        let tail: String = s
            .chars()
            .rev()
            .take(39)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    } else {
        s.to_string()
    }
}

/// Renders with `draw` into a `w` × `h` RGB buffer and encodes it as PNG.
fn png(w: u32, h: u32, draw: impl FnOnce(&Area) -> Result<()>) -> Result<Vec<u8>> {
    font();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = Glyphs::new(BitMapBackend::with_buffer(&mut buf, (w, h)), FONT_BYTES)
            .into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        draw(&root)?;
        root.present().map_err(perr)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| perr("buffer size"))?;
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(perr)?;
    Ok(out)
}

/// (depth, value, CI, significant).
type Point = (f64, f64, Option<(f64, f64)>, bool);

struct Series {
    label: String,
    color: RGBColor,
    points: Vec<Point>,
}

fn series(r: &CompareReport, o: &Output, color: RGBColor) -> Option<Series> {
    let points: Vec<_> = r
        .layers
        .iter()
        .filter_map(|l| {
            let v = l.value(o)?;
            Some((
                l.depth as f64,
                v.value?,
                v.ci,
                v.p_holm
                    .or(v.p_value)
                    .is_none_or(|p| p <= crate::verdict::ALPHA),
            ))
        })
        .collect();
    (!points.is_empty()).then(|| Series {
        label: o.label.to_string(),
        color,
        points,
    })
}

/// The outputs drawn in each panel of `metrics_by_depth.png`, from their declarations (in report order,
/// only those with values; alignment only when no task output has values): the chart and the HTML's
/// description of it both come from here.
pub fn chart_series(r: &CompareReport) -> Vec<(Panel, Vec<Output>)> {
    let panels = [
        Panel::Distance,
        Panel::Domain,
        Panel::Task,
        Panel::Alignment,
        Panel::Evidence,
    ];
    let declared = r.outputs();
    let mut v: Vec<(Panel, Vec<Output>)> = panels
        .into_iter()
        .map(|p| {
            let outs = declared
                .iter()
                .filter(|o| o.panel == Some(p))
                .filter(|o| {
                    r.layers
                        .iter()
                        .any(|l| l.value(o).is_some_and(|v| v.value.is_some()))
                })
                .cloned()
                .collect();
            (p, outs)
        })
        .collect();
    // the alignment outputs take the task panel's place only when no task output has values
    if !v[2].1.is_empty() {
        v[3].1.clear();
    }
    v
}

/// The smallest and largest value or interval bound over `series` (0 and 1 when there is none).
fn value_range(series: &[Series]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in series.iter().flat_map(|s| s.points.iter()) {
        let (a, b) = p.2.unwrap_or((p.1, p.1));
        for v in [p.1, a, b] {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// The series of one panel of `drawn` ([`chart_series`]), coloured in the panel's palette order.
fn panel_series(r: &CompareReport, drawn: &[(Panel, Vec<Output>)], p: Panel) -> Vec<Series> {
    let palette: &[RGBColor] = match p {
        Panel::Distance => &[BLUE_, PURPLE_, ORANGE_, GREEN_, RED_],
        Panel::Domain => &[ORANGE_, BLUE_, PURPLE_, GREEN_, RED_],
        Panel::Task | Panel::Alignment => &[GREEN_, BLUE_, PURPLE_, ORANGE_, RED_],
        Panel::Sources => &[PURPLE_, ORANGE_, GREEN_, BLUE_, RED_],
        Panel::Evidence => &[PURPLE_, ORANGE_, GREEN_, BLUE_, RED_],
    };
    let outs = drawn
        .iter()
        .find(|(q, _)| *q == p)
        .map(|(_, o)| o.as_slice());
    outs.unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, o)| series(r, o, palette[i % palette.len()]))
        .collect()
}

const BLUE_: RGBColor = RGBColor(31, 119, 180);
const ORANGE_: RGBColor = RGBColor(230, 120, 20);
const GREEN_: RGBColor = RGBColor(44, 160, 44);
const PURPLE_: RGBColor = RGBColor(148, 103, 189);
const RED_: RGBColor = RGBColor(214, 39, 40);

/// The cut drawn on every per-depth panel: a dashed line after `depth`, and, when the plan freezes the layers
/// up to it, those depths shaded.
struct CutMark {
    depth: usize,
    label: String,
    frozen_band: bool,
}

/// A chart on f64 axes (a panel: depth on x, one output's scale on y; a scatter: two components).
type Chart<'a, 'b> = ChartContext<
    'a,
    Glyphs<BitMapBackend<'b>>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// One series: its interval band (clamped to the panel's `y` range), its line, and its points (filled
/// where significant or useful, hollow elsewhere).
fn draw_series(chart: &mut Chart, s: &Series, y: (f64, f64)) -> Result<()> {
    let band: Vec<(f64, f64, f64)> = s
        .points
        .iter()
        .filter_map(|p| p.2.map(|(lo, hi)| (p.0, lo, hi)))
        .collect();
    if band.len() >= 2 {
        let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.1.clamp(y.0, y.1))).collect();
        poly.extend(band.iter().rev().map(|b| (b.0, b.2.clamp(y.0, y.1))));
        chart
            .draw_series(std::iter::once(Polygon::new(
                poly,
                s.color.mix(0.18).filled(),
            )))
            .map_err(perr)?;
    }
    let c = s.color;
    chart
        .draw_series(LineSeries::new(
            s.points.iter().map(|p| (p.0, p.1)),
            c.stroke_width(2),
        ))
        .map_err(perr)?
        .label(s.label.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart
        .draw_series(s.points.iter().map(|p| {
            let style = if p.3 { c.filled() } else { WHITE.filled() };
            Circle::new((p.0, p.1), 4, style)
        }))
        .map_err(perr)?;
    chart
        .draw_series(
            s.points
                .iter()
                .map(|p| Circle::new((p.0, p.1), 4, c.stroke_width(1))),
        )
        .map_err(perr)?;
    Ok(())
}

/// The corner for a panel's legend: the one whose quarter-box (half the width, 35 % of the height) holds
/// the fewest drawn values (points, interval ends, the reference line), `preferred` first among equals,
/// so that the legend does not hide the data.
fn legend_corner(
    list: &[Series],
    y: (f64, f64),
    hline: Option<f64>,
    n: usize,
    preferred: SeriesLabelPosition,
) -> SeriesLabelPosition {
    use SeriesLabelPosition::{LowerLeft, LowerRight, UpperLeft, UpperRight};
    let span = (y.1 - y.0).max(1e-12);
    let mut values: Vec<(f64, f64)> = Vec::new();
    for s in list {
        for p in &s.points {
            values.push((p.0, p.1));
            if let Some((lo, hi)) = p.2 {
                values.extend([(p.0, lo), (p.0, hi)]);
            }
        }
    }
    if let Some(h) = hline {
        values.extend((0..n).map(|d| (d as f64, h)));
    }
    let covered = |right: bool, upper: bool| {
        values
            .iter()
            .filter(|&&(x, v)| {
                let fx = (x + 0.5) / n.max(1) as f64;
                let fy = (v - y.0) / span;
                (if right { fx >= 0.5 } else { fx < 0.5 })
                    && (if upper { fy >= 0.65 } else { fy <= 0.35 })
            })
            .count()
    };
    let place = |c: &SeriesLabelPosition| match c {
        UpperRight => covered(true, true),
        LowerRight => covered(true, false),
        UpperLeft => covered(false, true),
        _ => covered(false, false),
    };
    let order = [UpperRight, LowerRight, UpperLeft, LowerLeft];
    let best = order.iter().map(place).min().unwrap_or(0);
    if place(&preferred) == best {
        return preferred;
    }
    order
        .into_iter()
        .find(|c| place(c) == best)
        .unwrap_or(preferred)
}

/// A per-depth panel's margin, right margin and y label area, pixels: what places its depth axis, shared by
/// the strip of per-layer actions under the panels.
const PANEL_MARGIN: u32 = 12;
const PANEL_MARGIN_RIGHT: u32 = 30;
const PANEL_Y_LABELS: u32 = 80;

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area,
    title: &str,
    y_desc: &str,
    names: &[String],
    list: &[Series],
    y: (f64, f64),
    hline: Option<(f64, &str)>,
    cut: Option<&CutMark>,
    legend: SeriesLabelPosition,
) -> Result<()> {
    let l = names.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(PANEL_MARGIN)
        .margin_right(PANEL_MARGIN_RIGHT)
        .x_label_area_size(40)
        .y_label_area_size(PANEL_Y_LABELS)
        .build_cartesian_2d(-0.5f64..(l as f64 - 0.5), y.0..y.1)
        .map_err(perr)?;
    let fmt_x = |x: &f64| {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 || i as usize >= l {
            return String::new();
        }
        format!("{}", i as usize)
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(l)
        .x_label_formatter(&fmt_x)
        .y_desc(y_desc)
        .x_desc("depth (names below)")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0));
    mesh.draw().map_err(perr)?;
    if let Some((v, label)) = hline {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.5, v), (l as f64 - 0.5, v)],
                6,
                6,
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(perr)?
            .label(label.to_string())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    }
    if let Some(CutMark {
        depth: c,
        label: cut_label,
        frozen_band,
    }) = cut
    {
        let xc = *c as f64 + 0.5;
        if *frozen_band {
            // the plan inside the plot: the depths it freezes, shaded
            let shade = RGBColor(120, 120, 120);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(-0.5, y.0), (xc, y.1)],
                    shade.mix(0.10).filled(),
                )))
                .map_err(perr)?
                .label(format!("frozen by the plan (depths 0–{c})"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], shade.mix(0.25).filled())
                });
        }
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xc, y.0), (xc, y.1)],
                8,
                5,
                RED.stroke_width(2),
            ))
            .map_err(perr)?
            .label(cut_label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    for s in list {
        draw_series(&mut chart, s, y)?;
    }
    chart
        .configure_series_labels()
        .position(legend_corner(list, y, hline.map(|h| h.0), l, legend))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(perr)?;
    Ok(())
}

/// A drawing area as `png` hands it out: the bitmap, with text drawn by [`Glyphs`].
type Area<'a> = DrawingArea<Glyphs<BitMapBackend<'a>>, Shift>;

/// LogME and H-score, each on its own axis (their scales are not comparable), side by side.
fn evidence_panels(
    area: &Area,
    evidence: &[Series],
    names: &[String],
    cut: Option<&CutMark>,
) -> Result<()> {
    let (left, right) = area.split_horizontally(700);
    for (a, s) in [left, right].iter().zip(evidence) {
        let (lo, hi) = value_range(std::slice::from_ref(s));
        let pad = 0.08 * (hi - lo).max(1e-3);
        panel(
            a,
            &format!(
                "Label evidence: {}",
                s.label.split(',').next().unwrap_or("")
            ),
            "score (higher = more transferable)",
            names,
            std::slice::from_ref(s),
            (lo - pad, hi + pad),
            None,
            cut,
            SeriesLabelPosition::LowerRight,
        )?;
    }
    Ok(())
}

/// The task panel: the task scores zoomed to their values, or without labels the covariance alignment.
fn task_panel(
    area: &Area,
    r: &CompareReport,
    drawn: &[(Panel, Vec<Output>)],
    names: &[String],
    cut: Option<&CutMark>,
) -> Result<()> {
    let task = panel_series(r, drawn, Panel::Task);
    if task.is_empty() {
        let cov = panel_series(r, drawn, Panel::Alignment);
        panel(
            area,
            "Target usefulness (no target labels: covariance alignment shown)",
            "cosine",
            names,
            &cov,
            (0.0, 1.02),
            None,
            cut,
            SeriesLabelPosition::LowerRight,
        )
    } else {
        let k = r.target.classes.len().max(2) as f64;
        // zoomed on the values and their intervals: the differences that decide the cut are a few
        // points; chance is drawn when it falls inside, and named on the axis either way
        let (lo, hi) = value_range(&task);
        let y = (
            (lo - 0.05 * (hi - lo).max(0.1)).max(0.0),
            (hi + 0.05 * (hi - lo).max(0.1)).min(1.02),
        );
        let y = if y.1 - y.0 < 0.1 {
            ((y.1 - 0.1).max(0.0), y.1)
        } else {
            y
        };
        let chance = 1.0 / k;
        panel(
            area,
            "Is the layer useful for the target task?",
            &format!("balanced accuracy (chance {chance:.2})"),
            names,
            &task,
            y,
            (chance >= y.0).then_some((chance, "chance")),
            cut,
            SeriesLabelPosition::LowerRight,
        )
    }
}

/// `metrics_by_depth.png`: distance, domain probe and target usefulness against depth, CI bands, cut marked.
pub fn metrics_by_depth(r: &CompareReport, v: &Verdict) -> Result<Vec<u8>> {
    let names: Vec<String> = r.layers.iter().map(|l| short_name(&l.layer)).collect();
    let cut = v.cut.as_ref().map(|c| {
        let freezes = v.plan.kind == crate::verdict::PlanKind::FreezeThrough;
        let what = if freezes {
            "recommended cut"
        } else {
            "fallback cut (the plan: fine-tune every layer)"
        };
        CutMark {
            depth: c.depth,
            label: format!("{what} (after depth {})", c.depth),
            frozen_band: freezes,
        }
    });
    let cut = cut.as_ref();
    let drawn = chart_series(r);
    let rows = names.len().div_ceil(3) as u32;
    let legend_h = 40 + 22 * rows;
    let evidence = panel_series(r, &drawn, Panel::Evidence);
    let n_panels = if evidence.is_empty() { 3 } else { 4 };
    let plots_h = 450 * n_panels as u32;
    png(1400, plots_h + STRIP_H + legend_h, |root| {
        let (plots, rest) = root.split_vertically(plots_h);
        let (strip, key) = rest.split_vertically(STRIP_H);
        action_strip(&strip, v, names.len())?;
        let areas = plots.split_evenly((n_panels, 1));
        if let Some(area) = areas.get(3) {
            evidence_panels(area, &evidence, &names, cut)?;
        }
        key.draw(&Text::new(
            "Layers by depth:",
            (20, 10),
            ("sans-serif", 16).into_font(),
        ))
        .map_err(perr)?;
        for (i, n) in names.iter().enumerate() {
            let (col, row) = (i as u32 / rows, i as u32 % rows);
            key.draw(&Text::new(
                format!("{i:>2}  {n}"),
                (20 + 460 * col as i32, 36 + 22 * row as i32),
                ("sans-serif", 15).into_font(),
            ))
            .map_err(perr)?;
        }
        let mmd = panel_series(r, &drawn, Panel::Distance);
        // where the deep layers are shifted, the verdict compares the early layers' MMD² with this line
        let early_line = v.profile.as_ref().filter(|p| p.deep_shift).and_then(|p| {
            let d = p.deepest_mmd2.filter(|d| *d > 0.0)?;
            Some((
                d * crate::verdict::EARLY_SHIFT_RATIO,
                format!(
                    "{} × the deepest MMD²: a peak above it through depth {} means LP-FT",
                    crate::verdict::EARLY_SHIFT_RATIO,
                    p.cut_depth
                ),
            ))
        });
        let top = mmd
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.2.map_or(p.1, |c| c.1)))
            .chain(early_line.as_ref().map(|l| l.0))
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.1;
        panel(
            &areas[0],
            "Distribution distance, source vs target",
            "MMD² (median-heuristic σ per layer)",
            &names,
            &mmd,
            (0.0, top),
            early_line.as_ref().map(|(y, l)| (*y, l.as_str())),
            cut,
            SeriesLabelPosition::UpperRight,
        )?;
        let dom = panel_series(r, &drawn, Panel::Domain);
        panel(
            &areas[1],
            "Can a linear probe tell source from target?",
            "accuracy",
            &names,
            &dom,
            // room below chance for the legend, which would otherwise cover the source-spread line
            (0.15, 1.02),
            Some((0.5, "chance (0.5)")),
            cut,
            SeriesLabelPosition::LowerRight,
        )?;
        task_panel(&areas[2], r, &drawn, &names, cut)
    })
}

/// Height of the per-layer strip under the panels.
const STRIP_H: u32 = 120;

/// Under the panels, on their depth axis: per layer, what the plan does with it (frozen or fine-tuned) and
/// the verdict's label, as coloured cells with their words.
fn action_strip(area: &Area, v: &Verdict, n: usize) -> Result<()> {
    use crate::verdict::{Label, PlanKind};
    // the panels' horizontal geometry, so depths line up
    let mut chart = ChartBuilder::on(area)
        .margin(PANEL_MARGIN)
        .margin_right(PANEL_MARGIN_RIGHT)
        .x_label_area_size(0)
        .y_label_area_size(PANEL_Y_LABELS)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..2f64)
        .map_err(perr)?;
    let frozen = |d: usize| {
        v.plan.kind == PlanKind::FreezeThrough && v.cut.as_ref().is_some_and(|c| d <= c.depth)
    };
    let plan_cell = |d: usize| match v.plan.kind {
        PlanKind::NoAdvice => ("no advice", RGBColor(200, 200, 200)),
        _ if frozen(d) => ("frozen", RGBColor(150, 150, 150)),
        _ => ("fine-tuned", RGBColor(66, 133, 244)),
    };
    let label_cell = |l: Label| match l {
        Label::Transfers => ("transfers", RGBColor(44, 160, 44)),
        Label::Useful => ("useful", RGBColor(23, 190, 207)),
        Label::Partial => ("partial", RGBColor(255, 165, 0)),
        Label::DomainSpecific => ("domain-spec.", RGBColor(214, 39, 40)),
    };
    let rows: [(&str, f64); 2] = [("the plan", 1.0), ("label", 0.0)];
    let top = area.get_base_pixel().1;
    for (name, y) in rows {
        area.draw(&Text::new(
            name.to_string(),
            (14, chart.backend_coord(&(-0.5, y + 0.5)).1 - top - 8),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(perr)?;
    }
    for d in 0..n {
        let label = v
            .layers
            .iter()
            .find(|l| l.depth == d)
            .map(|l| label_cell(l.label));
        for (y, cell) in [(1.0, Some(plan_cell(d))), (0.0, label)] {
            let Some((word, c)) = cell else { continue };
            let (x0, x1) = (d as f64 - 0.46, d as f64 + 0.46);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, y + 0.08), (x1, y + 0.92)],
                    c.mix(0.35).filled(),
                )))
                .map_err(perr)?;
            let style = ("sans-serif", 11).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ),
            );
            chart
                .draw_series(std::iter::once(Text::new(
                    word.to_string(),
                    (d as f64, y + 0.5),
                    style,
                )))
                .map_err(perr)?;
        }
    }
    Ok(())
}

/// `gap_sources.png`: where the gap comes from. Top, the share of the source→target MMD² that each control
/// (the source greyscale, at the target's resolution, both) closes, with intervals, at the layers with a
/// gap; bottom, how much each layer responds to colour (MMD² between the source and its greyscale copy).
pub fn gap_sources(r: &CompareReport) -> Result<Vec<u8>> {
    let names: Vec<String> = r.layers.iter().map(|l| short_name(&l.layer)).collect();
    let declared = r.outputs();
    let shares: Vec<Output> = declared
        .iter()
        .filter(|o| o.panel == Some(Panel::Sources))
        .cloned()
        .collect();
    let drawn = vec![(Panel::Sources, shares)];
    let list = panel_series(r, &drawn, Panel::Sources);
    let (lo, hi) = list
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.2.unwrap_or((p.1, p.1))))
        .fold((-0.1f64, 1.05f64), |(a, b), (l, h)| (a.min(l), b.max(h)));
    let gain: Vec<Series> = declared
        .iter()
        .filter(|o| o.id == crate::controls::PRETRAINING_GAIN.id)
        .filter_map(|o| series(r, o, GREEN_))
        .collect();
    let rows = 1 + usize::from(!list.is_empty()) + usize::from(!gain.is_empty());
    png(1400, 100 + 425 * rows as u32, |root| {
        let areas = root.split_evenly((rows, 1));
        let mut next = areas.iter();
        let sens: Vec<Series> = declared
            .iter()
            .filter(|o| o.id == crate::controls::COLOUR_SENSITIVITY.id)
            .filter_map(|o| series(r, o, PURPLE_))
            .collect();
        if !list.is_empty() {
            panel(
                next.next().expect("a row per panel"),
                "Share of the source→target gap a changed source already closes (axis cut at −1.5 and 1.5)",
                "1 − MMD²(changed, target) / MMD²(source, target)",
                &names,
                &list,
                (lo.max(-1.5) - 0.05, hi.min(1.5) + 0.05),
                Some((
                    crate::controls::NAMED_SHARE,
                    "named as a cause when the interval lies above this",
                )),
                None,
                SeriesLabelPosition::LowerRight,
            )?;
        }
        let top = sens
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.2.map_or(p.1, |c| c.1)))
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.1;
        panel(
            next.next().expect("a row per panel"),
            "How much each layer responds to colour",
            "MMD², source vs its greyscale copy",
            &names,
            &sens,
            (0.0, top),
            None,
            None,
            SeriesLabelPosition::UpperRight,
        )?;
        if !gain.is_empty() {
            let (glo, ghi) = gain
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.2.unwrap_or((p.1, p.1))))
                .fold((-0.05f64, 0.05f64), |(a, b), (l, h)| (a.min(l), b.max(h)));
            panel(
                next.next().expect("a row per panel"),
                "What the model's pretraining buys (target task)",
                "balanced accuracy, pretrained − permuted weights",
                &names,
                &gain,
                (glo - 0.05, ghi + 0.05),
                Some((0.0, "no gain")),
                None,
                SeriesLabelPosition::LowerRight,
            )?;
        }
        Ok(())
    })
}

fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] = [
        (68., 1., 84.),
        (59., 82., 139.),
        (33., 145., 140.),
        (94., 201., 98.),
        (253., 231., 37.),
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (A[i], A[i + 1]);
    RGBColor(
        (a.0 + (b.0 - a.0) * f) as u8,
        (a.1 + (b.1 - a.1) * f) as u8,
        (a.2 + (b.2 - a.2) * f) as u8,
    )
}

fn diverging(t: f64) -> RGBColor {
    // −1 blue, 0 white, +1 red
    let t = t.clamp(-1.0, 1.0);
    let (r, g, b) = if t < 0.0 {
        let f = -t;
        (255.0 - 196.0 * f, 255.0 - 150.0 * f, 255.0 - 75.0 * f)
    } else {
        (255.0 - 50.0 * t, 255.0 - 200.0 * t, 255.0 - 200.0 * t)
    };
    RGBColor(r as u8, g as u8, b as u8)
}

/// A layer × layer heatmap with a colour bar. `range` is the colour scale.
pub fn heatmap(
    title: &str,
    bar_title: &str,
    names: &[String],
    m: &[Vec<f64>],
    range: (f64, f64),
    diverge: bool,
) -> Result<Vec<u8>> {
    let l = names.len();
    let color = |v: f64| {
        if diverge {
            diverging(v / range.1.abs().max(1e-12))
        } else {
            viridis((v - range.0) / (range.1 - range.0).max(1e-12))
        }
    };
    png(1150, 900, |root| {
        let (main, bar) = root.split_horizontally(1010);
        let mut chart = ChartBuilder::on(&main)
            .caption(title, ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(300)
            .build_cartesian_2d(0f64..l as f64, 0f64..l as f64)
            .map_err(perr)?;
        let cell = |x: &f64| {
            let i = (x - 0.5).round();
            ((x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < l).then_some(i as usize)
        };
        let fmt_x = |x: &f64| cell(x).map_or(String::new(), |i| i.to_string());
        let fmt_y = |x: &f64| cell(x).map_or(String::new(), |i| format!("{} {}", i, names[i]));
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * l + 1)
            .y_labels(2 * l + 1)
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .x_desc("depth")
            .x_label_style(("sans-serif", 13))
            .y_label_style(("sans-serif", 13))
            .draw()
            .map_err(perr)?;
        chart
            .draw_series(
                (0..l)
                    .flat_map(|a| (0..l).map(move |b| (a, b)))
                    .map(|(a, b)| {
                        Rectangle::new(
                            [(a as f64, b as f64), (a as f64 + 1.0, b as f64 + 1.0)],
                            color(m[a][b]).filled(),
                        )
                    }),
            )
            .map_err(perr)?;
        let mut cb = ChartBuilder::on(&bar)
            .caption(bar_title, ("sans-serif", 14))
            .margin_top(30)
            .margin_bottom(60)
            .margin_right(10)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..1f64, range.0..range.1)
            .map_err(perr)?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .y_label_style(("sans-serif", 13))
            .draw()
            .map_err(perr)?;
        let steps = 100;
        cb.draw_series((0..steps).map(|i| {
            let lo = range.0 + (range.1 - range.0) * i as f64 / steps as f64;
            let hi = range.0 + (range.1 - range.0) * (i + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, lo), (1.0, hi)], color((lo + hi) / 2.0).filled())
        }))
        .map_err(perr)?;
        Ok(())
    })
}

/// A 2-D PCA scatter of one layer, coloured by set and label.
pub fn scatter(title: &str, pts: &[&PcaPoint]) -> Result<Vec<u8>> {
    let mut groups: Vec<(crate::compare::Side, String)> =
        pts.iter().map(|p| (p.set, p.label.clone())).collect();
    groups.sort();
    groups.dedup();
    let sizes: Vec<usize> = groups
        .iter()
        .map(|g| {
            pts.iter()
                .filter(|p| p.set == g.0 && p.label == g.1)
                .count()
        })
        .collect();
    let palette = [
        BLUE_,
        ORANGE_,
        GREEN_,
        PURPLE_,
        RGBColor(214, 39, 40),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
        RGBColor(23, 190, 207),
    ];
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts {
        x0 = x0.min(p.pc1);
        x1 = x1.max(p.pc1);
        y0 = y0.min(p.pc2);
        y1 = y1.max(p.pc2);
    }
    let pad = |a: f64, b: f64| ((b - a).abs() * 0.05).max(1e-6);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let share = |s: f64| {
        if s > 0.0 {
            format!(" ({:.0} % of the variance)", 100.0 * s)
        } else {
            String::new()
        }
    };
    let first = pts.first();
    let x_desc = format!("PC 1{}", share(first.map_or(0.0, |p| p.pc1_share)));
    let y_desc = format!("PC 2{}", share(first.map_or(0.0, |p| p.pc2_share)));
    // the largest group is drawn first, so that a small one is never buried under it
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(sizes[g]));
    png(1000, 850, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
            .map_err(perr)?;
        chart
            .configure_mesh()
            .x_desc(x_desc.as_str())
            .y_desc(y_desc.as_str())
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(perr)?;
        for &gi in &order {
            let (set, label) = &groups[gi];
            let c = palette[gi % palette.len()];
            let name = if label.is_empty() {
                format!("{set} (n = {})", sizes[gi])
            } else {
                format!("{set}: {label} (n = {})", sizes[gi])
            };
            let mine = pts.iter().filter(|p| &p.set == set && &p.label == label);
            let points: Vec<(f64, f64)> = mine.map(|p| (p.pc1, p.pc2)).collect();
            marker_series(&mut chart, gi, &points, c)?
                .label(name)
                .legend(move |(x, y)| legend_marker(gi, (x + 10, y), c));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(perr)?;
        Ok(())
    })
}

/// Group `g`'s points with its own marker (circle, triangle, cross, square, in turn), half transparent,
/// so that overlapping groups stay readable.
fn marker_series<'c, 'a, 'b>(
    chart: &'c mut Chart<'a, 'b>,
    g: usize,
    points: &[(f64, f64)],
    c: RGBColor,
) -> Result<&'c mut plotters::chart::SeriesAnno<'a, Glyphs<BitMapBackend<'b>>>> {
    let style = c.mix(0.45);
    let anno =
        match g % 4 {
            0 => chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled()))),
            1 => chart.draw_series(
                points
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 4, style.filled())),
            ),
            2 => chart.draw_series(
                points
                    .iter()
                    .map(|&p| Cross::new(p, 3, style.stroke_width(2))),
            ),
            _ => chart.draw_series(points.iter().map(|&p| {
                EmptyElement::at(p) + Rectangle::new([(-3, -3), (3, 3)], style.filled())
            })),
        };
    anno.map_err(perr)
}

/// The legend's marker for group `g` (opaque).
fn legend_marker<DB: DrawingBackend>(
    g: usize,
    at: (i32, i32),
    c: RGBColor,
) -> DynElement<'static, DB, (i32, i32)> {
    match g % 4 {
        0 => Circle::new(at, 5, c.filled()).into_dyn(),
        1 => TriangleMarker::new(at, 6, c.filled()).into_dyn(),
        2 => Cross::new(at, 5, c.stroke_width(2)).into_dyn(),
        _ => Rectangle::new([(at.0 - 5, at.1 - 5), (at.0 + 5, at.1 + 5)], c.filled()).into_dyn(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(values: &[f64]) -> Series {
        Series {
            label: String::new(),
            color: BLUE_,
            points: values
                .iter()
                .enumerate()
                .map(|(d, &v)| (d as f64, v, None, false))
                .collect(),
        }
    }

    /// The legend avoids the quarter where the data is: a curve high on the right sends it down, one low
    /// on the right sends it up, and a free preferred corner is kept.
    #[test]
    fn the_legend_goes_where_the_data_is_not() {
        use SeriesLabelPosition::{LowerRight, UpperRight};
        let rising = [line(&[0.0, 0.1, 0.2, 0.5, 0.8, 0.9, 1.0, 1.0])];
        let falling = [line(&[1.0, 0.9, 0.8, 0.5, 0.2, 0.1, 0.0, 0.0])];
        let y = (0.0, 1.0);
        assert!(matches!(
            legend_corner(&rising, y, None, 8, UpperRight),
            LowerRight
        ));
        assert!(matches!(
            legend_corner(&falling, y, None, 8, LowerRight),
            UpperRight
        ));
        assert!(matches!(
            legend_corner(&falling, y, None, 8, UpperRight),
            UpperRight
        ));
        // a reference line counts as data: flat data in the middle, the line along the top
        let flat = [line(&[0.5; 8])];
        assert!(matches!(
            legend_corner(&flat, y, Some(0.9), 8, UpperRight),
            LowerRight
        ));
    }
}
