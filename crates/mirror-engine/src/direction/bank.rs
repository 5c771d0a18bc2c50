//! Paired template sentences (docs/algorithm.md §5.3): the same caption patterns rendered once
//! with the source phrase and once with the target phrase, so the contexts cancel in Δc.

use std::collections::HashSet;

use super::english::{
    bounds_phrase_left, bounds_phrase_right, fix_articles, is_article, is_determiner,
    is_punctuation, is_tail_preposition, join_words, noun_phrase, split_words, words_equal,
};
use super::phrase::EditPhrase;

/// Caption framings around a noun phrase `{}`.
const FRAMINGS: &[&str] = &[
    "{}",
    "a photo of {}",
    "a close-up photograph of {}",
    "a painting of {}",
    "a drawing of {}",
    "a picture of {}",
    "a blurry photo of {}",
    "a black and white photo of {}",
    "a bright photo of {}",
    "a cropped photo of {}",
    "a snapshot of {}",
    "a rendering of {}",
    "a good photo of {}",
    "a high quality photo of {}",
    "a sketch of {}",
    "a watercolor painting of {}",
    "a portrait of {}",
    "an illustration of {}",
    "a child playing with {}",
    "a person standing next to {}",
];

/// Adjectives put in front of the phrase ("" = none).
const ADJECTIVES: &[&str] = &[
    "",
    "small",
    "large",
    "old",
    "young",
    "beautiful",
    "cute",
    "happy",
    "little",
    "big",
    "lovely",
    "calm",
];

/// Settings appended after the phrase ("" = none).
const SETTINGS: &[&str] = &[
    "",
    "in a park",
    "on a sofa",
    "at the beach",
    "in the snow",
    "on the grass",
    "in a kitchen",
    "next to a window",
    "in a forest",
    "on a city street",
    "in a garden",
    "on a wooden floor",
    "in front of a house",
    "under a tree",
    "in the rain",
    "at night",
    "in a field",
    "by a lake",
    "in a living room",
    "on a bed",
    "in the mountains",
    "on a table",
    "in a studio",
    "in the desert",
];

/// Times and light, used when the edit itself is a setting or other trailing phrase.
const CONDITIONS: &[&str] = &[
    "",
    "at night",
    "in the morning",
    "on a sunny day",
    "in soft light",
    "at sunset",
    "in winter",
    "in summer",
    "on a cloudy day",
    "in warm light",
    "at dawn",
    "in the evening",
];

/// Adjectives for a medium ("a detailed oil painting of …").
const MEDIUM_ADJECTIVES: &[&str] = &[
    "",
    "detailed",
    "simple",
    "beautiful",
    "small",
    "large",
    "old",
    "famous",
    "colorful",
    "quick",
];

/// Subjects for media and for trailing edits without a subject in the prompt.
const SUBJECTS: &[&str] = &[
    "a woman",
    "a man",
    "a street scene",
    "a house",
    "a cat",
    "a dog",
    "a mountain landscape",
    "a city",
    "a bowl of fruit",
    "a tree",
    "a car",
    "a child",
    "an old man",
    "a bird",
    "a flower",
    "a boat on a lake",
    "a horse",
    "a girl",
    "a village",
    "a forest",
];

/// How the two phrases sit in a caption.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// The phrases are (or, with neighbouring words, become) the main noun phrase:
    /// "cat" → "dog", "cat" → "cat wearing glasses", "black cat" → "white cat".
    Noun {
        source: Vec<String>,
        target: Vec<String>,
    },
    /// The phrases sit in a trailing phrase after the subject: "with a hat" → "with an
    /// umbrella", ", digital art" added, "in the style of monet" → "… of van gogh".
    Tail {
        subject: Option<Vec<String>>,
        source: Vec<String>,
        target: Vec<String>,
    },
    /// The phrases are a medium in front of "of": "photo" → "oil painting" in "a photo of a cat".
    Medium {
        source: Vec<String>,
        target: Vec<String>,
        subject: Option<String>,
    },
}

/// At least `min_pairs` (source, target) caption pairs that differ only in the edited phrase,
/// the same every run. The first pair is the user's own prompts. The pattern space holds
/// a few thousand pairs; `min_pairs` beyond it gets all of them.
pub fn template_bank(phrase: &EditPhrase, min_pairs: usize) -> Vec<(String, String)> {
    let layout = layout(phrase);
    let axes = layout.axes();
    let total: usize = axes.iter().product();
    let mut bank = Bank::default();
    bank.pairs.reserve(min_pairs.min(total) + 1);
    bank.push(phrase.source_words(), phrase.target_words());
    let stride = coprime_stride(total);
    for k in 0..total {
        if bank.pairs.len() >= min_pairs.max(1) {
            break;
        }
        // A fixed permutation of the pattern space, so that the first pairs already vary
        // along every axis.
        let mut index = (k * stride) % total;
        let mut choice = [0usize; 3];
        for (slot, len) in choice.iter_mut().zip(&axes) {
            *slot = index % len;
            index /= len;
        }
        let (source, target) = layout.render(choice);
        bank.push(source, target);
    }
    bank.pairs
}

