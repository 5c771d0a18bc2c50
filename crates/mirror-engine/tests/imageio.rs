//! Image I/O: loading (formats, alpha, bit depth, EXIF orientation, limits, broken files),
//! resize policies, tensor conversion (parity with the reference fixtures), recipe PNGs,
//! atomic writes, comparison sheets and animations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use image::{ImageBuffer, ImageEncoder, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use mirror_engine::EngineError;
use mirror_engine::imageio::*;
use mirror_engine::recipe::*;

/// A fresh, unique temp folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mirror-imageio-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A small colourful test pattern.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w.max(2)) as u8,
            (y * 255 / h.max(2)) as u8,
            ((x + y) * 7 % 256) as u8,
        ])
    })
}

fn limits() -> ImageLimits {
    ImageLimits::default()
}

fn close(a: Rgb<u8>, b: [u8; 3], tol: i32) -> bool {
    a.0.iter()
        .zip(b)
        .all(|(&x, y)| (x as i32 - y as i32).abs() <= tol)
}

#[test]
fn rgba_png_is_composited_on_white() {
    let dir = temp_dir("rgba");
    let path = dir.join("alpha.png");
    let mut img = RgbaImage::new(3, 1);
    img.put_pixel(0, 0, Rgba([255, 0, 0, 255]));
    img.put_pixel(1, 0, Rgba([10, 20, 30, 0]));
    img.put_pixel(2, 0, Rgba([0, 0, 0, 128]));
    img.save(&path).unwrap();

    let loaded = load_image(&path, &limits()).unwrap();
    assert_eq!(loaded.original_size, (3, 1));
    assert_eq!(loaded.source, path);
    assert_eq!(*loaded.rgb.get_pixel(0, 0), Rgb([255, 0, 0]));
    assert_eq!(*loaded.rgb.get_pixel(1, 0), Rgb([255, 255, 255]));
    assert_eq!(*loaded.rgb.get_pixel(2, 0), Rgb([127, 127, 127]));
    assert_eq!(loaded.content_hash, pixel_hash(&loaded.rgb));
    assert_eq!(loaded.content_hash.len(), 64);
}

#[test]
fn grayscale_16bit_png_becomes_rgb8() {
    let dir = temp_dir("gray16");
    let path = dir.join("gray16.png");
    let img: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(3, 2, |x, _| Luma([[0u16, 65535, 128 * 257][x as usize]]));
    img.save(&path).unwrap();

    let loaded = load_image(&path, &limits()).unwrap();
    assert_eq!(loaded.rgb.dimensions(), (3, 2));
    assert_eq!(*loaded.rgb.get_pixel(0, 1), Rgb([0, 0, 0]));
    assert_eq!(*loaded.rgb.get_pixel(1, 1), Rgb([255, 255, 255]));
    assert_eq!(*loaded.rgb.get_pixel(2, 0), Rgb([128, 128, 128]));
}

/// An APP1 segment holding a big-endian TIFF IFD with just the Orientation tag.
fn exif_orientation_segment(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    segment.extend_from_slice(&payload);
    segment
}

#[test]
fn jpeg_exif_orientation_is_applied() {
    // 32×16: left half red, right half blue. Orientation 6 = rotate 90° clockwise for display,
    // so the upright image is 16×32 with red on top.
    let img = RgbImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            Rgb([230, 20, 20])
        } else {
            Rgb([20, 20, 230])
        }
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .write_image(img.as_raw(), 32, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    let mut with_exif = jpeg[..2].to_vec();
    with_exif.extend(exif_orientation_segment(6));
    with_exif.extend_from_slice(&jpeg[2..]);

    let dir = temp_dir("exif");
    // A misleading extension: the format must come from the content.
    let path = dir.join("rotated.png");
    std::fs::write(&path, &with_exif).unwrap();
    let loaded = load_image(&path, &limits()).unwrap();
    assert_eq!(loaded.original_size, (16, 32));
    assert!(
        close(*loaded.rgb.get_pixel(8, 4), [230, 20, 20], 12),
        "{:?}",
        loaded.rgb.get_pixel(8, 4)
    );
    assert!(
        close(*loaded.rgb.get_pixel(8, 27), [20, 20, 230], 12),
        "{:?}",
        loaded.rgb.get_pixel(8, 27)
    );

    // Without the tag the same JPEG stays landscape.
    let plain = load_image_from_memory(&jpeg, "plain.jpg", &limits()).unwrap();
    assert_eq!(plain.original_size, (32, 16));
}

