//! The two charts of a report, written as standalone SVG files and inlined in `report.html`.

pub mod dims;
pub mod metrics;
pub mod training;

pub use dims::dims_chart;
pub use metrics::metrics_chart;
pub use training::training_chart;

/// Colours that stay apart for colour-blind readers (Okabe–Ito) and on grey-scale prints: the base
/// model is grey, the candidate (last) blue, others in between.
pub const BASE_COLOR: &str = "#8c959f";
pub const CANDIDATE_COLOR: &str = "#0969da";
const OTHER_COLORS: [&str; 5] = ["#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9"];

/// The colour of model `index` of `count`.
pub fn model_color(index: usize, count: usize) -> &'static str {
    if index == 0 && count > 1 {
        BASE_COLOR
    } else if index + 1 == count {
        CANDIDATE_COLOR
    } else {
        OTHER_COLORS[(index - 1) % OTHER_COLORS.len()]
    }
}

pub const TEXT_COLOR: &str = "#1f2328";
pub const MUTED_COLOR: &str = "#59636e";
pub const GRID_COLOR: &str = "#d8dee4";

/// Evenly spaced "nice" ticks (1, 2, 2.5 or 5 times a power of ten) covering `lo..=hi`, about
/// `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5 * lo.abs().max(1e-9), hi + 0.5 * hi.abs().max(1e-9)) };
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil();
    // Multiples of the step computed from integers, so 0.6 is not 0.6000000000000001.
    // Divide by an exact power of ten below 1, multiply by one above: both are exact there.
    let unit = magnitude / 10.0;
    let round = |v: f64| if unit < 1.0 { (v / unit).round() / (1.0 / unit).round() } else { (v / unit).round() * unit };
    (first as i64..=last as i64).map(|i| round(i as f64 * step) + 0.0).collect()
}

/// Integer ticks from 0 to at least `max`, spaced so that labels `min_gap` pixels wide fit in
/// `pixels`.
pub fn step_ticks(max: u64, pixels: f64, min_gap: f64) -> Vec<u64> {
    let max = max.max(1);
    let mut magnitude = 1u64;
    loop {
        for m in [1u64, 2, 5] {
            let step = m * magnitude;
            let count = max.div_ceil(step);
            if count <= 10 && pixels / count as f64 >= min_gap {
                return (0..=count).map(|i| i * step).collect();
            }
        }
        magnitude *= 10;
    }
}

/// A tick label with as many decimals as the tick spacing needs, or in scientific notation for
/// tiny values such as learning rates (`2e-5`).
pub fn tick_label(value: f64, step: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    if value.abs() < 1e-3 {
        let s = format!("{value:.1e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize + usize::from((step * 10f64.powi(-step.log10().floor() as i32)).fract() > 1e-6)
    };
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        let labels: Vec<String> = nice_ticks(0.0, 1.0, 5).iter().map(|t| tick_label(*t, 0.2)).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = nice_ticks(0.83, 0.94, 5);
        assert!(t[0] <= 0.83 && *t.last().unwrap() >= 0.94, "{t:?}");
        assert!(t.len() >= 3 && t.len() <= 8, "{t:?}");
        let flat = nice_ticks(0.5, 0.5, 4);
        assert!(flat[0] < 0.5 && *flat.last().unwrap() > 0.5);
    }

    #[test]
    fn steps_are_integers_that_fit() {
        assert_eq!(step_ticks(24, 600.0, 30.0), [0, 5, 10, 15, 20, 25]);
        assert_eq!(step_ticks(3, 600.0, 30.0), [0, 1, 2, 3]);
        let many = step_ticks(12_345, 300.0, 40.0);
        assert!(many.len() <= 8 && *many.last().unwrap() >= 12_345, "{many:?}");
    }

    #[test]
    fn labels_have_the_decimals_the_step_needs() {
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.875, 0.025), "0.875");
        assert_eq!(tick_label(0.85, 0.05), "0.85");
        assert_eq!(tick_label(20.0, 5.0), "20");
        assert_eq!(tick_label(2e-5, 5e-6), "2e-5");
        assert_eq!(tick_label(1.5e-5, 5e-6), "1.5e-5");
    }
}
