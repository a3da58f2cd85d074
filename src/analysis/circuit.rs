//! Circuits: a subset of the edge graph chosen from an edges run's scores, as EAP-IG chooses them
//! (hannamw/EAP-IG, `Graph.apply_topn`, `apply_threshold`, `apply_greedy`, `prune`), and EAP-IG's
//! Graph JSON (`Graph.to_json` / `from_json`) to write and read them.
//!
//! An edge's score is its mean effect over the run's pairs: the patched (or estimated) metric
//! minus the run's base metric (the corrupted run's when denoising, the clean run's when noising),
//! EAP-IG's `score` up to its sign convention (EAP-IG's runs are noising runs).
use crate::engine::graph::{Edge, Graph, Node};
use crate::results::{self, npy::read_own_f32, Manifest};
use crate::engine::Direction;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::Path;

/// How edges are chosen (`patchbay circuit`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// The n edges of highest score.
    TopN(usize),
    /// Every edge whose score is at least this.
    Threshold(f32),
    /// n edges, greedily from the logits backwards: the best edge into a node already in the circuit.
    Greedy(usize),
}

/// A set of edges of a graph, with the graph's scores and the nodes the edges connect.
#[derive(Clone, Debug, PartialEq)]
pub struct Circuit {
    pub graph: Graph,
    /// Per edge, in the graph's order.
    pub scores: Vec<f32>,
    pub edges: Vec<bool>,
    /// Per node, in the graph's order (the logits always in).
    pub nodes: Vec<bool>,
}

