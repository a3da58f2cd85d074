//! Plots as SVG and PNG. A `Grid` is one [rows, cols] heatmap (diverging colormap centred at 0,
//! labels, a colour bar, values written in the cells when the grid is small); `Panels` are small
//! multiples of [t, t] heatmaps in [0, 1] (attention patterns: a panel per layer and head);
//! `Lines` is a line plot of means with standard-error whiskers over labelled points (the logit
//! lens); `Scatter` is a scatter plot of two runs' values against each other, with the diagonal.
//! Each is drawn as a `Figure` of rectangles, lines and text, which has the two renderers.
use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use anyhow::Result;

const FONT: &[u8] = include_bytes!("DejaVuSansMono.ttf");
const FONT_PX: f32 = 12.0;
const CHAR_W: usize = 8; // advance of the monospace font at FONT_PX, rounded up
const CELL_H: usize = 24;
const MARGIN: usize = 12;
const BAR_W: usize = 16;
/// Grids up to this many cells get their values written in.
const ANNOTATE_MAX_CELLS: usize = 600;
const BLACK: [u8; 3] = [0, 0, 0];
const GREY: [u8; 3] = [200, 200, 200];

pub struct Grid {
    pub title: String,
    /// Axis titles: what the rows and columns are.
    pub row_title: String,
    pub col_title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// Row-major, rows × cols; NaN cells are drawn grey.
    pub values: Vec<f32>,
}

/// Text anchored at its start, middle or end, vertically centred on `y`.
enum Anchor {
    Start,
    Middle,
    End,
}

struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    color: [u8; 3],
    /// The SVG tooltip.
    title: Option<String>,
}

struct Text {
    x: usize,
    y: usize,
    text: String,
    anchor: Anchor,
    color: [u8; 3],
}

/// A polyline of `width` pixels through points (x, y).
struct Line {
    points: Vec<(f32, f32)>,
    width: f32,
    color: [u8; 3],
}

/// What both renderers draw: rectangles, then lines, then text over them, on white.
struct Figure {
    width: usize,
    height: usize,
    rects: Vec<Rect>,
    lines: Vec<Line>,
    texts: Vec<Text>,
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.replace('\n', "\\n");
    if s.chars().count() <= max {
        s
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}

/// Red for positive, blue for negative, white at 0 (RdBu reversed, as patching plots use).
fn color(v: f32, vmax: f32) -> [u8; 3] {
    if !v.is_finite() {
        return GREY;
    }
    let t = (v / vmax).clamp(-1.0, 1.0);
    let end = if t >= 0.0 { [178.0, 24.0, 43.0] } else { [33.0, 102.0, 172.0] };
    let a = t.abs();
    end.map(|e| (255.0 + (e - 255.0) * a).round() as u8)
}

fn text_color(v: f32, vmax: f32) -> [u8; 3] {
    if v.is_finite() && (v / vmax).abs() > 0.6 {
        [255, 255, 255]
    } else {
        BLACK
    }
}

fn fmt_value(v: f32) -> String {
    if v.is_finite() {
        // Rounds -0.004 to "0.00", not "-0.00".
        format!("{:.2}", if v.abs() < 0.005 { 0.0 } else { v })
    } else {
        String::new()
    }
}

fn text(x: usize, y: usize, text: String, anchor: Anchor, color: [u8; 3]) -> Text {
    Text { x, y, text, anchor, color }
}

/// A vertical colour bar of `h` pixels at (x, y) from `top` down to `bottom`, labelled at both
/// ends (and at `mid` where given).
fn bar(f: &mut Figure, x: usize, y: usize, h: usize, top: f32, bottom: f32, mid: Option<f32>, c: impl Fn(f32) -> [u8; 3]) {
    for i in 0..h {
        let v = top + (bottom - top) * i as f32 / h as f32;
        f.rects.push(Rect { x, y: y + i, w: BAR_W, h: 1, color: c(v), title: None });
    }
    let marks = [Some((0.0, top)), mid.map(|m| (0.5, m)), Some((1.0, bottom))];
    for (frac, v) in marks.into_iter().flatten() {
        f.texts.push(text(x + BAR_W + 4, y + (frac * h as f32) as usize, format!("{v:.2}"), Anchor::Start, BLACK));
    }
}

impl Grid {
    fn annotate(&self) -> bool {
        self.values.len() <= ANNOTATE_MAX_CELLS
    }

