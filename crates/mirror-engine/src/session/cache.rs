//! Invert once, edit many: inversion trajectories and MirrorDiffusion reconstructions kept in
//! memory and on disk (user cache directory), keyed by everything they depend on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use sha2::{Digest, Sha256};

use crate::direction::EditDirection;
use crate::pipeline::stages::{InversionGrid, Trajectory};
use crate::{EngineError, Result};

/// An inversion and its caption embedding.
#[derive(Debug, Clone)]
pub struct CachedInversion {
    /// The inversion latents and timesteps; the VAE latent z0 is `trajectory.latents[0]`.
    pub trajectory: Trajectory,
    /// The source caption's text embedding, `[1, L, D]` (L = 77 for SD).
    pub caption: Tensor,
    /// The MirrorDiffusion reconstruction of this inversion, once one has run.
    pub reconstruction: Option<CachedReconstruction>,
}

/// The MirrorDiffusion reconstruction branch of an inversion: everything a re-edit needs to
/// skip redescription.
#[derive(Debug, Clone)]
pub struct CachedReconstruction {
    /// C*_i for every step i.
    pub embeddings: Vec<Tensor>,
    /// Reconstruction latents before each step and after the last: N + 1.
    pub latents: Vec<Tensor>,
    /// Inner losses per step (for the plots).
    pub losses: Vec<Vec<f64>>,
    /// ‖C*_i − C*_{i−1}‖₂ per step (for the plots).
    pub embedding_changes: Vec<f64>,
}

/// Key material; `key()` hashes it.
#[derive(Debug, Clone)]
pub struct CacheKey {
    /// The model's fingerprint.
    pub model: String,
    /// Hash of the image pixels (empty for edit directions).
    pub image: String,
    /// The source caption (for edit directions: what the direction was computed from).
    pub caption: String,
    /// Number of inference steps (0 for edit directions).
    pub steps: usize,
    /// Everything else the entry depends on (inversion grid, precision, tiling, ...), as text.
    pub variant: String,
}

impl CacheKey {
    /// The first 16 bytes of a SHA-256 over every part, as 32 hex digits: the entry's name.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.model, &self.image, &self.caption, &self.variant] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update((self.steps as u64).to_le_bytes());
        h.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// In-memory entries (a few, most recent kept) plus an optional folder on disk.
#[derive(Debug, Default)]
pub struct InversionCache {
    entries: HashMap<String, (u64, CachedInversion)>,
    clock: u64,
    capacity: usize,
    dir: Option<PathBuf>,
    directions: HashMap<String, EditDirection>,
}

impl InversionCache {
    /// An empty cache keeping up to 4 entries in memory, with `dir` as its folder on disk.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            entries: HashMap::new(),
            clock: 0,
            capacity: 4,
            dir,
            directions: HashMap::new(),
        }
    }

    /// `$MIRROR_CACHE`, else the platform cache folder (`~/.cache/mirror` on Linux).
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("MIRROR_CACHE") {
            return Some(PathBuf::from(dir));
        }
        directories::ProjectDirs::from("io.github", "mirror_diffusion", "Mirror")
            .map(|d| d.cache_dir().join("inversions"))
    }

    /// Sets or clears the folder on disk.
    pub fn set_dir(&mut self, dir: Option<PathBuf>) {
        self.dir = dir;
    }

    /// Whether `key` is in memory or has a file on disk.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key) || self.file(key).is_some_and(|f| f.exists())
    }

    /// The entry for `key`, from memory or disk (loaded onto `device`); `None` on a miss.
    pub fn get(&mut self, key: &str, device: &Device) -> Option<CachedInversion> {
        self.clock += 1;
        if let Some((used, entry)) = self.entries.get_mut(key) {
            *used = self.clock;
            return Some(entry.clone());
        }
        let file = self.file(key)?;
        // A corrupt or foreign file is a miss, not an error: the run recomputes and rewrites it.
        let entry = read_entry(&file, device).ok()?;
        self.remember(key, entry.clone());
        Some(entry)
    }

    /// Stores an entry in memory and, when a folder is set, on disk (atomically). A failed
    /// disk write is reported to the caller but keeps the memory entry.
    pub fn put(&mut self, key: &str, entry: CachedInversion) -> Result<()> {
        self.remember(key, entry.clone());
        match self.file(key) {
            Some(file) => write_entry(&file, &entry),
            None => Ok(()),
        }
    }

    /// A cached edit direction (unscaled), from memory or disk.
    pub fn get_direction(&mut self, key: &str, hidden_size: usize) -> Option<EditDirection> {
        if let Some(d) = self.directions.get(key) {
            return Some(d.clone());
        }
        let file = self
            .dir
            .as_ref()?
            .join(format!("direction-{key}.safetensors"));
        let d = crate::direction::load_direction(&file, hidden_size).ok()?;
        self.directions.insert(key.to_string(), d.clone());
        Some(d)
    }

    /// Stores an edit direction (unscaled) in memory and, when a folder is set, on disk.
    pub fn put_direction(&mut self, key: &str, direction: &EditDirection) -> Result<()> {
        self.directions.insert(key.to_string(), direction.clone());
        match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
                    path: dir.clone(),
                    source,
                })?;
                crate::direction::save_direction(
                    direction,
                    &[],
                    &dir.join(format!("direction-{key}.safetensors")),
                )
            }
            None => Ok(()),
        }
    }

    fn remember(&mut self, key: &str, entry: CachedInversion) {
        self.clock += 1;
        self.entries.insert(key.to_string(), (self.clock, entry));
        while self.entries.len() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
    }

    fn file(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{key}.safetensors")))
    }
}

