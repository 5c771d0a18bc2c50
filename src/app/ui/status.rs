//! The status bar: run progress with phase and ETA, the latest message, the device in use,
//! and frame time.

use egui::{RichText, Ui};

use super::format::{fmt_secs, phase_words};
use crate::app::state::AppState;

pub fn status_bar(ui: &mut Ui, state: &AppState) {
    ui.horizontal(|ui| {
        let p = &state.progress;
        if p.running {
            let phase = p.phase.map_or("starting", phase_words);
            let eta = state
                .eta()
                .map_or(String::new(), |s| format!(" · about {} left", fmt_secs(s)));
            let steps = if p.phase_steps > 0 {
                format!(" {}/{}", p.phase_step, p.phase_steps)
            } else {
                String::new()
            };
            let text = if p.cancel_requested {
                "cancelling…".to_string()
            } else {
                format!("{phase}{steps}{eta}")
            };
            ui.add(
                egui::ProgressBar::new(p.fraction)
                    .desired_width(320.0)
                    .text(text),
            );
        } else if let Some(note) = state.notes.last() {
            ui.label(RichText::new(note).weak());
        } else {
            ui.label(RichText::new("Ready").weak());
        }
        if state.hide_frame_time {
            return;
        }
        // The device (and the frame time) vary by machine: left out of the steady status.
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            let ms = state.frame_stats.last.as_secs_f64() * 1000.0;
            ui.label(RichText::new(format!("UI {ms:.1} ms/frame")).small().weak())
                .on_hover_text(
                    "Time spent building this frame; the engine runs on its own thread.",
                );
            ui.separator();
            super::compute::device_label(ui, state);
        });
    });
}
