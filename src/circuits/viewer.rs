//! The self-contained HTML viewer of attention patterns (what CircuitsVis draws for ARENA): pick
//! a prompt, layer and head; hover a token to see what it attends to and what attends to it.
use super::patterns::Patterns;
use serde::Serialize;

const PAGE: &str = include_str!("patterns.html");

#[derive(Serialize)]
struct Prompt<'a> {
    tokens: &'a [String],
    /// [layer][head][dest][src], rounded to 6 decimals.
    pattern: Vec<Vec<Vec<Vec<f64>>>>,
}

#[derive(Serialize)]
struct Data<'a> {
    model: &'a str,
    layers: &'a [usize],
    heads: &'a [usize],
    prompts: Vec<Prompt<'a>>,
}

/// The page for the first `max_prompts` prompts of `p`, with each prompt's token strings.
pub fn html(p: &Patterns, tokens: &[Vec<String>], model: &str, max_prompts: usize) -> String {
    let round = |v: f32| (v as f64 * 1e6).round() / 1e6;
    let prompts = (0..p.lengths.len().min(max_prompts))
        .map(|i| Prompt {
            tokens: &tokens[i],
            pattern: (0..p.layers.len())
                .map(|l| (0..p.heads.len()).map(|h| p.of(i, l, h).into_iter().map(|row| row.iter().map(|&v| round(v)).collect()).collect()).collect())
                .collect(),
        })
        .collect();
    let data = Data { model, layers: &p.layers, heads: &p.heads, prompts };
    // "</" inside the JSON (a token "</script>") would end the script element: "<\/" is the same JSON.
    let json = serde_json::to_string(&data).expect("serializable").replace("</", "<\\/");
    PAGE.replace("__PATCHBAY_DATA__", &json)
}
