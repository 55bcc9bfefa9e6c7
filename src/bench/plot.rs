//! The comparison plot: throughput and p99 latency against connections (log scale),
//! one line per model or peer, as SVG (plotters).

use plotters::prelude::*;

use super::compare::Series;

/// Draws `all` into an SVG file at `path`.
pub fn draw(path: &str, service: &str, all: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let pts = || all.iter().flat_map(|s| s.points.iter());
    let max_c = pts().map(|p| p.conns).max().unwrap_or(10).max(2) as f64;
    let min_c = pts().map(|p| p.conns).min().unwrap_or(1).max(1) as f64;
    let max_t = pts().map(|p| p.throughput).fold(1.0, f64::max) * 1.1;
    let max_l = pts().map(|p| p.p99_us as f64 / 1000.0).fold(0.01, f64::max) * 2.0;
    let min_l = pts()
        .map(|p| p.p99_us as f64 / 1000.0)
        .filter(|v| *v > 0.0)
        .fold(max_l, f64::min)
        / 2.0;
    let x = (min_c * 0.8..max_c * 1.25).log_scale();

    let mut t = ChartBuilder::on(&left)
        .caption(format!("{service}: throughput"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), 0.0..max_t)?;
    t.configure_mesh()
        .x_desc("connections")
        .y_desc("operations/s")
        .draw()?;
    let mut l = ChartBuilder::on(&right)
        .caption(format!("{service}: p99 latency"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, (min_l.max(0.001)..max_l).log_scale())?;
    l.configure_mesh()
        .x_desc("connections")
        .y_desc("p99 (ms)")
        .draw()?;
    for (i, s) in all.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let tp: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (p.conns as f64, p.throughput))
            .collect();
        t.draw_series(LineSeries::new(tp.clone(), color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        t.draw_series(tp.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        let lp: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.p99_us > 0)
            .map(|p| (p.conns as f64, p.p99_us as f64 / 1000.0))
            .collect();
        l.draw_series(LineSeries::new(lp.clone(), color.stroke_width(2)))?;
        l.draw_series(lp.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    t.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
