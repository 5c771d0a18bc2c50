//! The CLIP BPE tokenizer of Stable Diffusion, built from a diffusers `tokenizer/` folder.
//!
//! The SD repositories ship `vocab.json` + `merges.txt` (no `tokenizer.json`), so the
//! `tokenizers` pipeline that transformers' `CLIPTokenizer` uses is composed here around them:
//! NFC, whitespace runs → " ", lowercase; split with CLIP's regex, byte-level; BPE with the
//! `</w>` end-of-word suffix; BOS … EOS around the tokens. Sequences are then truncated to
//! BOS + (max_length − 2) tokens + EOS and padded to `max_length`, as SD pipelines call it.
//! Ports: https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/clip/tokenization_clip.py (pinned).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::{EngineError, Result};

/// CLIP's context length; used when `tokenizer_config.json` gives none (or a sentinel).
const DEFAULT_MAX_LENGTH: usize = 77;
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// CLIP's pre-tokenizer regex (OpenAI's `SimpleTokenizer` pattern, as in transformers).
const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One token of a prompt as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenWord {
    /// Position in the padded id sequence (1 = first token after BOS).
    pub index: usize,
    /// Readable text of the token (`</w>` stripped, byte-level decoded).
    pub text: String,
}

/// The CLIP BPE tokenizer: prompt text to BOS … EOS token ids, padded to `max_length`.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    /// Shown in errors: the folder or files the tokenizer came from.
    source: PathBuf,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// The id a piece outside the vocabulary becomes, when the tokenizer has one.
    unk_id: Option<u32>,
}

