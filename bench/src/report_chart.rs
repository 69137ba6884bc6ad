//! The report's SVG charts: grouped bars (the median of a server's runs,
//! with a whisker from the lowest to the highest run) and lines (one per
//! server, for the latency runs' saturation curves).

use std::path::Path;

use plotters::prelude::*;

/// One bar: the median and the runs' range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// `(label, one bar per series)`.
pub type BarRows = Vec<(String, Vec<Bar>)>;

/// One line: `(x, y)` points, in x order.
pub type Line = (String, Vec<(f64, f64)>);

/// Axis numbers: 0.5, 12, 1.5k, 20k, 1.2M.
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if scaled.fract().abs() < 1e-9 || scaled.abs() >= 10.0 {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.1}")
    };
    format!("{text}{suffix}")
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// A y range covering `values`: linear from 0, or log10 decades.
fn y_range(values: impl Iterator<Item = f64> + Clone, log: bool) -> (f64, f64) {
    let max = values.clone().fold(0.0f64, f64::max).max(1e-9);
    if !log {
        return (0.0, max * 1.15);
    }
    let min_positive = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let lo = if min_positive.is_finite() {
        10f64.powf((min_positive / 2.0).log10().floor())
    } else {
        0.1
    };
    (lo, 10f64.powf((max * 2.0).log10().ceil()))
}

/// Grouped vertical bars, one group per row, one bar per series, each with
/// a min–max whisker.
pub fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[&str],
    rows: &[(String, Vec<Bar>)],
    log: bool,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let width = (160 + rows.len() as u32 * 150).max(640);
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let values = rows
        .iter()
        .flat_map(|(_, v)| v.iter().flat_map(|b| [b.median, b.max]));
    let (lo, hi) = y_range(values, log);
    let n = rows.len() as f64;
    let labels: Vec<String> = rows.iter().map(|(l, _)| l.clone()).collect();
    let label_of = move |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let group = 0.8;
    let width_per_bar = group / series.len().max(1) as f64;
    // (x0, x1, bar, series)
    let placed: Vec<(f64, f64, Bar, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, (_, bars))| {
            bars.iter().enumerate().map(move |(j, &b)| {
                let x0 = i as f64 - group / 2.0 + j as f64 * width_per_bar;
                (x0, x0 + width_per_bar * 0.92, b, j)
            })
        })
        .collect();
    macro_rules! draw {
        ($chart:expr, $base:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(rows.len() * 2 + 1)
                .x_label_formatter(&label_of)
                .y_label_formatter(&|y: &f64| short_number(*y))
                .y_desc(unit)
                .draw()
                .map_err(|e| err(&e))?;
            for (j, name) in series.iter().enumerate() {
                let color = COLORS[j % COLORS.len()];
                let mine: Vec<_> = placed.iter().filter(|p| p.3 == j).copied().collect();
                chart
                    .draw_series(mine.iter().map(|&(x0, x1, b, _)| {
                        Rectangle::new([(x0, $base), (x1, b.median.max($base))], color.filled())
                    }))
                    .map_err(|e| err(&e))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
                // The runs' range: a whisker where there is one.
                chart
                    .draw_series(mine.iter().filter(|p| p.2.max > p.2.min).map(
                        |&(x0, x1, b, _)| {
                            let x = (x0 + x1) / 2.0;
                            PathElement::new(
                                vec![(x, b.min.max($base)), (x, b.max.max($base))],
                                BLACK.stroke_width(2),
                            )
                        },
                    ))
                    .map_err(|e| err(&e))?;
            }
            if series.len() > 1 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }};
    }
    let builder = || {
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(90);
        b
    };
    if log {
        let chart = builder()
            .build_cartesian_2d(-0.6..n - 0.4, (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        draw!(chart, lo);
    } else {
        let chart = builder()
            .build_cartesian_2d(-0.6..n - 0.4, lo..hi)
            .map_err(|e| err(&e))?;
        draw!(chart, 0.0);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Two panels side by side, each one line per server over the same x:
/// the left on a linear y, the right on a log y.
pub fn lines_pair(
    path: &Path,
    x_desc: &str,
    left: (&str, &str, &[Line]),
    right: (&str, &str, &[Line]),
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (1280, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (a, b) = root.split_horizontally(640);
    for (area, (title, unit, lines), log) in [(a, left, false), (b, right, true)] {
        let xs = lines.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x));
        let x_max = xs.fold(0.0f64, f64::max).max(1.0) * 1.05;
        let ys = lines.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
        let (lo, hi) = y_range(ys, log);
        let mut builder = ChartBuilder::on(&area);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70);
        macro_rules! plot {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(unit)
                    .x_label_formatter(&|x: &f64| short_number(*x))
                    .y_label_formatter(&|y: &f64| short_number(*y))
                    .draw()
                    .map_err(|e| err(&e))?;
                for (i, (name, points)) in lines.iter().enumerate() {
                    let color = COLORS[i % COLORS.len()];
                    let shown: Vec<(f64, f64)> =
                        points.iter().map(|&(x, y)| (x, y.max(lo))).collect();
                    chart
                        .draw_series(LineSeries::new(shown.clone(), color.stroke_width(2)))
                        .map_err(|e| err(&e))?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(shown.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| err(&e))?;
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| err(&e))?;
            }};
        }
        if log {
            plot!(builder
                .build_cartesian_2d(0.0..x_max, (lo..hi).log_scale())
                .map_err(|e| err(&e))?);
        } else {
            plot!(builder
                .build_cartesian_2d(0.0..x_max, lo..hi)
                .map_err(|e| err(&e))?);
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(short_number(1_000_000.0), "1M");
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(20_000.0), "20k");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(100.0), "100");
    }

    #[test]
    fn log_ranges_are_whole_decades() {
        assert_eq!(y_range([3.0, 40.0].into_iter(), true), (1.0, 100.0));
        assert_eq!(y_range([0.0, 10.0].into_iter(), false), (0.0, 11.5));
    }
}
