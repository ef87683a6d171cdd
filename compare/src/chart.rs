//! The chart: a hand-written SVG grouped bar chart, one group per timed
//! phase, one bar per engine, bar height = the engine's time divided by the
//! fastest engine's time in that phase, on a log scale (1× at the bottom).

use std::fmt::Write as _;

use crate::report::RunReport;
use crate::workload::{thousands, Phase};

/// Width of the whole picture, px.
const WIDTH_PX: f64 = 1000.0;
/// Height of the whole picture, px.
const HEIGHT_PX: f64 = 460.0;
/// Space left of the plot (axis labels), px.
const LEFT_PX: f64 = 56.0;
/// Space right of the plot, px.
const RIGHT_PX: f64 = 16.0;
/// Space above the plot (title, legend), px.
const TOP_PX: f64 = 78.0;
/// Space below the plot (group labels), px.
const BOTTOM_PX: f64 = 44.0;
/// Height of a bar at exactly 1× (so the fastest engine stays visible), px.
const MIN_BAR_PX: f64 = 2.0;
/// Fraction of a group's width taken by its bars.
const GROUP_FILL: f64 = 0.84;
/// Highest ratio the axis shows; taller bars are cut there, marked with a
/// break, and keep their true ratio as label (a full scan for `len()` can be
/// 100 000× an O(1) count, which would flatten every other group).
const AXIS_CAP_RATIO: f64 = 100.0;

/// Colour of an engine's bars.
fn colour(engine: &str) -> &'static str {
    match engine {
        "mmsb" => "#d62728",
        "redb" => "#1f77b4",
        "lmdb" => "#2ca02c",
        "fjall" => "#9467bd",
        "sqlite" => "#8c564b",
        _ => "#7f7f7f",
    }
}

/// The timed, ranked phases: the chart's groups.
fn chart_phases() -> Vec<Phase> {
    Phase::ALL
        .into_iter()
        .filter(|p| p.is_time() && p.ranked())
        .collect()
}

/// Per phase, per engine: time ÷ fastest time in that phase.
pub fn ratios(report: &RunReport) -> Vec<(Phase, Vec<Option<f64>>)> {
    chart_phases()
        .into_iter()
        .map(|phase| {
            let values: Vec<Option<f64>> = report
                .engines
                .iter()
                .map(|e| e.measure(phase).map(|m| m.rank_value()))
                .collect();
            let best = values
                .iter()
                .flatten()
                .copied()
                .filter(|v| *v > 0.0)
                .fold(f64::INFINITY, f64::min);
            let ratios = values
                .into_iter()
                .map(|v| v.filter(|_| best.is_finite()).map(|v| (v / best).max(1.0)))
                .collect();
            (phase, ratios)
        })
        .collect()
}

/// The smallest power of ten at or above `max_ratio` (at least 10, at most
/// [`AXIS_CAP_RATIO`]).
fn axis_top(max_ratio: f64) -> f64 {
    let mut top = 10.0;
    while top < max_ratio && top < AXIS_CAP_RATIO {
        top *= 10.0;
    }
    top
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `1` → "1×", `2.345` → "2.3×", `45.6` → "46×", `165926` → "166k×".
fn ratio_label(ratio: f64) -> String {
    if ratio < 1.005 {
        "1×".into()
    } else if ratio < 10.0 {
        format!("{ratio:.1}×")
    } else if ratio < 1000.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{:.0}k×", ratio / 1000.0)
    }
}

