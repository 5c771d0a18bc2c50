//! Sentence pairs from a model's own captions (`sentence_templates` in its `mirror.json`):
//! the captions of its grammar that hold the source phrase where the source prompt holds it,
//! paired with the same caption around the target phrase. No English article fixing: these are
//! the model's words, not English ("a orange circle" stays).

use std::collections::HashSet;

use super::english::{join_words, split_words, words_equal};
use super::phrase::EditPhrase;

/// Every template with the source phrase at the prompt's word position, paired with the same
/// template around the target phrase. When some of those targets are templates themselves
/// (captions the model was trained on), only those pairs are kept: "a red circle on a green
/// background" must not pair with "a green circle on a green background" when the grammar
/// never paints a shape in its background's colour. Empty when no template matches.
pub fn model_template_pairs(phrase: &EditPhrase, templates: &[String]) -> Vec<(String, String)> {
    let source_prompt = phrase.source_words();
    let at = phrase.prefix_len();
    let source: Vec<String> = split_words(&phrase.source_article)
        .into_iter()
        .chain(split_words(&phrase.source))
        .collect();
    let target: Vec<String> = split_words(&phrase.target_article)
        .into_iter()
        .chain(split_words(&phrase.target))
        .collect();
    let mut pairs = Vec::new();
    let mut seen = HashSet::new();
    for template in templates {
        let words = split_words(template);
        if !holds_phrase(&words, at, &source, &source_prompt) {
            continue;
        }
        let mut edited: Vec<String> = words[..at].to_vec();
        edited.extend(target.iter().cloned());
        edited.extend(words[at + source.len()..].iter().cloned());
        let pair = (join_words(&words), join_words(&edited));
        if pair.0 != pair.1 && seen.insert(pair.clone()) {
            pairs.push(pair);
        }
    }
    let known: HashSet<String> = templates
        .iter()
        .map(|t| join_words(&split_words(t)).to_lowercase())
        .collect();
    let in_grammar: Vec<(String, String)> = pairs
        .iter()
        .filter(|(_, t)| known.contains(&t.to_lowercase()))
        .cloned()
        .collect();
    if in_grammar.is_empty() {
        pairs
    } else {
        in_grammar
    }
}

/// Whether `words` hold `phrase` at word `at`. An insertion (empty phrase) needs the words
/// on both sides of the insertion point to be the prompt's.
fn holds_phrase(words: &[String], at: usize, phrase: &[String], prompt: &[String]) -> bool {
    if words.len() < at + phrase.len() {
        return false;
    }
    if phrase.is_empty() {
        let same = |i: usize| match (words.get(i), prompt.get(i)) {
            (Some(a), Some(b)) => words_equal(a, b),
            (None, None) => true,
            _ => false,
        };
        return (at == 0 || same(at - 1)) && same(at);
    }
    words[at..at + phrase.len()]
        .iter()
        .zip(phrase)
        .all(|(a, b)| words_equal(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direction::find_edit_phrase;

    fn grammar() -> Vec<String> {
        let colours = ["red", "orange", "blue"];
        let mut out = Vec::new();
        for c in colours {
            for shape in ["circle", "square"] {
                for b in colours.iter().filter(|b| **b != c) {
                    out.push(format!("a {c} {shape} on a {b} background"));
                }
            }
        }
        out
    }

    #[test]
    fn shape_edit_pairs_every_caption_of_the_shape() {
        let phrase = find_edit_phrase(
            "a red circle on a blue background",
            "a red square on a blue background",
        )
        .unwrap();
        let pairs = model_template_pairs(&phrase, &grammar());
        assert_eq!(pairs.len(), 6);
        for (s, t) in &pairs {
            assert!(s.contains(" circle ") && t == &s.replace("circle", "square"));
        }
        // No article fixing on the model's words.
        assert!(
            pairs
                .iter()
                .any(|(s, _)| s == "a orange circle on a red background")
        );
    }

    #[test]
    fn colour_edit_keeps_the_colour_of_the_background_out() {
        let phrase = find_edit_phrase(
            "a red circle on a blue background",
            "a orange circle on a blue background",
        )
        .unwrap();
        let pairs = model_template_pairs(&phrase, &grammar());
        // red shapes (2 shapes × 2 backgrounds), minus the orange background (not a caption
        // once the shape is orange too): 2 × 1.
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        for (s, t) in &pairs {
            assert!(s.starts_with("a red ") && t.starts_with("a orange "));
            assert!(s.ends_with("blue background"), "{s}");
        }
    }

    #[test]
    fn no_match_gives_no_pairs() {
        let phrase = find_edit_phrase("a photo of a cat", "a photo of a dog").unwrap();
        assert!(model_template_pairs(&phrase, &grammar()).is_empty());
    }
}
