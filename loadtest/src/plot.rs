//! A latency-vs-load chart as a self-contained SVG, drawn by hand (no plotting crate).
//!
//! x: load in calls/s (linear); y: latency in ms on a log scale, since tails span from
//! tenths of a millisecond to seconds. Each target is one colour: p99 solid with dots,
//! p50 dashed.

use std::fmt::Write as _;

/// One target's points: `(calls/s, p50 ms, p99 ms)`, in load order.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

const COLOURS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" step for about `n` ticks over `0..max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Renders the chart. `x_label` names the load axis.
pub fn latency_vs_load(title: &str, x_label: &str, series: &[Series]) -> String {
    let all: Vec<&(f64, f64, f64)> = series.iter().flat_map(|s| &s.points).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0_f64, f64::max);
    let step = nice_step(x_max, 6.0);
    let x_top = (x_max / step).ceil() * step;
    let latencies = all.iter().flat_map(|p| [p.1, p.2]).filter(|v| *v > 0.0);
    let y_min = latencies.clone().fold(f64::INFINITY, f64::min);
    let y_max = latencies.fold(0.0_f64, f64::max);
    let (lo, hi) = if y_min.is_finite() && y_max > 0.0 {
        (
            y_min.log10().floor(),
            y_max.log10().ceil().max(y_min.log10().floor() + 1.0),
        )
    } else {
        (-1.0, 1.0)
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / x_top * plot_w;
    let y = |v: f64| TOP + plot_h - (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * plot_h;

    let mut svg = String::new();
    // Writing into a String cannot fail; the results are ignored throughout.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axes.
    let mut tick = 0.0;
    while tick <= x_top + step / 2.0 {
        let px = x(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{tick:.0}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
        tick += step;
    }
    let mut decade = lo;
    while decade <= hi {
        let value = 10f64.powf(decade);
        let py = y(value);
        let label = if value >= 1.0 {
            format!("{value:.0}")
        } else {
            format!("{value}")
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency, ms (log scale)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Series and legend.
    for (index, s) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let line = |pick: fn(&(f64, f64, f64)) -> f64| {
            s.points
                .iter()
                .filter(|p| pick(p) > 0.0)
                .map(|p| format!("{:.1},{:.1}", x(p.0), y(pick(p))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            line(|p| p.2)
        );
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 4"/>"#,
            line(|p| p.1)
        );
        for p in s.points.iter().filter(|p| p.2 > 0.0) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(p.0),
                y(p.2)
            );
        }
        let ly = TOP + 10.0 + index as f64 * 20.0;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    let ly = TOP + 10.0 + series.len() as f64 * 20.0 + 10.0;
    let lx = LEFT + plot_w + 14.0;
    let _ = writeln!(
        svg,
        r##"<text x="{lx}" y="{ly}" fill="#444">solid: p99</text><text x="{lx}" y="{:.1}" fill="#444">dashed: p50</text>"##,
        ly + 16.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_escapes_names() {
        let svg = latency_vs_load(
            "t",
            "calls/s",
            &[
                Series {
                    name: "a<b".into(),
                    points: vec![(100.0, 0.2, 0.5), (1000.0, 0.3, 2.0)],
                },
                Series {
                    name: "c".into(),
                    points: vec![(500.0, 1.0, 30.0)],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a&lt;b"));
        assert_eq!(svg.matches("<circle").count(), 3);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10_000.0, 5.0), 2000.0);
        assert_eq!(nice_step(3_000.0, 6.0), 500.0);
    }
}
