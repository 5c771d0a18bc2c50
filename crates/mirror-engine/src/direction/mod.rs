//! The edit direction Δc of MirrorDiffusion / pix2pix-zero (docs/algorithm.md §5): the mean CLIP
//! text embedding of sentences about the target concept minus that of the source concept,
//! all 77 rows, shape `[1, 77, D]`.
//!
//! - [`find_edit_phrase`]: what changed between the two prompts the user typed;
//! - [`template_bank`]: paired template captions for both phrases (offline, deterministic);
//! - [`model_template_pairs`]: pairs from a model's own captions (`mirror.json`);
//! - [`compute_direction`] / [`build_direction`]: the text-encoder means and their difference;
//! - [`read_sentence_file`], [`save_direction`], [`load_direction`]: custom sentences, files.
//!
//! Ports: https://github.com/pix2pixzero/pix2pix-zero/blob/a8f7269a5318353b6fc5263223f68d96a419bd49/src/make_edit_direction.py and https://github.com/pix2pixzero/pix2pix-zero/blob/a8f7269a5318353b6fc5263223f68d96a419bd49/src/utils/edit_directions.py (pinned).

mod bank;
mod compute;
mod english;
mod io;
mod model_templates;
mod phrase;

pub use bank::template_bank;
pub use compute::{
    DirectionMeans, DirectionSource, EditDirection, build_direction, compute_direction,
    compute_means,
};
pub use io::{load_direction, read_sentence_file, save_direction};
pub use model_templates::model_template_pairs;
pub use phrase::{EditPhrase, find_edit_phrase};
