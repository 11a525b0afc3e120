//! The training chart: loss per step, and the validation metric at each evaluation.

use crate::checkpoint::{EvalRow, LogRow};
use plotters::prelude::*;
use std::path::Path;

pub fn training_chart(path: &Path, log: &[LogRow], evals: &[EvalRow], metric: &str) -> std::io::Result<()> {
    let err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    let max_step = log.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let max_loss = log.iter().map(|r| r.loss).fold(0.0f64, f64::max).max(1e-6) * 1.05;
    let mut chart = ChartBuilder::on(&top)
        .caption("Training loss", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_step, 0f64..max_loss)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(log.iter().map(|r| (r.step as f64, r.loss)), &BLUE)).map_err(|e| err(&e))?;

    let points: Vec<(f64, f64)> = evals.iter().map(|e| (e.step.max(0) as f64, e.value)).collect();
    let lo = points.iter().map(|p| p.1).fold(1.0f64, f64::min);
    let hi = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.2).max(0.01);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(format!("Validation {metric}"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_step, (lo - pad).max(0.0)..(hi + pad).min(1.0))
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc(metric).draw().map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(points.clone(), &RED)).map_err(|e| err(&e))?;
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, RED.filled()))).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
