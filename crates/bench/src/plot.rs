//! `--plot`: an SVG of the run's timeline: throughput on top, latency percentiles (log scale)
//! below, one colour per series.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Point, Report};

/// A percentile line: its name, how to read it from a point, and its stroke width.
type Quantile = (&'static str, fn(&Point) -> u64, u32);

/// One line of the plot: its name and its points.
struct Series<'a> {
    name: String,
    points: &'a [Point],
}

/// Draws `report`'s timeline into `path`.
pub(crate) fn write(report: &Report, path: &Path) -> Result<(), String> {
    let (title, unit, series) = match report {
        Report::Http(r) => {
            let mut series: Vec<Series<'_>> = r
                .ops
                .timeline
                .iter()
                .map(|(op, points)| Series {
                    name: (*op).to_owned(),
                    points,
                })
                .collect();
            if let Some(c) = &r.compare {
                series.extend(c.ops.timeline.iter().map(|(op, points)| Series {
                    name: format!("{op} ({})", c.url),
                    points,
                }));
            }
            (
                format!("postcache bench: {}", r.url),
                "2xx answers/s",
                series,
            )
        }
        Report::Fanout(r) => (
            format!(
                "postcache bench: fan-out to {} subscribers, {}",
                r.connected, r.url
            ),
            "deliveries/s",
            vec![Series {
                name: "delivery".into(),
                points: &r.timeline,
            }],
        ),
    };
    draw(path, &title, unit, &series).map_err(|e| e.to_string())
}

fn draw(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[Series<'_>],
) -> Result<(), Box<dyn std::error::Error>> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all().map(|p| p.t_s + 1.0).fold(1.0, f64::max);
    let rate_max = all().map(|p| p.ok_per_second).fold(1.0, f64::max) * 1.1;
    let latency_max = all().map(|p| p.p999_us as f64).fold(10.0, f64::max) * 2.0;

    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (top, bottom) = root.split_vertically(340);

    let mut rate = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x_max, 0f64..rate_max)?;
    rate.configure_mesh()
        .x_desc("seconds into the run")
        .y_desc(unit)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        rate.draw_series(LineSeries::new(
            s.points.iter().map(|p| (p.t_s, p.ok_per_second)),
            colour.stroke_width(2),
        ))?
        .label(s.name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
    }
    rate.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;

    let mut latency = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x_max, (1f64..latency_max).log_scale())?;
    latency
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("latency µs (log)")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let quantiles: [Quantile; 3] = [
            ("p50", |p| p.p50_us, 1),
            ("p99", |p| p.p99_us, 2),
            ("p99.9", |p| p.p999_us, 3),
        ];
        for (q, value, width) in quantiles {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.ok_per_second > 0.0)
                .map(|p| (p.t_s, value(p).max(1) as f64))
                .collect();
            latency
                .draw_series(LineSeries::new(points, colour.stroke_width(width)))?
                .label(format!("{} {q}", s.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(width))
                });
        }
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
