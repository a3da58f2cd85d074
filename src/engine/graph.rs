//! The computational graph circuit discovery scores, in EAP-IG's convention (hannamw/EAP-IG,
//! `Graph.from_model`): nodes are the input (the token embeddings, `hook_embed`, as EAP-IG's input
//! node: learned position embeddings are no node's output), every attention head, every MLP and the
//! logits; an edge goes from every node that writes to the residual stream before a reader to that
//! reader's input, a head's query, key and value inputs counted apart. Names are EAP-IG's: nodes
//! `input`, `a3.h7`, `m5`, `logits`; edges `a0.h1->a2.h3<q>`, `m0->m4`, `input->logits`; edges in
//! EAP-IG's order (by receiver layer: the heads' q, k, v inputs from every earlier writer, then the
//! MLP's, then the logits'). Where attention and the MLP run in parallel (GPT-NeoX), an MLP does
//! not read its own layer's heads, and each earlier writer's MLP edge follows its head edges
//! (EAP-IG's `parallel_attn_mlp`).
use anyhow::{bail, Result};
use std::fmt;

/// A node of the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Input,
    Head { layer: usize, head: usize },
    Mlp(usize),
    Logits,
}

pub use crate::model::Qkv;

/// An edge: the sender's output added to one input of the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Edge {
    pub from: Node,
    pub to: Node,
    /// The head input fed, for a head receiver.
    pub qkv: Option<Qkv>,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Input => write!(f, "input"),
            Node::Head { layer, head } => write!(f, "a{layer}.h{head}"),
            Node::Mlp(layer) => write!(f, "m{layer}"),
            Node::Logits => write!(f, "logits"),
        }
    }
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.qkv {
            Some(x) => write!(f, "{}->{}<{}>", self.from, self.to, x.name()),
            None => write!(f, "{}->{}", self.from, self.to),
        }
    }
}

impl Node {
    /// A node by its EAP-IG name.
    pub fn parse(name: &str) -> Result<Self> {
        let number = |s: &str| s.parse::<usize>().ok().filter(|_| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        let node = match name {
            "input" => Some(Node::Input),
            "logits" => Some(Node::Logits),
            _ => match name.split_once(".h") {
                Some((l, h)) => l.strip_prefix('a').and_then(number).zip(number(h)).map(|(layer, head)| Node::Head { layer, head }),
                None => name.strip_prefix('m').and_then(number).map(Node::Mlp),
            },
        };
        match node {
            Some(n) => Ok(n),
            None => bail!("{name:?} is not a node name: expected input, logits, a<layer>.h<head> or m<layer>"),
        }
    }
}

impl Edge {
    /// An edge by its EAP-IG name (`a0.h1->a2.h3<q>`, `m0->logits`).
    pub fn parse(name: &str) -> Result<Self> {
        let Some((from, rest)) = name.split_once("->") else { bail!("{name:?} is not an edge name: expected SENDER->RECEIVER[<q|k|v>]") };
        let (to, qkv) = match rest.strip_suffix('>').and_then(|r| r.split_once('<')) {
            Some((to, x)) => (to, Some(Qkv::ALL.into_iter().find(|q| q.name() == x).ok_or_else(|| anyhow::anyhow!("{name:?}: a head's input is q, k or v, not {x:?}"))?)),
            None => (rest, None),
        };
        Ok(Self { from: Node::parse(from)?, to: Node::parse(to)?, qkv })
    }
}

/// The graph of a model of `layers` layers of `heads` heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    pub layers: usize,
    pub heads: usize,
    /// Attention and the MLP read the block's input side by side.
    pub parallel: bool,
    /// EAP-IG's order: input, then per layer its heads and its MLP, then the logits.
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// The graph of `model`.
    pub fn of(model: &crate::model::ModelConfig) -> Self {
        Self::new(model.layers, model.heads, model.parallel)
    }

    pub fn new(layers: usize, heads: usize, parallel: bool) -> Self {
        let mut nodes = vec![Node::Input];
        let mut edges = Vec::new();
        // The nodes that have written to the residual stream so far.
        let mut writers = vec![Node::Input];
        for layer in 0..layers {
            let attention: Vec<Node> = (0..heads).map(|head| Node::Head { layer, head }).collect();
            let mlp = |from| Edge { from, to: Node::Mlp(layer), qkv: None };
            for &from in &writers {
                for &to in &attention {
                    edges.extend(Qkv::ALL.map(|x| Edge { from, to, qkv: Some(x) }));
                }
                // In a parallel block the MLP reads what the heads read, and EAP-IG lists each
                // sender's MLP edge right after its head edges.
                if parallel {
                    edges.push(mlp(from));
                }
            }
            writers.extend(&attention);
            if !parallel {
                edges.extend(writers.iter().map(|&from| mlp(from)));
            }
            writers.push(Node::Mlp(layer));
            nodes.extend(attention);
            nodes.push(Node::Mlp(layer));
        }
        edges.extend(writers.iter().map(|&from| Edge { from, to: Node::Logits, qkv: None }));
        nodes.push(Node::Logits);
        Self { layers, heads, parallel, nodes, edges }
    }

