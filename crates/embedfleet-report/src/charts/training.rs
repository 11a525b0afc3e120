//! The training chart, three panels over the same integer step axis: the loss of every step with
//! its moving average, the validation metric at each evaluation with the kept checkpoint marked,
//! and the learning rate.

use super::{CANDIDATE_COLOR, GRID_COLOR, MUTED_COLOR, TEXT_COLOR, nice_ticks, step_ticks, tick_label};
use crate::data::TrainingCurve;
use crate::svg::{Anchor, Svg, TextBox, TextStyle, text_width};

const WIDTH: f64 = 760.0;
const MARGIN: f64 = 16.0;
const TICK_SIZE: f64 = 11.0;
const TITLE_SIZE: f64 = 13.0;
const LEGEND_SIZE: f64 = 12.0;
const LOSS_COLOR: &str = CANDIDATE_COLOR;
const METRIC_COLOR: &str = "#1a7f37";
const BEST_COLOR: &str = "#cf222e";
const LR_COLOR: &str = "#8250df";

/// How many steps the moving average spans: about a tenth of the run, at least 1, at most 50.
pub fn smoothing_window(steps: usize) -> usize {
    steps.div_ceil(10).clamp(1, 50)
}

/// The trailing mean of the last `window` values at each point.
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

/// One panel's plot area and value range.
struct Panel {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x_max: f64,
    y_lo: f64,
    y_hi: f64,
}

impl Panel {
    fn x(&self, step: f64) -> f64 {
        self.left + step / self.x_max * (self.right - self.left)
    }
    fn y(&self, v: f64) -> f64 {
        self.bottom - (v - self.y_lo) / (self.y_hi - self.y_lo) * (self.bottom - self.top)
    }
}

struct Layout<'a> {
    svg: Svg,
    steps: &'a [u64],
    y: f64,
}

