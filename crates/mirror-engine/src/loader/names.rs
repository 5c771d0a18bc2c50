//! Renaming tables: the tensor names a model asks for (diffusers layout) -> the names a file
//! stores them under (e.g. the original LDM/CompVis single-file layout).
//!
//! A [`NameMap`] holds rules keyed by a dotted module prefix; a requested name is resolved with
//! its longest matching prefix (on `.` boundaries) and the remainder is appended unchanged to
//! each target prefix. A rule may list several targets (tried in order: the first one the file
//! holds wins) and may allow reshapes that only add or drop unit dimensions (1x1 convolution
//! weights stored where a linear weight is asked for, and vice versa).

use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Rule {
    targets: Vec<String>,
    unit_reshape: bool,
}

/// Where a requested name may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Stored names to try, in order.
    pub candidates: Vec<String>,
    /// Whether a stored shape that differs only by unit dimensions may be reshaped.
    pub unit_reshape: bool,
}

/// Renaming rules from requested (diffusers) names to stored names, by dotted module prefix.
#[derive(Debug, Clone, Default)]
pub struct NameMap {
    rules: HashMap<String, Rule>,
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{rest}"),
    }
}

impl NameMap {
    /// A map without rules: every name resolves to itself.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Maps the module prefix `from` (`""` = every name) to the stored prefixes `to`, tried in order.
    pub fn rename(&mut self, from: &str, to: &[&str]) -> &mut Self {
        self.insert(from, to, false)
    }

    /// Like [`NameMap::rename`], and the stored tensor may differ from the requested shape by
    /// unit dimensions only (`[C, C, 1, 1]` <-> `[C, C]`).
    pub fn rename_reshapable(&mut self, from: &str, to: &[&str]) -> &mut Self {
        self.insert(from, to, true)
    }

    fn insert(&mut self, from: &str, to: &[&str], unit_reshape: bool) -> &mut Self {
        let rule = Rule {
            targets: to.iter().map(|t| t.to_string()).collect(),
            unit_reshape,
        };
        self.rules.insert(from.to_string(), rule);
        self
    }

    /// Number of rules (for diagnostics).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the map has no rules (the identity).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The stored names to try for `name`, longest matching prefix first.
    pub fn resolve(&self, name: &str) -> Resolved {
        // Candidate split points: the whole name, every `.` from the right, then the empty prefix.
        let mut cut = Some(name.len());
        while let Some(end) = cut {
            let key = &name[..end];
            let rest = match end {
                0 => name,
                _ => name.get(end + 1..).unwrap_or(""),
            };
            if let Some(rule) = self.rules.get(key) {
                return Resolved {
                    candidates: rule.targets.iter().map(|t| join(t, rest)).collect(),
                    unit_reshape: rule.unit_reshape,
                };
            }
            cut = match end {
                0 => None,
                _ => Some(name[..end].rfind('.').unwrap_or(0)),
            };
        }
        Resolved {
            candidates: vec![name.to_string()],
            unit_reshape: false,
        }
    }
}

impl NameMap {
    /// The requested name a stored name answers, when a rule leads to it: the rule whose
    /// target is the longest prefix of `stored` (on `.` boundaries), of those the one with the
    /// longest module prefix (two rules may store under one target: `""` and `text_model`),
    /// checked by resolving the result forward. `None` for a name no rule produces.
    pub fn requested_name(&self, stored: &str) -> Option<String> {
        let mut best: Option<((usize, usize), String)> = None;
        for (from, rule) in &self.rules {
            for target in &rule.targets {
                let rest = if target.is_empty() {
                    Some(stored)
                } else if stored == target {
                    Some("")
                } else {
                    stored
                        .strip_prefix(target.as_str())
                        .and_then(|r| r.strip_prefix('.'))
                };
                let Some(rest) = rest else { continue };
                let rank = (target.len(), from.len());
                if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    best = Some((rank, join(from, rest)));
                }
            }
        }
        let (_, requested) = best?;
        self.resolve(&requested)
            .candidates
            .iter()
            .any(|c| c == stored)
            .then_some(requested)
    }
}

/// True when `a` and `b` are equal once all unit dimensions are dropped.
pub fn same_up_to_unit_dims(a: &[usize], b: &[usize]) -> bool {
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    squeeze(a) == squeeze(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut map = NameMap::identity();
        map.rename("", &["root"]);
        map.rename("a.b", &["x"]);
        map.rename("a.b.c", &["y", "z"]);
        assert_eq!(
            map.resolve("a.b.c.weight").candidates,
            ["y.weight", "z.weight"]
        );
        assert_eq!(map.resolve("a.b.d.weight").candidates, ["x.d.weight"]);
        assert_eq!(map.resolve("a.bc.weight").candidates, ["root.a.bc.weight"]);
        assert_eq!(map.resolve("a.b").candidates, ["x"]);
        assert_eq!(NameMap::identity().resolve("q.w").candidates, ["q.w"]);
    }

    #[test]
    fn stored_names_lead_back_to_requested_ones() {
        let mut map = NameMap::identity();
        map.rename("", &["root"]);
        map.rename("a.b", &["x"]);
        map.rename("a.b.c", &["y", "z"]);
        for requested in ["a.b.c.weight", "a.b.d.weight", "a.bc.weight", "a.b"] {
            for stored in map.resolve(requested).candidates {
                assert_eq!(
                    map.requested_name(&stored).as_deref(),
                    Some(requested),
                    "{stored}"
                );
            }
        }
        // Two rules storing under one target: the more specific module wins, whatever order
        // the hash map keeps the rules in.
        let stored = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
        for _ in 0..20 {
            // A new map each time: a new hash seed, another order of the rules.
            let text = crate::loader::ldm_names::text_encoder_map();
            assert_eq!(
                text.requested_name(stored).as_deref(),
                Some("text_model.encoder.layers.0.mlp.fc1.weight")
            );
        }
        // A stored name no rule produces.
        let mut only = NameMap::identity();
        only.rename("unet", &["model.diffusion_model"]);
        assert_eq!(only.requested_name("first_stage_model.conv.weight"), None);
    }

    #[test]
    fn unit_dims() {
        assert!(same_up_to_unit_dims(&[4, 4, 1, 1], &[4, 4]));
        assert!(!same_up_to_unit_dims(&[4, 2, 1, 1], &[4, 4]));
    }
}