#[derive(Default)]
struct Bank {
    pairs: Vec<(String, String)>,
    seen: HashSet<(String, String)>,
}

impl Bank {
    fn push(&mut self, mut source: Vec<String>, mut target: Vec<String>) {
        fix_articles(&mut source);
        fix_articles(&mut target);
        let pair = (join_words(&source), join_words(&target));
        if pair.0 != pair.1 && self.seen.insert(pair.clone()) {
            self.pairs.push(pair);
        }
    }
}

/// A stride near 0.618 · total that is coprime to it: k ↦ k·stride mod total is a permutation.
fn coprime_stride(total: usize) -> usize {
    if total <= 1 {
        return 1;
    }
    let mut stride = (total as f64 * 0.618_034) as usize | 1;
    while gcd(stride, total) != 1 {
        stride += 1;
    }
    stride
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn words(text: &str) -> Vec<String> {
    split_words(text)
}

/// Adjectives that contradict each other: a phrase with one of them gets none of the others.
const EXCLUSIVE_ADJECTIVES: &[&[&str]] = &[&["old", "young"], &["small", "large", "little", "big"]];

/// The axis values that don't repeat or contradict a word of either phrase ("old old woman",
/// "young old woman").
fn usable<'a>(list: &[&'a str], phrases: &[&[String]]) -> Vec<&'a str> {
    let in_phrases = |word: &str| {
        phrases
            .iter()
            .any(|p| p.iter().any(|w| words_equal(w, word)))
    };
    list.iter()
        .copied()
        .filter(|item| {
            item.is_empty()
                || !(in_phrases(item)
                    || EXCLUSIVE_ADJECTIVES
                        .iter()
                        .any(|group| group.contains(item) && group.iter().any(|g| in_phrases(g))))
        })
        .collect()
}

impl Layout {
    /// Sizes of the three pattern axes.
    fn axes(&self) -> [usize; 3] {
        match self {
            Layout::Noun { source, target } => [
                FRAMINGS.len(),
                usable(ADJECTIVES, &[source, target]).len(),
                SETTINGS.len(),
            ],
            Layout::Tail { subject, .. } => [
                FRAMINGS.len(),
                match subject {
                    Some(s) => usable(ADJECTIVES, &[s]).len(),
                    None => SUBJECTS.len(),
                },
                CONDITIONS.len(),
            ],
            Layout::Medium {
                source,
                target,
                subject,
            } => [
                self.medium_subjects(subject.as_deref()).len(),
                usable(MEDIUM_ADJECTIVES, &[source, target]).len(),
                SETTINGS.len(),
            ],
        }
    }

    fn medium_subjects<'a>(&self, own: Option<&'a str>) -> Vec<&'a str> {
        let mut subjects: Vec<&str> = own.into_iter().collect();
        for s in SUBJECTS {
            if !subjects.iter().any(|x| x.eq_ignore_ascii_case(s)) {
                subjects.push(s);
            }
        }
        subjects
    }

    fn render(&self, [a, b, c]: [usize; 3]) -> (Vec<String>, Vec<String>) {
        match self {
            Layout::Noun { source, target } => {
                let adjective = usable(ADJECTIVES, &[source, target])[b];
                let render = |np: &[String]| {
                    let mut out = frame(FRAMINGS[a], noun_phrase(np, adjective));
                    out.extend(words(SETTINGS[c]));
                    out
                };
                (render(source), render(target))
            }
            Layout::Tail {
                subject,
                source,
                target,
            } => {
                let np = match subject {
                    Some(s) => noun_phrase(s, usable(ADJECTIVES, &[s])[b]),
                    None => words(SUBJECTS[b]),
                };
                let render = |tail: &[String]| {
                    let mut out = frame(FRAMINGS[a], np.clone());
                    // ", digital art" reads best last; "with a hat" right after its subject.
                    if tail.first().is_some_and(|w| is_punctuation(w)) {
                        out.extend(words(CONDITIONS[c]));
                        out.extend(tail.iter().cloned());
                    } else {
                        out.extend(tail.iter().cloned());
                        out.extend(words(CONDITIONS[c]));
                    }
                    out
                };
                (render(source), render(target))
            }
            Layout::Medium {
                source,
                target,
                subject,
            } => {
                let subject_words = words(self.medium_subjects(subject.as_deref())[a]);
                let adjective = usable(MEDIUM_ADJECTIVES, &[source, target])[b];
                let render = |medium: &[String]| {
                    let mut out = noun_phrase(medium, adjective);
                    out.push("of".into());
                    out.extend(subject_words.iter().cloned());
                    out.extend(words(SETTINGS[c]));
                    out
                };
                (render(source), render(target))
            }
        }
    }
}

fn frame(framing: &str, np: Vec<String>) -> Vec<String> {
    let (before, after) = framing.split_once("{}").unwrap_or((framing, ""));
    let mut out = words(before);
    out.extend(np);
    out.extend(words(after));
    out
}

