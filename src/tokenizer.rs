//! A checkpoint's tokenizer (tokenizer.json), tokenizing as HF's `tokenizer(text)` does (its
//! post-processor's BOS included: Llama 3's, Gemma's), with the checks patching needs.
use anyhow::{bail, Result};
use std::path::Path;

/// GPT-2's (and Qwen's, Pythia's) beginning and end of text token, the BOS of a tokenizer whose
/// post-processor adds none.
pub const BOS: &str = "<|endoftext|>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The most bytes a text may have that the model's context can hold (`with_context`): a
    /// longer one is refused before it is tokenized (a 50 MB line would exhaust the memory).
    max_bytes: Option<usize>,
    /// The tokens the post-processor puts before a text's own (Llama 3's BOS).
    lead: Vec<u32>,
    /// config.json's `bos_token_id` and `eos_token_id` (`with_special_tokens`).
    bos: Option<u32>,
    eos: Vec<u32>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading tokenizer {}: {e}", path.display()))?;
        Self::from_bytes(&bytes, path)
    }

    /// The tokenizer.json read from `path` as `bytes`.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| anyhow::anyhow!("reading tokenizer {}: {e}", path.display()))?;
        let lead = inner.encode("", true).map_err(|e| anyhow::anyhow!("reading tokenizer {}: {e}", path.display()))?.get_ids().to_vec();
        Ok(Self { inner, max_bytes: None, lead, bos: None, eos: Vec::new() })
    }

    /// The BOS and EOS tokens config.json names (`bos_token_id`, `eos_token_id`).
    pub fn with_special_tokens(mut self, bos: Option<u32>, eos: Vec<u32>) -> Self {
        self.bos = bos;
        self.eos = eos;
        self
    }

    /// Refuses texts longer than a model's context of `context` tokens could hold, before they
    /// are tokenized: a token covers at most its longest vocabulary entry's characters, each at
    /// most 4 bytes of text.
    pub fn with_context(mut self, context: usize) -> Self {
        let longest = self.inner.get_vocab(true).keys().map(|t| t.chars().count()).max().unwrap_or(1).max(1);
        self.max_bytes = Some(context.saturating_mul(longest).saturating_mul(4));
        self
    }

    /// Token ids of `text` as HF's `tokenizer(text)` gives them: the post-processor's tokens
    /// included (Llama 3's BOS; GPT-2 and Qwen add none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_special(text, true)
    }

    /// Token ids of `text` alone, nothing added (`tokenizer(text, add_special_tokens=False)`).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_special(text, false)
    }

    fn encode_special(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let shown = || text.chars().take(80).collect::<String>() + if text.chars().nth(80).is_some() { "…" } else { "" };
        if let Some(max) = self.max_bytes.filter(|&m| text.len() > m) {
            bail!("a text of {} bytes ({:?}) is longer than the model's context can hold (at most {max} bytes)", text.len(), shown());
        }
        let enc = self.inner.encode(text, special).map_err(|e| anyhow::anyhow!("tokenizing {:?}: {e}", shown()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The BOS token, which TransformerLens prepends to every prompt by default: the one the
    /// post-processor adds, else config.json's, else `<|endoftext|>` (50256 in GPT-2).
    pub fn bos(&self) -> Result<u32> {
        match self.lead.first().copied().or(self.bos) {
            Some(id) => Ok(id),
            None => self.inner.token_to_id(BOS).ok_or_else(|| anyhow::anyhow!("the tokenizer has no {BOS} token to prepend, and config.json names no bos_token_id")),
        }
    }

    /// Where generation stops (`stop_at_eos`): config.json's EOS tokens, else the BOS (GPT-2's
    /// `<|endoftext|>` is both).
    pub fn eos(&self) -> Result<Vec<u32>> {
        if self.eos.is_empty() {
            return Ok(vec![self.bos()?]);
        }
        Ok(self.eos.clone())
    }

    /// How many tokens come before a text's own in `encode_with(_, prepend_bos)`: what named
    /// positions (counted in the text's own tokens) shift by.
    pub fn lead(&self, prepend_bos: bool) -> usize {
        if self.lead.is_empty() {
            usize::from(prepend_bos)
        } else {
            self.lead.len()
        }
    }

    /// `encode`, with the BOS in front when `prepend_bos` and the tokenizer puts none there
    /// itself (TransformerLens' `prepend_bos=True`: Llama 3's prompts have theirs already).
    pub fn encode_with(&self, text: &str, prepend_bos: bool) -> Result<Vec<u32>> {
        let ids = self.encode(text)?;
        Ok(if prepend_bos && self.lead.is_empty() { [vec![self.bos()?], ids].concat() } else { ids })
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
        let ids = self.encode_text(text)?;
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
