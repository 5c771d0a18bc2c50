//! Small English helpers for building template sentences: word splitting, word classes that
//! bound a noun phrase, "a" / "an", plurals and mass nouns. Heuristics, not a grammar: they
//! only need to keep generated captions natural for CLIP.

/// Punctuation that becomes a token of its own (so "cat," and "cat" compare equal).
const PUNCTUATION: &[char] = &[',', '.', ';', ':', '!', '?'];

const ARTICLES: &[&str] = &["a", "an"];

/// Words that open a noun phrase and take the place of an article.
const DETERMINERS: &[&str] = &[
    "the", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our", "their",
    "some", "many", "several", "few", "one", "two", "three", "four", "five", "six", "seven",
    "eight", "nine", "ten", "every", "each", "no", "both", "all", "any", "another",
];

/// Prepositions that start a trailing phrase (a setting, an accessory, a style).
/// "of" is left out: it belongs to framings such as "a photo of".
pub const TAIL_PREPOSITIONS: &[&str] = &[
    "in", "on", "at", "by", "with", "without", "under", "over", "near", "next", "behind", "beside",
    "across", "through", "into", "onto", "from", "to", "for", "above", "below", "inside",
    "outside", "around", "along", "against", "among", "between", "during", "like",
];

const CONJUNCTIONS: &[&str] = &["and", "or", "but", "while"];

/// Nouns that take no article in the singular.
const MASS_NOUNS: &[&str] = &[
    "water",
    "grass",
    "snow",
    "sand",
    "hair",
    "fur",
    "food",
    "fire",
    "smoke",
    "rain",
    "fog",
    "art",
    "furniture",
    "traffic",
    "bread",
    "rice",
    "milk",
    "coffee",
    "tea",
    "wine",
    "beer",
    "money",
    "jewelry",
    "clothing",
    "sunlight",
    "scenery",
    "foliage",
    "ice",
    "lava",
    "news",
];

const IRREGULAR_PLURALS: &[&str] = &[
    "people",
    "men",
    "women",
    "children",
    "mice",
    "geese",
    "feet",
    "teeth",
    "oxen",
    "police",
    "cattle",
    "sunglasses",
    "glasses",
    "pants",
    "jeans",
    "scissors",
];

/// Singular nouns ending in "s" that the plural rule would get wrong.
const SINGULAR_ENDING_IN_S: &[&str] = &[
    "bus",
    "lens",
    "canvas",
    "atlas",
    "gas",
    "chaos",
    "christmas",
];

fn lower(word: &str) -> String {
    word.to_lowercase()
}

fn is_in(word: &str, list: &[&str]) -> bool {
    let w = lower(word);
    list.contains(&w.as_str())
}

