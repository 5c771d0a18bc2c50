//! Cross-attention maps: click a word of either prompt to see where the UNet looked for it,
//! over the reconstruction and the translation side by side.

use egui::{RichText, Ui, Vec2};

use crate::app::state::AppState;
use crate::app::textures::{Textures, color_image, overlay};
use mirror_engine::pipeline::Branch;
use mirror_engine::tokenizer::TokenWord;

/// The main method's reconstruction and translation (attention is recorded for both).
fn branches(state: &AppState) -> [Branch; 2] {
    let method = state.main_method();
    [method.reconstruction(), method.translation()]
}

pub fn attention_view(ui: &mut Ui, state: &mut AppState, tex: &mut Textures) {
    word_row(
        ui,
        "Source words",
        &state.source_tokens.clone(),
        state,
        None,
    );
    let mapped = map_target_tokens(&state.source_tokens, &state.target_tokens);
    word_row(
        ui,
        "Target words",
        &state.target_tokens.clone(),
        state,
        Some(&mapped),
    );
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut state.attention.opacity, 0.0..=1.0).text("Opacity"));
        ui.checkbox(&mut state.attention.averaged, "Average over all steps");
        let labels = resolution_labels(state);
        let selected = state
            .attention
            .resolution
            .and_then(|i| labels.get(i).cloned())
            .unwrap_or_else(|| "all".into());
        egui::ComboBox::from_label("Resolution")
            .selected_text(selected)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut state.attention.resolution, None, "all");
                for (i, l) in labels.iter().enumerate() {
                    ui.selectable_value(&mut state.attention.resolution, Some(i), l);
                }
            });
    });
    ui.separator();
    let Some((token, word)) = state.attention.token.clone() else {
        ui.label(RichText::new("Click a word above to see its cross-attention map.").weak());
        return;
    };
    let Some(step) = state.shown_step() else {
        ui.label(RichText::new("Run a translation first: the maps come with each step.").weak());
        return;
    };
    let side = ((ui.available_width() - 16.0) / 2.0).clamp(128.0, 420.0);
    let when = if state.attention.averaged {
        "averaged over all steps".to_string()
    } else {
        format!("step {}", step + 1)
    };
    ui.label(format!(
        "“{word}” · {when} (use the timeline in Steps to pick the step)"
    ));
    ui.horizontal_top(|ui| {
        for branch in branches(state) {
            let Some(base) = state
                .frames
                .get(step)
                .and_then(|f| f.branches.iter().find(|b| b.branch == branch))
                .map(|b| b.preview.clone())
            else {
                super::tile(ui, None, branch.label(), Vec2::splat(side));
                continue;
            };
            let key = format!(
                "attn/{branch:?}/{token}/{}/{:?}/{}/{}",
                if state.attention.averaged {
                    "avg".to_string()
                } else {
                    step.to_string()
                },
                state.attention.resolution,
                (state.attention.opacity * 100.0).round(),
                state.frames.len()
            );
            let t = tex.get(ui.ctx(), &key, || {
                let heat = state.heat(branch, token, base.width(), base.height())?;
                Some(color_image(&overlay(&base, &heat, state.attention.opacity)))
            });
            let caption = if t.is_some() {
                branch.label().to_string()
            } else {
                format!("{} (no map)", branch.label())
            };
            super::tile(ui, t.as_ref(), &caption, Vec2::splat(side));
        }
    });
}

fn word_row(
    ui: &mut Ui,
    title: &str,
    tokens: &[TokenWord],
    state: &mut AppState,
    mapped: Option<&[usize]>,
) {
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(title).small());
        if tokens.is_empty() {
            ui.label(RichText::new("(load a model and type a prompt)").weak());
        }
        let kind = if mapped.is_some() { "target" } else { "source" };
        for (i, t) in tokens.iter().enumerate() {
            let index = mapped.and_then(|m| m.get(i).copied()).unwrap_or(t.index);
            let selected = state
                .attention
                .token
                .as_ref()
                .is_some_and(|(k, w)| *k == index && *w == t.text);
            let r = ui.selectable_label(selected, &t.text);
            let label = format!("{kind} word {}", t.text);
            r.widget_info(|| {
                egui::WidgetInfo::selected(egui::Role::Button, true, selected, &label)
            });
            if r.clicked() {
                state.attention.token = Some((index, t.text.clone()));
                state.view = crate::app::state::View::Attention;
                state.emit(&format!("word_selected {} {index}", t.text));
            }
        }
    });
}

/// The Mirror branches are conditioned on the source prompt's token positions (the edit
/// moves the embedding, not the tokens): a target word maps to the same word in the shared
/// prefix or suffix, or to the start of the changed source phrase.
pub fn map_target_tokens(source: &[TokenWord], target: &[TokenWord]) -> Vec<usize> {
    let prefix = source
        .iter()
        .zip(target)
        .take_while(|(a, b)| a.text == b.text)
        .count();
    let suffix = source
        .iter()
        .rev()
        .zip(target.iter().rev())
        .take_while(|(a, b)| a.text == b.text)
        .count();
    let suffix = suffix
        .min(source.len().saturating_sub(prefix))
        .min(target.len().saturating_sub(prefix));
    target
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i < prefix {
                t.index
            } else if i >= target.len() - suffix {
                let from_end = target.len() - i;
                source
                    .get(source.len() - from_end)
                    .map_or(t.index, |s| s.index)
            } else {
                source.get(prefix).map_or(t.index, |s| s.index)
            }
        })
        .collect()
}

fn resolution_labels(state: &AppState) -> Vec<String> {
    let maps = state.attention_maps(mirror_engine::session::Method::Mirror.reconstruction());
    maps.first()
        .map(|m| {
            m.resolutions
                .iter()
                .map(|r| format!("{}×{}", r.width, r.height))
                .collect()
        })
        .unwrap_or_default()
}
