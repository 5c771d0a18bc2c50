//! Mirror's own demo model (a small SD 1.x pipeline trained on rendered shapes by
//! `tools/demo/train_demo.py`; card in `assets/demo/README.md`). Its files are built into the
//! binary, so an installed app has it too, and are unpacked once into the cache folder, where
//! the ordinary model loader opens them like any other diffusers folder.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::rng::SplitMix64;
use crate::shapes::{Scene, Shape, render};

macro_rules! demo_file {
    ($path:literal) => {
        (
            $path,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/assets/demo/model/",
                $path
            ))
            .as_slice(),
        )
    };
}

/// Every file of the demo model folder, by its path inside the folder.
const FILES: &[(&str, &[u8])] = &[
    demo_file!("model_index.json"),
    demo_file!("mirror.json"),
    demo_file!("scheduler/scheduler_config.json"),
    demo_file!("text_encoder/config.json"),
    demo_file!("text_encoder/model.safetensors"),
    demo_file!("tokenizer/merges.txt"),
    demo_file!("tokenizer/special_tokens_map.json"),
    demo_file!("tokenizer/tokenizer_config.json"),
    demo_file!("tokenizer/vocab.json"),
    demo_file!("unet/config.json"),
    demo_file!("unet/diffusion_pytorch_model.safetensors"),
    demo_file!("vae/config.json"),
    demo_file!("vae/diffusion_pytorch_model.safetensors"),
];

/// What the model menu and the status bar call it.
pub const NAME: &str = "Demo model";

/// The image side the demo model was trained on, in pixels.
pub const IMAGE_SIDE: u32 = 64;

/// A fingerprint of the built-in files: a new build with other weights unpacks into a new
/// folder instead of reusing a stale one.
fn fingerprint() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in FILES {
        for b in name.bytes().chain(bytes.iter().step_by(61).copied()) {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash = (hash ^ bytes.len() as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Where the demo model is unpacked: `$MIRROR_CACHE/demo-model/…`, else the platform cache
/// folder (`~/.cache/mirror/demo-model/…` on Linux), else the temporary folder.
fn unpack_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MIRROR_CACHE") {
        return PathBuf::from(dir).join("demo-model");
    }
    directories::ProjectDirs::from("io.github", "mirror_diffusion", "Mirror")
        .map(|d| d.cache_dir().join("demo-model"))
        .unwrap_or_else(|| std::env::temp_dir().join("mirror-demo-model"))
}

/// The demo model's folder, unpacked on first use. Returns the folder to load.
pub fn model_dir() -> Result<PathBuf, String> {
    let dir = unpack_root().join(format!("{:016x}", fingerprint()));
    if is_complete(&dir) {
        return Ok(dir);
    }
    unpack(&dir).map_err(|e| {
        format!(
            "Could not unpack the demo model into {}: {e}",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// True when `path` is (a copy of) the demo model's folder, so it is not listed as a recent model.
pub fn is_demo_path(path: &Path) -> bool {
    path.starts_with(unpack_root())
}

fn is_complete(dir: &Path) -> bool {
    FILES.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
    })
}

/// Writes the files into a fresh sibling folder, then renames it into place, so that another
/// Mirror starting at the same moment never sees half a model. Within one process, one
/// thread unpacks at a time.
fn unpack(dir: &Path) -> std::io::Result<()> {
    static UNPACKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = UNPACKING.lock().unwrap_or_else(|e| e.into_inner());
    if is_complete(dir) {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(".unpacking-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for (name, bytes) in FILES {
        let path = staging.join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&path, bytes)?;
    }
    // A folder left incomplete (a crash, a full disk) is replaced.
    if dir.exists() && !is_complete(dir) {
        let _ = std::fs::remove_dir_all(dir);
    }
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Another Mirror unpacked the same files first.
        Err(_) if is_complete(dir) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A rendered source image with its caption and a target that changes one word.
#[derive(Debug, Clone)]
pub struct DemoExample {
    /// The scene that was drawn.
    pub scene: Scene,
    /// The rendered scene.
    pub image: RgbImage,
    /// The scene's caption.
    pub source_prompt: String,
    /// The caption with the shape changed.
    pub target_prompt: String,
}

/// The demo image for `seed`: a random scene of the shapes world; the target prompt turns
/// its shape into the next one (circle → square → triangle → star → circle).
pub fn example(seed: u64) -> DemoExample {
    let scene = Scene::random(&mut SplitMix64::new(seed));
    let next = Shape::ALL[(Shape::ALL
        .iter()
        .position(|s| *s == scene.shape)
        .unwrap_or(0)
        + 1)
        % Shape::ALL.len()];
    let target = Scene {
        shape: next,
        ..scene
    };
    DemoExample {
        scene,
        image: render(&scene, IMAGE_SIDE),
        source_prompt: scene.caption(),
        target_prompt: target.caption(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_example_changes_exactly_the_shape_word() {
        for seed in 0..16 {
            let e = example(seed);
            let (c, s, b) = crate::shapes::parse_caption(&e.source_prompt).expect("grammar");
            let (c2, s2, b2) = crate::shapes::parse_caption(&e.target_prompt).expect("grammar");
            assert_eq!((c, b), (c2, b2), "{e:?}");
            assert_ne!(s, s2, "{e:?}");
            assert_eq!(e.image.dimensions(), (IMAGE_SIDE, IMAGE_SIDE));
        }
    }

    #[test]
    fn the_demo_model_unpacks_once_and_completely() {
        let root = std::env::temp_dir().join(format!("mirror-demo-unpack-{}", std::process::id()));
        let dir = root.join("model");
        unpack(&dir).expect("unpack");
        assert!(is_complete(&dir));
        // A truncated file makes the folder incomplete, so it is unpacked again.
        std::fs::write(dir.join("unet/config.json"), b"{").expect("write");
        assert!(!is_complete(&dir));
        unpack(&dir).expect("unpack again");
        assert!(is_complete(&dir));
        let _ = std::fs::remove_dir_all(&root);
    }
}