/// Special token names from `tokenizer_config.json` / `special_tokens_map.json`.
struct SpecialTokens {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
    max_length: usize,
    /// Where the names came from, for errors ("CLIP's defaults" or the files read).
    origin: String,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        Self {
            bos: DEFAULT_BOS.into(),
            eos: DEFAULT_EOS.into(),
            unk: DEFAULT_EOS.into(),
            pad: DEFAULT_EOS.into(),
            max_length: DEFAULT_MAX_LENGTH,
            origin: "CLIP's defaults".into(),
        }
    }
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` folder: `vocab.json` + `merges.txt`, with the special
    /// tokens and `model_max_length` of `special_tokens_map.json` / `tokenizer_config.json`
    /// where present. Without `vocab.json`, a `tokenizer.json` is used instead.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut special = SpecialTokens::default();
        // special_tokens_map.json overrides tokenizer_config.json, as in transformers.
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if path.is_file() {
                read_special_tokens(&path, &mut special)?;
            }
        }
        let vocab = dir.join("vocab.json");
        let tokenizer_json = dir.join("tokenizer.json");
        if !vocab.is_file() && tokenizer_json.is_file() {
            return Self::from_tokenizer_json(&tokenizer_json, special);
        }
        let merges = dir.join("merges.txt");
        Self::build(&vocab, &merges, special)
    }

    /// Builds the tokenizer from the two vocabulary files, with CLIP's special tokens and
    /// a maximum length of 77.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self> {
        Self::build(vocab_json, merges_txt, SpecialTokens::default())
    }

    /// Overrides the padded length (e.g. with the text encoder's `max_position_embeddings`).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        if max_length < 2 {
            return Err(EngineError::InvalidInput(format!(
                "tokenizer max_length {max_length} leaves no room for BOS and EOS"
            )));
        }
        self.max_length = max_length;
        Ok(self)
    }

    /// Length every sequence is truncated and padded to (77 for SD).
    pub fn max_length(&self) -> usize {
        self.max_length
    }
    /// Id of the begin-of-sequence token (`<|startoftext|>` by default).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    /// Id of the end-of-sequence token (`<|endoftext|>` by default).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    /// Id of the padding token (the tokenizer config's `pad_token`; SD 1.x pads with EOS).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// BOS, the prompt's tokens, EOS; not truncated, not padded.
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encoding(text)?.get_ids().to_vec())
    }

    /// BOS + at most `max_length − 2` tokens + EOS, padded with the pad id to `max_length`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.truncate_and_pad(self.encode_unpadded(text)?))
    }

    /// The prompt's tokens that survive truncation, one per position 1.. of the padded
    /// sequence (BOS, EOS and padding left out).
    pub fn token_words(&self, text: &str) -> Result<Vec<TokenWord>> {
        let encoding = self.encoding(text)?;
        let tokens = encoding.get_tokens();
        // Drop BOS and EOS; keep what fits between them after truncation.
        let inner = &tokens[1..tokens.len().saturating_sub(1).max(1)];
        Ok(inner
            .iter()
            .take(self.max_length - 2)
            .enumerate()
            .map(|(i, token)| TokenWord {
                index: i + 1,
                text: readable_token(token),
            })
            .collect())
    }

    /// When `text` is longer than the model reads (`max_length` with BOS and EOS): the last
    /// words it does read, as text (`"… a cat on a"`); `None` when all of it fits.
    pub fn truncation(&self, text: &str) -> Result<Option<String>> {
        let words = self.token_words(text)?;
        if self.encode_unpadded(text)?.len() <= self.max_length {
            return Ok(None);
        }
        let tail: Vec<&str> = words
            .iter()
            .rev()
            .take(4)
            .map(|w| w.text.as_str())
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Ok(Some(format!("\"… {}\"", tail.join(" "))))
    }

    /// Whether every BPE piece of `text` is in the vocabulary (none becomes the unknown token).
    pub fn knows(&self, text: &str) -> Result<bool> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.error(format!("cannot encode {text:?}: {e}")))?;
        Ok(match self.unk_id {
            Some(unk) => !encoding.get_ids().contains(&unk),
            None => true,
        })
    }

    /// The words of `prompt` the model does not know, lowercase, each once, in order. With a
    /// `vocabulary` (a model's `mirror.json`), any word not in it; without one, any word the
    /// tokenizer would turn into its unknown token. Punctuation is never a vocabulary word: a
    /// mark counts as unknown only when the tokenizer cannot encode it.
    pub fn unknown_words(
        &self,
        prompt: &str,
        vocabulary: Option<&[String]>,
    ) -> Result<Vec<String>> {
        let mut unknown: Vec<String> = Vec::new();
        for (piece, is_word) in prompt_pieces(prompt) {
            let known = match vocabulary {
                Some(words) if is_word => words.contains(&piece),
                _ => self.knows(&piece)?,
            };
            if !known && !unknown.contains(&piece) {
                unknown.push(piece);
            }
        }
        Ok(unknown)
    }

    fn encoding(&self, text: &str) -> Result<tokenizers::Encoding> {
        self.tokenizer
            .encode(text, true)
            .map_err(|e| self.error(format!("cannot encode {text:?}: {e}")))
    }

    fn truncate_and_pad(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if ids.len() > self.max_length {
            ids.truncate(self.max_length - 1);
            ids.push(self.eos_id);
        }
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    fn error(&self, reason: String) -> EngineError {
        EngineError::Tokenizer {
            path: self.source.clone(),
            reason,
        }
    }

    fn build(vocab_json: &Path, merges_txt: &Path, special: SpecialTokens) -> Result<Self> {
        let vocab = read_json(vocab_json)?;
        let vocab_map = vocab.as_object().ok_or_else(|| EngineError::Tokenizer {
            path: vocab_json.to_path_buf(),
            reason: "expected a JSON object token → id".into(),
        })?;
        let token_id = |token: &str| -> Result<u32> {
            vocab_map
                .get(token)
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| EngineError::Tokenizer {
                    path: vocab_json.to_path_buf(),
                    reason: format!(
                        "special token {token:?} (named by {}) is not in the vocabulary",
                        special.origin
                    ),
                })
        };
        let (bos_id, eos_id, pad_id) = (
            token_id(&special.bos)?,
            token_id(&special.eos)?,
            token_id(&special.pad)?,
        );
        let unk_id = token_id(&special.unk)?;
        let merges = read_merges(merges_txt)?;

        let added_token = |id: u32, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        };
        let mut added_tokens = vec![added_token(bos_id, &special.bos)];
        if eos_id != bos_id {
            added_tokens.push(added_token(eos_id, &special.eos));
        }
        let pipeline = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_SPLIT_REGEX},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": true}
            ]},
            "post_processor": {"type": "RobertaProcessing",
                "sep": [special.eos, eos_id], "cls": [special.bos, bos_id],
                "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": special.unk,
                "continuing_subword_prefix": "", "end_of_word_suffix": END_OF_WORD,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        });
        let tokenizer: Tokenizer =
            serde_json::from_value(pipeline).map_err(|e| EngineError::Tokenizer {
                path: merges_txt.to_path_buf(),
                reason: format!(
                    "cannot build the BPE tokenizer from {}: {e}",
                    vocab_json.display()
                ),
            })?;
        Ok(Self {
            tokenizer,
            source: vocab_json.parent().unwrap_or(vocab_json).to_path_buf(),
            max_length: special.max_length,
            bos_id,
            eos_id,
            pad_id,
            unk_id: Some(unk_id),
        })
    }

    fn from_tokenizer_json(path: &Path, special: SpecialTokens) -> Result<Self> {
        let tok_err = |reason: String| EngineError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| tok_err(e.to_string()))?;
        // Truncation and padding are ours.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| tok_err(e.to_string()))?;
        let token_id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                tok_err(format!(
                    "special token {token:?} (named by {}) is not in the vocabulary",
                    special.origin
                ))
            })
        };
        let (bos_id, eos_id, pad_id) = (
            token_id(&special.bos)?,
            token_id(&special.eos)?,
            token_id(&special.pad)?,
        );
        let unk_id = tokenizer.token_to_id(&special.unk);
        Ok(Self {
            tokenizer,
            source: path.to_path_buf(),
            max_length: special.max_length,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
        })
    }
}

/// The pieces of a prompt, lowercase: words (letters and digits, an apostrophe inside a word
/// kept) as `(word, true)`, runs of other marks as `(marks, false)`.
pub fn prompt_pieces(prompt: &str) -> Vec<(String, bool)> {
    let mut pieces: Vec<(String, bool)> = Vec::new();
    let chars: Vec<char> = prompt.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_whitespace() {
            continue;
        }
        let next_is_word = chars.get(i + 1).is_some_and(|c| c.is_alphanumeric());
        let is_word = c.is_alphanumeric()
            || (c == '\'' && next_is_word && i > 0 && chars[i - 1].is_alphanumeric());
        let joins = i > 0 && !chars[i - 1].is_whitespace();
        match pieces.last_mut() {
            Some((text, word)) if joins && *word == is_word => text.extend(c.to_lowercase()),
            _ => pieces.push((c.to_lowercase().collect(), is_word)),
        }
    }
    pieces
}

/// The message for unknown words: names them and, when the model lists its words, those.
pub fn unknown_words_message(unknown: &[String], vocabulary: Option<&[String]>) -> String {
    let quoted: Vec<String> = unknown.iter().map(|w| format!("\"{w}\"")).collect();
    let what = if unknown.len() == 1 { "word" } else { "words" };
    let mut text = format!("the model does not know the {what} {}", quoted.join(", "));
    if let Some(words) = vocabulary {
        text.push_str(&format!("; the words it knows: {}", words.join(", ")));
    }
    text
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::Tokenizer {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// `merges.txt`: an optional `#version` header, then one "left right" pair a line.
fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(i, line)| !(line.trim().is_empty() || (*i == 0 && line.starts_with("#version"))))
        .map(|(i, line)| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                _ => Err(EngineError::Tokenizer {
                    path: path.to_path_buf(),
                    reason: format!("line {}: expected two tokens, found {line:?}", i + 1),
                }),
            }
        })
        .collect()
}