impl Circuit {
    /// Every edge's mean effect over the pairs of the finished edges run in `dir`.
    pub fn scores_of_run(dir: &Path) -> Result<(Manifest, Vec<f32>)> {
        let _lock = results::lock::shared(dir)?;
        let m = results::open_finished(dir)?;
        let Some(site) = m.sites.iter().find(|s| s.name == "edges") else {
            bail!("{} is a run of {}: circuits are chosen from an edges run (`patchbay edges`)", dir.display(), m.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "));
        };
        let (values, shape) = read_own_f32(&dir.join(&site.file))?;
        let base_file = match m.direction {
            Direction::Denoising => &m.baseline_corrupted,
            Direction::Noising => &m.baseline_clean,
        };
        let (base, _) = read_own_f32(&dir.join(base_file))?;
        let n = shape[1];
        let mut scores = vec![0.0f64; n];
        for (row, b) in values.chunks(n).zip(&base) {
            for (s, v) in scores.iter_mut().zip(row) {
                *s += (v - b) as f64;
            }
        }
        let pairs = base.len().max(1) as f64;
        Ok((m, scores.into_iter().map(|s| (s / pairs) as f32).collect()))
    }

    /// The circuit `selection` picks from `scores` (by absolute value with `absolute`, EAP-IG's
    /// default), pruned with `prune` (EAP-IG's default) to the edges that connect the input to the
    /// logits.
    pub fn select(graph: Graph, scores: Vec<f32>, selection: Selection, absolute: bool, prune: bool) -> Result<Self> {
        let total = graph.edges.len();
        if scores.len() != total {
            bail!("{} scores for a graph of {total} edges", scores.len());
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            bail!("edge {} has no finite score ({})", graph.edges[i], scores[i]);
        }
        if let Selection::Threshold(t) = selection {
            if t.is_nan() {
                bail!("--threshold must be a number, not NaN (it would select no edge)");
            }
        }
        let key = |i: usize| if absolute { scores[i].abs() } else { scores[i] };
        let mut edges = vec![false; total];
        match selection {
            Selection::TopN(n) | Selection::Greedy(n) if n > total => bail!("{n} edges asked for, of a graph of {total}"),
            Selection::TopN(n) => {
                let mut order: Vec<usize> = (0..total).collect();
                order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
                for &i in &order[..n] {
                    edges[i] = true;
                }
            }
            Selection::Threshold(t) => {
                for (i, e) in edges.iter_mut().enumerate() {
                    *e = key(i) >= t;
                }
            }
            Selection::Greedy(n) => {
                // A frontier of the edges into nodes already in, best first (ties: the graph's order).
                let into: HashMap<Node, Vec<usize>> = graph.edges.iter().enumerate().fold(HashMap::new(), |mut m, (i, e)| {
                    m.entry(e.to).or_default().push(i);
                    m
                });
                // Ordered by total_cmp, so that a NaN score cannot break the heap.
                struct Best(f32, std::cmp::Reverse<usize>);
                impl Ord for Best {
                    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
                    }
                }
                impl PartialOrd for Best {
                    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                        Some(self.cmp(o))
                    }
                }
                impl PartialEq for Best {
                    fn eq(&self, o: &Self) -> bool {
                        self.cmp(o).is_eq()
                    }
                }
                impl Eq for Best {}
                let mut frontier: BinaryHeap<Best> = into[&Node::Logits].iter().map(|&i| Best(key(i), std::cmp::Reverse(i))).collect();
                let mut reached = std::collections::HashSet::from([Node::Logits]);
                for _ in 0..n {
                    let Some(Best(_, std::cmp::Reverse(i))) = frontier.pop() else { break };
                    edges[i] = true;
                    let from = graph.edges[i].from;
                    if reached.insert(from) {
                        frontier.extend(into.get(&from).into_iter().flatten().map(|&j| Best(key(j), std::cmp::Reverse(j))));
                    }
                }
            }
        }
        let mut c = Self { nodes: vec![false; graph.nodes.len()], graph, scores, edges };
        c.connect(prune);
        Ok(c)
    }

    /// The nodes with an incoming (the input: always) and an outgoing edge in; with `prune`,
    /// repeatedly also the edges whose ends are both in (EAP-IG's `prune`).
    fn connect(&mut self, prune: bool) {
        let index: HashMap<Node, usize> = self.graph.nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        loop {
            let (mut out, mut inc) = (vec![false; self.nodes.len()], vec![false; self.nodes.len()]);
            for (e, _) in self.graph.edges.iter().zip(&self.edges).filter(|(_, &on)| on) {
                out[index[&e.from]] = true;
                inc[index[&e.to]] = true;
            }
            let nodes: Vec<bool> = self.graph.nodes.iter().enumerate().map(|(i, &n)| n == Node::Logits || (out[i] && (inc[i] || n == Node::Input))).collect();
            let changed = nodes != self.nodes;
            self.nodes = nodes;
            if !prune {
                return;
            }
            for (e, on) in self.graph.edges.iter().zip(self.edges.iter_mut()) {
                *on &= self.nodes[index[&e.from]] && self.nodes[index[&e.to]];
            }
            if !changed {
                return;
            }
        }
    }

    pub fn edge_count(&self) -> usize {
        self.edges.iter().filter(|&&e| e).count()
    }

    /// The chosen edges, in the graph's order.
    pub fn chosen(&self) -> impl Iterator<Item = &Edge> {
        self.graph.edges.iter().zip(&self.edges).filter(|(_, &on)| on).map(|(e, _)| e)
    }

    /// EAP-IG's Graph JSON: `cfg` (n_layers, n_heads, parallel_attn_mlp, d_model), `nodes`
    /// {name: {in_graph}}, `edges` {name: {score, in_graph}}.
    pub fn to_json(&self, d_model: usize, run_identity: Option<String>) -> Result<Vec<u8>> {
        let g = &self.graph;
        let file = GraphJson {
            cfg: GraphCfg { n_layers: g.layers, n_heads: g.heads, parallel_attn_mlp: g.parallel, d_model },
            nodes: g.nodes.iter().zip(&self.nodes).map(|(n, &in_graph)| (n.to_string(), NodeJson { in_graph })).collect(),
            edges: g.edges.iter().zip(&self.scores).zip(&self.edges).map(|((e, &score), &in_graph)| (e.to_string(), EdgeJson { score, in_graph })).collect(),
            run_identity,
        };
        Ok(serde_json::to_vec(&file)?)
    }

    /// A circuit from EAP-IG's Graph JSON (`path` names the file in errors): every edge of its
    /// graph listed, as EAP-IG writes them; node flags follow the edges.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let file: GraphJson = serde_json::from_slice(bytes).with_context(|| format!("{}: not EAP-IG's Graph JSON (cfg, nodes, edges)", path.display()))?;
        let graph = Graph::bounded(file.cfg.n_layers, file.cfg.n_heads, file.cfg.parallel_attn_mlp, &format!("{}: cfg", path.display()))?;
        let mut scores = vec![0.0; graph.edges.len()];
        let mut edges = vec![false; graph.edges.len()];
        let index: HashMap<String, usize> = graph.edges.iter().enumerate().map(|(i, e)| (e.to_string(), i)).collect();
        for (name, e) in &file.edges {
            let Some(&i) = index.get(name) else {
                bail!("{}: edge {name:?} is not in the graph of {} layers of {} heads", path.display(), file.cfg.n_layers, file.cfg.n_heads);
            };
            scores[i] = e.score;
            edges[i] = e.in_graph;
        }
        if file.edges.len() != graph.edges.len() {
            let missing = graph.edges.iter().find(|e| !file.edges.contains_key(&e.to_string())).expect("fewer edges listed than the graph has");
            bail!("{}: edge {missing} is not listed ({} of the graph's {} are)", path.display(), file.edges.len(), graph.edges.len());
        }
        let mut c = Self { nodes: vec![false; graph.nodes.len()], graph, scores, edges };
        c.connect(false);
        Ok(c)
    }
}