#[test]
fn webp_lossless_round_trip() {
    let img = pattern(24, 20);
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(img.as_raw(), 24, 20, image::ExtendedColorType::Rgb8)
        .unwrap();
    let dir = temp_dir("webp");
    let path = dir.join("lossless.webp");
    std::fs::write(&path, &webp).unwrap();
    let loaded = load_image(&path, &limits()).unwrap();
    assert_eq!(loaded.rgb, img);
    assert_eq!(loaded.content_hash, pixel_hash(&img));
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(&crc32(&body).to_be_bytes());
    chunk
}

#[test]
fn oversized_image_is_refused_from_its_header() {
    // A PNG header claiming 100000×100000 RGB (30 GB decoded) followed by a token IDAT
    // (an empty zlib stream): decoding it would need the whole 30 GB buffer.
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    assert_eq!(crc32(b"IEND"), 0xAE42_6082); // the well-known IEND CRC

    let dir = temp_dir("huge");
    let path = dir.join("huge.png");
    std::fs::write(&path, &png).unwrap();
    let err = load_image(&path, &limits()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::InvalidInput(_)), "{msg}");
    assert!(
        msg.contains("huge.png") && msg.contains("100000×100000") && msg.contains("limit"),
        "{msg}"
    );

    // A lower limit refuses an ordinary image too.
    let small = dir.join("small.png");
    pattern(16, 16).save(&small).unwrap();
    let tight = ImageLimits {
        max_pixels: 100,
        ..limits()
    };
    assert!(
        load_image(&small, &tight)
            .unwrap_err()
            .to_string()
            .contains("small.png")
    );
    let few_bytes = ImageLimits {
        max_file_bytes: 10,
        ..limits()
    };
    assert!(
        load_image(&small, &few_bytes)
            .unwrap_err()
            .to_string()
            .contains("small.png")
    );
}

#[test]
fn broken_files_give_errors_naming_the_file() {
    let dir = temp_dir("broken");
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            pattern(32, 32).as_raw(),
            32,
            32,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    let garbage = dir.join("garbage.jpg");
    std::fs::write(&garbage, b"this is not an image at all").unwrap();
    let empty = dir.join("empty.webp");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.join("missing.png");

    for path in [&truncated, &garbage, &empty, &missing] {
        let msg = load_image(path, &limits()).unwrap_err().to_string();
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(msg.contains(name.as_ref()), "{msg}");
    }
    let msg = load_image_from_memory(&png[..40], "pasted image", &limits())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pasted image"), "{msg}");
}

