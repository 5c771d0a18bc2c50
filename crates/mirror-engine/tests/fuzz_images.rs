//! Fuzzing the image and recipe readers: user images of every supported format (truncated,
//! zero-sized, 1×100000, declared dimensions far beyond the data), and the recipe stored in
//! PNG chunks or JSON files. No case may panic, hang or allocate more than its input
//! justifies, and every error names the file and the problem.
//!
//! Long run on a developer machine (any number of cases; add PROPTEST_RNG_SEED=<n> for
//! other cases than CI's):
//!     PROPTEST_CASES=100000 cargo test --release --test fuzz_images
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod fuzz_support;

use std::io::Cursor;
use std::sync::OnceLock;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use mirror_engine::imageio::{ImageLimits, ResizePolicy, load_image};
use mirror_engine::methods::mirror::MirrorSettings;
use mirror_engine::recipe::{
    RECIPE_VERSION, Recipe, RecipeMask, encode_png_with_recipe, read_recipe,
};
use mirror_engine::session::DirectionChoice;
use proptest::prelude::*;
use serde_json::Value;

use fuzz_support::*;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Pixels a file of `n` bytes can plausibly hold: deflate (PNG) packs at most ~1032 bytes into
/// one, i.e. ~8256 one-bit pixels; any file may hold a small image (up to 1 megapixel).
fn justified_pixels(n: usize) -> usize {
    n.saturating_mul(8256).max(1 << 20)
}

/// Bytes per decoded pixel at peak: the decoder's buffer (up to RGBA f32), the RGB copy, and
/// a copy while orienting.
const BYTES_PER_PIXEL: usize = 48;

// ---------------------------------------------------------------------------------------------
// PNG chunk helpers

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// Recomputes every chunk CRC that lies inside the data, so that mutations reach the
/// decoder's logic instead of stopping at the checksum.
fn fix_png_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|e| e + 4 <= bytes.len()) else {
            return;
        };
        let crc = crc32(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    // Stored (uncompressed) deflate blocks: enough for the decoder, no compressor needed.
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let n = block.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Seeds: small real images of every format the loader reads

fn pattern(w: u32, h: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        Rgba([
            (x * 255 / w.max(2)) as u8,
            (y * 255 / h.max(2)) as u8,
            ((x + y) * 7 % 256) as u8,
            if (x + y) % 5 == 0 { 0 } else { 255 },
        ])
    })
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)
        .expect("seed image encodes");
    bytes.into_inner()
}

fn image_seeds() -> &'static Vec<Vec<u8>> {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let rgba = DynamicImage::ImageRgba8(pattern(24, 16));
        let rgb = DynamicImage::ImageRgb8(rgba.to_rgb8());
        vec![
            encode(rgb.clone(), ImageFormat::Png),
            encode(rgba.clone(), ImageFormat::Png),
            encode(
                DynamicImage::ImageLuma16(rgba.to_luma16()),
                ImageFormat::Png,
            ),
            encode(rgb.clone(), ImageFormat::Jpeg),
            encode(rgba.clone(), ImageFormat::Gif),
            encode(rgba, ImageFormat::WebP),
            encode_png_with_recipe(&rgb.to_rgb8(), Some(&sample_recipe())).unwrap(),
        ]
    })
}

/// Loads an image file the way the app does; checks the error and the memory bound.
fn exercise_image(name: &str, bytes: &[u8]) {
    let tmp = TempDir::new("img");
    let file = tmp.write(name, bytes);
    let (outcome, peak) = measure(name, || load_image(&file, &ImageLimits::default()));
    match outcome {
        Ok(img) => {
            let (w, h) = img.rgb.dimensions();
            assert!(w > 0 && h > 0, "{name}: loaded an empty image");
        }
        Err(e) => assert_names_file(&e.to_string(), &file),
    }
    let bound = justified_pixels(bytes.len())
        .saturating_mul(BYTES_PER_PIXEL)
        .saturating_add(BASE_ALLOWANCE);
    assert!(
        peak <= bound,
        "{name}: allocated {peak} bytes at peak for {} bytes of image (bound {bound})",
        bytes.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Structured PNGs

#[derive(Debug, Clone)]
struct PngSpec {
    width: u32,
    height: u32,
    depth: u8,
    color: u8,
    interlace: u8,
    /// Raw (filtered) image bytes, compressed into IDAT.
    data_len: usize,
    /// Cut the IDAT stream after this many bytes.
    cut: Option<usize>,
    palette: bool,
    iend: bool,
}

fn side() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => 0u32..70,
        1 => Just(100_000u32),
        1 => Just(8_000u32),
        1 => Just(65_535u32),
        1 => Just(i32::MAX as u32),
        1 => Just(u32::MAX),
    ]
}

fn png_spec() -> impl Strategy<Value = PngSpec> {
    (
        side(),
        side(),
        proptest::sample::select(&[1u8, 2, 4, 8, 16, 3, 0][..]),
        proptest::sample::select(&[0u8, 2, 3, 4, 6, 1, 7][..]),
        prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => any::<u8>()],
        0usize..20_000,
        prop_oneof![3 => Just(None), 1 => (0usize..200).prop_map(Some)],
        any::<bool>(),
        prop_oneof![3 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            |(width, height, depth, color, interlace, data_len, cut, palette, iend)| PngSpec {
                width,
                height,
                depth,
                color,
                interlace,
                data_len,
                cut,
                palette,
                iend,
            },
        )
}