#[derive(Serialize, Deserialize)]
struct GraphJson {
    cfg: GraphCfg,
    nodes: BTreeMap<String, NodeJson>,
    edges: BTreeMap<String, EdgeJson>,
    /// `Manifest::identity` of the run the circuit was chosen from (patchbay's addition, which
    /// EAP-IG's reader ignores): `verify` tells a circuit left beside another run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_identity: Option<String>,
}

/// The `run_identity` a Graph JSON names, if any (a derived set's check in `verify`).
pub fn run_identity_of(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok()?.get("run_identity")?.as_str().map(str::to_string)
}

#[derive(Serialize, Deserialize)]
struct GraphCfg {
    n_layers: usize,
    n_heads: usize,
    #[serde(default)]
    parallel_attn_mlp: bool,
    d_model: usize,
}

#[derive(Serialize, Deserialize)]
struct NodeJson {
    in_graph: bool,
}

#[derive(Serialize, Deserialize)]
struct EdgeJson {
    score: f32,
    in_graph: bool,
}

/// The circuit drawn by layer, the input at the bottom and the logits at the top (a row of heads,
/// then the MLP, per layer); each chosen edge a line from its sender to its receiver (a head's
/// q, k and v inputs at the left, middle and right of its box), blue for a positive score, red
/// for a negative one, as wide as its |score| relative to the largest.
pub fn svg(c: &Circuit, title: &str) -> String {
    use std::fmt::Write;
    let (l, h) = (c.graph.layers, c.graph.heads);
    let (box_w, box_h, gap_x, gap_y, margin) = (64.0, 22.0, 14.0, 46.0, 30.0);
    let grid = margin * 2.0 + h as f64 * (box_w + gap_x);
    let width = grid.max(margin * 2.0 + 8.0 * title.chars().count() as f64);
    let rows = 2 * l + 2;
    let height = margin * 2.0 + 30.0 + rows as f64 * (box_h + gap_y);
    // Row 0 the logits (top), the last row the input.
    let place = |n: Node| -> (f64, f64) {
        let (row, col, cols) = match n {
            Node::Logits => (0, 0, 1),
            Node::Mlp(layer) => (rows - 2 - 2 * layer - 1, 0, 1),
            Node::Head { layer, head } => (rows - 2 - 2 * layer, head, h),
            Node::Input => (rows - 1, 0, 1),
        };
        let span = grid - 2.0 * margin;
        let x = margin + span * (col as f64 + 0.5) / cols as f64 - box_w / 2.0;
        (x, margin + 30.0 + row as f64 * (box_h + gap_y))
    };
    let max = c.scores.iter().zip(&c.edges).filter(|(_, &on)| on).map(|(s, _)| s.abs()).fold(0.0f32, f32::max);
    let mut s = String::new();
    let _ = write!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="DejaVu Sans Mono, monospace" font-size="11"><rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(s, r#"<text x="{margin}" y="20" font-size="13">{}</text>"#, escape(title));
    for ((e, &score), _) in c.graph.edges.iter().zip(&c.scores).zip(&c.edges).filter(|(_, &on)| on) {
        let (fx, fy) = place(e.from);
        let (tx, ty) = place(e.to);
        let end = match e.qkv {
            Some(q) => [0.2, 0.5, 0.8][q.index()],
            None => 0.5,
        };
        let w = if max > 0.0 { 0.5 + 3.5 * (score.abs() / max) as f64 } else { 1.0 };
        let color = if score >= 0.0 { "#1f77b4" } else { "#d62728" };
        let _ = write!(s, r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="{w:.2}" stroke-opacity="0.7"><title>{} {score:.4}</title></line>"#, fx + box_w / 2.0, fy, tx + box_w * end, ty + box_h, escape(&e.to_string()));
    }
    for (&n, _) in c.graph.nodes.iter().zip(&c.nodes).filter(|(_, &on)| on) {
        let (x, y) = place(n);
        let fill = match n {
            Node::Head { .. } => "#e8eef7",
            Node::Mlp(_) => "#f7efe2",
            _ => "#eeeeee",
        };
        let _ = write!(s, r#"<rect x="{x:.1}" y="{y:.1}" width="{box_w}" height="{box_h}" rx="4" fill="{fill}" stroke="black"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{n}</text>"#, x + box_w / 2.0, y + box_h / 2.0 + 4.0);
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(g: &Graph) -> Vec<f32> {
        // Distinct, of both signs, in no particular order.
        (0..g.edges.len()).map(|i| ((i * 7919) % 1009) as f32 / 100.0 * if i % 3 == 0 { -1.0 } else { 1.0 }).collect()
    }

    #[test]
    fn top_n_threshold_and_greedy_choose_as_eap_ig_and_the_json_round_trips() {
        let g = Graph::new(3, 4, false);
        let s = scores(&g);
        let mut by_abs: Vec<f32> = s.iter().map(|v| v.abs()).collect();
        by_abs.sort_by(|a, b| b.total_cmp(a));
        // Top-n without pruning: exactly the n largest |scores|.
        let c = Circuit::select(g.clone(), s.clone(), Selection::TopN(20), true, false).unwrap();
        assert_eq!(c.edge_count(), 20);
        assert!(c.chosen().count() == 20 && (0..s.len()).filter(|&i| c.edges[i]).all(|i| s[i].abs() >= by_abs[19]));
        // A threshold at the 20th |score| is the same set.
        assert_eq!(Circuit::select(g.clone(), s.clone(), Selection::Threshold(by_abs[19]), true, false).unwrap().edges, c.edges);
        // Pruned: every edge left lies on a path from the input to the logits.
        let p = Circuit::select(g.clone(), s.clone(), Selection::TopN(60), true, true).unwrap();
        let node = |n: Node| p.nodes[g.nodes.iter().position(|&m| m == n).unwrap()];
        assert!(p.edge_count() <= 60 && p.chosen().all(|e| node(e.from) && node(e.to)));
        for (i, &n) in g.nodes.iter().enumerate().filter(|(i, _)| p.nodes[*i]) {
            let out = p.chosen().any(|e| e.from == n);
            let inc = p.chosen().any(|e| e.to == n);
            assert!(n == Node::Logits || (out && (inc || n == Node::Input)), "node {i} {n} dangles");
        }
        // Greedy: each chosen edge enters the logits or a node an earlier chosen edge left from,
        // and is the best such edge at its turn.
        let gr = Circuit::select(g.clone(), s.clone(), Selection::Greedy(25), true, false).unwrap();
        assert_eq!(gr.edge_count(), 25);
        let mut reached = vec![Node::Logits];
        let mut left: Vec<usize> = (0..s.len()).collect();
        for _ in 0..25 {
            let best = *left.iter().filter(|&&i| reached.contains(&g.edges[i].to)).max_by(|&&a, &&b| s[a].abs().total_cmp(&s[b].abs()).then(b.cmp(&a))).unwrap();
            assert!(gr.edges[best], "{} should be chosen", g.edges[best]);
            left.retain(|&i| i != best);
            reached.push(g.edges[best].from);
        }
        // EAP-IG's JSON, and back.
        let json = p.to_json(32, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["cfg"], serde_json::json!({"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 32}));
        assert_eq!(v["nodes"]["logits"]["in_graph"], true);
        assert_eq!(v["edges"]["input->a0.h0<q>"]["score"].as_f64().unwrap() as f32, s[0]);
        assert_eq!(Circuit::from_json(&json, Path::new("c.json")).unwrap(), p);
        for bad in [&b"{}"[..], br#"{"cfg": {"n_layers": 1, "n_heads": 1, "d_model": 4}, "nodes": {}, "edges": {"input->m0": {"score": 1, "in_graph": true}}}"#] {
            assert!(Circuit::from_json(bad, Path::new("c.json")).unwrap_err().to_string().starts_with("c.json: "));
        }
        assert!(Circuit::select(g.clone(), s.clone(), Selection::TopN(s.len() + 1), true, true).is_err());
    }
}