#[test]
fn resize_policies_give_the_target_size() {
    let img = pattern(120, 50);
    for policy in [ResizePolicy::Crop, ResizePolicy::Stretch, ResizePolicy::Pad] {
        for target in [(64, 64), (96, 64), (32, 96)] {
            let out = resize(&img, target, policy);
            assert_eq!(out.dimensions(), target, "{policy} {target:?}");
        }
    }
    // Same size: untouched.
    assert_eq!(resize(&img, (120, 50), ResizePolicy::Crop), img);

    // Pad keeps the whole picture and fills the bars with grey.
    let wide = RgbImage::from_pixel(100, 50, Rgb([200, 10, 10]));
    let padded = resize(&wide, (64, 64), ResizePolicy::Pad);
    assert_eq!(*padded.get_pixel(32, 0), PAD_GREY);
    assert_eq!(*padded.get_pixel(32, 63), PAD_GREY);
    assert!(close(*padded.get_pixel(32, 32), [200, 10, 10], 2));
    // Crop takes the centre: a left red / centre green / right blue strip keeps only green.
    let strips = RgbImage::from_fn(90, 30, |x, _| match x / 30 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let cropped = resize(&strips, (16, 16), ResizePolicy::Crop);
    assert!(cropped.pixels().all(|p| close(*p, [0, 255, 0], 3)));
    assert_eq!(
        describe_resize((1024, 768), (512, 512), ResizePolicy::Crop),
        "1024×768 → crop 768×768 centre → 512×512"
    );
}

#[test]
fn plan_size_checks_the_latent_factor() {
    assert_eq!(plan_size((1000, 700), None, 512, 8).unwrap(), (512, 512));
    assert_eq!(
        plan_size((1000, 700), Some((96, 64)), 512, 8).unwrap(),
        (96, 64)
    );
    for bad in [(100, 64), (64, 60), (0, 64)] {
        let msg = plan_size((1000, 700), Some(bad), 512, 8)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("multiples of 8"), "{msg}");
    }
    assert!(plan_size((10, 10), None, 512, 0).is_err());
}

fn sample_recipe() -> Recipe {
    let mut extra = serde_json::Map::new();
    extra.insert("note".into(), serde_json::json!("from the test"));
    Recipe {
        version: RECIPE_VERSION,
        method: "mirror".into(),
        preset: "balanced".into(),
        source_prompt: "a photo of a cat".into(),
        target_prompt: "a photo of a dog, studio light".into(),
        steps: 50,
        seed: 1234,
        edit_strength: 0.8,
        guidance_scale: 5.0,
        xa_guidance: 0.1,
        redescribe_iterations: 10,
        redescribe_lr: 0.01,
        resize: ResizePolicy::Pad,
        width: 96,
        height: 64,
        model: "tiny-sd".into(),
        model_hash: "0123456789abcdef".into(),
        image_hash: "feedface".into(),
        vae_tiles_used: Some(true),
        direction: None,
        compare_ddim: Some(false),
        mirror: None,
        loras: Vec::new(),
        mask: None,
        mask_settings: None,
        extra,
    }
}

/// The recipe records whether the VAE worked in tiles; a replay asks for the same (on / off),
/// and a recipe from before the field loads and decides afresh (auto).
#[test]
fn recipe_replays_the_vae_tiles_it_used() {
    use mirror_engine::vae::VaeTiles;
    let mut recipe = sample_recipe();
    for (used, replay) in [(true, VaeTiles::On), (false, VaeTiles::Off)] {
        recipe.vae_tiles_used = Some(used);
        let back = Recipe::from_json(&recipe.to_json(), "test").unwrap();
        assert_eq!(back.vae_tiles_used, Some(used));
        assert_eq!(back.vae_tiles(), replay);
    }
    let mut old: serde_json::Value = serde_json::from_str(&recipe.to_json()).unwrap();
    old.as_object_mut().unwrap().remove("vae_tiles_used");
    let old = Recipe::from_json(&old.to_string(), "old").unwrap();
    assert_eq!(old.vae_tiles_used, None);
    assert_eq!(old.vae_tiles(), VaeTiles::Auto);
    assert!(recipe.a1111_parameters().contains("Tiled VAE") == recipe.vae_tiles_used.unwrap());
    for mode in VaeTiles::ALL {
        assert_eq!(mode.word().parse::<VaeTiles>(), Ok(mode));
        let json = serde_json::to_string(&mode).unwrap();
        assert_eq!(json, format!("\"{}\"", mode.word()));
    }
    assert!(
        "sometimes"
            .parse::<VaeTiles>()
            .unwrap_err()
            .contains("auto, on or off")
    );
}

fn png_text(path: &Path, keyword: &str) -> Option<String> {
    let bytes = std::fs::read(path).unwrap();
    let reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == keyword)
        .map(|c| c.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|c| c.keyword == keyword)
                .map(|c| c.get_text().unwrap())
        })
}