    fn figure(&self) -> Figure {
        let longest = |v: &[String]| v.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        let cell_w = (longest(&self.cols).min(14) * CHAR_W + 8).max(48);
        let left = MARGIN + (longest(&self.rows).max(self.row_title.len()).min(20) + 1) * CHAR_W + 20;
        let top = MARGIN + 2 * CELL_H + 4;
        let width = (left + self.cols.len() * cell_w + 3 * MARGIN + BAR_W + 7 * CHAR_W).max(2 * MARGIN + self.title.chars().count() * CHAR_W);
        let height = top + self.rows.len().max(1) * CELL_H + 2 * MARGIN + CELL_H;
        let vmax = self.values.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()));
        let vmax = if vmax > 0.0 { vmax } else { 1.0 };
        let mut f = Figure { width, height, rects: Vec::new(), lines: Vec::new(), texts: Vec::new() };
        f.texts.push(text(MARGIN, MARGIN + CELL_H / 2, self.title.clone(), Anchor::Start, BLACK));
        f.texts.push(text(left - 6, top - CELL_H / 2, self.row_title.clone(), Anchor::End, BLACK));
        f.texts.push(text(left, top + self.rows.len().max(1) * CELL_H + CELL_H / 2 + 4, format!("{} →", self.col_title), Anchor::Start, BLACK));
        for (c, name) in self.cols.iter().enumerate() {
            f.texts.push(text(left + c * cell_w + cell_w / 2, top - CELL_H / 2, truncate(name, 14), Anchor::Middle, BLACK));
        }
        for (r, name) in self.rows.iter().enumerate() {
            f.texts.push(text(left - 6, top + r * CELL_H + CELL_H / 2, truncate(name, 20), Anchor::End, BLACK));
            for (c, col) in self.cols.iter().enumerate() {
                let v = self.values[r * self.cols.len() + c];
                let (x, y) = (left + c * cell_w, top + r * CELL_H);
                f.rects.push(Rect { x, y, w: cell_w, h: CELL_H, color: color(v, vmax), title: Some(format!("{name} {col}: {v}")) });
                if self.annotate() {
                    f.texts.push(text(x + cell_w / 2, y + CELL_H / 2, fmt_value(v), Anchor::Middle, text_color(v, vmax)));
                }
            }
        }
        let bar_x = left + self.cols.len() * cell_w + 2 * MARGIN;
        bar(&mut f, bar_x, top, self.rows.len().max(1) * CELL_H, vmax, -vmax, Some(0.0), |v| color(v, vmax));
        f
    }
}

/// Small multiples: a [t, t] panel per (row, column), e.g. a layer's head's attention pattern
/// (destination down, source across), on a white-to-blue scale over [0, 1].
pub struct Panels {
    pub title: String,
    /// Panel rows' and columns' labels, e.g. layers and heads.
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// The t labels of each panel's axes (tokens).
    pub labels: Vec<String>,
    /// [rows, cols, t, t] row-major; NaN cells are drawn grey.
    pub values: Vec<f32>,
}

/// White to blue over [0, 1].
fn blue(v: f32) -> [u8; 3] {
    if !v.is_finite() {
        return GREY;
    }
    let a = v.clamp(0.0, 1.0);
    [33.0, 102.0, 172.0].map(|e: f32| (255.0 + (e - 255.0) * a).round() as u8)
}