impl Layout<'_> {
    /// The title of a panel and its legend to the right, wrapping when the line is full.
    fn header(&mut self, title: &str, legend: &[(&str, &str, bool)]) {
        let baseline = self.y + TITLE_SIZE;
        let title_box = self.svg.text(MARGIN, baseline, title, TextStyle { size: TITLE_SIZE, bold: true, ..Default::default() });
        let mut x = title_box.x1 + 24.0;
        let mut y = baseline;
        for (label, color, dashed) in legend {
            let w = 26.0 + text_width(label, LEGEND_SIZE, false);
            if x + w > WIDTH - MARGIN {
                x = MARGIN;
                y += 18.0;
            }
            self.svg.line((x, y - 4.0), (x + 20.0, y - 4.0), color, if *dashed { 1.5 } else { 2.5 }, dashed.then_some("4 3"));
            self.svg.text(x + 26.0, y, label, TextStyle { size: LEGEND_SIZE, fill: MUTED_COLOR, ..Default::default() });
            x += w + 18.0;
        }
        self.y = y + 12.0;
    }

    /// Grid, value ticks and step ticks for a panel of `height` plot pixels covering `lo..hi`.
    fn panel(&mut self, height: f64, lo: f64, hi: f64) -> Panel {
        let ticks = nice_ticks(lo, hi, 4);
        let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
        let labels: Vec<String> = ticks.iter().map(|t| tick_label(*t, step)).collect();
        let label_w = labels.iter().map(|l| text_width(l, TICK_SIZE, false)).fold(0.0, f64::max);
        let left = MARGIN + label_w.max(30.0) + 8.0;
        let x_max = *self.steps.last().unwrap_or(&1) as f64;
        let panel = Panel {
            left,
            right: WIDTH - MARGIN - 8.0,
            top: self.y + 6.0,
            bottom: self.y + 6.0 + height,
            x_max: x_max.max(1.0),
            y_lo: ticks.first().copied().unwrap_or(lo),
            y_hi: ticks.last().copied().unwrap_or(hi),
        };
        for (t, label) in ticks.iter().zip(&labels) {
            let y = panel.y(*t);
            self.svg.line((panel.left, y), (panel.right, y), GRID_COLOR, 1.0, None);
            self.svg.text(
                panel.left - 6.0,
                y + 0.35 * TICK_SIZE,
                label,
                TextStyle { size: TICK_SIZE, anchor: Anchor::End, fill: MUTED_COLOR, ..Default::default() },
            );
        }
        for s in self.steps {
            let x = panel.x(*s as f64);
            self.svg.line((x, panel.bottom), (x, panel.bottom + 4.0), MUTED_COLOR, 1.0, None);
            self.svg.text(
                x,
                panel.bottom + 16.0,
                &s.to_string(),
                TextStyle { size: TICK_SIZE, anchor: Anchor::Middle, fill: MUTED_COLOR, ..Default::default() },
            );
        }
        self.svg.line((panel.left, panel.bottom), (panel.right, panel.bottom), MUTED_COLOR, 1.0, None);
        self.y = panel.bottom + 34.0;
        panel
    }

    /// Writes `text` at the first of `candidates` (baseline positions, start-anchored) whose box
    /// stays inside `panel` and clear of every label so far.
    fn annotate(&mut self, panel: &Panel, candidates: &[(f64, f64)], text: &str, style: TextStyle) {
        let inside = |b: &TextBox| b.x0 >= panel.left && b.x1 <= panel.right + MARGIN && b.y0 >= panel.top - 4.0 && b.y1 <= panel.bottom;
        let chosen = candidates
            .iter()
            .map(|(x, y)| TextBox::new(*x, *y, style.size, style.anchor, style.bold, text))
            .find(|b| inside(b) && !self.svg.labels().iter().any(|l| l.overlaps(b)));
        if let Some(b) = chosen {
            let x = match style.anchor {
                Anchor::Start => b.x0,
                Anchor::Middle => (b.x0 + b.x1) / 2.0,
                Anchor::End => b.x1,
            };
            self.svg.text(x, b.y0 + crate::svg::ASCENT * style.size, text, style);
        }
    }
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The chart as an SVG document; None when there is nothing to draw.
pub fn training_chart(curve: &TrainingCurve) -> Option<String> {
    if curve.log.is_empty() && curve.evaluations.is_empty() {
        return None;
    }
    let last_step = curve.log.iter().map(|r| r.step as u64).chain(curve.evaluations.iter().map(|e| e.0)).max().unwrap_or(1);
    let steps = step_ticks(last_step, WIDTH - 2.0 * MARGIN - 60.0, 44.0);
    let mut layout = Layout { svg: Svg::new(WIDTH, 100.0), steps: &steps, y: 12.0 };

    if let Some((lo, hi)) = range(curve.log.iter().map(|r| r.loss)) {
        let window = smoothing_window(curve.log.len());
        let average_label = format!("moving average of {window} steps");
        layout.header("Training loss", &[("loss of each step", "#9ecbff", false), (&average_label, LOSS_COLOR, false)]);
        let p = layout.panel(170.0, lo, hi);
        let raw: Vec<(f64, f64)> = curve.log.iter().map(|r| (p.x(r.step as f64), p.y(r.loss))).collect();
        layout.svg.polyline(&raw, "#9ecbff", 1.2, 1.0);
        let smooth = moving_average(&curve.log.iter().map(|r| r.loss).collect::<Vec<_>>(), window);
        let smooth: Vec<(f64, f64)> = curve.log.iter().zip(&smooth).map(|(r, v)| (p.x(r.step as f64), p.y(*v))).collect();
        layout.svg.polyline(&smooth, LOSS_COLOR, 2.5, 1.0);
    }

    if let Some((lo, hi)) = range(curve.evaluations.iter().map(|e| e.1)) {
        let base = curve.evaluations.iter().find(|e| e.0 == 0).map(|e| e.1);
        let mut legend = vec![("at each evaluation", METRIC_COLOR, false)];
        if base.is_some() {
            legend.push(("base model", MUTED_COLOR, true));
        }
        layout.header(&format!("Validation {}", curve.metric), &legend);
        // Headroom above the best point for its label.
        let pad = ((hi - lo) * 0.25).max(0.01);
        let p = layout.panel(150.0, lo - pad * 0.4, hi + pad);
        if let Some(b) = base {
            layout.svg.line((p.left, p.y(b)), (p.right, p.y(b)), MUTED_COLOR, 1.5, Some("4 3"));
        }
        let points: Vec<(f64, f64)> = curve.evaluations.iter().map(|(s, v)| (p.x(*s as f64), p.y(*v))).collect();
        layout.svg.polyline(&points, METRIC_COLOR, 2.0, 1.0);
        for ((s, v), (x, y)) in curve.evaluations.iter().zip(&points) {
            layout.svg.circle(*x, *y, 3.5, METRIC_COLOR, None, Some(&format!("step {s}: {v:.4}")));
        }
        // The kept checkpoint: the best step, or the base model when nothing beat it.
        let kept = curve.best_step.unwrap_or(0);
        if let Some((s, v)) = curve.evaluations.iter().find(|e| e.0 == kept) {
            let (x, y) = (p.x(*s as f64), p.y(*v));
            layout.svg.circle(x, y, 7.0, "none", Some((BEST_COLOR, 2.0)), None);
            let text = match curve.best_step {
                Some(step) => format!("best {v:.4} at step {step} (kept)"),
                None => format!("nothing beat the base ({v:.4}): base kept"),
            };
            let style = TextStyle { size: 12.0, fill: BEST_COLOR, bold: true, halo: true, ..Default::default() };
            let w = text_width(&text, 12.0, true);
            layout.annotate(
                &p,
                &[
                    (x + 10.0, y - 10.0),
                    (x - 10.0 - w, y - 10.0),
                    (x + 10.0, y + 20.0),
                    (x - 10.0 - w, y + 20.0),
                    (p.left + 6.0, p.top + 14.0),
                ],
                &text,
                style,
            );
        }
    }

    if let Some((lo, hi)) = range(curve.log.iter().map(|r| r.lr)) {
        layout.header("Learning rate", &[]);
        let p = layout.panel(90.0, lo.min(0.0), hi);
        let points: Vec<(f64, f64)> = curve.log.iter().map(|r| (p.x(r.step as f64), p.y(r.lr))).collect();
        layout.svg.polyline(&points, LR_COLOR, 2.0, 1.0);
    }

    let y = layout.y;
    layout.svg.text(WIDTH / 2.0, y, "step", TextStyle { size: 12.0, anchor: Anchor::Middle, fill: TEXT_COLOR, ..Default::default() });
    layout.svg.set_height(y + 10.0);
    Some(layout.svg.finish("Training curves"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_moving_average_trails() {
        assert_eq!(moving_average(&[4.0, 2.0, 0.0, 2.0], 2), [4.0, 3.0, 1.0, 1.0]);
        assert_eq!(moving_average(&[1.0, 2.0], 1), [1.0, 2.0]);
        assert_eq!(smoothing_window(10), 1);
        assert_eq!(smoothing_window(48), 5);
        assert_eq!(smoothing_window(100_000), 50);
    }
}
