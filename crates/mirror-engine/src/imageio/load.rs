//! Loading user images: format sniffed from the content, size checked from the header before
//! anything is decoded, EXIF orientation applied, alpha composited on white, any colour type
//! and bit depth converted to 8-bit RGB.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use sha2::{Digest, Sha256};

use crate::{EngineError, Result};

/// Upper bounds on what `load_image` accepts, so a huge image is refused with a message
/// instead of exhausting memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height accepted.
    pub max_pixels: u64,
    /// Largest encoded file accepted.
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: 64 * 1024 * 1024,
            max_file_bytes: 512 * 1024 * 1024,
        }
    }
}

/// The most pixels one byte of an image file can encode: PNG's deflate packs at most ~1032
/// bytes into one, i.e. ~8256 one-bit pixels (JPEG and GIF pack fewer).
const MAX_PIXELS_PER_BYTE: u64 = 8192;
/// Any file may declare up to this many pixels (1024×1024) whatever its size.
const PIXELS_ANY_FILE_MAY_DECLARE: u64 = 1 << 20;

/// A decoded user image, upright and in 8-bit RGB.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The pixels, upright (EXIF orientation applied).
    pub rgb: RgbImage,
    /// Width and height after EXIF orientation was applied.
    pub original_size: (u32, u32),
    /// The file it came from (or the label given to `load_image_from_memory`).
    pub source: PathBuf,
    /// `pixel_hash` of `rgb`: identifies the input in recipes independent of file format.
    pub content_hash: String,
}

/// Loads an image file. Errors name the file.
pub fn load_image(path: &Path, limits: &ImageLimits) -> Result<LoadedImage> {
    let io_error = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_bytes = std::fs::metadata(path).map_err(io_error)?.len();
    if file_bytes > limits.max_file_bytes {
        return Err(EngineError::InvalidInput(format!(
            "{}: file is {} MiB, over the limit of {} MiB",
            path.display(),
            file_bytes / (1024 * 1024),
            limits.max_file_bytes / (1024 * 1024)
        )));
    }
    let bytes = std::fs::read(path).map_err(io_error)?;
    let mut loaded = load_image_from_memory(&bytes, &path.display().to_string(), limits)?;
    loaded.source = path.to_path_buf();
    Ok(loaded)
}

/// Loads an image from encoded bytes (paste, drag-and-drop). `label` names it in errors.
pub fn load_image_from_memory(
    bytes: &[u8],
    label: &str,
    limits: &ImageLimits,
) -> Result<LoadedImage> {
    let invalid = |reason: String| EngineError::InvalidInput(format!("{label}: {reason}"));
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(invalid(format!(
            "{} MiB of image data, over the limit of {} MiB",
            bytes.len() / (1024 * 1024),
            limits.max_file_bytes / (1024 * 1024)
        )));
    }
    let reader = || -> Result<ImageReader<Cursor<&[u8]>>> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| invalid(e.to_string()))?;
        if reader.format().is_none() {
            return Err(invalid(
                "not a recognised image format (PNG, JPEG, WebP or GIF expected)".into(),
            ));
        }
        Ok(reader)
    };

    // Header only: refuse oversized images before a single pixel buffer is allocated.
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| invalid(format!("cannot read the image header: {e}")))?;
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 {
        return Err(invalid(format!("image has no pixels ({width}×{height})")));
    }
    if pixels > limits.max_pixels {
        return Err(invalid(format!(
            "image is {width}×{height} ({:.1} megapixels), over the limit of {:.1} megapixels",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }

    // More pixels than the data can encode: damaged, or a decompression bomb. Refused here,
    // before the decoder allocates the declared size.
    let justified = (bytes.len() as u64)
        .saturating_mul(MAX_PIXELS_PER_BYTE)
        .max(PIXELS_ANY_FILE_MAY_DECLARE);
    if pixels > justified {
        return Err(invalid(format!(
            "the header declares {width}×{height} pixels, far more than its {} bytes of data can hold (damaged file?)",
            bytes.len()
        )));
    }

    let mut reader = reader()?;
    let mut decode_limits = image::Limits::default();
    // Room for the largest layout (RGBA, 32-bit float) plus a copy while orienting.
    decode_limits.max_alloc = Some(pixels.saturating_mul(16 * 2).max(64 * 1024 * 1024));
    reader.limits(decode_limits);
    let decode_error = |e: image::ImageError| invalid(format!("cannot decode the image: {e}"));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);

    let rgb = to_rgb8_on_white(image);
    Ok(LoadedImage {
        original_size: rgb.dimensions(),
        content_hash: pixel_hash(&rgb),
        rgb,
        source: PathBuf::from(label),
    })
}

/// Drops alpha by compositing over white (transparent areas become white, as viewers show
/// them on a light background); grayscale and 16-bit/float images become 8-bit RGB.
fn to_rgb8_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba32f();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = a.clamp(0.0, 1.0);
        let over_white = |c: f32| {
            let v = c.clamp(0.0, 1.0) * a + (1.0 - a);
            (v * 255.0).round() as u8
        };
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    })
}

/// sha256 (hex) of the width and height (little-endian u32) followed by the RGB8 pixels.
pub fn pixel_hash(rgb: &RgbImage) -> String {
    let mut hasher = Sha256::new();
    hasher.update(rgb.width().to_le_bytes());
    hasher.update(rgb.height().to_le_bytes());
    hasher.update(rgb.as_raw());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