fn build_png(spec: &PngSpec) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = spec.width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&spec.height.to_be_bytes());
    ihdr.extend_from_slice(&[spec.depth, spec.color, 0, 0, spec.interlace]);
    bytes.extend(chunk(b"IHDR", &ihdr));
    if spec.palette {
        bytes.extend(chunk(b"PLTE", &[0, 0, 0, 255, 255, 255, 10, 20, 30]));
    }
    let raw: Vec<u8> = (0..spec.data_len).map(|i| (i * 13 % 7) as u8).collect();
    let mut idat = zlib(&raw);
    if let Some(cut) = spec.cut {
        idat.truncate(cut);
    }
    bytes.extend(chunk(b"IDAT", &idat));
    if spec.iend {
        bytes.extend(chunk(b"IEND", &[]));
    }
    bytes
}

proptest! {
    #![proptest_config(config(2500))]

    #[test]
    fn fuzz_image_files_mutated(
        seed in 0usize..7,
        edits in proptest::collection::vec(byte_edit(), 1..6),
        fix_crcs in any::<bool>(),
        header_only in any::<bool>(),
    ) {
        let mut bytes = image_seeds()[seed].clone();
        apply_edits(&mut bytes, &edits, header_only.then_some(64));
        if fix_crcs && bytes.starts_with(b"\x89PNG") {
            fix_png_crcs(&mut bytes);
        }
        exercise_image("input.img", &bytes);
    }

    #[test]
    fn fuzz_png_structured(spec in png_spec()) {
        exercise_image("structured.png", &build_png(&spec));
    }
}

/// Declared dimensions far beyond the data: refused before the pixel buffer is allocated.
#[test]
fn huge_declared_png_fails_fast() {
    for (w, h) in [
        (100_000u32, 100_000u32),
        (8_000, 8_000),
        (1, 60_000_000),
        (4096, 4096),
    ] {
        let spec = PngSpec {
            width: w,
            height: h,
            depth: 8,
            color: 2,
            interlace: 0,
            data_len: 64,
            cut: None,
            palette: false,
            iend: true,
        };
        let bytes = build_png(&spec);
        let tmp = TempDir::new("huge");
        let file = tmp.write("huge.png", &bytes);
        let (outcome, peak) = measure("huge png", || load_image(&file, &ImageLimits::default()));
        let err = outcome.expect_err("a huge declared image with no data must fail");
        assert_names_file(&err.to_string(), &file);
        assert_bounded("huge declared png", peak, bytes.len(), 64);
    }
}

/// A 1×100000 strip with all its data loads (tall and thin is not an error by itself).
#[test]
fn one_by_hundred_thousand_png_loads() {
    let strip = RgbImage::from_fn(1, 100_000, |_, y| Rgb([(y % 256) as u8, 0, 0]));
    let bytes = encode(DynamicImage::ImageRgb8(strip), ImageFormat::Png);
    let tmp = TempDir::new("strip");
    let file = tmp.write("strip.png", &bytes);
    let img = load_image(&file, &ImageLimits::default()).expect("strip loads");
    assert_eq!(img.rgb.dimensions(), (1, 100_000));
}

// ---------------------------------------------------------------------------------------------
// Recipes

fn sample_recipe() -> Recipe {
    Recipe {
        version: RECIPE_VERSION,
        method: "mirror".into(),
        preset: "balanced".into(),
        source_prompt: "a photo of a cat".into(),
        target_prompt: "a photo of a dog".into(),
        steps: 50,
        seed: 7,
        edit_strength: 1.0,
        guidance_scale: 7.5,
        xa_guidance: 0.1,
        redescribe_iterations: 2,
        redescribe_lr: 0.01,
        resize: ResizePolicy::Crop,
        width: 512,
        height: 512,
        model: "tiny".into(),
        model_hash: "0123456789abcdef".into(),
        image_hash: "fedcba".into(),
        vae_tiles_used: Some(true),
        direction: Some(DirectionChoice::Sentences {
            source: vec!["a cat".into()],
            target: vec!["a dog".into()],
        }),
        compare_ddim: Some(true),
        mirror: Some(MirrorSettings::default()),
        loras: Vec::new(),
        mask: Some(RecipeMask::Automatic),
        mask_settings: None,
        extra: Default::default(),
    }
}

const RECIPE_KEYS: &[&str] = &[
    "version", "steps", "seed", "resize", "width", "extra", "method",
];

fn recipe_seed() -> Value {
    serde_json::from_str(&sample_recipe().to_json()).expect("recipe JSON")
}

#[derive(Debug, Clone)]
enum TextChunk {
    /// Uncompressed Latin-1 text.
    Text,
    /// Compressed Latin-1 text.
    Ztxt,
    /// International text, optionally compressed.
    Itxt(bool),
}

