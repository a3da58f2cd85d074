//! GPT-2's byte-level BPE tokenizer (tokenizer.json), with the checks patching needs.
use anyhow::{bail, Result};
use std::path::Path;

/// GPT-2's beginning (and end) of text token.
pub const BOS: &str = "<|endoftext|>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The most bytes a text may have that the model's context can hold (`with_context`): a
    /// longer one is refused before it is tokenized (a 50 MB line would exhaust the memory).
    max_bytes: Option<usize>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading tokenizer {}: {e}", path.display()))?;
        Self::from_bytes(&bytes, path)
    }

    /// The tokenizer.json read from `path` as `bytes`.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| anyhow::anyhow!("reading tokenizer {}: {e}", path.display()))?;
        Ok(Self { inner, max_bytes: None })
    }

    /// Refuses texts longer than a model's context of `context` tokens could hold, before they
    /// are tokenized: a token covers at most its longest vocabulary entry's characters, each at
    /// most 4 bytes of text.
    pub fn with_context(mut self, context: usize) -> Self {
        let longest = self.inner.get_vocab(true).keys().map(|t| t.chars().count()).max().unwrap_or(1).max(1);
        self.max_bytes = Some(context.saturating_mul(longest).saturating_mul(4));
        self
    }

    /// Token ids of `text`, without special tokens added (GPT-2 adds none; no BOS is prepended).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let shown = || text.chars().take(80).collect::<String>() + if text.chars().nth(80).is_some() { "…" } else { "" };
        if let Some(max) = self.max_bytes.filter(|&m| text.len() > m) {
            bail!("a text of {} bytes ({:?}) is longer than the model's context can hold (at most {max} bytes)", text.len(), shown());
        }
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizing {:?}: {e}", shown()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `<|endoftext|>` (50256 in GPT-2), which TransformerLens prepends to every prompt by default.
    pub fn bos(&self) -> Result<u32> {
        self.inner.token_to_id(BOS).ok_or_else(|| anyhow::anyhow!("the tokenizer has no {BOS} token to prepend"))
    }

    /// `encode`, with `bos` in front when `prepend_bos`.
    pub fn encode_with(&self, text: &str, prepend_bos: bool) -> Result<Vec<u32>> {
        let ids = self.encode(text)?;
        Ok(if prepend_bos { [vec![self.bos()?], ids].concat() } else { ids })
    }

    /// The text of one token, e.g. " Jones".
    /// An id the tokenizer lacks (a model's vocabulary can be larger than its tokenizer's: padded
    /// embeddings) is shown as `<id>`, never as nothing.
    pub fn token_str(&self, id: u32) -> String {
        match self.inner.id_to_token(id) {
            None => format!("<{id}>"),
            Some(_) => self.inner.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>")),
        }
    }

    /// The text of a token sequence (byte-level: a character split across tokens comes out
    /// whole); ids the tokenizer lacks as `<id>`.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.chunk_by(|a, b| self.inner.id_to_token(*a).is_some() == self.inner.id_to_token(*b).is_some())
            .map(|run| match self.inner.id_to_token(run[0]) {
                None => self.token_strs(run).concat(),
                Some(_) => self.inner.decode(run, false).unwrap_or_else(|_| self.token_strs(run).concat()),
            })
            .collect()
    }

    pub fn token_strs(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&id| self.token_str(id)).collect()
    }

    /// The id of `text` when it is exactly one token; otherwise an error showing its tokens.
    pub fn single_token(&self, text: &str) -> Result<u32> {
        let ids = self.encode(text)?;
        match ids.as_slice() {
            [id] => Ok(*id),
            _ => bail!("{text:?} is not a single token: it is {}", self.show(&ids)),
        }
    }

    /// `[id "text", ...]` for error messages.
    pub fn show(&self, ids: &[u32]) -> String {
        let parts: Vec<String> = ids.iter().map(|&id| format!("{id} {:?}", self.token_str(id))).collect();
        format!("[{}]", parts.join(", "))
    }

    /// `show` for a one-line message: long token lists keep their first and last 10 tokens.
    pub fn show_short(&self, ids: &[u32]) -> String {
        const KEEP: usize = 10;
        if ids.len() <= 3 * KEEP {
            return self.show(ids);
        }
        let (head, tail) = (self.show(&ids[..KEEP]), self.show(&ids[ids.len() - KEEP..]));
        format!("{} … ({} tokens) … {}", head.trim_end_matches(']'), ids.len() - 2 * KEEP, tail.trim_start_matches('['))
    }
}