fn write_entry(file: &Path, entry: &CachedInversion) -> Result<()> {
    let io = |source| EngineError::Io {
        path: file.to_path_buf(),
        source,
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert(
        "latents".into(),
        Tensor::stack(&entry.trajectory.latents, 0)?,
    );
    tensors.insert("caption".into(), entry.caption.clone());
    let ts: Vec<i64> = entry
        .trajectory
        .timesteps
        .iter()
        .map(|&t| t as i64)
        .collect();
    tensors.insert("timesteps".into(), Tensor::new(ts, &Device::Cpu)?);
    let grid = match entry.trajectory.grid {
        InversionGrid::Consistent => 0i64,
        InversionGrid::Authors => 1,
    };
    tensors.insert(
        "meta".into(),
        Tensor::new(&[grid, entry.trajectory.steps as i64], &Device::Cpu)?,
    );
    if let Some(r) = &entry.reconstruction {
        tensors.insert("rec.embeddings".into(), Tensor::stack(&r.embeddings, 0)?);
        tensors.insert("rec.latents".into(), Tensor::stack(&r.latents, 0)?);
        let width = r.losses.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let flat: Vec<f64> = r
            .losses
            .iter()
            .flat_map(|l| (0..width).map(move |k| l.get(k).copied().unwrap_or(f64::NAN)))
            .collect();
        tensors.insert(
            "rec.losses".into(),
            Tensor::from_vec(flat, (r.losses.len(), width), &Device::Cpu)?,
        );
        tensors.insert(
            "rec.changes".into(),
            Tensor::new(r.embedding_changes.clone(), &Device::Cpu)?,
        );
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

fn read_entry(file: &Path, device: &Device) -> Result<CachedInversion> {
    // Read on the CPU (the loss series are f64, which Metal lacks); latents and embeddings
    // move to the device below.
    let t = candle_core::safetensors::load(file, &Device::Cpu)
        .map_err(|e| EngineError::Candle(e.context(format!("{}: reading", file.display()))))?;
    let get = |name: &str| {
        t.get(name)
            .cloned()
            .ok_or_else(|| EngineError::MissingTensor {
                file: file.to_path_buf(),
                name: name.into(),
            })
    };
    let unstack = |x: &Tensor| -> Result<Vec<Tensor>> {
        let x = x.to_device(device)?;
        Ok((0..x.dim(0)?)
            .map(|k| x.i(k))
            .collect::<candle_core::Result<_>>()?)
    };
    let meta = get("meta")?.to_vec1::<i64>()?;
    let &[grid, steps] = meta.as_slice() else {
        return Err(broken(
            file,
            format!("`meta` has {} values, expected 2", meta.len()),
        ));
    };
    let grid = match grid {
        0 => InversionGrid::Consistent,
        1 => InversionGrid::Authors,
        other => return Err(broken(file, format!("unknown inversion grid {other}"))),
    };
    let timesteps = get("timesteps")?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|x| u32::try_from(x).map(|t| t as usize))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| broken(file, "a timestep is out of range".into()))?;
    let trajectory = Trajectory {
        latents: unstack(&get("latents")?)?,
        timesteps,
        grid,
        steps: usize::try_from(steps).map_err(|_| broken(file, format!("{steps} steps")))?,
    };
    check_trajectory(file, &trajectory)?;
    let reconstruction = match t.get("rec.embeddings") {
        None => None,
        Some(e) => {
            let losses = get("rec.losses")?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            let rec = CachedReconstruction {
                embeddings: unstack(e)?,
                latents: unstack(&get("rec.latents")?)?,
                losses: losses
                    .into_iter()
                    .map(|row| row.into_iter().filter(|x| !x.is_nan()).collect())
                    .collect(),
                embedding_changes: get("rec.changes")?.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            };
            let n = rec.embeddings.len();
            if rec.latents.len() != n + 1
                || rec.losses.len() != n
                || rec.embedding_changes.len() != n
            {
                return Err(broken(
                    file,
                    "reconstruction lists of different lengths".into(),
                ));
            }
            Some(rec)
        }
    };
    Ok(CachedInversion {
        trajectory,
        caption: get("caption")?,
        reconstruction,
    })
}

/// A cache file that parses but does not hold what `write_entry` writes.
fn broken(file: &Path, reason: String) -> EngineError {
    EngineError::CorruptSafetensors {
        file: file.to_path_buf(),
        reason: format!("not an inversion cache entry: {reason}"),
    }
}

/// The shape `stages::invert` gives a trajectory: N (consistent grid) or N − 2 (authors' grid)
/// timesteps, one latent more than timesteps. The session indexes by these counts.
fn check_trajectory(file: &Path, t: &Trajectory) -> Result<()> {
    let expected = match t.grid {
        InversionGrid::Consistent => t.steps,
        InversionGrid::Authors => t.steps.saturating_sub(2),
    };
    if t.steps == 0 || t.timesteps.len() != expected || t.latents.len() != expected + 1 {
        return Err(broken(
            file,
            format!(
                "{} timesteps and {} latents for {} steps",
                t.timesteps.len(),
                t.latents.len(),
                t.steps
            ),
        ));
    }
    Ok(())
}
