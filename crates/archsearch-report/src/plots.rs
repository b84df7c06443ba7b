//! SVG plots, drawn with plotters into strings.
//!
//! Four kinds cover every section: [`xy_chart`] (lines, step lines, dots,
//! crosses and bands on numeric axes), [`heat_map`] (a grid of fractions),
//! [`error_bars`] (mean ± std per category) and [`lineage`] (the PBT family
//! tree). Each returns a whole `<svg>` document, about 640 × 360 pixels.
//! Non-finite points are skipped and degenerate ranges (one point, equal
//! values, nothing at all) are widened, so no input makes a plot fail; a
//! drawing error, should one happen, gives a small SVG stating it.

use std::error::Error;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::{Edge, MemberLife};

/// Plot width in pixels.
pub(crate) const W: u32 = 640;
/// Plot height in pixels (heat maps and lineage graphs grow with their rows).
pub(crate) const H: u32 = 360;
const FONT: &str = "sans-serif";

/// Colours of categorical series (Tableau 10).
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
pub(crate) const C_BLUE: RGBColor = PALETTE[0];
pub(crate) const C_ORANGE: RGBColor = PALETTE[1];
pub(crate) const C_GREEN: RGBColor = PALETTE[2];
pub(crate) const C_RED: RGBColor = PALETTE[3];
pub(crate) const C_PURPLE: RGBColor = PALETTE[4];
pub(crate) const C_GREY: RGBColor = PALETTE[7];

/// `c` moved a fraction `f` of the way to white.
pub(crate) fn lighten(c: RGBColor, f: f64) -> RGBColor {
    let f = f.clamp(0.0, 1.0);
    let mix = |a: u8| (a as f64 + (255.0 - a as f64) * f).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// The `i`-th categorical colour.
pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn Error>>;

/// Draws into a fresh SVG of `size`; a drawing error gives an SVG that says so.
fn render(size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> DrawResult) -> String {
    let mut buf = String::new();
    let outcome = {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(Box::<dyn Error>::from).and_then(|()| draw(&root)).and_then(|()| Ok(root.present()?))
    };
    match outcome {
        Ok(()) => buf,
        Err(e) => error_svg(size, &e.to_string()),
    }
}

/// A plain SVG holding one line of (escaped) text.
fn error_svg(size: (u32, u32), message: &str) -> String {
    format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"10\" y=\"20\" font-family=\"sans-serif\" font-size=\"13\">plot failed: {}</text></svg>\n",
        crate::html::escape(message),
        w = size.0,
        h = size.1
    )
}

/// The range an axis shows for `values`: the finite ones padded by 5 %; one
/// value (or equal values) widened around it; nothing: `0..1`.
pub(crate) fn span(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.into_iter().filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo <= 1e-12 * lo.abs().max(1.0) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        return (lo - d, hi + d);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// An axis tick label: at most six decimals, trailing zeros dropped
/// (`20`, not `20.0`).
fn tick(v: &f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Straight segments between the points.
    Line,
    /// A step function: each value holds until the next point.
    Step,
    /// A line with a dot at every point.
    LineDots,
    Dots,
    Crosses,
    /// Crosses along the bottom of the plot at the points' x (for things
    /// that have no value, such as failed trials); their y is ignored.
    FloorCrosses,
    /// A filled polygon (a ±std band: the upper edge, then the lower edge reversed).
    Band,
}

/// One series of an [`xy_chart`].
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Shown in the legend when set.
    pub label: Option<String>,
    pub color: RGBColor,
    pub mark: Mark,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: Option<String>, color: RGBColor, mark: Mark, points: Vec<(f64, f64)>) -> Self {
        Series { label, color, mark, points }
    }
}

/// Titles of a plot and its axes, and where its legend goes.
pub(crate) struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    /// The legend in the lower right corner (else the upper right).
    pub legend_low: bool,
}

/// Points drawn per series at most: a longer series keeps evenly spaced
/// points and its last (at 640 pixels wide, nothing visible is lost).
const MAX_POINTS: usize = 2_000;

