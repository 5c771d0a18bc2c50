//! `text_encoder/config.json` (transformers' `CLIPTextConfig`).
//! Ports: https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/clip/configuration_clip.py (pinned).

use std::path::Path;

use candle_core::{Result as CandleResult, Tensor};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::Result;
use crate::config::{config_error, read_json_object};

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ClipActivation {
    /// `x · σ(1.702 x)`: OpenAI CLIP, SD 1.x.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP ViT-H, SD 2.x.
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh-approximated GELU.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
}

impl ClipActivation {
    /// Applies the activation elementwise.
    pub fn apply(self, x: &Tensor) -> CandleResult<Tensor> {
        match self {
            // Fused without gradient, elementary (with a backward pass) otherwise.
            ClipActivation::QuickGelu => crate::nn::quick_gelu(x),
            ClipActivation::Gelu => x.gelu_erf(),
            ClipActivation::GeluTanh => x.gelu(),
        }
    }
}

/// `text_encoder/config.json` (transformers' `CLIPTextConfig`); each field reads its namesake key.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClipTextConfig {
    /// Number of token ids (49408 for CLIP).
    pub vocab_size: usize,
    /// Width D of the token embeddings and of the output (768 for SD 1.x, 1024 for SD 2.x).
    pub hidden_size: usize,
    /// Width of the MLP inside each layer.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Longest token sequence, and the length prompts are padded to (default 77).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// The MLP activation (default `quick_gelu`).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: ClipActivation,
    /// Epsilon of the layer norms (default 1e-5).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> ClipActivation {
    ClipActivation::QuickGelu
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// Reads and validates a `CLIPTextConfig` JSON file (or the `text_config` part of a full
    /// `CLIPConfig`). Errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut object = read_json_object(path)?;
        if !object.contains_key("hidden_size")
            && let Some(Value::Object(text_config)) = object.remove("text_config")
        {
            object = text_config;
        }
        Self::from_object(&object).map_err(|(field, reason)| config_error(path, &field, reason))
    }

    /// Per-field deserialisation, so that a missing or mistyped value is named.
    fn from_object(o: &Map<String, Value>) -> std::result::Result<Self, (String, String)> {
        let cfg = Self {
            vocab_size: required(o, "vocab_size")?,
            hidden_size: required(o, "hidden_size")?,
            intermediate_size: required(o, "intermediate_size")?,
            num_hidden_layers: required(o, "num_hidden_layers")?,
            num_attention_heads: required(o, "num_attention_heads")?,
            max_position_embeddings: optional(o, "max_position_embeddings")?
                .unwrap_or_else(default_max_position_embeddings),
            hidden_act: optional(o, "hidden_act")?.unwrap_or_else(default_hidden_act),
            layer_norm_eps: optional(o, "layer_norm_eps")?.unwrap_or_else(default_layer_norm_eps),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), (String, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err((field.into(), "must be positive".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err((
                "num_attention_heads".into(),
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err((
                "layer_norm_eps".into(),
                format!("must be a positive number, found {}", self.layer_norm_eps),
            ));
        }
        Ok(())
    }

    /// Width of one attention head: `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn optional<T: DeserializeOwned>(
    o: &Map<String, Value>,
    field: &str,
) -> std::result::Result<Option<T>, (String, String)> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| (field.to_string(), format!("{e} (found {v})"))),
    }
}