impl Panels {
    fn figure(&self) -> Figure {
        let t = self.labels.len();
        // Cells shrink as prompts grow, so that panels stay about 160 pixels wide.
        let cell = (160 / t.max(1)).clamp(3, 14);
        let panel = t * cell;
        let gap = 3 * CHAR_W;
        // Token labels fit beside the first panel column and above the first row when cells are tall enough.
        let tokens = cell >= 10;
        let label_w = if tokens { self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).min(12) * CHAR_W + 8 } else { 0 };
        let row_w = self.rows.iter().map(|l| l.chars().count()).max().unwrap_or(0) * CHAR_W + 8;
        let left = MARGIN + row_w + label_w;
        let top = MARGIN + 2 * CELL_H + if tokens { label_w } else { 0 };
        let width = (left + self.cols.len() * (panel + gap) + 2 * MARGIN + BAR_W + 6 * CHAR_W).max(2 * MARGIN + self.title.chars().count() * CHAR_W);
        let height = top + self.rows.len() * (panel + gap) + MARGIN;
        let mut f = Figure { width, height, rects: Vec::new(), lines: Vec::new(), texts: Vec::new() };
        f.texts.push(text(MARGIN, MARGIN + CELL_H / 2, self.title.clone(), Anchor::Start, BLACK));
        for (c, name) in self.cols.iter().enumerate() {
            f.texts.push(text(left + c * (panel + gap) + panel / 2, MARGIN + CELL_H + CELL_H / 2, name.clone(), Anchor::Middle, BLACK));
        }
        for (r, name) in self.rows.iter().enumerate() {
            let y0 = top + r * (panel + gap);
            f.texts.push(text(MARGIN, y0 + panel / 2, name.clone(), Anchor::Start, BLACK));
            for c in 0..self.cols.len() {
                let x0 = left + c * (panel + gap);
                let start = (r * self.cols.len() + c) * t * t;
                for d in 0..t {
                    for s in 0..t {
                        let v = self.values[start + d * t + s];
                        let title = format!("{name} {}: {} → {}: {v:.4}", self.cols[c], self.labels[d], self.labels[s]);
                        f.rects.push(Rect { x: x0 + s * cell, y: y0 + d * cell, w: cell, h: cell, color: blue(v), title: Some(title) });
                    }
                }
            }
            if tokens {
                for (d, l) in self.labels.iter().enumerate() {
                    f.texts.push(text(left - 4, y0 + d * cell + cell / 2, truncate(l, 12), Anchor::End, BLACK));
                }
            }
        }
        if tokens {
            // Source tokens above the first row, one short label per column, written downwards as
            // a column of characters would not fit: truncated to the panel's cell width instead.
            for (s, l) in self.labels.iter().enumerate() {
                let chars = (cell / CHAR_W).max(1);
                f.texts.push(text(left + s * cell + cell / 2, top - 6, truncate(l.trim(), chars), Anchor::Middle, BLACK));
            }
        }
        let bar_x = left + self.cols.len() * (panel + gap) + MARGIN;
        bar(&mut f, bar_x, top, panel.max(CELL_H * 3), 1.0, 0.0, None, blue);
        f
    }
}

/// A line plot: each series' mean at every labelled point, with ± standard error whiskers.
pub struct Lines {
    pub title: String,
    pub y_title: String,
    /// The points' labels along the x axis.
    pub labels: Vec<String>,
    /// (name, mean, sem) per series; NaN points are left out.
    pub series: Vec<(String, Vec<f32>, Vec<f32>)>,
}

/// Line colours (matplotlib's first ones).
const SERIES: [[u8; 3]; 4] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];

impl Lines {
    fn figure(&self) -> Figure {
        let (plot_w, plot_h) = ((self.labels.len().max(2) * 36).max(360), 280);
        let longest = self.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).min(16);
        let (left, top) = (MARGIN + 10 * CHAR_W, MARGIN + 2 * CELL_H);
        let bottom = top + plot_h;
        let width = (left + plot_w + 2 * MARGIN + 20 * CHAR_W).max(2 * MARGIN + self.title.chars().count() * CHAR_W);
        let height = bottom + longest * CHAR_W + 3 * MARGIN + CELL_H;
        let mut f = Figure { width, height, rects: Vec::new(), lines: Vec::new(), texts: Vec::new() };
        f.texts.push(text(MARGIN, MARGIN + CELL_H / 2, self.title.clone(), Anchor::Start, BLACK));
        f.texts.push(text(MARGIN, top - CELL_H / 2, self.y_title.clone(), Anchor::Start, BLACK));
        let finite = self.series.iter().flat_map(|(_, m, e)| m.iter().zip(e).flat_map(|(&m, &e)| [m - e.max(0.0), m + e.max(0.0), m])).filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((0.0f32, 0.0f32), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 1.0, hi + 1.0) };
        let n = self.labels.len().max(1);
        let x = |i: usize| left as f32 + (i as f32 + 0.5) * plot_w as f32 / n as f32;
        let y = |v: f32| top as f32 + (hi - v) / (hi - lo) * plot_h as f32;
        // Axes, the zero line and ticks at the ends and at 0.
        let axis = [200, 200, 200];
        f.lines.push(Line { points: vec![(left as f32, top as f32), (left as f32, bottom as f32), ((left + plot_w) as f32, bottom as f32)], width: 1.0, color: BLACK });
        f.lines.push(Line { points: vec![(left as f32, y(0.0)), ((left + plot_w) as f32, y(0.0))], width: 1.0, color: axis });
        for v in [lo, 0.0, hi] {
            f.texts.push(text(left - 6, y(v) as usize, format!("{v:.2}"), Anchor::End, BLACK));
        }
        for (i, l) in self.labels.iter().enumerate() {
            // One character a line: labels read downwards under their point.
            for (k, ch) in truncate(l, 16).chars().enumerate() {
                f.texts.push(text(x(i) as usize, bottom + 10 + k * (CHAR_W + 4), ch.to_string(), Anchor::Middle, BLACK));
            }
        }
        for (si, (name, mean, sem)) in self.series.iter().enumerate() {
            let c = SERIES[si % SERIES.len()];
            let points: Vec<(f32, f32)> = mean.iter().enumerate().filter(|(_, m)| m.is_finite()).map(|(i, &m)| (x(i), y(m))).collect();
            for (i, (&m, &e)) in mean.iter().zip(sem).enumerate().filter(|(_, (m, e))| m.is_finite() && e.is_finite()) {
                f.lines.push(Line { points: vec![(x(i), y(m - e)), (x(i), y(m + e))], width: 1.0, color: c });
            }
            for &(px, py) in &points {
                f.rects.push(Rect { x: px as usize - 2, y: py as usize - 2, w: 5, h: 5, color: c, title: None });
            }
            f.lines.push(Line { points, width: 2.0, color: c });
            f.texts.push(text(left + plot_w + MARGIN, top + si * CELL_H + CELL_H / 2, format!("— {name}"), Anchor::Start, c));
        }
        f
    }
}

