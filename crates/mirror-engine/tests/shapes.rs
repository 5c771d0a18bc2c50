//! The demo world: rendering, captions, data sets, and the deterministic classifier that
//! judges what an image shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

use mirror_engine::shapes::{
    Colour, DatasetSettings, Scene, Shape, SplitMix64, caption, classify, parse_caption, render,
    vocabulary, write_dataset,
};

const SIDE: u32 = 64;

/// Every (shape, colour, background) combination at several random sizes and positions.
fn every_pair(placements: usize, seed: u64) -> Vec<Scene> {
    let mut rng = SplitMix64::new(seed);
    let mut scenes = Vec::new();
    for shape in Shape::ALL {
        for colour in Colour::ALL {
            for background in Colour::ALL.into_iter().filter(|b| *b != colour) {
                for _ in 0..placements {
                    scenes.push(Scene::random_placement(shape, colour, background, &mut rng));
                }
            }
        }
    }
    scenes
}

#[test]
fn classifier_reads_fresh_renders_of_every_pair() {
    let scenes = every_pair(3, 7);
    assert_eq!(scenes.len(), 4 * 8 * 7 * 3);
    let mut wrong = Vec::new();
    let mut worst_centroid: f64 = 0.0;
    for scene in &scenes {
        let image = render(scene, SIDE);
        let reading = classify(&image);
        let Some(object) = reading.object else {
            wrong.push(format!("{}: no object", scene.caption()));
            continue;
        };
        let read = caption(object.colour, object.shape, reading.background);
        if read != scene.caption() {
            wrong.push(format!(
                "{} read as {read} (fit {:.2})",
                scene.caption(),
                object.fit
            ));
        }
        let s = SIDE as f64;
        let shift = ((object.centroid.0 - scene.cx * s).powi(2)
            + (object.centroid.1 - scene.cy * s).powi(2))
        .sqrt();
        worst_centroid = worst_centroid.max(shift);
    }
    let accuracy = 1.0 - wrong.len() as f64 / scenes.len() as f64;
    assert!(
        accuracy >= 0.99,
        "accuracy {accuracy:.3}; misread: {wrong:#?}"
    );
    // The centroid of a rendered shape is its centre, to within a pixel.
    assert!(
        worst_centroid < 1.0,
        "centroid off by {worst_centroid:.2} px"
    );
}

#[test]
fn classifier_mask_and_area_follow_the_shape() {
    let mut rng = SplitMix64::new(11);
    for shape in Shape::ALL {
        let scene = Scene::random_placement(shape, Colour::Yellow, Colour::Blue, &mut rng);
        let image = render(&scene, SIDE);
        let object = classify(&image).object.expect("an object");
        let marked = object.mask.iter().filter(|m| **m).count() as f64;
        assert_eq!(marked, object.area);
        // Every masked pixel is closer to the shape's colour than to the background's.
        for (i, p) in image.pixels().enumerate() {
            let to = |c: Colour| {
                (0..3)
                    .map(|k| (p[k] as f64 - c.rgb()[k] as f64).powi(2))
                    .sum::<f64>()
            };
            if object.mask[i] {
                assert!(
                    to(Colour::Yellow) <= to(Colour::Blue) + 1.0,
                    "{shape:?}: pixel {i} in the mask"
                );
            }
        }
        assert!(
            object.fit > 0.85,
            "{shape:?}: template fit {:.2}",
            object.fit
        );
    }
}

#[test]
fn plain_image_has_no_object() {
    let image = image::RgbImage::from_pixel(SIDE, SIDE, image::Rgb(Colour::Green.rgb()));
    let reading = classify(&image);
    assert_eq!(reading.background, Colour::Green);
    assert!(reading.object.is_none());
}

#[test]
fn captions_follow_the_grammar() {
    let mut rng = SplitMix64::new(3);
    for _ in 0..200 {
        let scene = Scene::random(&mut rng);
        assert_ne!(scene.colour, scene.background);
        let text = scene.caption();
        assert_eq!(
            parse_caption(&text),
            Some((scene.colour, scene.shape, scene.background)),
            "{text}"
        );
        assert!(text.split(' ').all(|w| vocabulary().contains(&w)), "{text}");
        // The whole shape lies inside the image.
        assert!(scene.cx - scene.radius > 0.0 && scene.cx + scene.radius < 1.0);
        assert!(scene.cy - scene.radius > 0.0 && scene.cy + scene.radius < 1.0);
    }
    assert_eq!(
        caption(Colour::Red, Shape::Circle, Colour::Blue),
        "a red circle on a blue background"
    );
    assert_eq!(parse_caption("a red circle on blue background"), None);
    assert_eq!(parse_caption("a pink circle on a blue background"), None);
}

#[test]
fn dataset_is_reproducible_from_its_seed() {
    let root = std::env::temp_dir().join(format!("mirror-shapes-{}", std::process::id()));
    let settings = DatasetSettings {
        count: 12,
        side: SIDE,
        seed: 42,
    };
    let a = write_dataset(&root.join("a"), &settings).expect("writes");
    let b = write_dataset(&root.join("b"), &settings).expect("writes");
    assert_eq!(a, b);
    let metadata = std::fs::read_to_string(root.join("a/metadata.jsonl")).expect("metadata");
    let lines: Vec<serde_json::Value> = metadata
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 12);
    for (line, scene) in lines.iter().zip(&a) {
        let name = line["file_name"].as_str().expect("file_name");
        assert_eq!(line["text"], scene.caption());
        let png_a = std::fs::read(root.join("a").join(name)).expect("png");
        assert_eq!(
            png_a,
            std::fs::read(root.join("b").join(name)).expect("png")
        );
        let image = image::load_from_memory(&png_a).expect("decodes").to_rgb8();
        assert_eq!(image.dimensions(), (SIDE, SIDE));
    }
    let other = write_dataset(
        &root.join("c"),
        &DatasetSettings {
            seed: 43,
            ..settings
        },
    )
    .expect("writes");
    assert_ne!(a, other);
    std::fs::remove_dir_all(&root).ok();
}
