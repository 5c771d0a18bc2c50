//! Shared machinery of the `fuzz_*` tests: a counting allocator that measures the peak memory
//! one parse allocates, a hang watchdog, the case-count configuration, byte and JSON mutators,
//! and the "error names the file and the problem" check.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Allocation accounting

/// Counts the bytes allocated by the measuring thread (other test threads run in parallel and
/// must not pollute the figure; the parsers under test do not spawn threads).
pub struct CountingAlloc;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn on_alloc(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.with(|l| {
                let v = l.get().saturating_add(size);
                l.set(v);
                v
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

fn on_free(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            LIVE.with(|l| l.set(l.get().saturating_sub(size)));
        }
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a new block alive next to the old one (what a moving realloc needs).
        on_alloc(new_size);
        on_free(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` on this thread under the watchdog and returns its result with the peak number of
/// bytes it had allocated at once (memory allocated before `f` is not counted).
pub fn measure<R>(label: &str, f: impl FnOnce() -> R) -> (R, usize) {
    let _watch = Watch::start(label);
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let result = f();
    ARMED.with(|a| a.set(false));
    (result, PEAK.with(Cell::get))
}

/// Fixed allowance every parse gets (library set-up, error strings, small tables).
pub const BASE_ALLOWANCE: usize = 8 << 20;

/// Asserts that a parse of `input_bytes` of data peaked below `per_byte` × input + the fixed
/// allowance.
pub fn assert_bounded(what: &str, peak: usize, input_bytes: usize, per_byte: usize) {
    let bound = input_bytes
        .saturating_mul(per_byte)
        .saturating_add(BASE_ALLOWANCE);
    assert!(
        peak <= bound,
        "{what}: allocated {peak} bytes at peak for {input_bytes} bytes of input (bound {bound})"
    );
}

// ---------------------------------------------------------------------------------------------
// Hang watchdog

/// A generous per-case limit: the parsers do bounded work, so a case this slow is a hang.
const HANG_LIMIT: Duration = Duration::from_secs(120);

static WATCHED: Mutex<Vec<(u64, Instant, String)>> = Mutex::new(Vec::new());
static NEXT_WATCH: AtomicU64 = AtomicU64::new(0);

/// Registered while a case runs; the watchdog thread aborts the process (naming the case)
/// when one runs past [`HANG_LIMIT`], so a hang fails the run instead of stalling CI.
struct Watch(u64);

impl Watch {
    fn start(label: &str) -> Self {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            std::thread::spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((_, _, label)) =
                        watched.iter().find(|(_, t, _)| t.elapsed() > HANG_LIMIT)
                    {
                        eprintln!("fuzz case hangs (over {HANG_LIMIT:?}): {label}");
                        std::process::abort();
                    }
                }
            });
        });
        let id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        WATCHED.lock().unwrap_or_else(|e| e.into_inner()).push((
            id,
            Instant::now(),
            label.to_string(),
        ));
        Watch(id)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _, _)| *id != self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// `default_cases` generated cases, or `$PROPTEST_CASES` (the long developer run). The cases
/// are the same on every run (CI must not be flaky) unless `$PROPTEST_RNG_SEED` picks others.
/// Failures are not persisted: every crash found is kept as a named regression test.
pub fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let defaults = ProptestConfig::default();
    let rng_seed = match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => defaults.rng_seed,
        None => RngSeed::Fixed(0x6d69_7272_6f72),
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..defaults
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// A fresh, unique temp folder (removed when dropped).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mirror-fuzz-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp folder");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("temp sub-folder");
        }
        std::fs::write(&path, bytes).expect("temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts that an error message names `file` (its file name is enough: messages show paths)
/// and says what is wrong (it is more than the name: at least a few words after it).
pub fn assert_names_file(message: &str, file: &Path) {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        message.contains(&name),
        "error does not name the file `{name}`: {message}"
    );
    let rest = message.replace(&file.display().to_string(), "");
    let words = rest.split_whitespace().filter(|w| w.len() > 2).count();
    assert!(
        words >= 2,
        "error names `{name}` but not the problem: {message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Byte mutations

/// One edit of a byte string; positions are taken modulo the current length.
#[derive(Debug, Clone)]
pub enum ByteEdit {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        value: u8,
    },
    /// An "interesting" little-endian integer written over the bytes at `at`.
    Int {
        at: usize,
        value: u64,
        width: u8,
    },
    Truncate {
        keep: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
    },
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(0x7f),
        Just(0xff),
        Just(0xffff),
        Just(0x7fff_ffff),
        Just(0xffff_ffff),
        Just(1 << 32),
        Just(1 << 40),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

pub fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| ByteEdit::Flip { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| ByteEdit::Set { at, value }),
        2 => (any::<usize>(), interesting_u64(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)])
            .prop_map(|(at, value, width)| ByteEdit::Int { at, value, width }),
        1 => any::<usize>().prop_map(|keep| ByteEdit::Truncate { keep }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| ByteEdit::Delete { at, len }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| ByteEdit::Duplicate { at, len }),
    ]
}

/// Applies the edits in turn. `window` limits positions to the first bytes (e.g. a header),
/// where edits matter most; `None` spreads them over the whole input.
pub fn apply_edits(bytes: &mut Vec<u8>, edits: &[ByteEdit], window: Option<usize>) {
    for edit in edits {
        let len = bytes.len();
        let span = window.map_or(len, |w| w.min(len)).max(1);
        let pos = |at: usize| at % span;
        match edit {
            ByteEdit::Flip { at, bit } if len > 0 => bytes[pos(*at)] ^= 1 << bit,
            ByteEdit::Set { at, value } if len > 0 => bytes[pos(*at)] = *value,
            ByteEdit::Int { at, value, width } if len > 0 => {
                let start = pos(*at);
                let le = value.to_le_bytes();
                for (k, b) in le.iter().take(*width as usize).enumerate() {
                    if let Some(slot) = bytes.get_mut(start + k) {
                        *slot = *b;
                    }
                }
            }
            ByteEdit::Truncate { keep } => bytes.truncate(keep % (len + 1)),
            ByteEdit::Insert { at, bytes: new } => {
                let at = at % (len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            ByteEdit::Delete { at, len: n } if len > 0 => {
                let start = pos(*at);
                let end = (start + n).min(len);
                bytes.drain(start..end);
            }
            ByteEdit::Duplicate { at, len: n } if len > 0 => {
                let start = pos(*at);
                let end = (start + n).min(len);
                let copy = bytes[start..end].to_vec();
                bytes.splice(end..end, copy);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON mutations

/// Values that break configs: wrong types, zero, negative, huge, fractional, nested.
pub fn nasty_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(serde_json::json!(0)),
        Just(serde_json::json!(1)),
        Just(serde_json::json!(3)),
        Just(serde_json::json!(7)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(i64::MIN)),
        Just(serde_json::json!(u32::MAX)),
        Just(serde_json::json!(1u64 << 32)),
        Just(serde_json::json!(1u64 << 40)),
        Just(serde_json::json!(1_000_000_000_000u64)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(0.5)),
        Just(serde_json::json!(-0.0)),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(-1e-300)),
        any::<u16>().prop_map(|n| serde_json::json!(n)),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-zA-Z0-9_ ]{0,12}".prop_map(Value::String),
        Just(Value::String("CrossAttnDownBlock2D".into())),
        Just(Value::String("linear".into())),
        Just(Value::String("gelu".into())),
    ];
    leaf.prop_recursive(2, 16, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One edit of a JSON object config.
#[derive(Debug, Clone)]
pub enum JsonEdit {
    /// Replace the value of the k-th key (modulo the key count).
    Replace(usize, Value),
    /// Replace one element of the k-th key's list value.
    ReplaceElement(usize, usize, Value),
    /// Append an element to the k-th key's list (or make it a one-element list).
    Push(usize, Value),
    Remove(usize),
    Add(String, Value),
}

pub fn json_edit(extra_keys: &'static [&'static str]) -> impl Strategy<Value = JsonEdit> {
    let key = prop_oneof![
        proptest::sample::select(extra_keys).prop_map(str::to_string),
        "[a-z_]{1,12}",
    ];
    prop_oneof![
        4 => (any::<usize>(), nasty_json()).prop_map(|(k, v)| JsonEdit::Replace(k, v)),
        2 => (any::<usize>(), any::<usize>(), nasty_json())
            .prop_map(|(k, i, v)| JsonEdit::ReplaceElement(k, i, v)),
        1 => (any::<usize>(), nasty_json()).prop_map(|(k, v)| JsonEdit::Push(k, v)),
        1 => any::<usize>().prop_map(JsonEdit::Remove),
        2 => (key, nasty_json()).prop_map(|(k, v)| JsonEdit::Add(k, v)),
    ]
}

pub fn apply_json_edits(value: &mut Value, edits: &[JsonEdit]) {
    let Value::Object(map) = value else { return };
    for edit in edits {
        let keys: Vec<String> = map.keys().cloned().collect();
        let key = |k: usize| (!keys.is_empty()).then(|| keys[k % keys.len()].clone());
        match edit {
            JsonEdit::Replace(k, v) => {
                if let Some(key) = key(*k) {
                    map.insert(key, v.clone());
                }
            }
            JsonEdit::ReplaceElement(k, i, v) => {
                if let Some(Value::Array(list)) = key(*k).and_then(|key| map.get_mut(&key))
                    && !list.is_empty()
                {
                    let n = list.len();
                    list[i % n] = v.clone();
                }
            }
            JsonEdit::Push(k, v) => {
                if let Some(key) = key(*k) {
                    match map.get_mut(&key) {
                        Some(Value::Array(list)) => list.push(v.clone()),
                        Some(other) => *other = Value::Array(vec![other.clone(), v.clone()]),
                        None => {}
                    }
                }
            }
            JsonEdit::Remove(k) => {
                if let Some(key) = key(*k) {
                    map.remove(&key);
                }
            }
            JsonEdit::Add(key, v) => {
                map.insert(key.clone(), v.clone());
            }
        }
    }
}

/// A JSON config seed mutated structurally, then (sometimes) at the text level.
pub fn mutated_json(
    seed: Value,
    extra_keys: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(json_edit(extra_keys), 0..5),
        proptest::collection::vec(byte_edit(), 0..3),
    )
        .prop_map(move |(json_edits, byte_edits)| {
            let mut value = seed.clone();
            apply_json_edits(&mut value, &json_edits);
            let mut bytes = serde_json::to_vec_pretty(&value).expect("JSON serialises");
            apply_edits(&mut bytes, &byte_edits, None);
            bytes
        })
}

/// Reads a JSON file of the fixture model.
pub fn fixture_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