/// Points (x, y) on one scale for both axes, with the diagonal y = x (agreement) and y = 0, x = 0.
pub struct Scatter {
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    pub points: Vec<(f32, f32)>,
}

impl Scatter {
    fn figure(&self) -> Figure {
        let side = 400;
        let (left, top) = (MARGIN + 10 * CHAR_W, MARGIN + 2 * CELL_H);
        let width = (left + side + 2 * MARGIN).max(2 * MARGIN + self.title.chars().count().max(self.x_title.chars().count()) * CHAR_W);
        let height = top + side + 3 * CELL_H;
        let mut f = Figure { width, height, rects: Vec::new(), lines: Vec::new(), texts: Vec::new() };
        f.texts.push(text(MARGIN, MARGIN + CELL_H / 2, self.title.clone(), Anchor::Start, BLACK));
        f.texts.push(text(MARGIN, top - CELL_H / 2, format!("↑ {}", self.y_title), Anchor::Start, BLACK));
        f.texts.push(text(left, top + side + 2 * CELL_H, format!("{} →", self.x_title), Anchor::Start, BLACK));
        let (lo, hi) = self.points.iter().flat_map(|&(x, y)| [x, y]).fold((0.0f32, 0.0f32), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 1.0, hi + 1.0) };
        let scale = |v: f32| (v - lo) / (hi - lo) * side as f32;
        let (px, py) = (|x: f32| left as f32 + scale(x), |y: f32| (top + side) as f32 - scale(y));
        let (l, r, t, b) = (left as f32, (left + side) as f32, top as f32, (top + side) as f32);
        f.lines.push(Line { points: vec![(l, t), (l, b), (r, b)], width: 1.0, color: BLACK });
        f.lines.push(Line { points: vec![(px(0.0), t), (px(0.0), b)], width: 1.0, color: GREY });
        f.lines.push(Line { points: vec![(l, py(0.0)), (r, py(0.0))], width: 1.0, color: GREY });
        f.lines.push(Line { points: vec![(px(lo), py(lo)), (px(hi), py(hi))], width: 1.0, color: SERIES[1] });
        for v in [lo, 0.0, hi] {
            f.texts.push(text(left - 6, py(v) as usize, format!("{v:.2}"), Anchor::End, BLACK));
            f.texts.push(text(px(v) as usize, top + side + CELL_H / 2 + 2, format!("{v:.2}"), Anchor::Middle, BLACK));
        }
        for &(x, y) in &self.points {
            f.rects.push(Rect { x: px(x) as usize - 1, y: py(y) as usize - 1, w: 3, h: 3, color: SERIES[0], title: None });
        }
        f
    }
}

pub fn scatter_svg(s: &Scatter) -> String {
    s.figure().svg()
}