fn thinned(s: &Series) -> Series {
    let n = s.points.len();
    if n <= MAX_POINTS {
        return s.clone();
    }
    let stride = n.div_ceil(MAX_POINTS);
    let mut points: Vec<(f64, f64)> = s.points.iter().copied().step_by(stride).collect();
    if (n - 1) / stride * stride < n - 1 {
        points.push(s.points[n - 1]);
    }
    Series { points, ..s.clone() }
}

/// A chart of numeric series on numeric axes.
pub(crate) fn xy_chart(axes: &Axes<'_>, series: &[Series]) -> String {
    let series: Vec<Series> = series.iter().map(thinned).collect();
    let series = series.as_slice();
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let (x0, x1) = span(series.iter().flat_map(|s| s.points.iter().filter(finite).map(|p| p.0)));
    let (y0, y1) = span(series.iter().filter(|s| s.mark != Mark::FloorCrosses).flat_map(|s| s.points.iter().filter(finite).map(|p| p.1)));
    render((W, H), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(axes.title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        let mut labelled = false;
        for s in series {
            let c = s.color;
            let pts: Vec<(f64, f64)> = s.points.iter().filter(finite).copied().collect();
            let anno = match s.mark {
                Mark::Line => chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))?,
                Mark::Step => {
                    let mut stepped = Vec::with_capacity(pts.len() * 2);
                    for (i, &(x, y)) in pts.iter().enumerate() {
                        if i > 0 {
                            stepped.push((x, pts[i - 1].1));
                        }
                        stepped.push((x, y));
                    }
                    chart.draw_series(LineSeries::new(stepped, c.stroke_width(2)))?
                }
                Mark::LineDots => {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, c.filled())))?;
                    chart.draw_series(LineSeries::new(pts, c.stroke_width(1)))?
                }
                Mark::Dots => chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?,
                Mark::Crosses => chart.draw_series(pts.into_iter().map(|p| Cross::new(p, 4, c.stroke_width(2))))?,
                Mark::FloorCrosses => {
                    let floor = y0 + (y1 - y0) * 0.02;
                    chart.draw_series(pts.into_iter().map(|(x, _)| Cross::new((x, floor), 4, c.stroke_width(2))))?
                }
                Mark::Band => chart.draw_series(std::iter::once(Polygon::new(pts, c.mix(0.2).filled())))?,
            };
            if let Some(label) = &s.label {
                labelled = true;
                anno.label(label.as_str());
                match s.mark {
                    Mark::Dots => anno.legend(move |(x, y)| Circle::new((x + 9, y), 3, c.filled())),
                    Mark::Crosses | Mark::FloorCrosses => anno.legend(move |(x, y)| Cross::new((x + 9, y), 4, c.stroke_width(2))),
                    Mark::Band => anno.legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], c.mix(0.2).filled())),
                    Mark::Line | Mark::Step | Mark::LineDots => {
                        anno.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)))
                    }
                };
            }
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(if axes.legend_low { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(190, 190, 190))
                .label_font((FONT, 12))
                .draw()?;
        }
        Ok(())
    })
}

/// Shade of a fraction in `0..=1`: white to dark blue.
fn shade(f: f64) -> RGBColor {
    let f = if f.is_finite() { f.clamp(0.0, 1.0) } else { 0.0 };
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(mix(255, 8), mix(255, 48), mix(255, 107))
}

