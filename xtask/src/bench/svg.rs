//! Minimal SVG bar charts for the benchmark report (grouped bars, one group per system), so
//! the report needs no plotting dependency.

use std::fmt::Write as _;

use super::report::{Metric, Report};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 60.0;
const TOP: f64 = 40.0;
const COLORS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];

/// A grouped bar chart of `metrics` (one bar colour each) across the systems that have them.
pub fn grouped_bars(report: &Report, title: &str, metrics: &[&str], unit: &str) -> Option<String> {
    let mut systems: Vec<&str> = Vec::new();
    for m in report
        .metrics
        .iter()
        .filter(|m| metrics.contains(&m.metric.as_str()))
    {
        if !systems.contains(&m.system.as_str()) {
            systems.push(&m.system);
        }
    }
    if systems.is_empty() {
        return None;
    }
    let value = |sys: &str, metric: &str| -> Option<f64> {
        report
            .metrics
            .iter()
            .find(|m| m.system == sys && m.metric == metric)
            .map(Metric::median)
            .filter(|v| v.is_finite())
    };
    let max = systems
        .iter()
        .flat_map(|s| metrics.iter().filter_map(move |m| value(s, m)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let plot_w = WIDTH - LEFT - 20.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let group_w = plot_w / systems.len() as f64;
    let bar_w = (group_w * 0.8) / metrics.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        WIDTH / 2.0
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            WIDTH - 20.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{unit}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (si, sys) in systems.iter().enumerate() {
        let gx = LEFT + group_w * si as f64 + group_w * 0.1;
        for (mi, metric) in metrics.iter().enumerate() {
            if let Some(v) = value(sys, metric) {
                let h = plot_h * v / max;
                let x = gx + bar_w * mi as f64;
                let y = TOP + plot_h - h;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{sys} {metric}: {v:.3} {unit}</title></rect>"#,
                    bar_w * 0.92,
                    COLORS[mi % COLORS.len()]
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{sys}</text>"#,
            gx + group_w * 0.4,
            TOP + plot_h + 18.0
        );
    }
    for (mi, metric) in metrics.iter().enumerate() {
        let x = LEFT + 10.0 + 170.0 * mi as f64;
        let y = HEIGHT - 14.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#,
            y - 10.0,
            COLORS[mi % COLORS.len()]
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{y}">{metric} (median)</text>"#,
            x + 16.0
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}