fn required<T: DeserializeOwned>(
    o: &Map<String, Value>,
    field: &str,
) -> std::result::Result<T, (String, String)> {
    optional(o, field)?.ok_or_else(|| (field.to_string(), "missing".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn parse(json: &str) -> std::result::Result<ClipTextConfig, (String, String)> {
        let v: Value = serde_json::from_str(json).unwrap();
        ClipTextConfig::from_object(v.as_object().unwrap())
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2"#;

    #[test]
    fn defaults_follow_transformers() {
        let cfg = parse(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(cfg.max_position_embeddings, 77);
        assert_eq!(cfg.hidden_act, ClipActivation::QuickGelu);
        assert_eq!(cfg.layer_norm_eps, 1e-5);
        assert_eq!(cfg.head_dim(), 4);
    }

    #[test]
    fn activation_names_dispatch() {
        for (name, act) in [
            ("quick_gelu", ClipActivation::QuickGelu),
            ("gelu", ClipActivation::Gelu),
            ("gelu_new", ClipActivation::GeluTanh),
            ("gelu_pytorch_tanh", ClipActivation::GeluTanh),
        ] {
            let cfg = parse(&format!(r#"{{{BASE}, "hidden_act": "{name}"}}"#)).unwrap();
            assert_eq!(cfg.hidden_act, act, "{name}");
        }
        let (field, _) = parse(&format!(r#"{{{BASE}, "hidden_act": "swish"}}"#)).unwrap_err();
        assert_eq!(field, "hidden_act");
    }

    #[test]
    fn activations_compute_their_definitions() -> CandleResult<()> {
        let xs = [-3.0f32, -0.7, 0.0, 0.4, 2.5];
        let x = Tensor::new(&xs, &Device::Cpu)?;
        let erf = |v: f64| {
            // Maclaurin series of erf: exact in f64 for the small arguments used here.
            let mut sum = 0.0;
            let mut term = v;
            for n in 0..60 {
                sum += term / (2 * n + 1) as f64;
                term *= -v * v / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        let expected = |act: ClipActivation, v: f64| match act {
            ClipActivation::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
            ClipActivation::Gelu => 0.5 * v * (1.0 + erf(v / 2f64.sqrt())),
            ClipActivation::GeluTanh => {
                0.5 * v
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
            }
        };
        for act in [
            ClipActivation::QuickGelu,
            ClipActivation::Gelu,
            ClipActivation::GeluTanh,
        ] {
            let got = act.apply(&x)?.to_vec1::<f32>()?;
            for (g, v) in got.iter().zip(xs) {
                let e = expected(act, v as f64);
                assert!(
                    (*g as f64 - e).abs() < 1e-5,
                    "{act:?}({v}) = {g}, expected {e}"
                );
            }
        }
        // The variants really differ (a wrong dispatch would be caught above).
        let q = ClipActivation::QuickGelu.apply(&x)?.to_vec1::<f32>()?;
        let g = ClipActivation::Gelu.apply(&x)?.to_vec1::<f32>()?;
        assert!((q[1] - g[1]).abs() > 1e-3);
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        let (field, reason) = parse(
            r#"{"vocab_size": 10, "hidden_size": "eight", "intermediate_size": 16,
                      "num_hidden_layers": 1, "num_attention_heads": 2}"#,
        )
        .unwrap_err();
        assert_eq!(field, "hidden_size");
        assert!(reason.contains("eight"), "{reason}");
        let (field, _) = parse(r#"{"vocab_size": 10, "hidden_size": 8}"#).unwrap_err();
        assert_eq!(field, "intermediate_size");
        let (field, _) = parse(&format!(r#"{{{BASE}, "layer_norm_eps": "1e-5"}}"#)).unwrap_err();
        assert_eq!(field, "layer_norm_eps");
        let bad_heads = BASE.replace(r#""num_attention_heads": 2"#, r#""num_attention_heads": 3"#);
        let (field, _) = parse(&format!("{{{bad_heads}}}")).unwrap_err();
        assert_eq!(field, "num_attention_heads");
    }

    #[test]
    fn from_file_reports_path_and_field() {
        let dir = std::env::temp_dir().join(format!("mirror-clip-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let json = format!(r#"{{{BASE}, "num_hidden_layers": -1}}"#)
            .replace(r#""num_hidden_layers": 1, "#, "");
        std::fs::write(&path, json).unwrap();
        let err = ClipTextConfig::from_file(&path).unwrap_err();
        match &err {
            crate::EngineError::Config { file, field, .. } => {
                assert_eq!(file, &path);
                assert_eq!(field, "num_hidden_layers");
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("config.json"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
