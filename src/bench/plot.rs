//! The comparison plot, as SVG (plotters): four panels against connections on a log
//! axis (throughput, p99 latency, server CPU per operation, memory per connection),
//! one line per model or peer, and the legend in a column of its own beside them so
//! it never hides a point. Our models are solid lines with filled dots, peers dashed
//! lines with hollow squares; a point where the run had errors is crossed out, so a
//! model that answered one client of a hundred quickly cannot look best. Tick labels
//! are whole numbers with thousands separators; a log axis is labelled at powers of
//! ten, or at 1, 2 and 5 times them where it spans less than three decades.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::compare::{Point, Series};

/// The figure's size in pixels.
const SIZE: (u32, u32) = (1400, 900);
/// The legend column's width.
const LEGEND_W: u32 = 220;

/// `1234567.8` as `1,234,568`; below 10, one or two decimals (`0.25`, `2.5`).
pub(super) fn number(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v.abs() < 10.0 && v.fract().abs() > 1e-9 {
        let s = format!("{v:.2}");
        return s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// A log axis's ticks from `lo` to `hi`: the powers of ten, or, where fewer than three
/// of them fall in the range (a panel spanning one decade, like CPU per operation),
/// 1, 2 and 5 times them, then every multiple, so each panel has at least three labels.
fn decades(lo: f64, hi: f64) -> Vec<f64> {
    let within = |steps: &[f64]| {
        let mut v = Vec::new();
        let mut p = 10f64.powf(lo.max(1e-9).log10().floor());
        while p <= hi * 1.0001 {
            for &m in steps {
                let t = p * m;
                if t >= lo * 0.9999 && t <= hi * 1.0001 {
                    v.push(t);
                }
            }
            p *= 10.0;
        }
        v
    };
    let mut ticks = within(&[1.0]);
    for steps in [
        &[1.0, 2.0, 5.0][..],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ] {
        if ticks.len() >= 3 {
            break;
        }
        ticks = within(steps);
    }
    ticks
}

/// One panel's quantity.
struct Panel {
    title: &'static str,
    unit: &'static str,
    log: bool,
    value: fn(&Point) -> Option<f64>,
}

const PANELS: [Panel; 4] = [
    Panel {
        title: "throughput",
        unit: "operations/s",
        log: false,
        value: |p| Some(p.throughput),
    },
    Panel {
        title: "p99 latency",
        unit: "ms",
        log: true,
        value: |p| (p.p99_us > 0).then(|| p.p99_us as f64 / 1000.0),
    },
    Panel {
        title: "server CPU per operation",
        unit: "µs",
        log: true,
        value: |p| (p.cpu_us_per_op > 0.0).then_some(p.cpu_us_per_op),
    },
    Panel {
        title: "server memory per connection",
        unit: "KiB",
        log: false,
        value: |p| Some(p.kib_per_conn.max(0.0)),
    },
];

/// Tableau's ten colours: distinct from one another and readable on white (no yellow
/// as pale as the default palette's).
const COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn color(i: usize) -> RGBAColor {
    let (r, g, b) = COLORS[i % COLORS.len()];
    RGBColor(r, g, b).to_rgba()
}

/// Draws `all` into an SVG file at `path`.
pub(super) fn draw(path: &str, service: &str, all: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("{service}: every model and peer against connections (log axis)"),
        ("sans-serif", 24),
    )?;
    let (charts, legend) = root.split_horizontally(SIZE.0 - LEGEND_W);
    let cells = charts.split_evenly((2, 2));
    let conns: Vec<f64> = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.conns as f64))
        .collect();
    let min_c = conns.iter().copied().fold(f64::INFINITY, f64::min);
    let max_c = conns.iter().copied().fold(0.0, f64::max);
    let (min_c, max_c) = if conns.is_empty() {
        (1.0, 10.0)
    } else {
        (min_c.max(1.0), max_c.max(min_c * 10.0))
    };
    let x_ticks = decades(min_c, max_c);
    let x = || {
        (min_c / 1.5..max_c * 1.5)
            .log_scale()
            .with_key_points(x_ticks.clone())
    };
    for (panel, area) in PANELS.iter().zip(cells.iter()) {
        let values: Vec<f64> = all
            .iter()
            .flat_map(|s| s.points.iter().filter_map(panel.value))
            .collect();
        let hi = values.iter().copied().fold(0.0, f64::max);
        if panel.log {
            let lo = values
                .iter()
                .copied()
                .filter(|v| *v > 0.0)
                .fold(f64::INFINITY, f64::min);
            let (lo, hi) = if lo.is_finite() {
                (lo / 2.0, hi * 2.0)
            } else {
                (0.1, 10.0)
            };
            let y = (lo..hi).log_scale().with_key_points(decades(lo, hi));
            chart(area, panel, all, x(), y)?;
        } else {
            chart(area, panel, all, x(), 0.0..(hi * 1.1).max(1.0))?;
        }
    }
    draw_legend(&legend, all)?;
    root.present()?;
    Ok(())
}