#[test]
fn recipe_round_trips_through_png() {
    let dir = temp_dir("recipe");
    let path = dir.join("out.png");
    let img = pattern(96, 64);
    let recipe = sample_recipe();
    save_png_with_recipe(&img, Some(&recipe), &path).unwrap();
    assert_eq!(files_in(&dir), ["out.png"]);

    assert_eq!(read_recipe(&path).unwrap(), Some(recipe.clone()));
    let parameters = png_text(&path, "parameters").expect("parameters chunk");
    assert_eq!(parameters, recipe.a1111_parameters());
    assert!(parameters.starts_with("a photo of a dog, studio light\nNegative prompt: a photo of a cat\nSteps: 50, Sampler: DDIM, CFG scale: 5, Seed: 1234, Size: 96x64, Model hash: 0123456789,"), "{parameters}");
    assert!(parameters.contains("Mirror method: mirror"), "{parameters}");
    // The image itself is intact.
    assert_eq!(load_image(&path, &limits()).unwrap().rgb, img);

    // Non-Latin-1 prompts survive; no recipe reads as None; overwriting works.
    let mut unicode = recipe.clone();
    unicode.target_prompt = "un chat → 猫".into();
    save_png_with_recipe(&img, Some(&unicode), &path).unwrap();
    assert_eq!(read_recipe(&path).unwrap(), Some(unicode));
    save_png_with_recipe(&img, None, &path).unwrap();
    assert_eq!(read_recipe(&path).unwrap(), None);
    assert_eq!(files_in(&dir), ["out.png"]);

    // A JSON recipe file is accepted; a JPEG is not a recipe.
    let json = dir.join("recipe.json");
    std::fs::write(&json, recipe.to_json()).unwrap();
    assert_eq!(read_recipe(&json).unwrap(), Some(recipe));
    let mut newer = sample_recipe();
    newer.version = RECIPE_VERSION + 1;
    std::fs::write(&json, newer.to_json()).unwrap();
    assert!(
        read_recipe(&json)
            .unwrap_err()
            .to_string()
            .contains("newer")
    );
}

#[test]
fn unwritable_paths_are_errors_and_leave_nothing_behind() {
    let dir = temp_dir("unwritable");
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let img = pattern(8, 8);

    let under_file = blocker.join("x.png");
    let err = save_png_with_recipe(&img, Some(&sample_recipe()), &under_file).unwrap_err();
    assert!(matches!(err, EngineError::Io { .. }));
    assert!(
        err.to_string().contains(&under_file.display().to_string()),
        "{err}"
    );

    // Rename onto an existing directory fails after the temp file was written: it must go.
    let subdir = dir.join("taken.png");
    std::fs::create_dir(&subdir).unwrap();
    let err = write_atomic(&subdir, b"data").unwrap_err();
    assert!(err.to_string().contains("taken.png"), "{err}");
    let err =
        save_animation(std::slice::from_ref(&img), 100, &blocker.join("anim.gif")).unwrap_err();
    assert!(err.to_string().contains("anim.gif"), "{err}");
    assert_eq!(files_in(&dir), ["a-file", "taken.png"]);
    assert!(files_in(&subdir).is_empty());
}

#[test]
fn tensor_conversion_matches_the_reference_fixture() {
    let fx = common::Fixtures::load();
    let loaded = load_image(&fx.test_image(), &limits()).unwrap();
    let (h, w) = fx.image_hw();
    assert_eq!(loaded.rgb.dimensions(), (w as u32, h as u32));
    let u8_hwc = fx
        .tensor("vae", "image_u8_hwc")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    assert_eq!(loaded.rgb.as_raw(), &u8_hwc);

    let tensor = image_to_tensor(&loaded.rgb, &common::test_device()).unwrap();
    let expected = fx.tensor("vae", "image");
    assert_eq!(tensor.dims(), expected.dims());
    let max_err = fx.assert_close("vae", "image", &tensor);
    assert_eq!(max_err, 0.0, "image_to_tensor must be exact");
    assert_eq!(tensor_to_image(&tensor).unwrap(), loaded.rgb);

    // The decoded PNG is the decoded tensor post-processed the same way.
    let decoded_png = fx.fixture("vae")["png"]["decoded"]
        .as_str()
        .expect("png.decoded");
    let decoded = fx.tensor("vae", "decoded");
    let png = load_image(&fx.root.join(decoded_png), &limits()).unwrap();
    assert_eq!(tensor_to_image(&decoded).unwrap(), png.rgb);
}

