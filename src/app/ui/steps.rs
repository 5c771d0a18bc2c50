//! The mirror effect step by step: previews of every branch at the timeline's step, the
//! timeline scrubber, and plots of the mirror error and the redescription loss.

use egui::{RichText, Ui, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::app::state::AppState;
use crate::app::textures::Textures;
use mirror_engine::pipeline::Branch;

pub fn steps_view(ui: &mut Ui, state: &mut AppState, tex: &mut Textures) {
    if !state.target_results.is_empty() {
        targets_grid(ui, state, tex);
        ui.separator();
    }
    previews(ui, state, tex);
    ui.add_space(6.0);
    timeline(ui, state);
    ui.add_space(6.0);
    plots(ui, state);
}

/// One tile of the previews.
#[derive(Clone, Copy)]
enum Tile {
    Source,
    Branch(Branch),
    /// The edit mask the finished run used.
    Mask,
}

fn previews(ui: &mut Ui, state: &AppState, tex: &mut Textures) {
    let step = state.shown_step();
    let last = state.frames.len().checked_sub(1);
    let finished = state.result.is_some() && !state.progress.running && step == last;
    let mask = state.result.as_ref().and_then(|r| r.mask.as_ref());
    let mut tiles = vec![Tile::Source];
    tiles.extend(state.preview_branches().into_iter().map(Tile::Branch));
    if mask.is_some() && !state.progress.running {
        tiles.push(Tile::Mask);
    }
    let n = tiles.len();
    // As many tiles a row as fit at a legible size; rows share the upper half of the view.
    let gap = ui.spacing().item_spacing.x;
    let width = ui.available_width();
    let cols = (1..=n)
        .rev()
        .find(|&c| (width - gap * (c as f32 - 1.0)) / c as f32 >= MIN_TILE)
        .unwrap_or(1);
    let rows = n.div_ceil(cols);
    let caption_room = 22.0;
    let by_width = (width - gap * (cols as f32 - 1.0)) / cols as f32;
    // The visible height (inside the scroll area the available height is unbounded).
    let by_height = (ui.clip_rect().height() * 0.55) / rows as f32 - caption_room;
    let side = by_width
        .min(by_height)
        .clamp(MIN_TILE.min(by_width), MAX_TILE);
    let size = Vec2::new(side, side);
    for row in tiles.chunks(cols) {
        ui.horizontal_top(|ui| {
            for tile in row {
                let branch = match *tile {
                    Tile::Source => {
                        let source_img = state.image.as_ref().map(|i| &i.loaded.rgb);
                        let t = tex.rgb(ui.ctx(), "source/full", source_img);
                        super::tile(ui, t.as_ref(), "Source", size);
                        continue;
                    }
                    Tile::Mask => {
                        let t = tex.get(ui.ctx(), "final/mask", || {
                            mask.map(crate::app::textures::gray_image)
                        });
                        super::tile(ui, t.as_ref(), &mask_caption(state), size);
                        continue;
                    }
                    Tile::Branch(b) => b,
                };
                // The finished run's full-quality image on the last step; else the step preview.
                let (key, img) = match (finished, state.final_image(branch)) {
                    (true, Some(img)) => (format!("final/{branch:?}"), Some(img)),
                    _ => {
                        let b = step
                            .and_then(|s| state.frames.get(s))
                            .and_then(|f| f.branches.iter().find(|b| b.branch == branch));
                        (
                            format!("step/{}/{branch:?}", step.unwrap_or(0)),
                            b.map(|b| &b.preview),
                        )
                    }
                };
                let t = tex.rgb(ui.ctx(), &key, img);
                let caption = caption(state, branch, step);
                super::tile(ui, t.as_ref(), &caption, size);
            }
        });
    }
}

/// "Edit mask (painted)" or "(found from the edit)", from the recipe of the run.
fn mask_caption(state: &AppState) -> String {
    use mirror_engine::recipe::RecipeMask;
    match state.result_recipe.as_ref().and_then(|r| r.mask.as_ref()) {
        Some(RecipeMask::Automatic | RecipeMask::Attention) => {
            "Edit mask (found from the edit)".into()
        }
        Some(RecipeMask::Png(_)) => "Edit mask (painted)".into(),
        None => "Edit mask".into(),
    }
}

/// Several targets: every finished translation, one tile each, under its target prompt.
fn targets_grid(ui: &mut Ui, state: &AppState, tex: &mut Textures) {
    ui.label(RichText::new("Every target, from one analysis of the photo").small());
    let n = state.target_results.len();
    let gap = ui.spacing().item_spacing.x;
    let side = ((ui.available_width() - gap * (n as f32 - 1.0)) / n as f32)
        .min(ui.clip_rect().height() * 0.3)
        .clamp(48.0, MAX_TILE);
    ui.horizontal_wrapped(|ui| {
        for (i, t) in state.target_results.iter().enumerate() {
            let tex = tex.rgb(ui.ctx(), &format!("final/target/{i}"), Some(&t.image));
            super::tile(ui, tex.as_ref(), &t.target, Vec2::splat(side));
        }
    });
}

/// Preview tiles are at least this wide (else they wrap to another row) and at most this.
const MIN_TILE: f32 = 110.0;
const MAX_TILE: f32 = 720.0;

fn caption(state: &AppState, branch: Branch, step: Option<usize>) -> String {
    let err = step
        .and_then(|s| state.frames.get(s))
        .and_then(|f| f.branches.iter().find(|b| b.branch == branch))
        .and_then(|b| b.mirror_error);
    match err {
        Some(e) if branch.is_reconstruction() => format!("{} · error {e:.2e}", branch.label()),
        _ => branch.label().to_string(),
    }
}

fn timeline(ui: &mut Ui, state: &mut AppState) {
    let Some(last) = state.frames.len().checked_sub(1) else {
        let text = if state.progress.running {
            "Previews appear here as the steps run…"
        } else {
            "Run a translation to see the reconstruction mirror the inversion, step by step."
        };
        ui.label(RichText::new(text).weak());
        return;
    };
    ui.horizontal(|ui| {
        let mut step = state.shown_step().unwrap_or(0);
        let frame = &state.frames[step];
        let total = frame.total.max(last + 1);
        ui.spacing_mut().slider_width = (ui.available_width() - 260.0).max(120.0);
        let slider = egui::Slider::new(&mut step, 0..=last)
            .text("Timeline step")
            .custom_formatter(move |v, _| format!("{}/{total}", v as usize + 1))
            .custom_parser(|s| {
                s.split('/')
                    .next()?
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .map(|v| v - 1.0)
            });
        if ui.add(slider).changed() {
            state.timeline = if step == last && state.progress.running {
                None
            } else {
                Some(step)
            };
        }
        let mut live = state.timeline.is_none();
        if ui.checkbox(&mut live, "Follow live").changed() {
            state.timeline = if live { None } else { Some(step) };
        }
        ui.label(RichText::new(format!("t = {}", state.frames[step.min(last)].timestep)).weak());
    });
}

fn plots(ui: &mut Ui, state: &AppState) {
    if state.frames.is_empty() {
        return;
    }
    let room = ui.clip_rect().bottom() - ui.cursor().top() - 40.0;
    let height = room.clamp(120.0, (ui.clip_rect().height() * 0.45).max(420.0));
    let width = ui.available_width() / 2.0 - 8.0;
    let shown = state.shown_step().unwrap_or(0) as f64 + 1.0;
    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            // Captions wrap to the plot's width instead of pushing the next plot off screen.
            ui.set_width(width);
            ui.label(
                RichText::new(
                    "Mirror error per step (reconstruction vs inversion latent, lower is better)",
                )
                .small(),
            );
            Plot::new("mirror-error")
                .legend(Legend::default().position(egui_plot::Corner::LeftTop))
                .height(height)
                .width(width)
                .x_axis_label("step")
                .allow_scroll(false)
                .show(ui, |p| {
                    for branch in state
                        .preview_branches()
                        .into_iter()
                        .filter(|b| b.is_reconstruction())
                    {
                        let pts: PlotPoints = state
                            .frames
                            .iter()
                            .filter_map(|f| {
                                let e = f
                                    .branches
                                    .iter()
                                    .find(|b| b.branch == branch)?
                                    .mirror_error?;
                                Some([f.step as f64 + 1.0, e])
                            })
                            .collect();
                        p.line(
                            Line::new(branch.label(), pts)
                                .color(super::style::branch_colour(branch))
                                .width(2.0),
                        );
                    }
                    p.vline(egui_plot::VLine::new("", shown).color(egui::Color32::from_gray(120)));
                });
        });
        ui.vertical(|ui| {
            ui.set_width(width);
            ui.label(
                RichText::new("Redescription loss (last Adam iteration of each step)").small(),
            );
            let redescribed = state.frames.iter().any(|f| !f.redescription.is_empty());
            if !redescribed && !state.frames.is_empty() {
                // An empty plot would read as a failure: say why there is nothing to draw.
                ui.add_space(height / 3.0);
                ui.label(
                    "No redescription in this run: the exact mirror puts the reconstruction \
                     on the photo's own path at every step, so the photo's description needs \
                     no refining. Choose \"exact mirror\" or \"as described\" under \
                     Reconstruction to see it refined.",
                );
                return;
            }
            Plot::new("redescription-loss")
                .legend(Legend::default().position(egui_plot::Corner::LeftTop))
                .height(height)
                .width(width)
                .x_axis_label("step")
                .allow_scroll(false)
                .show(ui, |p| {
                    let pts: PlotPoints = state
                        .frames
                        .iter()
                        .filter_map(|f| Some([f.step as f64 + 1.0, *f.redescription.last()?]))
                        .collect();
                    p.line(
                        Line::new("redescription loss", pts)
                            .color(super::style::ACCENT)
                            .width(2.0),
                    );
                    p.vline(egui_plot::VLine::new("", shown).color(egui::Color32::from_gray(120)));
                });
        });
    });
}