/// Splits a prompt into words, with `,.;:!?` as separate tokens.
pub fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for chunk in text.split_whitespace() {
        let mut current = String::new();
        for ch in chunk.chars() {
            if PUNCTUATION.contains(&ch) {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
                words.push(ch.to_string());
            } else {
                current.push(ch);
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
    }
    words
}

/// Joins words with single spaces, without a space before punctuation.
pub fn join_words<S: AsRef<str>>(words: &[S]) -> String {
    let mut out = String::new();
    for word in words {
        let word = word.as_ref();
        if word.is_empty() {
            continue;
        }
        let is_punct = word.chars().count() == 1 && word.chars().all(|c| PUNCTUATION.contains(&c));
        if !out.is_empty() && !is_punct {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

pub fn words_equal(a: &str, b: &str) -> bool {
    a == b || lower(a) == lower(b)
}

pub fn is_article(word: &str) -> bool {
    is_in(word, ARTICLES)
}

pub fn is_determiner(word: &str) -> bool {
    is_in(word, DETERMINERS)
}

pub fn is_punctuation(word: &str) -> bool {
    word.chars().count() == 1 && word.chars().all(|c| PUNCTUATION.contains(&c))
}

pub fn is_tail_preposition(word: &str) -> bool {
    is_in(word, TAIL_PREPOSITIONS)
}

/// A word a noun phrase never extends across, looking left from the edited words.
pub fn bounds_phrase_left(word: &str) -> bool {
    is_article(word)
        || is_determiner(word)
        || is_tail_preposition(word)
        || lower(word) == "of"
        || is_in(word, CONJUNCTIONS)
        || is_punctuation(word)
}

/// A word a noun phrase never extends across, looking right: as on the left, plus
/// participles ("sitting") that start a verb phrase.
pub fn bounds_phrase_right(word: &str) -> bool {
    bounds_phrase_left(word) || is_participle(word)
}

fn is_participle(word: &str) -> bool {
    let w = lower(word);
    w.len() > 4 && w.ends_with("ing")
}

/// "an" before a vowel sound, "a" otherwise (with the usual spelling exceptions).
pub fn indefinite_article(next_word: &str) -> &'static str {
    let w = lower(next_word);
    const AN_EXCEPTIONS: &[&str] = &["hour", "honest", "honor", "honour", "heir", "herb"];
    const A_EXCEPTIONS: &[&str] = &[
        "uni", "use", "usu", "uti", "ure", "eu", "one", "once", "ewe",
    ];
    if AN_EXCEPTIONS.iter().any(|p| w.starts_with(p)) {
        return "an";
    }
    if A_EXCEPTIONS.iter().any(|p| w.starts_with(p)) {
        return "a";
    }
    match w.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Rewrites every "a" / "an" to agree with the word after it.
pub fn fix_articles(words: &mut [String]) {
    for i in 0..words.len().saturating_sub(1) {
        if is_article(&words[i]) && !is_punctuation(&words[i + 1]) {
            let article = indefinite_article(&words[i + 1]);
            words[i] = if words[i].starts_with('A') {
                let mut a = article.to_string();
                a[..1].make_ascii_uppercase();
                a
            } else {
                article.to_string()
            };
        }
    }
}

/// The head noun of a noun phrase: the last word before a participle, preposition or
/// punctuation ("cat" in "black cat wearing glasses").
fn head_noun<S: AsRef<str>>(phrase: &[S]) -> Option<&str> {
    let mut head = None;
    for (i, word) in phrase.iter().enumerate() {
        let word = word.as_ref();
        if i > 0 && bounds_phrase_right(word) {
            break;
        }
        head = Some(word);
    }
    head
}

fn is_plural(noun: &str) -> bool {
    let w = lower(noun);
    if is_in(&w, IRREGULAR_PLURALS) {
        return true;
    }
    if is_in(&w, SINGULAR_ENDING_IN_S) {
        return false;
    }
    w.len() > 3
        && w.ends_with('s')
        && !w.ends_with("ss")
        && !w.ends_with("us")
        && !w.ends_with("is")
}

/// Whether a noun phrase needs "a" / "an" in front: not when it already starts with an
/// article or determiner, names something (capitalised), or its head is plural or a mass noun.
pub fn needs_article<S: AsRef<str>>(phrase: &[S]) -> bool {
    let Some(first) = phrase.first().map(|w| w.as_ref()) else {
        return false;
    };
    if is_article(first) || is_determiner(first) {
        return false;
    }
    if first.chars().next().is_some_and(char::is_uppercase) {
        return false;
    }
    match head_noun(phrase) {
        Some(head) => !is_plural(head) && !is_in(head, MASS_NOUNS),
        None => false,
    }
}

/// Renders a noun phrase with an optional adjective: "an old dog", "two small cats",
/// "small glasses", "the small cat".
pub fn noun_phrase(phrase: &[String], adjective: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(phrase.len() + 2);
    let starts_with_determiner = phrase
        .first()
        .is_some_and(|w| is_article(w) || is_determiner(w));
    if starts_with_determiner {
        out.push(phrase[0].clone());
        if !adjective.is_empty() {
            out.push(adjective.to_string());
        }
        out.extend(phrase[1..].iter().cloned());
    } else {
        if needs_article(phrase) {
            out.push("a".to_string());
        }
        if !adjective.is_empty() {
            out.push(adjective.to_string());
        }
        out.extend(phrase.iter().cloned());
    }
    fix_articles(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(phrase: &str, adjective: &str) -> String {
        join_words(&noun_phrase(&split_words(phrase), adjective))
    }

    #[test]
    fn articles_follow_the_next_word() {
        assert_eq!(np("dog", "old"), "an old dog");
        assert_eq!(np("cat", "small"), "a small cat");
        assert_eq!(np("elephant", ""), "an elephant");
        assert_eq!(np("umbrella", ""), "an umbrella");
        assert_eq!(np("unicorn", ""), "a unicorn");
        assert_eq!(np("hour glass", ""), "an hour glass");
    }

    #[test]
    fn no_article_for_plurals_mass_nouns_and_determiners() {
        assert_eq!(np("cats", "small"), "small cats");
        assert_eq!(np("glasses", ""), "glasses");
        assert_eq!(np("water", "old"), "old water");
        assert_eq!(np("two cats", "small"), "two small cats");
        assert_eq!(np("the cat", "old"), "the old cat");
        assert_eq!(np("an apple", "small"), "a small apple");
        assert_eq!(np("Mona Lisa", ""), "Mona Lisa");
        assert_eq!(np("bus", ""), "a bus");
        assert_eq!(
            np("cat wearing glasses", "old"),
            "an old cat wearing glasses"
        );
    }

    #[test]
    fn words_split_and_join() {
        assert_eq!(
            split_words("a cat,  digital art."),
            ["a", "cat", ",", "digital", "art", "."]
        );
        assert_eq!(
            join_words(&split_words("a cat,  digital art.")),
            "a cat, digital art."
        );
    }
}
