//! Inline SVG line charts for the HTML report: generated here so the page needs no
//! JavaScript and no network.

use std::fmt::Write as _;

use super::html::esc;

const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;
/// More points than pixels only bloats the file: longer series are reduced to the min and
/// max of each bucket, which keeps spikes visible.
const MAX_POINTS: usize = 1000;
/// Colour-blind-safe palette (Okabe-Ito), in series order.
const PALETTE: [&str; 8] = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#555555", "#f0e442"];

pub(crate) struct Series {
    pub name: String,
    /// (seconds since load start, value); `None` breaks the line (no data that second).
    pub points: Vec<(f64, Option<f64>)>,
}

/// A shaded interval (a fault) with a short label and a longer hover text.
pub(crate) struct Band {
    pub start: f64,
    pub end: f64,
    pub label: String,
    pub title: String,
}

pub(crate) struct Chart<'a> {
    /// Element id, e.g. `chart-latency`.
    pub id: &'a str,
    pub unit: &'a str,
    pub series: Vec<Series>,
    pub bands: &'a [Band],
}

pub(crate) fn line_chart(chart: &Chart) -> String {
    let values = chart.series.iter().flat_map(|s| s.points.iter().filter_map(|&(_, v)| v));
    let y_max = values.fold(0.0_f64, f64::max);
    let x_max = chart.series.iter().flat_map(|s| s.points.iter().map(|&(t, _)| t)).chain(chart.bands.iter().map(|b| b.end)).fold(0.0_f64, f64::max);
    let (y_step, y_top) = nice_axis(y_max);
    let x_unit = TimeUnit::for_span(x_max);
    let (x_step, x_right) = nice_axis(x_max / x_unit.seconds);
    let (x_step, x_right) = (x_step * x_unit.seconds, x_right * x_unit.seconds);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |t: f64| LEFT + t / x_right * plot_w;
    let sy = |v: f64| TOP + plot_h - v / y_top * plot_h;

    let mut o = format!("<svg id=\"{}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\n", esc(chart.id));
    // `write!` into a String cannot fail; the results are discarded on purpose.
    let _ = writeln!(o, "<rect class=\"plot\" x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\"/>");
    for i in 0..=((y_top / y_step).round() as usize) {
        let v = i as f64 * y_step;
        let y = sy(v);
        let _ = writeln!(
            o,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + plot_w,
            LEFT - 8.0,
            y + 4.0,
            compact(v)
        );
    }
    for i in 0..=((x_right / x_step).round() as usize) {
        let t = i as f64 * x_step;
        let x = sx(t);
        let _ = writeln!(
            o,
            "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\"/><text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h,
            TOP + plot_h + 18.0,
            compact(t / x_unit.seconds)
        );
    }
    let _ = writeln!(
        o,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time since load start ({})</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 4.0,
        x_unit.label
    );
    let _ = writeln!(o, "<text class=\"axis\" x=\"{LEFT}\" y=\"{:.1}\">{}</text>", TOP - 24.0, esc(chart.unit));

    for (i, band) in chart.bands.iter().enumerate() {
        let (x0, x1) = (sx(band.start), sx(band.end.max(band.start)));
        // Instantaneous faults still get a visible sliver.
        let w = (x1 - x0).max(3.0);
        // Alternate label rows so neighbouring faults do not overwrite each other.
        let label_y = TOP + 14.0 + (i % 2) as f64 * 14.0;
        let _ = writeln!(
            o,
            "<g class=\"fault\"><title>{}</title><rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{w:.1}\" height=\"{plot_h}\"/><text x=\"{:.1}\" y=\"{label_y:.1}\">{}</text></g>",
            esc(&band.title),
            x0 + 4.0,
            esc(&band.label)
        );
    }

    for (i, series) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for segment in segments(&series.points) {
            let points: Vec<String> = downsample(&segment).iter().map(|&(t, v)| format!("{:.1},{:.1}", sx(t), sy(v))).collect();
            let _ = writeln!(o, "<polyline class=\"line\" data-series=\"{}\" stroke=\"{color}\" points=\"{}\"/>", esc(&series.name), points.join(" "));
        }
        // Legend along the top right, right to left in reverse so it reads in order.
        let slot = (chart.series.len() - i) as f64;
        let lx = WIDTH - RIGHT - slot * 120.0;
        let _ = writeln!(
            o,
            "<g class=\"legend\"><line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            lx + 18.0,
            TOP - 28.0,
            TOP - 28.0,
            lx + 24.0,
            TOP - 24.0,
            esc(&series.name)
        );
    }
    if chart.series.iter().all(|s| s.points.iter().all(|(_, v)| v.is_none())) {
        let _ = writeln!(o, "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no samples</text>", LEFT + plot_w / 2.0, TOP + plot_h / 2.0);
    }
    o.push_str("</svg>\n");
    o
}

/// Runs of consecutive points that have a value.
fn segments(points: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for &(t, v) in points {
        match v.filter(|v| v.is_finite()) {
            Some(v) => current.push((t, v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// At most `MAX_POINTS` points: per bucket its min and max, in time order.
fn downsample(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per_bucket = points.len().div_ceil(MAX_POINTS / 2);
    let mut out = Vec::with_capacity(MAX_POINTS);
    for bucket in points.chunks(per_bucket) {
        let by_value = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        if let (Some(&lo), Some(&hi)) = (bucket.iter().min_by(by_value), bucket.iter().max_by(by_value)) {
            if lo.0 <= hi.0 {
                out.extend([lo, hi]);
            } else {
                out.extend([hi, lo]);
            }
        }
    }
    out
}

/// A step of 1, 2 or 5 times a power of ten giving about five intervals, and the axis end
/// (a multiple of the step at or above `max`).
fn nice_axis(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 || max.is_infinite() {
        return (1.0, 1.0);
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    (step, (max / step).ceil().max(1.0) * step)
}

struct TimeUnit {
    seconds: f64,
    label: &'static str,
}

impl TimeUnit {
    fn for_span(span_s: f64) -> TimeUnit {
        if span_s > 3.0 * 3600.0 {
            TimeUnit { seconds: 3600.0, label: "h" }
        } else if span_s > 600.0 {
            TimeUnit { seconds: 60.0, label: "min" }
        } else {
            TimeUnit { seconds: 1.0, label: "s" }
        }
    }
}

/// Tick labels: `1.5k`, `2M`, `0.25`.
fn compact(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(0.0), (1.0, 1.0));
        assert_eq!(nice_axis(59.0), (20.0, 60.0));
        assert_eq!(nice_axis(1234.0), (500.0, 1500.0));
        assert_eq!(nice_axis(0.9), (0.2, 1.0));
    }

    #[test]
    fn compact_labels() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact(1500.0), "1500");
        assert_eq!(compact(15000.0), "15k");
        assert_eq!(compact(2_000_000.0), "2M");
    }

    #[test]
    fn gaps_split_lines_and_long_series_are_reduced_keeping_peaks() {
        let points = [(0.0, Some(1.0)), (1.0, None), (2.0, Some(2.0)), (3.0, Some(f64::NAN)), (4.0, Some(3.0))];
        assert_eq!(segments(&points), vec![vec![(0.0, 1.0)], vec![(2.0, 2.0)], vec![(4.0, 3.0)]]);
        let long: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, if i == 4321 { 99.0 } else { 1.0 })).collect();
        let reduced = downsample(&long);
        assert!(reduced.len() <= MAX_POINTS);
        assert!(reduced.contains(&(4321.0, 99.0)));
        assert!(reduced.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