#[test]
fn tensor_round_trip_and_previews() {
    let img = pattern(40, 24);
    let t = image_to_tensor(&img, &common::test_device()).unwrap();
    assert_eq!(t.dims(), &[1, 3, 24, 40]);
    assert_eq!(tensor_to_image(&t).unwrap(), img);
    assert_eq!(tensor_to_image(&t.squeeze(0).unwrap()).unwrap(), img);
    // Out-of-range values clamp.
    let wild = Tensor::new(
        &[[[[-3f32, 3.0]], [[0.0, 0.0]], [[1.0, -1.0]]]],
        &common::test_device(),
    )
    .unwrap();
    let out = tensor_to_image(&wild).unwrap();
    assert_eq!(*out.get_pixel(0, 0), Rgb([0, 128, 255]));
    assert_eq!(*out.get_pixel(1, 0), Rgb([255, 128, 0]));
    assert!(
        tensor_to_image(
            &Tensor::zeros(
                (2, 3, 4, 4),
                candle_core::DType::F32,
                &common::test_device()
            )
            .unwrap()
        )
        .is_err()
    );

    let latent = Tensor::zeros(
        (1, 4, 6, 5),
        candle_core::DType::F32,
        &common::test_device(),
    )
    .unwrap();
    let preview = latent_preview(&latent, 8).unwrap();
    assert_eq!(preview.dimensions(), (40, 48));
    assert!(preview.pixels().all(|p| *p == Rgb([128, 128, 128])));
    let wrong = Tensor::zeros(
        (1, 3, 6, 5),
        candle_core::DType::F32,
        &common::test_device(),
    )
    .unwrap();
    assert!(latent_preview(&wrong, 8).is_err());
}

#[test]
fn comparison_sheet_layout_and_labels() {
    let a = RgbImage::from_pixel(32, 24, Rgb([255, 0, 0]));
    let b = RgbImage::from_pixel(40, 30, Rgb([0, 0, 255]));
    let sheet = comparison_sheet(&[
        ("Source".into(), a.clone()),
        ("Mirror translation".into(), b.clone()),
    ]);
    let expected = (32 + SHEET_GAP + 40, SHEET_LABEL_HEIGHT + 30);
    assert_eq!(sheet.dimensions(), expected);
    assert_eq!(sheet_size(&[(32, 24), (40, 30)]), expected);
    // Tiles are copied below the label band.
    assert_eq!(*sheet.get_pixel(0, SHEET_LABEL_HEIGHT), Rgb([255, 0, 0]));
    assert_eq!(
        *sheet.get_pixel(32 + SHEET_GAP + 39, SHEET_LABEL_HEIGHT + 29),
        Rgb([0, 0, 255])
    );
    // Each label band has ink, only within its own tile's columns.
    let ink_in = |x0: u32, x1: u32| {
        (x0..x1)
            .flat_map(|x| (0..SHEET_LABEL_HEIGHT).map(move |y| (x, y)))
            .filter(|&(x, y)| *sheet.get_pixel(x, y) == Rgb([0, 0, 0]))
            .count()
    };
    assert!(ink_in(0, 32) > 20);
    assert!(ink_in(32 + SHEET_GAP, expected.0) > 20);
    assert_eq!(ink_in(32, 32 + SHEET_GAP), 0);
    assert_eq!(comparison_sheet(&[]).dimensions(), (0, 0));

    // A label too long for its tile shrinks (and is cut), staying inside its own columns.
    let narrow = RgbImage::from_pixel(30, 10, Rgb([0, 255, 0]));
    let long = comparison_sheet(&[
        ("DDIM reconstruction".into(), narrow.clone()),
        ("x".into(), narrow),
    ]);
    let ink = |x0: u32, x1: u32| {
        (x0..x1)
            .flat_map(|x| (0..SHEET_LABEL_HEIGHT).map(move |y| (x, y)))
            .filter(|&(x, y)| *long.get_pixel(x, y) == Rgb([0, 0, 0]))
            .count()
    };
    assert!(ink(0, 30) > 10);
    assert_eq!(ink(30, 30 + SHEET_GAP), 0);

    // Glyphs really come from the font: "I" at scale 1 is a bar with serifs.
    let mut canvas = RgbImage::from_pixel(5, 7, Rgb([255, 255, 255]));
    draw_text(&mut canvas, "I", (0, 0), 1, Rgb([0, 0, 0]));
    let row = |y: u32| {
        (0..5)
            .map(|x| canvas.get_pixel(x, y).0[0] == 0)
            .collect::<Vec<_>>()
    };
    assert_eq!(row(0), [false, true, true, true, false]);
    assert_eq!(row(3), [false, false, true, false, false]);
}

