//! Heatmaps of a [rows, cols] grid as SVG and PNG: diverging colormap centred at 0, labels, a
//! colour bar, and values written in the cells when the grid is small.
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

/// Pixel layout shared by both renderers.
struct Layout {
    cell_w: usize,
    left: usize,
    top: usize,
    width: usize,
    height: usize,
    vmax: f32,
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.replace('\n', "\\n");
    if s.chars().count() <= max {
        s
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}

impl Grid {
    fn layout(&self) -> Layout {
        let longest = |v: &[String]| v.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        let cell_w = (longest(&self.cols).min(14) * CHAR_W + 8).max(48);
        let left = MARGIN + (longest(&self.rows).max(self.row_title.len()).min(20) + 1) * CHAR_W + 20;
        let top = MARGIN + 2 * CELL_H + 4;
        let width = (left + self.cols.len() * cell_w + 3 * MARGIN + BAR_W + 7 * CHAR_W).max(2 * MARGIN + self.title.chars().count() * CHAR_W);
        let height = top + self.rows.len().max(1) * CELL_H + 2 * MARGIN + CELL_H;
        let vmax = self.values.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()));
        Layout { cell_w, left, top, width, height, vmax: if vmax > 0.0 { vmax } else { 1.0 } }
    }

    fn annotate(&self) -> bool {
        self.values.len() <= ANNOTATE_MAX_CELLS
    }
}

/// Red for positive, blue for negative, white at 0 (RdBu reversed, as patching plots use).
fn color(v: f32, vmax: f32) -> [u8; 3] {
    if !v.is_finite() {
        return [200, 200, 200];
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
        [0, 0, 0]
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

/// Every label of the figure: (x, y of the text's middle, text, anchor, colour).
enum Anchor {
    Start,
    Middle,
    End,
}

fn labels(g: &Grid, l: &Layout) -> Vec<(usize, usize, String, Anchor, [u8; 3])> {
    let black = [0, 0, 0];
    let mut out = vec![
        (MARGIN, MARGIN + CELL_H / 2, g.title.clone(), Anchor::Start, black),
        (l.left - 6, l.top - CELL_H / 2, g.row_title.clone(), Anchor::End, black),
        (l.left, l.top + g.rows.len().max(1) * CELL_H + CELL_H / 2 + 4, format!("{} →", g.col_title), Anchor::Start, black),
    ];
    for (c, name) in g.cols.iter().enumerate() {
        out.push((l.left + c * l.cell_w + l.cell_w / 2, l.top - CELL_H / 2, truncate(name, 14), Anchor::Middle, black));
    }
    for (r, name) in g.rows.iter().enumerate() {
        out.push((l.left - 6, l.top + r * CELL_H + CELL_H / 2, truncate(name, 20), Anchor::End, black));
        if g.annotate() {
            for c in 0..g.cols.len() {
                let v = g.values[r * g.cols.len() + c];
                let x = l.left + c * l.cell_w + l.cell_w / 2;
                out.push((x, l.top + r * CELL_H + CELL_H / 2, fmt_value(v), Anchor::Middle, text_color(v, l.vmax)));
            }
        }
    }
    let bar_x = l.left + g.cols.len() * l.cell_w + 2 * MARGIN;
    let bar_h = g.rows.len().max(1) * CELL_H;
    for (frac, v) in [(0.0, l.vmax), (0.5, 0.0), (1.0, -l.vmax)] {
        let y = l.top + (frac * bar_h as f32) as usize;
        out.push((bar_x + BAR_W + 4, y, format!("{v:.2}"), Anchor::Start, black));
    }
    out
}

fn bar_value(frac: f32, vmax: f32) -> f32 {
    vmax * (1.0 - 2.0 * frac)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn svg(g: &Grid) -> String {
    let l = g.layout();
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans Mono, monospace" font-size="{FONT_PX}">
<rect width="100%" height="100%" fill="white"/>
"#,
        w = l.width,
        h = l.height
    );
    let hex = |c: [u8; 3]| format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
    for r in 0..g.rows.len() {
        for c in 0..g.cols.len() {
            let v = g.values[r * g.cols.len() + c];
            s += &format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{CELL_H}\" fill=\"{}\"><title>{} {}: {}</title></rect>\n",
                l.left + c * l.cell_w,
                l.top + r * CELL_H,
                l.cell_w,
                hex(color(v, l.vmax)),
                escape(&g.rows[r]),
                escape(&g.cols[c]),
                v
            );
        }
    }
    let bar_x = l.left + g.cols.len() * l.cell_w + 2 * MARGIN;
    let bar_h = g.rows.len().max(1) * CELL_H;
    for i in 0..bar_h {
        let v = bar_value(i as f32 / bar_h as f32, l.vmax);
        s += &format!("<rect x=\"{bar_x}\" y=\"{}\" width=\"{BAR_W}\" height=\"1\" fill=\"{}\"/>\n", l.top + i, hex(color(v, l.vmax)));
    }
    for (x, y, text, anchor, c) in labels(g, &l) {
        let anchor = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        s += &format!(
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"{anchor}\" dominant-baseline=\"central\" fill=\"{}\" xml:space=\"preserve\">{}</text>\n",
            hex(c),
            escape(&text)
        );
    }
    s + "</svg>\n"
}

pub fn png(g: &Grid) -> Result<Vec<u8>> {
    let l = g.layout();
    let (w, h) = (l.width, l.height);
    let mut img = vec![255u8; w * h * 3];
    let mut fill = |x0: usize, y0: usize, fw: usize, fh: usize, c: [u8; 3]| {
        for y in y0..(y0 + fh).min(h) {
            for x in x0..(x0 + fw).min(w) {
                img[(y * w + x) * 3..][..3].copy_from_slice(&c);
            }
        }
    };
    for r in 0..g.rows.len() {
        for c in 0..g.cols.len() {
            let v = g.values[r * g.cols.len() + c];
            fill(l.left + c * l.cell_w, l.top + r * CELL_H, l.cell_w, CELL_H, color(v, l.vmax));
        }
    }
    let bar_x = l.left + g.cols.len() * l.cell_w + 2 * MARGIN;
    let bar_h = g.rows.len().max(1) * CELL_H;
    for i in 0..bar_h {
        fill(bar_x, l.top + i, BAR_W, 1, color(bar_value(i as f32 / bar_h as f32, l.vmax), l.vmax));
    }
    let font = FontRef::try_from_slice(FONT)?;
    let scale = PxScale::from(FONT_PX * 1.2);
    let scaled = font.as_scaled(scale);
    for (x, y, text, anchor, c) in labels(g, &l) {
        let width: f32 = text.chars().map(|ch| scaled.h_advance(font.glyph_id(ch))).sum();
        let mut caret = match anchor {
            Anchor::Start => x as f32,
            Anchor::Middle => x as f32 - width / 2.0,
            Anchor::End => x as f32 - width,
        };
        let baseline = y as f32 + (scaled.ascent() + scaled.descent()) / 2.0;
        for ch in text.chars() {
            let id = font.glyph_id(ch);
            if let Some(outline) = font.outline_glyph(id.with_scale_and_position(scale, ab_glyph::point(caret, baseline))) {
                let b = outline.px_bounds();
                outline.draw(|gx, gy, cov| {
                    let (px, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
                    if px >= 0 && py >= 0 && (px as usize) < w && (py as usize) < h {
                        let p = &mut img[(py as usize * w + px as usize) * 3..][..3];
                        for k in 0..3 {
                            p[k] = (p[k] as f32 * (1.0 - cov) + c[k] as f32 * cov).round() as u8;
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
