//! What a patched run records: one number read off the last position's logits (TransformerLens'
//! and the IOI exercises' metrics). Baselines and the normalization use the same one.
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// logit(answer) − logit(distractor)
    #[default]
    #[value(name = "logit_diff")]
    LogitDiff,
    /// log p(answer)
    Logprob,
    /// p(answer)
    Prob,
    /// log p(answer) − log p(distractor)
    #[value(name = "logprob_diff")]
    LogprobDiff,
}

impl Metric {
    pub fn describe(self) -> &'static str {
        match self {
            Metric::LogitDiff => "logit(answer) - logit(distractor) at the last position",
            Metric::Logprob => "log p(answer) at the last position",
            Metric::Prob => "p(answer) at the last position",
            Metric::LogprobDiff => "log p(answer) - log p(distractor) at the last position",
        }
    }

    /// Whether it needs the whole vocabulary's logits (a softmax), not only the two tokens'.
    pub fn needs_vocab(self) -> bool {
        self != Metric::LogitDiff
    }

    /// The metric per row from `chosen` [rows, 2]: the answer's and the distractor's logits
    /// (logit_diff), or their log-probabilities (the others).
    pub fn of<B: Backend>(self, chosen: Tensor<B, 2>) -> Tensor<B, 2> {
        let answer = chosen.clone().narrow(1, 0, 1);
        match self {
            Metric::LogitDiff | Metric::LogprobDiff => answer - chosen.narrow(1, 1, 1),
            Metric::Logprob => answer,
            Metric::Prob => answer.exp(),
        }
    }

    /// log-probabilities of the whole vocabulary from `logits` [rows, vocab] where the metric
    /// needs them; the logits as they are otherwise.
    pub fn scores<B: Backend>(self, logits: Tensor<B, 2>) -> Tensor<B, 2> {
        if self.needs_vocab() {
            log_softmax(logits, 1)
        } else {
            logits
        }
    }
}
