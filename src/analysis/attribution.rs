//! `patchbay analyze` of an `attribute` directory: mean and standard error over pairs of the
//! logit lens, the components and the heads; line plots of the first two, a layer × head heatmap
//! of the third; and how far the components (with ln_f's bias term) are from the logit difference.
use super::mean_sem;
use super::plot::{self, Grid, Lines};
use crate::results::attribution;
use crate::results::write_atomic;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Part {
    labels: Vec<String>,
    mean: Vec<f32>,
    sem: Vec<f32>,
}

#[derive(Serialize)]
struct Summary {
    model: String,
    pairs: usize,
    accumulated: Part,
    components: Part,
    /// [layers, heads], row-major.
    heads: Part,
    mean_logit_diff: f32,
    /// max over pairs |Σ components + ln_f bias term − logit difference|.
    max_sum_error: f32,
}

pub const SUMMARY: &str = crate::results::attribution::ANALYSIS[0];

fn part(values: &[f32], labels: Vec<String>) -> Part {
    let (mean, sem, _) = mean_sem(values, labels.len());
    Part { labels, mean, sem }
}

/// Writes the summary and the plots; returns the files written.
pub fn analyze(dir: &Path) -> Result<Vec<String>> {
    // Its outputs are written into the directory: held exclusively.
    let _lock = crate::results::lock::exclusive(dir)?;
    let (l, a) = attribution::read(dir)?;
    let n = l.pairs.len();
    let nc = l.component_labels.len();
    let max_sum_error = (0..n)
        .map(|p| (a.components[p * nc..(p + 1) * nc].iter().sum::<f32>() + l.bias_term[p] - l.logit_diff[p]).abs())
        .fold(0.0, f32::max);
    let heads_labels = (0..l.layers).flat_map(|x| (0..l.heads).map(move |h| format!("{x}.{h}"))).collect();
    let s = Summary {
        model: l.model.clone(),
        pairs: n,
        accumulated: part(&a.accumulated, l.accumulated_labels.clone()),
        components: part(&a.components, l.component_labels.clone()),
        heads: part(&a.heads, heads_labels),
        mean_logit_diff: l.logit_diff.iter().sum::<f32>() / n as f32,
        max_sum_error,
    };
    let mut written = vec![SUMMARY.to_string()];
    write_atomic(&dir.join(SUMMARY), &serde_json::to_vec_pretty(&s)?)?;
    let what = format!("mean over {n} pair(s) — {}", l.model);
    let files = &attribution::ANALYSIS;
    for (name, title, p, [png, svg]) in [
        ("accumulated", "logit lens: norm_final(residual stream)·(W_U[answer] − W_U[distractor])", &s.accumulated, [files[1], files[2]]),
        ("components", "direct logit attribution of each component", &s.components, [files[3], files[4]]),
    ] {
        let lines = Lines {
            title: format!("{title}, {what}"),
            y_title: "logit difference".into(),
            labels: p.labels.clone(),
            series: vec![(name.to_string(), p.mean.clone(), p.sem.clone())],
        };
        write_atomic(&dir.join(svg), plot::lines_svg(&lines).as_bytes())?;
        write_atomic(&dir.join(png), &plot::lines_png(&lines)?)?;
        written.extend([png.to_string(), svg.to_string()]);
    }
    let grid = Grid {
        title: format!("direct logit attribution of each head, {what}"),
        row_title: "layer".into(),
        col_title: "head".into(),
        rows: (0..l.layers).map(|x| x.to_string()).collect(),
        cols: (0..l.heads).map(|h| format!("H{h}")).collect(),
        values: s.heads.mean.clone(),
    };
    write_atomic(&dir.join(files[6]), plot::svg(&grid).as_bytes())?;
    write_atomic(&dir.join(files[5]), &plot::png(&grid)?)?;
    written.extend([files[5].to_string(), files[6].to_string()]);
    Ok(written)
}
