//! Finding what the user changed between the source and the target prompt.

use super::english::{is_article, join_words, split_words, words_equal};
use crate::{EngineError, Result};

/// The words that differ between two prompts, and the words they share around them.
///
/// `source_prompt ≈ prefix + source_article + source + suffix` (likewise for the target).
/// An "a" / "an" right before a changed word goes with it ("a cat" → "an elephant" gives
/// "cat" → "elephant") and is kept apart in `*_article`, because it depends on the word after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditPhrase {
    /// The source's changed words; empty when the target only adds words.
    pub source: String,
    /// The target's changed words; empty when the target only removes words.
    pub target: String,
    /// Words both prompts start with (as the source spells them).
    pub prefix: String,
    /// Words both prompts end with (as the source spells them).
    pub suffix: String,
    /// "a" / "an" (as typed) that stood before the source phrase, or "".
    pub source_article: String,
    /// "a" / "an" (as typed) that stood before the target phrase, or "".
    pub target_article: String,
}

impl EditPhrase {
    /// The source prompt rebuilt from the parts, as words.
    pub fn source_words(&self) -> Vec<String> {
        self.words(&self.source_article, &self.source)
    }

    /// The target prompt rebuilt from the parts, as words.
    pub fn target_words(&self) -> Vec<String> {
        self.words(&self.target_article, &self.target)
    }

    fn words(&self, article: &str, phrase: &str) -> Vec<String> {
        [&self.prefix, article, phrase, &self.suffix]
            .iter()
            .flat_map(|part| split_words(part))
            .collect()
    }

    /// Index of the first changed word (after the shared prefix and article).
    pub(crate) fn prefix_len(&self) -> usize {
        split_words(&self.prefix).len()
    }
}

/// Word-level difference of two prompts: the longest common prefix and then the longest
/// common suffix of the remaining words (case-insensitive, punctuation as its own word).
pub fn find_edit_phrase(source_prompt: &str, target_prompt: &str) -> Result<EditPhrase> {
    let source = split_words(source_prompt);
    let target = split_words(target_prompt);
    if source.is_empty() || target.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "edit direction needs two non-empty prompts (source {source_prompt:?}, target {target_prompt:?})"
        )));
    }
    let prefix_len = source
        .iter()
        .zip(&target)
        .take_while(|(a, b)| words_equal(a, b))
        .count();
    let max_suffix = source.len().min(target.len()) - prefix_len;
    let suffix_len = source
        .iter()
        .rev()
        .zip(target.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| words_equal(a, b))
        .count();
    let source_changed = &source[prefix_len..source.len() - suffix_len];
    let target_changed = &target[prefix_len..target.len() - suffix_len];
    if source_changed.is_empty() && target_changed.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "source and target prompts are the same ({source_prompt:?}): nothing to edit"
        )));
    }
    let (source_article, source_changed) = split_article(source_changed);
    let (target_article, target_changed) = split_article(target_changed);
    if source_changed.is_empty() && target_changed.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "{source_prompt:?} and {target_prompt:?} differ only in an article: nothing to edit"
        )));
    }
    Ok(EditPhrase {
        source: join_words(source_changed),
        target: join_words(target_changed),
        prefix: join_words(&source[..prefix_len]),
        suffix: join_words(&source[source.len() - suffix_len..]),
        source_article,
        target_article,
    })
}

/// Splits a leading "a" / "an" off the changed words.
fn split_article(words: &[String]) -> (String, &[String]) {
    match words.first() {
        Some(first) if is_article(first) => (first.clone(), &words[1..]),
        _ => (String::new(), words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_the_prompts() {
        let p = find_edit_phrase("a photo of a cat", "a photo of an elephant").unwrap();
        assert_eq!((p.source.as_str(), p.target.as_str()), ("cat", "elephant"));
        assert_eq!(join_words(&p.source_words()), "a photo of a cat");
        assert_eq!(join_words(&p.target_words()), "a photo of an elephant");
        assert_eq!(p.prefix_len(), 3);
    }
}