fn text_chunk(kind: &TextChunk, keyword: &str, text: &[u8]) -> Vec<u8> {
    let mut data = keyword.as_bytes().to_vec();
    data.push(0);
    match kind {
        TextChunk::Text => {
            data.extend_from_slice(text);
            chunk(b"tEXt", &data)
        }
        TextChunk::Ztxt => {
            data.push(0);
            data.extend(zlib(text));
            chunk(b"zTXt", &data)
        }
        TextChunk::Itxt(compressed) => {
            data.extend_from_slice(&[u8::from(*compressed), 0, 0, 0]);
            if *compressed {
                data.extend(zlib(text));
            } else {
                data.extend_from_slice(text);
            }
            chunk(b"iTXt", &data)
        }
    }
}

/// A small PNG with the given text chunks before (or after) the image data.
fn png_with_chunks(chunks: &[Vec<u8>], after_data: bool) -> Vec<u8> {
    let img = encode(
        DynamicImage::ImageRgb8(RgbImage::new(2, 2)),
        ImageFormat::Png,
    );
    // The encoder writes IHDR first (8 + 25 bytes); insert after it or before IEND.
    let at = if after_data { img.len() - 12 } else { 33 };
    let mut out = img[..at].to_vec();
    for c in chunks {
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&img[at..]);
    out
}

fn exercise_recipe(name: &str, bytes: &[u8]) {
    let tmp = TempDir::new("recipe");
    let file = tmp.write(name, bytes);
    let (outcome, peak) = measure(name, || read_recipe(&file));
    if let Err(e) = outcome {
        assert_names_file(&e.to_string(), &file);
    }
    // Compressed text chunks may inflate (the PNG reader caps that at a few MiB).
    assert_bounded("recipe", peak, bytes.len(), 64);
}

fn chunk_kind() -> impl Strategy<Value = TextChunk> {
    prop_oneof![
        Just(TextChunk::Text),
        Just(TextChunk::Ztxt),
        any::<bool>().prop_map(TextChunk::Itxt),
    ]
}

proptest! {
    #![proptest_config(config(2500))]

    #[test]
    fn fuzz_recipe_json_file(bytes in mutated_json(recipe_seed(), RECIPE_KEYS)) {
        exercise_recipe("recipe.json", &bytes);
    }

    #[test]
    fn fuzz_recipe_png_chunks(
        recipe in mutated_json(recipe_seed(), RECIPE_KEYS),
        recipe_kind in chunk_kind(),
        parameters in proptest::collection::vec(any::<u8>(), 0..300),
        parameters_kind in chunk_kind(),
        keyword in prop_oneof![Just("mirror-recipe".to_string()), "[a-z-]{0,90}"],
        after_data in any::<bool>(),
        edits in proptest::collection::vec(byte_edit(), 0..3),
    ) {
        let chunks = vec![
            text_chunk(&parameters_kind, "parameters", &parameters),
            text_chunk(&recipe_kind, &keyword, &recipe),
        ];
        let mut bytes = png_with_chunks(&chunks, after_data);
        apply_edits(&mut bytes, &edits, None);
        fix_png_crcs(&mut bytes);
        exercise_recipe("output.png", &bytes);
    }
}

/// A zTXt/iTXt recipe that inflates to far more than a recipe (a small "zip bomb") is refused
/// without inflating it whole.
#[test]
fn compressed_recipe_bomb_is_bounded() {
    let mut compressed = Vec::new();
    {
        // Highly compressible: 64 MiB of spaces inside a JSON string, deflated by the PNG
        // encoder's own compressor through an iTXt chunk of the png crate.
        let mut body = b"{\"target_prompt\": \"".to_vec();
        body.extend(std::iter::repeat_n(b' ', 64 << 20));
        body.extend_from_slice(b"\"}");
        let mut info = png::Info::with_size(1, 1);
        info.color_type = png::ColorType::Grayscale;
        info.bit_depth = png::BitDepth::Eight;
        let mut itxt =
            png::text_metadata::ITXtChunk::new("mirror-recipe", String::from_utf8(body).unwrap());
        itxt.compressed = true;
        info.utf8_text.push(itxt);
        let mut encoder = png::Encoder::with_info(&mut compressed, info).expect("encoder");
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&[0]).expect("data");
        writer.finish().expect("finish");
    }
    let tmp = TempDir::new("bomb");
    let file = tmp.write("bomb.png", &compressed);
    let (outcome, peak) = measure("recipe bomb", || read_recipe(&file));
    let Err(err) = outcome else {
        panic!(
            "an oversized compressed recipe must be refused ({} bytes file)",
            compressed.len()
        )
    };
    assert_names_file(&err.to_string(), &file);
    assert_bounded("recipe bomb", peak, compressed.len(), 64);
}

#[test]
fn recipe_reader_ignores_foreign_parameters() {
    let chunks = vec![text_chunk(
        &TextChunk::Text,
        "parameters",
        b"cat\nSteps: 20, Seed: 1",
    )];
    let tmp = TempDir::new("a1111");
    let file = tmp.write("a1111.png", &png_with_chunks(&chunks, false));
    assert!(read_recipe(&file).expect("plain PNG reads").is_none());
}