    /// The graph of `layers` × `heads`, refused (one line, naming `what`) when its edges would not
    /// fit this machine's memory: a config or Graph JSON from elsewhere must not abort the process.
    pub fn bounded(layers: usize, heads: usize, parallel: bool, what: &str) -> Result<Self> {
        // At most the heads' q/k/v inputs from every head before them, and a name of some 24 bytes each.
        let edges = crate::limits::product(what, &[3, layers, layers, heads.saturating_add(1), heads.max(1)])?;
        crate::limits::fits_memory(&format!("{what}: the graph of {layers} layers × {heads} heads, its edge count"), edges, 64)?;
        Ok(Self::new(layers, heads, parallel))
    }

    /// The edge count in closed form: each head's three inputs read the input and every head and
    /// MLP of earlier layers; an MLP also reads its own layer's heads (unless in parallel with
    /// them); the logits read every writer.
    pub fn edge_count(layers: usize, heads: usize, parallel: bool) -> usize {
        let (l, h) = (layers, heads);
        let own = if parallel { 0 } else { h };
        let into_heads: usize = (0..l).map(|i| 3 * h * (1 + i * (h + 1))).sum();
        let into_mlps: usize = (0..l).map(|i| 1 + i * h + own + i).sum();
        into_heads + into_mlps + 1 + l * (h + 1)
    }

    /// Edges by receiver kind: into heads' q, k, v inputs, into MLPs, into the logits.
    pub fn counts(&self) -> GraphCounts {
        let into = |f: &dyn Fn(&Edge) -> bool| self.edges.iter().filter(|e| f(e)).count();
        GraphCounts {
            nodes: self.nodes.len(),
            edges: self.edges.len(),
            into_heads: into(&|e| e.qkv.is_some()),
            into_mlps: into(&|e| matches!(e.to, Node::Mlp(_))),
            into_logits: into(&|e| e.to == Node::Logits),
        }
    }
}

/// `Graph::counts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GraphCounts {
    pub nodes: usize,
    pub edges: usize,
    pub into_heads: usize,
    pub into_mlps: usize,
    pub into_logits: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_eap_igs_158_nodes_and_32491_edges() {
        let g = Graph::new(12, 12, false);
        assert_eq!(g.counts(), GraphCounts { nodes: 158, edges: 32491, into_heads: 31320, into_mlps: 1014, into_logits: 157 });
        assert_eq!(Graph::edge_count(12, 12, false), 32491);
        // EAP-IG's first and last edges, and its order of a head's inputs.
        let names: Vec<String> = g.edges.iter().map(Edge::to_string).collect();
        assert_eq!(&names[..4], ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->a0.h1<q>"]);
        assert_eq!(names[3 * 12], "input->m0");
        assert_eq!(names[3 * 12 + 12], "a0.h11->m0");
        assert_eq!(names.last().unwrap(), "m11->logits");
        assert!(names.contains(&"a0.h1->a2.h3<q>".to_string()) && names.contains(&"m0->m4".to_string()) && names.contains(&"input->logits".to_string()));
    }

    #[test]
    fn every_shape_counts_by_the_formula_and_names_round_trip() {
        for (l, h, parallel) in [(1, 1, false), (2, 4, false), (3, 4, true), (1, 12, false), (24, 16, false), (48, 25, false), (12, 12, true)] {
            let g = Graph::new(l, h, parallel);
            assert_eq!(g.edges.len(), Graph::edge_count(l, h, parallel), "{l} layers × {h} heads");
            // A parallel MLP reads no head of its own layer.
            assert_eq!(g.edges.iter().any(|e| matches!((e.from, e.to), (Node::Head { layer, .. }, Node::Mlp(m)) if layer == m)), !parallel);
            assert_eq!(g.nodes.len(), 2 + l * (h + 1));
            let c = g.counts();
            assert_eq!(c.into_heads + c.into_mlps + c.into_logits, c.edges);
            // Each edge once, from a node that writes before its receiver reads.
            let order = |n: Node| g.nodes.iter().position(|&m| m == n).unwrap();
            let mut seen = std::collections::HashSet::new();
            for e in &g.edges {
                assert!(seen.insert(*e), "{e} twice");
                assert!(order(e.from) < order(e.to) && matches!(e.to, Node::Head { .. }) == e.qkv.is_some(), "{e}");
                assert!(!matches!((e.from, e.to), (Node::Head { layer: a, .. }, Node::Head { layer: b, .. }) if a == b), "{e}");
                assert_eq!(Edge::parse(&e.to_string()).unwrap(), *e);
            }
            for n in &g.nodes {
                assert_eq!(Node::parse(&n.to_string()).unwrap(), *n);
            }
        }
        for bad in ["a1h2", "a1.h2->m0<x>", "x->m1", "m->logits", "a1.h->m2"] {
            assert!(Edge::parse(bad).is_err(), "{bad}");
        }
    }
}