/// A grid of fractions: one row per entry of `rows` (top to bottom), one
/// column per option (`columns` names them), `cells[row][col]` in `0..=1`.
/// Rows may be shorter than `columns` (cells past their end are blank).
/// `reference`, when set, is marked on the colour bar (e.g. the uniform
/// share 1/K).
pub(crate) fn heat_map(title: &str, rows: &[String], columns: &[String], cells: &[Vec<f64>], reference: Option<f64>) -> String {
    let (l, k) = (rows.len().max(1), columns.len().max(1));
    let cell_h: i32 = if l > 30 { 14 } else { 22 };
    let height = (70 + cell_h * l as i32 + 50).max(200);
    let label_w = (rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as i32 * 7 + 14).clamp(40, 160);
    let (left, top, bar_w) = (label_w + 10, 40, 90);
    let grid_w = W as i32 - left - bar_w - 10;
    let cell_w = grid_w / k as i32;
    render((W, height as u32), |root| {
        let center = |size: i32| (FONT, size).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(title.to_string(), (W as i32 / 2, 18), center(16)))?;
        for (r, name) in rows.iter().enumerate() {
            let y = top + r as i32 * cell_h;
            let style = (FONT, 12).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(name.clone(), (left - 6, y + cell_h / 2), style))?;
            for c in 0..k {
                let x = left + c as i32 * cell_w;
                let rect = [(x, y), (x + cell_w - 1, y + cell_h - 1)];
                match cells.get(r).and_then(|row| row.get(c)) {
                    Some(&f) => {
                        root.draw(&Rectangle::new(rect, shade(f).filled()))?;
                        if cell_w >= 30 && cell_h >= 18 {
                            let ink = if f > 0.5 { WHITE } else { BLACK };
                            let style = (FONT, 11).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                            root.draw(&Text::new(format!("{f:.2}"), (x + cell_w / 2, y + cell_h / 2), style))?;
                        }
                    }
                    None => root.draw(&Rectangle::new(rect, RGBColor(245, 245, 245).filled()))?,
                }
            }
        }
        let bottom = top + l as i32 * cell_h;
        let every = k.div_ceil(((grid_w / 40).max(1)) as usize).max(1);
        for (c, name) in columns.iter().enumerate().filter(|(c, _)| c % every == 0) {
            let max_chars = ((cell_w * every as i32) / 7).max(2) as usize;
            let text: String =
                if name.chars().count() > max_chars { name.chars().take(max_chars - 1).chain(['…']).collect() } else { name.clone() };
            let style = (FONT, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(text, (left + c as i32 * cell_w + cell_w / 2, bottom + 6), style))?;
        }
        root.draw(&Text::new("option".to_string(), (left + grid_w / 2, bottom + 30), center(13)))?;
        // The colour bar, 0 at the bottom, 1 at the top.
        let (bx, bar_h) = (W as i32 - bar_w + 10, (bottom - top).max(60));
        let steps = 40;
        for i in 0..steps {
            let f = i as f64 / (steps - 1) as f64;
            let y1 = top + bar_h - (bar_h * (i + 1)) / steps;
            let y2 = top + bar_h - (bar_h * i) / steps;
            root.draw(&Rectangle::new([(bx, y1), (bx + 14, y2)], shade(f).filled()))?;
        }
        root.draw(&Rectangle::new([(bx, top), (bx + 14, top + bar_h)], RGBColor(160, 160, 160)))?;
        let tick = (FONT, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new("1".to_string(), (bx + 18, top), tick.clone()))?;
        root.draw(&Text::new("0".to_string(), (bx + 18, top + bar_h), tick.clone()))?;
        if let Some(r) = reference.filter(|r| r.is_finite() && (0.0..=1.0).contains(r)) {
            let y = top + bar_h - (bar_h as f64 * r).round() as i32;
            root.draw(&PathElement::new(vec![(bx - 3, y), (bx + 17, y)], C_RED.stroke_width(2)))?;
            root.draw(&Text::new(format!("1/K={r:.2}"), (bx + 18, y), tick))?;
        }
        Ok(())
    })
}

/// Mean ± std per category (a marker and whiskers), categories along x.
pub(crate) fn error_bars(title: &str, y_desc: &str, labels: &[String], stats: &[(f64, f64)]) -> String {
    let n = labels.len().max(1);
    let (y0, y1) = span(stats.iter().flat_map(|&(m, s)| {
        let s = if s.is_finite() { s } else { 0.0 };
        [m - s, m + s]
    }));
    render((W, H), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, y0..y1)?;
        let name = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&name)
            .x_desc("strategy")
            .y_desc(y_desc)
            .y_label_formatter(&tick)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        for (i, &(m, s)) in stats.iter().enumerate().filter(|(_, (m, _))| m.is_finite()) {
            let c = color(i);
            let s = if s.is_finite() { s } else { 0.0 };
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(i as f64, m - s, m, m + s, c.stroke_width(2), 14)))?;
        }
        Ok(())
    })
}

/// Colour of a member's node by how it came to be.
fn event_color(event: &str) -> RGBColor {
    match event {
        "initial" => C_BLUE,
        "child" => C_GREEN,
        "exploit" => C_PURPLE,
        "mutation" => C_ORANGE,
        _ => C_GREY,
    }
}

