//! `patchbay analyze DIR --compare OTHER`: two runs of the same pairs side by side — attribution
//! patching against exact patching, typically. Per site they share: the Pearson correlation of
//! their normalized values over every (pair, cell), and of their means over pairs (the heatmaps'
//! cells), the largest difference, and a scatter plot (OTHER across, DIR up: the diagonal is
//! agreement). Cells no pair has (positions past a short pair) are left out; no-op cells, which
//! both methods write as the corrupted run, are in.
use super::plot::{self, Scatter};
use super::{mean_sem, normalize, scales};
use crate::engine::Method;
use crate::results::manifest::{compare_files, COMPARE_JSON};
use crate::results::{npy::read_own_f32, open_finished, write_atomic, Manifest};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct SiteComparison {
    pub name: String,
    /// (pair, cell) values finite in both runs.
    pub points: usize,
    /// Pearson correlation over them (NaN, written null, without variance).
    pub correlation: f64,
    /// Pearson correlation of the two runs' means over pairs, cell by cell.
    pub correlation_of_means: f64,
    pub max_abs_diff: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub dir: String,
    pub other: String,
    pub methods: [Method; 2],
    pub pairs: usize,
    pub sites: Vec<SiteComparison>,
}

/// Pearson's r of (x, y) points, in f64; NaN for fewer than two points or no variance.
pub fn pearson(points: &[(f32, f32)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x as f64, b + y as f64));
    let (mx, my) = (mx / n, my / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        let (dx, dy) = (x as f64 - mx, y as f64 - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if points.len() < 2 || sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

fn both_finite(x: &[f32], y: &[f32]) -> Vec<(f32, f32)> {
    x.iter().zip(y).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(&a, &b)| (a, b)).collect()
}

/// Compares the runs in `dir` and `other`; writes compare.json and a scatter plot per shared site
/// into `dir`.
pub fn compare(dir: &Path, other: &Path) -> Result<Comparison> {
    // This run's directory is written (exclusively held), the other only read.
    let _locks = (crate::results::lock::exclusive(dir)?, crate::results::lock::shared(other)?);
    let (a, b) = (open_finished(dir)?, open_finished(other)?);
    let (da, db) = (dir.display(), other.display());
    let same = |what: &str, equal: bool| if equal { Ok(()) } else { bail!("{da} and {db} are runs of different {what}: compare two runs of one model, pair set and metric") };
    same("models", a.model == b.model && a.config == b.config)?;
    same("pairs", a.pairs == b.pairs)?;
    same("metrics", a.metric_name == b.metric_name)?;
    same("layouts (sending heads)", a.layout == b.layout)?;
    let shared: Vec<_> = a.sites.iter().filter_map(|s| b.sites.iter().find(|t| t.name == s.name).map(|t| (s, t))).collect();
    if shared.is_empty() {
        let names = |m: &Manifest| m.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(",");
        bail!("{da} ({}) and {db} ({}) have no site in common", names(&a), names(&b));
    }
    let (scale_a, _) = scales(dir, &a)?;
    let (scale_b, _) = scales(other, &b)?;
    let label = |m: &Manifest, d: &Path| format!("{} ({}), normalized", m.method.name(), d.display());
    let mut sites = Vec::new();
    for (sa, sb) in shared {
        let (raw_a, shape) = read_own_f32(&dir.join(&sa.file))?;
        let (raw_b, _) = read_own_f32(&other.join(&sb.file))?;
        let cells: usize = shape[1..].iter().product();
        let (na, nb) = (normalize(&raw_a, cells, &scale_a), normalize(&raw_b, cells, &scale_b));
        // Other across, this run up.
        let points = both_finite(&nb, &na);
        let (means_a, means_b) = (mean_sem(&na, cells).0, mean_sem(&nb, cells).0);
        let c = SiteComparison {
            name: sa.name.clone(),
            points: points.len(),
            correlation: pearson(&points),
            correlation_of_means: pearson(&both_finite(&means_b, &means_a)),
            max_abs_diff: points.iter().map(|(x, y)| (x - y).abs()).fold(0.0, f32::max),
        };
        let s = Scatter {
            title: format!("{} — r = {:.3} over {} values (of means: {:.3}) — {}", c.name, c.correlation, c.points, c.correlation_of_means, a.model),
            x_title: label(&b, other),
            y_title: label(&a, dir),
            points,
        };
        let [png, svg] = compare_files(&c.name);
        write_atomic(&dir.join(svg), plot::scatter_svg(&s).as_bytes())?;
        write_atomic(&dir.join(png), &plot::scatter_png(&s)?)?;
        sites.push(c);
    }
    let out = Comparison { dir: da.to_string(), other: db.to_string(), methods: [a.method, b.method], pairs: a.pairs.len(), sites };
    write_atomic(&dir.join(COMPARE_JSON), &serde_json::to_vec_pretty(&out)?)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::pearson;

    #[test]
    fn pearson_is_one_on_a_line_minus_one_reversed_and_nan_without_variance() {
        let line: Vec<(f32, f32)> = (0..10).map(|i| (i as f32, 3.0 * i as f32 - 2.0)).collect();
        assert!((pearson(&line) - 1.0).abs() < 1e-12);
        let reversed: Vec<(f32, f32)> = line.iter().map(|&(x, y)| (x, -y)).collect();
        assert!((pearson(&reversed) + 1.0).abs() < 1e-12);
        // x = 0, 1, 2; y = 0, 2, 1: r = 0.5.
        assert!((pearson(&[(0.0, 0.0), (1.0, 2.0), (2.0, 1.0)]) - 0.5).abs() < 1e-12);
        assert!(pearson(&[(1.0, 2.0), (1.0, 3.0)]).is_nan());
        assert!(pearson(&[(1.0, 2.0)]).is_nan());
    }
}
