//! What the user can ask for: the UI collects [`Action`]s while drawing and the app carries
//! them out after the frame (`actions.rs`), as egui's demo app and rerun queue theirs.

use std::path::PathBuf;

use super::jobs::RunKind;

/// Something the user asked for; the UI collects these and the app carries them out after
/// drawing.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    OpenImageDialog,
    LoadImage(PathBuf),
    /// A typed or pasted path: a model (folder, .safetensors, .ckpt) or an image.
    OpenPath(PathBuf),
    LoadImageBytes {
        bytes: Vec<u8>,
        name: String,
    },
    PasteImage,
    OpenModelDialog {
        folder: bool,
    },
    LoadModel(PathBuf),
    /// Mirror's own demo model (unpacked on a job thread, then loaded like any folder).
    LoadDemoModel,
    /// Render another demo image with its caption and a one-word edit.
    NewDemoImage,
    Download(&'static str),
    /// Run the edit: one method (`Single`), MirrorDiffusion, pix2pix-zero and plain DDIM from
    /// one inversion side by side (`Compare`), or the target and every extra target one after
    /// another on one inversion (`Targets`).
    Run(RunKind),
    Cancel,
    /// Stop a background job (an export) by its id.
    CancelJob(u64),
    Export,
    /// Choose a folder of photos, then apply the edit to each.
    ApplyToFolderDialog,
    /// Apply the edit to every photo of this folder (results under the export folder).
    ApplyToFolder(PathBuf),
    SaveTranslationAs,
    ChooseExportDir,
    Tokenize,
    ApplyPreset(usize),
    /// Pick a LoRA file to add.
    AddLoraDialog,
    /// Add a LoRA file (strength 1) and merge the list.
    AddLora(PathBuf),
    /// Remove the LoRA at this place in the list and merge the rest.
    RemoveLora(usize),
    /// Merge the list as it is (after a strength changed).
    ApplyLoras,
    /// A change to the painted edit mask.
    Mask(MaskAction),
}

/// What the mask tools ask for (positions in photo pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaskAction {
    /// The pointer went down on the photo: a stroke starts with the tools' brush.
    StrokeStart([f32; 2]),
    /// The pointer moved while down.
    StrokeTo([f32; 2]),
    StrokeEnd,
    /// Ctrl+Z: the last stroke (or invert, clear, fill) is taken back.
    Undo,
    Invert,
    Clear,
    /// The mask the last run found from the edit becomes the painted mask.
    FillFromEdit,
}
