//! Image input/output: loading user images (PNG, JPEG with EXIF orientation, WebP) under a
//! pixel limit, the resize policy, conversion to and from model tensors, PNGs that carry text (a
//! recipe), comparison sheets and per-step animations. All writes are atomic.

mod atomic;
mod convert;
mod font;
mod frames;
mod load;
mod png_text;
mod resize;
mod sheet;

pub use atomic::write_atomic;
pub use convert::{
    LatentRgbMap, image_to_tensor, latent_preview, latent_preview_with, tensor_to_image,
};
pub use frames::{encode_gif, save_animation};
pub use load::{ImageLimits, LoadedImage, load_image, load_image_from_memory, pixel_hash};
pub use png_text::{PngText, encode_png_with_text, is_png, read_png_text, save_png_with_text};
pub use resize::{
    MAX_ASPECT, PAD_GREY, ResizePolicy, beyond_aspect_limit, describe_resize, mask_on_photo,
    plan_size, processing_size, resize, resize_mask, restore_size,
};
pub use sheet::{SHEET_GAP, SHEET_LABEL_HEIGHT, comparison_sheet, draw_text, sheet_size};