#[test]
fn animation_is_a_gif_with_every_frame() {
    use image::AnimationDecoder;
    let dir = temp_dir("gif");
    let path = dir.join("steps.gif");
    let frames: Vec<RgbImage> = (0..4)
        .map(|i| RgbImage::from_pixel(16, 12, Rgb([i * 60, 100, 200])))
        .collect();
    save_animation(&frames, 120, &path).unwrap();
    assert_eq!(files_in(&dir), ["steps.gif"]);

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Gif
    );
    let decoded = image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(decoded.len(), 4);
    assert_eq!(decoded[0].buffer().dimensions(), (16, 12));
    assert_eq!(decoded[1].delay().numer_denom_ms(), (120, 1));

    assert!(save_animation(&[], 100, &path).is_err());
    let mixed = [frames[0].clone(), RgbImage::new(8, 8)];
    assert!(
        save_animation(&mixed, 100, &path)
            .unwrap_err()
            .to_string()
            .contains("frame 1")
    );
}

/// A mask painted on the photo lands on the same pixels as the photo under every policy;
/// padding may not change; a mask at the processing size is taken as it is.
#[test]
fn masks_follow_the_photo_through_every_resize() {
    use image::{GrayImage, Luma};
    let photo = (200, 100);
    let left_half = GrayImage::from_fn(200, 100, |x, _| Luma([if x < 100 { 255 } else { 0 }]));
    let at = |m: &GrayImage, x, y| m.get_pixel(x, y)[0];
    let crop = resize_mask(&left_half, photo, (64, 64), ResizePolicy::Crop);
    assert_eq!((at(&crop, 5, 30), at(&crop, 58, 30)), (255, 0));
    let stretch = resize_mask(&left_half, photo, (64, 64), ResizePolicy::Stretch);
    assert_eq!((at(&stretch, 20, 30), at(&stretch, 44, 30)), (255, 0));
    let pad = resize_mask(&left_half, photo, (64, 64), ResizePolicy::Pad);
    assert_eq!(
        (at(&pad, 5, 2), at(&pad, 5, 30), at(&pad, 58, 30)),
        (0, 255, 0)
    );
    // Half the size of the photo: stretched onto it first (edges a little softer).
    let small = GrayImage::from_fn(100, 50, |x, _| Luma([if x < 50 { 255 } else { 0 }]));
    let from_small = resize_mask(&small, photo, (64, 64), ResizePolicy::Crop);
    let worst = (from_small.as_raw().iter().zip(crop.as_raw()))
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(worst <= Some(40), "worst {worst:?}");
    assert!(
        resize_mask(&crop, photo, (64, 64), ResizePolicy::Pad) == crop,
        "taken as it is"
    );
}