/// Decides how the edit sits in a caption, from the rebuilt prompts.
fn layout(phrase: &EditPhrase) -> Layout {
    let source = phrase.source_words();
    let target = phrase.target_words();
    let suffix_len = split_words(&phrase.suffix).len();
    let start = phrase.prefix_len();
    let source_end = source.len() - suffix_len;
    let target_end = target.len() - suffix_len;

    // A trailing phrase: the first preposition or punctuation after the subject, in the
    // shared prefix or as the first changed word.
    let first_changed = [source.get(start), target.get(start)];
    let tail_start = (1..start)
        .find(|&i| is_tail_preposition(&source[i]) || is_punctuation(&source[i]))
        .or_else(|| {
            let changed_starts_tail =
                first_changed
                    .iter()
                    .zip([source_end, target_end])
                    .any(|(w, end)| {
                        start < end
                            && w.is_some_and(|w| is_tail_preposition(w) || is_punctuation(w))
                    });
            (start >= 1 && changed_starts_tail).then_some(start)
        });
    if let Some(tail_start) = tail_start {
        return Layout::Tail {
            subject: subject_of(&source[..tail_start]),
            source: source[tail_start..].to_vec(),
            target: target[tail_start..].to_vec(),
        };
    }

    // Grow the changed words to the whole noun phrase they belong to.
    let mut left = start;
    while left > 0 && !bounds_phrase_left(&source[left - 1]) {
        left -= 1;
    }
    // "two cats", "the cat": a determiner stays with its noun (an article is regenerated).
    if left > 0 && is_determiner(&source[left - 1]) {
        left -= 1;
    }
    let mut grow_right = 0;
    while grow_right < suffix_len && !bounds_phrase_right(&source[source_end + grow_right]) {
        grow_right += 1;
    }
    let source_np = strip_article(&source[left..source_end + grow_right]);
    let target_np = strip_article(&target[left..target_end + grow_right]);

    let only_articles_before = source[..left].iter().all(|w| is_article(w));
    let next = source.get(source_end + grow_right);
    if only_articles_before && next.is_some_and(|w| w.eq_ignore_ascii_case("of")) {
        let subject = join_words(&source[source_end + grow_right + 1..]);
        return Layout::Medium {
            source: or_placeholder(source_np),
            target: or_placeholder(target_np),
            subject: (!subject.is_empty()).then_some(subject),
        };
    }
    Layout::Noun {
        source: or_placeholder(source_np),
        target: or_placeholder(target_np),
    }
}

/// The subject noun phrase of the words before a trailing phrase: from its last article or
/// determiner on ("cat" in "a photo of a cat", "two cats").
fn subject_of(words: &[String]) -> Option<Vec<String>> {
    let np = match words
        .iter()
        .rposition(|w| is_article(w) || is_determiner(w))
    {
        Some(d) if is_article(&words[d]) => &words[d + 1..],
        Some(d) => &words[d..],
        None => words,
    };
    (!np.is_empty()).then(|| np.to_vec())
}

fn strip_article(words: &[String]) -> Vec<String> {
    match words.first() {
        Some(w) if is_article(w) => words[1..].to_vec(),
        _ => words.to_vec(),
    }
}

/// A phrase that vanished entirely ("a" → "a cat") still needs a noun in the caption.
fn or_placeholder(words: Vec<String>) -> Vec<String> {
    if words.is_empty() {
        vec!["scene".to_string()]
    } else {
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direction::find_edit_phrase;

    fn layout_of(source: &str, target: &str) -> Layout {
        layout(&find_edit_phrase(source, target).unwrap())
    }

    fn w(text: &str) -> Vec<String> {
        split_words(text)
    }

    #[test]
    fn layouts() {
        assert_eq!(
            layout_of("a cat sitting on a sofa", "a dog sitting on a sofa"),
            Layout::Noun {
                source: w("cat"),
                target: w("dog")
            }
        );
        assert_eq!(
            layout_of("a black cat", "a white cat"),
            Layout::Noun {
                source: w("black cat"),
                target: w("white cat")
            }
        );
        assert_eq!(
            layout_of("a cat", "a cat wearing glasses"),
            Layout::Noun {
                source: w("cat"),
                target: w("cat wearing glasses")
            }
        );
        assert_eq!(
            layout_of("a man with a hat", "a man with an umbrella"),
            Layout::Tail {
                subject: Some(w("man")),
                source: w("with a hat"),
                target: w("with an umbrella")
            }
        );
        assert_eq!(
            layout_of("a photo of a cat", "an oil painting of a cat"),
            Layout::Medium {
                source: w("photo"),
                target: w("oil painting"),
                subject: Some("a cat".into())
            }
        );
        assert_eq!(
            layout_of("a cat", "a cat, digital art"),
            Layout::Tail {
                subject: Some(w("cat")),
                source: vec![],
                target: w(", digital art")
            }
        );
    }
}