/// Reads `bos_token`, `eos_token`, `unk_token`, `pad_token` (a string or an AddedToken
/// object with `content`) and `model_max_length` where present.
fn read_special_tokens(path: &Path, special: &mut SpecialTokens) -> Result<()> {
    let config = read_json(path)?;
    let token = |field: &str| -> Option<String> {
        match config.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let names = ["bos_token", "eos_token", "unk_token", "pad_token"];
    if names.iter().any(|n| token(n).is_some()) {
        let file = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        special.origin = if special.origin.ends_with(".json") {
            format!("{} and {file}", special.origin)
        } else {
            file.into_owned()
        };
    }
    if let Some(t) = token("bos_token") {
        special.bos = t;
    }
    if let Some(t) = token("eos_token") {
        special.eos = t;
    }
    if let Some(t) = token("unk_token") {
        special.unk = t;
    }
    if let Some(t) = token("pad_token") {
        special.pad = t;
    }
    // transformers writes a huge sentinel (1e30) when the length is unknown: ignore it.
    if let Some(n) = config.get("model_max_length").and_then(Value::as_u64)
        && (2..=1_000_000).contains(&n)
    {
        special.max_length = n as usize;
    }
    Ok(())
}

/// A BPE token as text: `</w>` removed, GPT-2 byte-level characters mapped back to bytes.
/// A token holding part of a multi-byte character shows the replacement character.
fn readable_token(token: &str) -> String {
    let token = token.strip_suffix(END_OF_WORD).unwrap_or(token);
    let bytes: Vec<u8> = token
        .chars()
        .flat_map(|c| match byte_of_char(c) {
            Some(b) => vec![b],
            // Not a byte-level character (e.g. a special token): keep it as is.
            None => c.to_string().into_bytes(),
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves,
/// the other 68 bytes were shifted to U+0100 + their rank.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let code = c as u32;
    if code < 0x100 {
        return printable(code).then_some(code as u8);
    }
    let rank = code - 0x100;
    (0u32..256)
        .filter(|b| !printable(*b))
        .nth(rank as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_inverse_covers_all_bytes() {
        // Every byte has exactly one character: 188 printable + 68 shifted.
        let mut seen = [false; 256];
        for code in (0x21u32..0x100).chain(0x100..0x144) {
            if let Some(b) = char::from_u32(code).and_then(byte_of_char) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
    }

    #[test]
    fn prompt_pieces_split_words_and_marks() {
        let pieces = prompt_pieces("A Red-circle, don't!  on");
        let expected = [
            ("a", true),
            ("red", true),
            ("-", false),
            ("circle", true),
            (",", false),
            ("don't", true),
            ("!", false),
            ("on", true),
        ];
        let expected: Vec<(String, bool)> =
            expected.iter().map(|(w, b)| (w.to_string(), *b)).collect();
        assert_eq!(pieces, expected);
        assert_eq!(prompt_pieces("'quoted'")[1], ("quoted".to_string(), true));
    }

    #[test]
    fn unknown_words_message_names_words_and_vocabulary() {
        let words = vec!["a".to_string(), "circle".to_string()];
        let m = unknown_words_message(&["cat".into()], Some(&words));
        assert!(
            m.contains("word \"cat\"") && m.ends_with("a, circle"),
            "{m}"
        );
        let m = unknown_words_message(&["cat".into(), "dog".into()], None);
        assert!(
            m.contains("words \"cat\", \"dog\"") && !m.contains("knows"),
            "{m}"
        );
    }

    #[test]
    fn readable_token_strips_suffix_and_decodes_bytes() {
        assert_eq!(readable_token("cat</w>"), "cat");
        assert_eq!(readable_token("photo"), "photo");
        // "é" is bytes C3 A9 → characters 'Ã' '©'.
        assert_eq!(readable_token("cafÃ©</w>"), "café");
    }
}
