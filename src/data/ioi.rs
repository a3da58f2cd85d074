//! Indirect-object-identification prompts (Wang et al. 2022, "Interpretability in the Wild"):
//! "When Mary and John went to the store, John gave a drink to" → " Mary" (the indirect object, IO)
//! over " John" (the subject, S). BABA templates name S first, ABBA templates IO first.
use super::{Pair, Rng};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `{1}` and `{2}` are the first two names, `{S}` the subject's second mention; the prompt ends
/// right before the indirect object is named again.
const TEMPLATES: [&str; 15] = [
    "When {1} and {2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "After {1} and {2} arrived at the {PLACE}, {S} handed a {OBJECT} to",
    "While {1} and {2} were cleaning the {PLACE}, {S} passed a {OBJECT} to",
    "Yesterday {1} and {2} spent the day at the {PLACE}, and {S} gave a {OBJECT} to",
    "Once {1} and {2} had found the {PLACE}, {S} threw a {OBJECT} to",
    "Later, {1} and {2} walked into the {PLACE}. {S} offered a {OBJECT} to",
    "At the {PLACE}, {1} and {2} were talking. Then {S} sold a {OBJECT} to",
    "Before {1} and {2} left the {PLACE}, {S} lent a {OBJECT} to",
    "In the morning, {1} and {2} drove to the {PLACE}. {S} brought a {OBJECT} to",
    "Because {1} and {2} worked at the {PLACE}, {S} mailed a {OBJECT} to",
    "On Sunday, {1} and {2} visited the {PLACE}, where {S} gave a {OBJECT} to",
    "Since {1} and {2} were late to the {PLACE}, {S} sent a {OBJECT} to",
    "Then, {1} and {2} had lunch at the {PLACE}. Afterwards {S} gave a {OBJECT} to",
    "During a trip to the {PLACE}, {1} and {2} argued, and then {S} returned a {OBJECT} to",
    "So {1} and {2} met at the {PLACE}, and later {S} showed a {OBJECT} to",
];

const NAMES: [&str; 40] = [
    "Mary", "John", "Tom", "James", "Michael", "David", "Sarah", "Paul", "Mark", "Kate", "Anna", "Lisa", "Jack", "Sam", "Alex",
    "Peter", "Emma", "Laura", "Daniel", "Rachel", "Ben", "Chris", "Steve", "Kevin", "Brian", "Jennifer", "Jessica", "Amy",
    "Adam", "Ryan", "Eric", "Jason", "Emily", "Andrew", "Robert", "George", "Charles", "Joseph", "Thomas", "Henry",
];
const PLACES: [&str; 15] = [
    "store", "park", "office", "school", "hospital", "station", "garden", "restaurant", "library", "market", "beach",
    "museum", "house", "cafe", "airport",
];
const OBJECTS: [&str; 15] = [
    "ring", "book", "drink", "basketball", "computer", "bone", "necklace", "snack", "apple", "bottle", "letter", "key",
    "flower", "hat", "ticket",
];

/// How the corrupted prompt differs from the clean one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Corruption {
    /// All three names replaced by three other names.
    Abc,
    /// The subject's second mention replaced by the indirect object.
    SFlip,
}

/// The template filled in, and the byte offset of each slot's text.
fn fill(template: &str, values: &[(&str, &str)]) -> (String, BTreeMap<String, usize>) {
    let mut text = String::new();
    let mut offsets = BTreeMap::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("closed placeholder");
        text += &rest[..open];
        let slot = &rest[open..=close];
        offsets.insert(slot.to_string(), text.len());
        text += values.iter().find(|(k, _)| *k == slot).expect("every slot has a value").1;
        rest = &rest[close + 1..];
    }
    (text + rest, offsets)
}

/// `n` IOI pairs, BABA and ABBA alternating, with named positions IO, S1, S1+1, S2 and end.
pub fn generate(n: usize, seed: u64, corruption: Corruption, tok: &Tokenizer) -> Result<Vec<Pair>> {
    // Names must be single tokens after a space, as they appear in every template.
    let names: Vec<&str> = NAMES.iter().copied().filter(|nm| tok.single_token(&format!(" {nm}")).is_ok()).collect();
    if names.len() < 5 {
        bail!("this tokenizer has only {} single-token names of {}: IOI needs 5", names.len(), NAMES.len());
    }
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let template = TEMPLATES[rng.below(TEMPLATES.len())];
            let (place, object) = (PLACES[rng.below(PLACES.len())], OBJECTS[rng.below(OBJECTS.len())]);
            let people = rng.distinct(&names, 5);
            let (io, s) = (people[0], people[1]);
            let baba = i % 2 == 0;
            let (first, second) = if baba { (s, io) } else { (io, s) };
            let slots = |a: &'static str, b, s2| [("{1}", a), ("{2}", b), ("{S}", s2), ("{PLACE}", place), ("{OBJECT}", object)];
            let (clean, offsets) = fill(template, &slots(first, second, s));
            let corrupted = match corruption {
                Corruption::Abc => fill(template, &slots(people[2], people[3], people[4])).0,
                Corruption::SFlip => fill(template, &slots(first, second, io)).0,
            };
            let tokens = tok.encode_text(&clean)?;
            // A name's token is the one after the tokens of the text before its leading space.
            let at = |slot: &str, name: &str| -> Result<usize> {
                let pos = tok.encode_text(&clean[..offsets[slot] - 1])?.len();
                if tokens.get(pos) != Some(&tok.single_token(&format!(" {name}"))?) {
                    bail!("IOI template {template:?}: {name} is not token {pos} of {clean:?}");
                }
                Ok(pos)
            };
            let (io_pos, s1) = if baba { (at("{2}", io)?, at("{1}", s)?) } else { (at("{1}", io)?, at("{2}", s)?) };
            let positions = BTreeMap::from([
                ("IO".to_string(), io_pos),
                ("S1".to_string(), s1),
                ("S1+1".to_string(), s1 + 1),
                ("S2".to_string(), at("{S}", s)?),
                ("end".to_string(), tokens.len() - 1),
            ]);
            Ok(Pair {
                row: i + 1,
                clean,
                corrupted,
                answer: Some(format!(" {io}")),
                distractor: Some(format!(" {s}")),
                positions,
            })
        })
        .collect()
}
