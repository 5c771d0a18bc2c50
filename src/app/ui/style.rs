//! Colours and the look of the app: a calm dark theme so images carry the colour.

use egui::Color32;

pub const ACCENT: Color32 = Color32::from_rgb(255, 170, 90);
pub const COOL: Color32 = Color32::from_rgb(120, 200, 255);
pub const ERROR: Color32 = Color32::from_rgb(240, 100, 100);
pub const EMPTY_TILE: Color32 = Color32::from_rgb(38, 38, 44);

/// The colour a branch has in plots and captions.
pub fn branch_colour(branch: mirror_engine::pipeline::Branch) -> Color32 {
    use mirror_engine::pipeline::Role::{Reconstruction, Translation};
    use mirror_engine::session::Method::{Ddim, Mirror, Pix2PixZero};
    match (branch.method, branch.role) {
        (Mirror, Reconstruction) => Color32::from_rgb(255, 170, 90),
        (Mirror, Translation) => Color32::from_rgb(240, 100, 130),
        (Ddim, Reconstruction) => Color32::from_rgb(120, 200, 255),
        (Ddim, Translation) => Color32::from_rgb(150, 140, 255),
        (Pix2PixZero, Reconstruction) => Color32::from_rgb(130, 220, 140),
        (Pix2PixZero, Translation) => Color32::from_rgb(200, 230, 110),
    }
}

pub fn apply(ctx: &egui::Context) {
    ctx.set_theme(egui::Theme::Dark);
    ctx.all_styles_mut(|style| {
        style.spacing.item_spacing = egui::vec2(8.0, 6.0);
        style.spacing.button_padding = egui::vec2(8.0, 4.0);
        style.visuals.selection.bg_fill = Color32::from_rgb(150, 90, 40);
        style.visuals.hyperlink_color = ACCENT;
    });
}

/// The window icon (the 64 px app icon).
pub fn window_icon() -> egui::IconData {
    const PNG: &[u8] =
        include_bytes!("../../../assets/icons/io.github.mirror_diffusion.Mirror-64.png");
    image::load_from_memory(PNG)
        .map(|i| {
            let rgba = i.to_rgba8();
            egui::IconData {
                width: rgba.width(),
                height: rgba.height(),
                rgba: rgba.into_raw(),
            }
        })
        .unwrap_or_default()
}
