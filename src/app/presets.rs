//! Ready-made edits that fill both prompts.

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