/// The SVG text of the chart.
pub fn render_svg(report: &RunReport) -> String {
    let groups = ratios(report);
    let engines: Vec<&str> = report.engines.iter().map(|e| e.engine.as_str()).collect();
    let max_ratio = groups
        .iter()
        .flat_map(|(_, r)| r.iter().flatten())
        .copied()
        .fold(1.0, f64::max);
    let top = axis_top(max_ratio);
    let plot_w = WIDTH_PX - LEFT_PX - RIGHT_PX;
    let plot_h = HEIGHT_PX - TOP_PX - BOTTOM_PX;
    let bottom = TOP_PX + plot_h;
    let y_of = |ratio: f64| bottom - plot_h * ratio.log10() / top.log10();

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "Time per phase ÷ fastest engine (log scale, lower is better) — {} entries, {}",
        thousands(report.workload.entries),
        report.date.get(..10).unwrap_or(&report.date)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        WIDTH_PX / 2.0,
        escape(&title)
    );
    // Legend.
    let legend_w = 110.0;
    let legend_x0 = (WIDTH_PX - legend_w * engines.len() as f64) / 2.0;
    for (i, name) in engines.iter().enumerate() {
        let x = legend_x0 + legend_w * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="36" width="14" height="14" fill="{}"/><text x="{:.1}" y="48" font-size="13">{}</text>"#,
            colour(name),
            x + 19.0,
            escape(name)
        );
    }
    // Grid lines at 1, 2, 5 × powers of ten.
    let mut decade = 1.0;
    while decade < top * 1.001 {
        for step in [1.0, 2.0, 5.0] {
            let ratio = decade * step;
            if ratio > top * 1.001 {
                break;
            }
            let y = y_of(ratio);
            let stroke = if step == 1.0 { "#bbbbbb" } else { "#e6e6e6" };
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT_PX}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
                LEFT_PX + plot_w,
                LEFT_PX - 6.0,
                y + 4.0,
                ratio_label(ratio)
            );
        }
        decade *= 10.0;
    }
    // Bars.
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = group_w * GROUP_FILL / engines.len().max(1) as f64;
    for (g, (phase, ratios)) in groups.iter().enumerate() {
        let x0 = LEFT_PX + group_w * g as f64 + group_w * (1.0 - GROUP_FILL) / 2.0;
        for (e, ratio) in ratios.iter().enumerate() {
            let x = x0 + bar_w * e as f64;
            let Some(ratio) = *ratio else {
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">n/a</text>"#,
                    x + bar_w / 2.0,
                    bottom - 4.0
                );
                continue;
            };
            let clipped = ratio > top;
            let y = y_of(ratio.min(top)).min(bottom - MIN_BAR_PX);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {} {}</title></rect>"#,
                bar_w - 1.0,
                bottom - y,
                colour(engines[e]),
                escape(engines[e]),
                escape(phase.short_label()),
                ratio_label(ratio)
            );
            if clipped {
                // A white zig-zag across the bar: the axis is cut here.
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="none" stroke="white" stroke-width="2"/>"#,
                    x,
                    y + 12.0,
                    x + bar_w / 2.0,
                    y + 6.0,
                    x + bar_w - 1.0,
                    y + 12.0
                );
            }
            if clipped {
                // Inside the bar, vertical, so wide labels do not collide.
                let (tx, ty) = (x + bar_w / 2.0 + 3.0, y + 18.0);
                let _ = writeln!(
                    svg,
                    r#"<text x="{tx:.1}" y="{ty:.1}" font-size="10" fill="white" text-anchor="end" transform="rotate(-90 {tx:.1} {ty:.1})">{}</text>"#,
                    ratio_label(ratio)
                );
            } else {
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                    x + bar_w / 2.0,
                    y - 3.0,
                    ratio_label(ratio)
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            LEFT_PX + group_w * (g as f64 + 0.5),
            bottom + 20.0,
            escape(phase.short_label())
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT_PX}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="black"/>"#,
        LEFT_PX + plot_w
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::report::EngineRun;
    use crate::workload::{Measure, PhaseResult, WorkloadConfig};

    fn engine(name: &str, bulk_ms: Option<f64>) -> EngineRun {
        EngineRun {
            engine: name.into(),
            version: "1".into(),
            settings: String::new(),
            compaction: String::new(),
            results: bulk_ms
                .map(|ms| PhaseResult {
                    phase: Phase::BulkLoad,
                    measure: Measure::Millis(ms),
                    stats: None,
                })
                .into_iter()
                .collect(),
            error: None,
            wall_seconds: 0.0,
        }
    }

    fn report(engines: Vec<EngineRun>) -> RunReport {
        RunReport {
            date: "2026-11-25T00:00:00Z".into(),
            command: String::new(),
            mmsb_commit: String::new(),
            rustc: String::new(),
            machine: Machine::describe(std::path::Path::new(".")),
            load_at_end: String::new(),
            workload: WorkloadConfig::with_entries(1_000),
            runs: 1,
            engines,
            samples: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_relative_to_the_fastest() {
        let r = report(vec![
            engine("mmsb", Some(30.0)),
            engine("redb", Some(10.0)),
            engine("lmdb", None),
        ]);
        let groups = ratios(&r);
        let (phase, bulk) = &groups[0];
        assert_eq!(*phase, Phase::BulkLoad);
        assert_eq!(bulk, &vec![Some(3.0), Some(1.0), None]);
        // A phase nobody measured has no bars.
        assert!(groups[1].1.iter().all(Option::is_none));
        // Size rows and the unranked compaction row are not groups.
        assert!(groups.iter().all(|(p, _)| p.is_time() && p.ranked()));
    }

    #[test]
    fn axis_top_is_a_power_of_ten() {
        assert_eq!(axis_top(1.0), 10.0);
        assert_eq!(axis_top(10.0), 10.0);
        assert_eq!(axis_top(10.5), 100.0);
        assert_eq!(axis_top(99.0), 100.0);
        assert_eq!(axis_top(165_926.0), AXIS_CAP_RATIO);
    }

    #[test]
    fn svg_has_one_bar_per_measured_engine_and_phase() {
        let svg = render_svg(&report(vec![
            engine("mmsb", Some(30.0)),
            engine("redb", Some(10.0)),
        ]));
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 2);
        assert!(svg.contains("<title>mmsb: bulk load 3.0×</title>"));
        assert!(svg.contains("<title>redb: bulk load 1×</title>"));
    }

    #[test]
    fn bars_past_the_cap_are_cut_and_keep_their_label() {
        let svg = render_svg(&report(vec![
            engine("mmsb", Some(1.0)),
            engine("fjall", Some(5_000.0)),
        ]));
        assert!(svg.contains("<title>fjall: bulk load 5k×</title>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(!svg.contains(">1000×<"), "axis must stop at the cap");
    }

    #[test]
    fn ratio_labels_stay_short() {
        assert_eq!(ratio_label(1.0), "1×");
        assert_eq!(ratio_label(2.345), "2.3×");
        assert_eq!(ratio_label(45.6), "46×");
        assert_eq!(ratio_label(165_926.0), "166k×");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a<b & c>"), "a&lt;b &amp; c&gt;");
    }
}