fn chart<X, Y>(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    all: &[Series],
    x: X,
    y: Y,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut c = ChartBuilder::on(area)
        .caption(
            format!("{} ({})", panel.title, panel.unit),
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)?;
    c.configure_mesh()
        .x_desc("connections")
        .x_label_formatter(&|v| number(*v))
        .y_label_formatter(&|v| number(*v))
        .y_labels(6)
        .light_line_style(WHITE.mix(0.0))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in all.iter().enumerate() {
        let col = color(i);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| (panel.value)(p).map(|v| (p.conns as f64, v)))
            .collect();
        let failed: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.errors > 0)
            .filter_map(|p| (panel.value)(p).map(|v| (p.conns as f64, v)))
            .collect();
        c.draw_series(
            failed
                .iter()
                .map(|&p| Cross::new(p, 8, BLACK.stroke_width(2))),
        )?;
        if s.peer {
            c.draw_series(DashedLineSeries::new(
                pts.clone(),
                8,
                5,
                col.stroke_width(2),
            ))?;
            c.draw_series(pts.iter().map(|&p| {
                EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], col.stroke_width(2))
            }))?;
        } else {
            c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?;
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))?;
        }
    }
    Ok(())
}

fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    all: &[Series],
) -> anyhow::Result<()> {
    let style = ("sans-serif", 16).into_font().color(&BLACK);
    let mut y = 60;
    area.draw(&Text::new("our models", (10, y), style.clone()))?;
    y += 26;
    let mut drew_peer_title = false;
    for (i, s) in all.iter().enumerate() {
        if s.peer && !drew_peer_title {
            y += 14;
            area.draw(&Text::new("peers (dashed)", (10, y), style.clone()))?;
            y += 26;
            drew_peer_title = true;
        }
        let col = color(i);
        let mid = y + 8;
        if s.peer {
            area.draw(&PathElement::new(
                vec![(10, mid), (22, mid)],
                col.stroke_width(2),
            ))?;
            area.draw(&PathElement::new(
                vec![(28, mid), (40, mid)],
                col.stroke_width(2),
            ))?;
            area.draw(&Rectangle::new(
                [(21, mid - 4), (29, mid + 4)],
                col.stroke_width(2),
            ))?;
        } else {
            area.draw(&PathElement::new(
                vec![(10, mid), (40, mid)],
                col.stroke_width(2),
            ))?;
            area.draw(&Circle::new((25, mid), 4, col.filled()))?;
        }
        let name = match &s.failed {
            Some(_) if s.points.is_empty() => format!("{} (failed)", s.name),
            _ => s.name.clone(),
        };
        area.draw(&Text::new(name, (50, y), style.clone()))?;
        y += 26;
    }
    y += 14;
    area.draw(&Cross::new((25, y + 8), 8, BLACK.stroke_width(2)))?;
    area.draw(&Text::new("errors there", (50, y), style.clone()))?;
    area.draw(&Text::new(
        "(kinds under the table)",
        (50, y + 20),
        ("sans-serif", 13).into_font().color(&BLACK),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_whole_numbers_with_separators() {
        assert_eq!(number(160000.0), "160,000");
        assert_eq!(number(1234567.8), "1,234,568");
        assert_eq!(number(100.0), "100");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(-1500.0), "-1,500");
    }

    #[test]
    fn a_log_axis_is_labelled_at_powers_of_ten() {
        assert_eq!(decades(10.0, 1000.0), vec![10.0, 100.0, 1000.0]);
        assert_eq!(decades(7.0, 1500.0), vec![10.0, 100.0, 1000.0]);
    }

    #[test]
    fn a_log_axis_within_one_decade_still_has_three_labels() {
        // CPU per operation from 5 to 60 µs had the single label 10.
        assert_eq!(decades(5.0, 60.0), vec![5.0, 10.0, 20.0, 50.0]);
        // Narrower still: every multiple of the decade in range.
        assert_eq!(decades(11.0, 30.0), vec![20.0, 30.0]);
    }
}