/// Lanes for the members: each takes the lowest lane free since its birth
/// (a lane is free after its last member's last step), so a population of
/// `N` needs about `N` lanes however long it runs.
fn lanes(lives: &[MemberLife]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lives.len()).collect();
    order.sort_by_key(|&i| (lives[i].born_at_step, lives[i].id));
    let mut lane_end: Vec<u64> = Vec::new();
    let mut lane = vec![0; lives.len()];
    for i in order {
        let m = &lives[i];
        let free = lane_end.iter().position(|&end| end < m.born_at_step);
        let l = free.unwrap_or_else(|| {
            lane_end.push(0);
            lane_end.len() - 1
        });
        lane_end[l] = m.last_step();
        lane[i] = l;
    }
    lane
}

/// The lineage graph: one node per member at the step it was born (colour:
/// how it came to be), a thin line over the steps it lived, and an edge from
/// each parent (at the parent's last step before the birth) to the child;
/// an edge that brought more than a copy is labelled with those positions
/// (`pos 1,3`).
pub(crate) fn lineage(title: &str, lives: &[MemberLife], edges: &[Edge]) -> String {
    let lane = lanes(lives);
    let nlanes = lane.iter().max().map_or(1, |m| m + 1);
    let mut events: Vec<&str> = lives.iter().map(|m| m.event.as_str()).collect();
    events.sort_unstable();
    events.dedup();
    // Room above the top lane for the legend (about 20 px an entry, 30 px a lane).
    let legend_room = 0.3 + 0.7 * events.len() as f64;
    let height = (90 + (30.0 * (nlanes as f64 + legend_room)) as u32).clamp(H, 1200);
    let last = lives.iter().map(MemberLife::last_step).max().unwrap_or(0);
    let first = lives.iter().map(|m| m.born_at_step).min().unwrap_or(0);
    let at = |id: u64| lives.iter().position(|m| m.id == id);
    render((W, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(20)
            .build_cartesian_2d(first as f64 - 0.4..last as f64 + 0.6, -0.6..nlanes as f64 - 0.4 + legend_room)?;
        let step_label = |v: &f64| if (v - v.round()).abs() < 1e-6 { format!("{}", v.round() as i64) } else { String::new() };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_labels(((last - first) as usize + 1).min(20))
            .x_label_formatter(&step_label)
            .x_desc("step")
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let y_of = |i: usize| (nlanes - 1 - lane[i]) as f64;
        // Lifelines.
        for (i, m) in lives.iter().enumerate() {
            let y = y_of(i);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(m.born_at_step as f64, y), (m.last_step() as f64, y)],
                RGBColor(200, 200, 200).stroke_width(3),
            )))?;
        }
        // Edges, the parent end at its last record before the child's birth.
        for e in edges {
            let (Some(c), Some(p)) = (at(e.child), at(e.parent)) else { continue };
            let child = &lives[c];
            let parent = &lives[p];
            let px = parent.fitness.iter().map(|(s, _)| *s).filter(|&s| s < child.born_at_step).max().unwrap_or(parent.born_at_step);
            let (from, to) = ((px as f64, y_of(p)), (child.born_at_step as f64, y_of(c)));
            let style = if e.mixed.is_empty() { C_GREY.stroke_width(1) } else { C_ORANGE.stroke_width(2) };
            chart.draw_series(std::iter::once(PathElement::new(vec![from, to], style)))?;
            if !e.mixed.is_empty() {
                let text = format!("pos {}", e.mixed.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(","));
                let mid = ((from.0 + to.0) / 2.0, (from.1 + to.1) / 2.0);
                let style = (FONT, 11).into_font().color(&C_ORANGE.mix(1.0)).pos(Pos::new(HPos::Center, VPos::Bottom));
                chart.draw_series(std::iter::once(Text::new(text, mid, style)))?;
            }
        }
        // Nodes, one legend entry per event.
        for &ev in &events {
            let c = event_color(ev);
            let nodes = lives.iter().enumerate().filter(|(_, m)| m.event == ev).map(|(i, m)| {
                let label = (FONT, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Bottom));
                EmptyElement::at((m.born_at_step as f64, y_of(i)))
                    + Circle::new((0, 0), 5, c.filled())
                    + Text::new(format!("{}", m.id), (5, -4), label)
            });
            chart.draw_series(nodes)?.label(ev).legend(move |(x, y)| Circle::new((x + 9, y), 5, c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .label_font((FONT, 12))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_svg(s: &str) -> bool {
        s.starts_with("<svg") && s.trim_end().ends_with("</svg>")
    }

    #[test]
    fn long_series_are_thinned_to_evenly_spaced_points_and_their_last() {
        let s = Series::new(None, C_BLUE, Mark::Step, (0..10_001).map(|i| (i as f64, i as f64)).collect());
        let t = thinned(&s);
        assert!(t.points.len() <= MAX_POINTS + 1, "{}", t.points.len());
        assert_eq!((t.points[0], *t.points.last().unwrap()), ((0.0, 0.0), (10_000.0, 10_000.0)));
        let short = Series::new(None, C_BLUE, Mark::Dots, vec![(0.0, 1.0); 10]);
        assert_eq!(thinned(&short).points, short.points);
        let huge = xy_chart(&Axes { title: "t", x: "x", y: "y", legend_low: false }, &[s]);
        assert!(is_svg(&huge) && huge.len() < 400_000, "{} bytes", huge.len());
    }

    #[test]
    fn spans_widen_degenerate_ranges() {
        assert_eq!(span([]), (0.0, 1.0));
        assert_eq!(span([f64::NAN]), (0.0, 1.0));
        assert_eq!(span([0.0]), (-1.0, 1.0));
        assert_eq!(span([2.0, 2.0]), (1.9, 2.1));
        let (lo, hi) = span([0.0, 10.0, f64::INFINITY]);
        assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12);
    }

    #[test]
    fn charts_survive_degenerate_data() {
        let axes = Axes { title: "t <&>", x: "x", y: "y", legend_low: false };
        for pts in [vec![], vec![(0.0, 1.0)], vec![(0.0, 1.0), (1.0, 1.0)], vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)]] {
            let series: Vec<Series> = [Mark::Line, Mark::Step, Mark::LineDots, Mark::Dots, Mark::Crosses, Mark::FloorCrosses, Mark::Band]
                .into_iter()
                .map(|m| Series::new(Some(format!("{m:?}")), C_BLUE, m, pts.clone()))
                .collect();
            let svg = xy_chart(&axes, &series);
            assert!(is_svg(&svg), "{svg}");
            assert!(!svg.contains("plot failed"), "{svg}");
            assert!(svg.contains("t &lt;&amp;&gt;"));
        }
        assert!(is_svg(&xy_chart(&axes, &[])));
    }

    #[test]
    fn heat_maps_and_error_bars_draw() {
        let svg = heat_map("h", &["pos0".into(), "pos1".into()], &["a".into(), "b".into()], &[vec![1.0, 0.0], vec![0.5]], Some(0.5));
        assert!(is_svg(&svg) && !svg.contains("plot failed"));
        assert!(svg.contains("1/K=0.50"));
        let svg = heat_map("h", &[], &[], &[], None);
        assert!(is_svg(&svg) && !svg.contains("plot failed"));
        let svg = error_bars("e", "y", &["a".into(), "b".into()], &[(1.0, 0.1), (f64::NAN, 0.0)]);
        assert!(is_svg(&svg) && !svg.contains("plot failed"), "{svg}");
        assert!(is_svg(&error_bars("e", "y", &[], &[])));
    }

    #[test]
    fn lanes_are_reused_after_a_member_is_replaced() {
        let life = |id: u64, born: u64, last: u64| MemberLife {
            id,
            born_at_step: born,
            event: "initial".into(),
            parents: vec![],
            lineage: vec![],
            arch: String::new(),
            fitness: (born..=last).map(|s| (s, Some(0.5))).collect(),
            error: None,
        };
        let lives = vec![life(0, 0, 3), life(1, 0, 0), life(2, 1, 1), life(3, 2, 3)];
        assert_eq!(lanes(&lives), vec![0, 1, 1, 1]);
        assert!(is_svg(&lineage("l", &lives, &[])));
        assert!(is_svg(&lineage("l", &[], &[])));
    }
}