pub fn scatter_png(s: &Scatter) -> Result<Vec<u8>> {
    s.figure().png()
}

pub fn lines_svg(l: &Lines) -> String {
    l.figure().svg()
}

pub fn lines_png(l: &Lines) -> Result<Vec<u8>> {
    l.figure().png()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Figure {
    fn svg(&self) -> String {
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans Mono, monospace" font-size="{FONT_PX}">
<rect width="100%" height="100%" fill="white"/>
"#,
            w = self.width,
            h = self.height
        );
        let hex = |c: [u8; 3]| format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
        for r in &self.rects {
            let (x, y, w, h, fill) = (r.x, r.y, r.w, r.h, hex(r.color));
            s += &match &r.title {
                Some(t) => format!("<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"{fill}\"><title>{}</title></rect>\n", escape(t)),
                None => format!("<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"{fill}\"/>\n"),
            };
        }
        for l in &self.lines {
            let points: Vec<String> = l.points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            s += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"/>\n", points.join(" "), hex(l.color), l.width);
        }
        for t in &self.texts {
            let anchor = match t.anchor {
                Anchor::Start => "start",
                Anchor::Middle => "middle",
                Anchor::End => "end",
            };
            s += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\" dominant-baseline=\"central\" fill=\"{}\" xml:space=\"preserve\">{}</text>\n",
                t.x,
                t.y,
                hex(t.color),
                escape(&t.text)
            );
        }
        s + "</svg>\n"
    }

    fn png(&self) -> Result<Vec<u8>> {
        let (w, h) = (self.width, self.height);
        let mut img = vec![255u8; w * h * 3];
        for r in &self.rects {
            for y in r.y..(r.y + r.h).min(h) {
                for x in r.x..(r.x + r.w).min(w) {
                    img[(y * w + x) * 3..][..3].copy_from_slice(&r.color);
                }
            }
        }
        // Lines as runs of squares along each segment, a pixel apart.
        for l in &self.lines {
            let half = (l.width / 2.0).max(0.5);
            for seg in l.points.windows(2) {
                let ((x0, y0), (x1, y1)) = (seg[0], seg[1]);
                let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
                for k in 0..=steps {
                    let t = k as f32 / steps as f32;
                    let (cx, cy) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
                    for py in (cy - half + 0.5).floor().max(0.0) as usize..((cy + half + 0.5).floor().max(0.0) as usize).min(h) {
                        for px in (cx - half + 0.5).floor().max(0.0) as usize..((cx + half + 0.5).floor().max(0.0) as usize).min(w) {
                            img[(py * w + px) * 3..][..3].copy_from_slice(&l.color);
                        }
                    }
                }
            }
        }
        let font = FontRef::try_from_slice(FONT)?;
        let scale = PxScale::from(FONT_PX * 1.2);
        let scaled = font.as_scaled(scale);
        for t in &self.texts {
            let width: f32 = t.text.chars().map(|ch| scaled.h_advance(font.glyph_id(ch))).sum();
            let mut caret = match t.anchor {
                Anchor::Start => t.x as f32,
                Anchor::Middle => t.x as f32 - width / 2.0,
                Anchor::End => t.x as f32 - width,
            };
            let baseline = t.y as f32 + (scaled.ascent() + scaled.descent()) / 2.0;
            for ch in t.text.chars() {
                let id = font.glyph_id(ch);
                if let Some(outline) = font.outline_glyph(id.with_scale_and_position(scale, ab_glyph::point(caret, baseline))) {
                    let b = outline.px_bounds();
                    outline.draw(|gx, gy, cov| {
                        let (px, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
                        if px >= 0 && py >= 0 && (px as usize) < w && (py as usize) < h {
                            let p = &mut img[(py as usize * w + px as usize) * 3..][..3];
                            for k in 0..3 {
                                p[k] = (p[k] as f32 * (1.0 - cov) + t.color[k] as f32 * cov).round() as u8;
                            }
                        }
                    });
                }
                caret += scaled.h_advance(id);
            }
        }
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&img)?;
        Ok(out)
    }
}

pub fn svg(g: &Grid) -> String {
    g.figure().svg()
}

pub fn png(g: &Grid) -> Result<Vec<u8>> {
    g.figure().png()
}

pub fn panels_svg(p: &Panels) -> String {
    p.figure().svg()
}

pub fn panels_png(p: &Panels) -> Result<Vec<u8>> {
    p.figure().png()
}
