//! Ready-made edits that fill both prompts: Mirror's own list for photos, or edits made
//! from the loaded model's own captions when it lists them (the demo model knows shapes and
//! colours, not cats and dogs).

pub struct Preset {
    pub name: &'static str,
    pub source: &'static str,
    pub target: &'static str,
}

pub const PRESETS: [Preset; 7] = [
    Preset {
        name: "cat to dog",
        source: "a photo of a cat",
        target: "a photo of a dog",
    },
    Preset {
        name: "dog to cat",
        source: "a photo of a dog",
        target: "a photo of a cat",
    },
    Preset {
        name: "horse to zebra",
        source: "a photo of a horse",
        target: "a photo of a zebra",
    },
    Preset {
        name: "add glasses",
        source: "a photo of a person",
        target: "a photo of a person wearing glasses",
    },
    Preset {
        name: "man to woman",
        source: "a photo of a man",
        target: "a photo of a woman",
    },
    Preset {
        name: "sketch to oil painting",
        source: "a pencil sketch of a landscape",
        target: "an oil painting of a landscape",
    },
    Preset {
        name: "photo to watercolour",
        source: "a photo of a landscape",
        target: "a watercolour painting of a landscape",
    },
];

/// A ready-made edit as the menu shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub name: String,
    pub source: String,
    pub target: String,
}

/// Captions that differ from `source` in exactly one word, with that word's change.
pub fn one_word_edits<'a>(source: &str, captions: &'a [String]) -> Vec<(String, &'a str)> {
    let words: Vec<&str> = source.split_whitespace().collect();
    captions
        .iter()
        .filter_map(|c| {
            let other: Vec<&str> = c.split_whitespace().collect();
            if other.len() != words.len() {
                return None;
            }
            let mut changed = words.iter().zip(&other).filter(|(a, b)| a != b);
            match (changed.next(), changed.next()) {
                (Some((a, b)), None) => Some((format!("{a} to {b}"), c.as_str())),
                _ => None,
            }
        })
        .collect()
}

/// The menu: one-word edits of `source` among the model's `captions` (of its first caption
/// when `source` has none), else Mirror's list without the edits whose words `knows` refuses.
pub fn edits_for(
    source: &str,
    captions: Option<&[String]>,
    knows: impl Fn(&str) -> bool,
) -> Vec<Edit> {
    if let Some(captions) = captions.filter(|c| !c.is_empty()) {
        let mut from = source.to_string();
        let mut found = one_word_edits(&from, captions);
        if found.is_empty() {
            from.clone_from(&captions[0]);
            found = one_word_edits(&from, captions);
        }
        return found
            .into_iter()
            .take(8)
            .map(|(name, target)| Edit {
                name,
                source: from.clone(),
                target: target.to_string(),
            })
            .collect();
    }
    PRESETS
        .iter()
        .filter(|p| knows(p.source) && knows(p.target))
        .map(|p| Edit {
            name: p.name.into(),
            source: p.source.into(),
            target: p.target.into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_come_from_the_models_captions_when_it_has_them() {
        let captions: Vec<String> = [
            "a red circle on a blue background",
            "a red star on a blue background",
            "a green circle on a blue background",
            "a red circle on a white background",
            "a green star on a white background",
        ]
        .map(String::from)
        .to_vec();
        let edits = edits_for("a red circle on a blue background", Some(&captions), |_| {
            true
        });
        let names: Vec<&str> = edits.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["circle to star", "red to green", "blue to white"]);
        assert!(
            edits
                .iter()
                .all(|e| e.source == "a red circle on a blue background")
        );
        // A source the captions do not hold: edits of the model's first caption.
        let edits = edits_for("a photo of a cat", Some(&captions), |_| true);
        assert_eq!(edits[0].source, captions[0]);
        // Without captions: Mirror's list, less what the model does not know.
        assert_eq!(edits_for("x", None, |_| true).len(), PRESETS.len());
        let no_zebra = edits_for("x", None, |p| !p.contains("zebra"));
        assert_eq!(no_zebra.len(), PRESETS.len() - 1);
    }
}
