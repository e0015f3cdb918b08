//! `report.html`: one self-contained file (inline SVG charts drawn with plotters, inline
//! style, no script) that shows a report: the machine, and per scenario its figures, jobs/s
//! and latency p50/p99 second by second, its latency distribution, and for a fault scenario
//! the gap around the fault in 100 ms slices. [`side_by_side`] puts several reports on one
//! page (`arbor bench compare --html`).

use std::fmt::Write as _;

use plotters::prelude::*;

use super::report::{Report, SLICE, ScenarioReport, Second, Slice};

const SIZE: (u32, u32) = (560, 260);

/// The page. Pure.
pub fn page(report: &Report) -> String {
    let mut out = head("arbor bench");
    let m = &report.machine;
    let _ = write!(
        out,
        "<h1>arbor bench</h1><p>{} · {} · {} nodes · client: {} ({} cores, {:.1} GiB)</p>",
        escape(&report.system.label()),
        escape(&report.started),
        report.nodes,
        escape(&m.cpu),
        m.cores,
        m.memory_bytes as f64 / (1u64 << 30) as f64
    );
    if let Some(setup) = &report.system.setup {
        let _ = write!(out, "<p>{}</p>", escape(setup));
    }
    let gpus: Vec<&String> = m.gpus.iter().chain(&report.cluster_gpus).collect();
    if !gpus.is_empty() {
        let list: Vec<String> = gpus.iter().map(|g| escape(g)).collect();
        let driver = m.gpu_driver.as_deref().map(escape).unwrap_or_default();
        let _ = write!(out, "<p>GPUs: {} {driver}</p>", list.join("; "));
    }
    for s in &report.scenarios {
        scenario(&mut out, s);
    }
    out.push_str("</body></html>\n");
    out
}

/// A page that puts several reports side by side (arbor and its peers, or two runs): per
/// scenario that more than one has, their figures with ratios to the first report's, and
/// their latency distributions on one chart. Pure.
pub fn side_by_side(reports: &[Report]) -> String {
    let mut out = head("arbor bench: side by side");
    out.push_str("<h1>arbor bench: side by side</h1><ul>");
    for r in reports {
        let m = &r.machine;
        let _ = write!(
            out,
            "<li>{}{} · {} · {} ({} cores)</li>",
            escape(&r.system.label()),
            r.system
                .setup
                .as_deref()
                .map_or(String::new(), |s| format!(": {}", escape(s))),
            escape(&r.started),
            escape(&m.cpu),
            m.cores
        );
    }
    out.push_str(
        "</ul><p>Ratios are to the first report that has the scenario: above 1 means \
                  more jobs/s, or that much lower latency.</p>",
    );
    let mut names: Vec<&str> = Vec::new();
    for s in reports.iter().flat_map(|r| &r.scenarios) {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    for name in names {
        let having: Vec<(&Report, &ScenarioReport)> = reports
            .iter()
            .filter_map(|r| Some((r, r.scenarios.iter().find(|s| s.name == name)?)))
            .collect();
        if having.len() < 2 {
            continue;
        }
        let _ = write!(
            out,
            "<h2>{}</h2><table><tr><th>system</th><th>load</th><th>jobs/s</th><th>×</th>\
             <th>p50 µs</th><th>×</th><th>p99 µs</th><th>×</th><th>errors</th></tr>",
            escape(name)
        );
        let (_, base) = having[0];
        for (r, s) in &having {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else {
                    "–".into()
                }
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td><td>{}</td>\
                 <td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.system.name),
                escape(&s.load.describe()),
                s.throughput_per_s,
                ratio(s.throughput_per_s, base.throughput_per_s),
                s.latency_us.p50,
                ratio(base.latency_us.p50, s.latency_us.p50),
                s.latency_us.p99,
                ratio(base.latency_us.p99, s.latency_us.p99),
                s.errors.values().sum::<u64>()
            );
        }
        out.push_str("</table><div class=\"charts\">");
        let lines: Vec<(String, Vec<(f64, f64)>)> = having
            .iter()
            .map(|(r, s)| (r.system.name.clone(), distribution(s)))
            .collect();
        out.push_str(&Chart::distribution("latency distribution (µs, log scale)", lines).svg());
        out.push_str("</div>");
    }
    out.push_str("</body></html>\n");
    out
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2433}}\
         table{{border-collapse:collapse}}td,th{{padding:3px 10px;border-bottom:1px solid #e4e7ec;\
         text-align:right}}th:first-child,td:first-child{{text-align:left}}\
         .charts{{display:flex;flex-wrap:wrap;gap:12px}}h2{{margin-top:32px}}</style></head><body>"
    )
}

fn scenario(out: &mut String, s: &ScenarioReport) {
    let l = &s.latency_us;
    let errors: u64 = s.errors.values().sum();
    let ramp = if s.load.ramp.is_zero() {
        String::new()
    } else {
        format!("a {} ramp, ", humantime::format_duration(s.load.ramp))
    };
    let parameters: Vec<String> = s
        .parameters
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = write!(
        out,
        "<h2>{}</h2><p>{}; {} measured after {ramp}{} of warm-up{}</p>\
         <table><tr><th>jobs/s</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th>\
         <th>p99.9 µs</th><th>max µs</th><th>errors</th></tr>\
         <tr><td>{:.0}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td>\
         <td>{errors}</td></tr></table>{}<div class=\"charts\">",
        escape(&s.name),
        escape(&s.load.describe()),
        humantime::format_duration(s.load.duration),
        humantime::format_duration(s.load.warmup),
        if parameters.is_empty() {
            String::new()
        } else {
            format!("; {}", escape(&parameters.join(", ")))
        },
        s.throughput_per_s,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        s.fault.as_ref().map_or(String::new(), |f| format!(
            "<p>Fault: {} at {:.1} s; recovered {:.2} s later.</p>",
            escape(&f.what),
            f.at_s,
            f.recovered_after_s
        )),
    );
    let per = |f: fn(&Second) -> f64| -> Vec<(f64, f64)> {
        s.per_second
            .iter()
            .map(|p| (p.second as f64, f(p)))
            .collect()
    };
    let mut charts = vec![
        Chart::new(
            "jobs/s, second by second",
            "s",
            vec![("jobs/s".into(), per(|p| p.succeeded as f64))],
        ),
        Chart::new(
            "latency, second by second (µs)",
            "s",
            vec![
                ("p50".into(), per(|p| p.p50_us)),
                ("p99".into(), per(|p| p.p99_us)),
            ],
        ),
        Chart::distribution(
            "latency distribution (µs, log scale)",
            vec![("jobs".into(), distribution(s))],
        ),
    ];
    if let Some(f) = s.fault.as_ref().filter(|f| !f.around.is_empty()) {
        let slices = |g: fn(&Slice) -> f64| -> Vec<(f64, f64)> {
            f.around.iter().map(|x| (x.from_s, g(x))).collect()
        };
        let marks = vec![f.at_s, f.at_s + f.recovered_after_s];
        charts.push(
            Chart::new(
                "around the fault: jobs/s in 100 ms slices",
                "s (lines: the fault, the recovery)",
                vec![
                    (
                        "succeeded/s".into(),
                        slices(|x| x.succeeded as f64 / SLICE.as_secs_f64()),
                    ),
                    (
                        "errors/s".into(),
                        slices(|x| x.errors as f64 / SLICE.as_secs_f64()),
                    ),
                ],
            )
            .marks(marks.clone()),
        );
        charts.push(
            Chart::new(
                "around the fault: longest latency (µs)",
                "s (lines: the fault, the recovery)",
                vec![("max".into(), slices(|x| x.max_us))],
            )
            .marks(marks),
        );
    }
    for c in charts {
        out.push_str(&c.svg());
    }
    out.push_str("</div>");
}

/// A latency distribution for a chart: x is the share of jobs as "nines"
/// (`-log10(1 - q)`: 1 is 90%, 3 is 99.9%), y the latency, so the tail gets the room.
fn distribution(s: &ScenarioReport) -> Vec<(f64, f64)> {
    s.cdf
        .iter()
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, us)| (-(1.0 - q).log10(), *us))
        .collect()
}

/// The tick label of a "nines" axis value: 0%, 90%, 99%, 99.9%...
fn quantile_label(x: &f64) -> String {
    let q = (1.0 - 10f64.powf(-x)) * 100.0;
    let text = format!("{q:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// One line chart, drawn as inline SVG.
struct Chart {
    title: &'static str,
    x_label: &'static str,
    lines: Vec<(String, Vec<(f64, f64)>)>,
    /// A latency distribution: x in nines ([`distribution`]), y (µs) on a log scale.
    distribution: bool,
    /// Vertical lines at these x values.
    marks: Vec<f64>,
}

impl Chart {
    fn new(
        title: &'static str,
        x_label: &'static str,
        lines: Vec<(String, Vec<(f64, f64)>)>,
    ) -> Chart {
        Chart {
            title,
            x_label,
            lines,
            distribution: false,
            marks: Vec::new(),
        }
    }

    /// A chart of [`distribution`]s.
    fn distribution(title: &'static str, lines: Vec<(String, Vec<(f64, f64)>)>) -> Chart {
        Chart {
            distribution: true,
            ..Chart::new(title, "share of jobs within", lines)
        }
    }

    fn marks(self, marks: Vec<f64>) -> Chart {
        Chart { marks, ..self }
    }

    /// The SVG; an empty string when there is nothing to draw.
    fn svg(&self) -> String {
        // A distribution: latency on a log scale (decades), so that systems 100x apart and
        // a tail 10x the median all show.
        let y_of = |y: f64| {
            if self.distribution {
                y.max(1.0).log10()
            } else {
                y
            }
        };
        let lines: Vec<(&str, Vec<(f64, f64)>)> = self
            .lines
            .iter()
            .map(|(name, v)| {
                (
                    name.as_str(),
                    v.iter().map(|(x, y)| (*x, y_of(*y))).collect(),
                )
            })
            .collect();
        let points = lines.iter().flat_map(|(_, v)| v.iter());
        let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y_min, mut y_max) = (f64::INFINITY, 0f64);
        for (x, y) in points {
            x_min = x_min.min(*x);
            x_max = x_max.max(*x);
            y_min = y_min.min(*y);
            y_max = y_max.max(*y);
        }
        if !x_min.is_finite() || (x_max <= 0.0 && y_max <= 0.0) {
            return String::new();
        }
        let (x_range, y_range, x_labels, y_labels) = if self.distribution {
            let top = (x_max - 1e-6).ceil().max(1.0);
            let (low, high) = (y_min.floor(), y_max.ceil().max(1.0));
            let high = high.max(low + 1.0);
            (
                0.0..top,
                low..high,
                top as usize + 1,
                (high - low) as usize + 1,
            )
        } else {
            let x_top = (x_max + (x_max - x_min) * 0.02).max(x_min + 1.0);
            (x_min..x_top, 0.0..y_max.max(1.0) * 1.1, 10, 10)
        };
        let y_top = y_range.end;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
                root.fill(&WHITE)?;
                let mut c = ChartBuilder::on(&root)
                    .caption(self.title, ("sans-serif", 16))
                    .margin(10)
                    .x_label_area_size(30)
                    .y_label_area_size(60)
                    .build_cartesian_2d(x_range, y_range.clone())?;
                let mut mesh = c.configure_mesh();
                mesh.x_desc(self.x_label)
                    .x_labels(x_labels)
                    .y_labels(y_labels)
                    .y_label_formatter(&|y| format!("{y:.0}"));
                if self.distribution {
                    mesh.x_label_formatter(&quantile_label)
                        .y_label_formatter(&|y| decade_label(*y));
                }
                mesh.draw()?;
                for x in &self.marks {
                    c.draw_series(LineSeries::new(
                        [(*x, y_range.start), (*x, y_top)],
                        BLACK.mix(0.4).stroke_width(1),
                    ))?;
                }
                for (i, (name, v)) in lines.iter().enumerate() {
                    let color = COLORS[i % COLORS.len()];
                    c.draw_series(LineSeries::new(v.iter().copied(), color.stroke_width(2)))?
                        .label(*name)
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
                }
                if lines.len() > 1 {
                    c.configure_series_labels()
                        .position(SeriesLabelPosition::UpperLeft)
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()?;
                }
                root.present()?;
                Ok(())
            })();
            if drawn.is_err() {
                return String::new();
            }
        }
        svg
    }
}

/// The tick label of a log10 axis value in µs: 1, 10, 100, 1k, 10k, 100k, 1M...
fn decade_label(y: f64) -> String {
    let v = 10f64.powf(y).round();
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

const COLORS: [RGBColor; 5] = [
    RGBColor(46, 90, 172),
    RGBColor(196, 50, 10),
    RGBColor(30, 140, 70),
    RGBColor(150, 60, 170),
    RGBColor(200, 140, 0),
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::super::load::{Sample, Shape};
    use super::super::report::{Machine, SCHEMA};
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_report_becomes_a_page_with_its_charts() {
        let shape = Shape {
            connections: 1,
            in_flight: 1,
            rate: None,
            ramp: Duration::ZERO,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(3),
        };
        let samples: Vec<Sample> = (0..300)
            .map(|i| Sample {
                at: Duration::from_millis(i * 10),
                latency: Duration::from_micros(100 + i),
                error: None,
            })
            .collect();
        let report = Report {
            schema: SCHEMA.into(),
            system: super::super::report::System::arbor(),
            started: "2026-12-07T00:00:00Z".into(),
            machine: Machine {
                cpu: "<cpu & co>".into(),
                cores: 2,
                memory_bytes: 1 << 30,
                gpus: vec![],
                gpu_driver: None,
            },
            nodes: 3,
            cluster_gpus: vec![],
            scenarios: vec![ScenarioReport::of("jobs", shape, &samples)],
        };
        let html = page(&report);
        assert!(html.starts_with("<!doctype html>"), "{html:.100}");
        assert_eq!(html.matches("<svg").count(), 3, "three charts");
        assert!(html.contains("&lt;cpu &amp; co&gt;"), "text is escaped");
        assert!(html.contains("<h2>jobs</h2>"));
        assert!(
            html.contains("99.9%"),
            "the distribution's axis is in nines"
        );
        assert!(!html.contains("<script"), "no script");

        // A fault adds the two charts of the gap around it.
        let mut faulted = report.clone();
        let s = &mut faulted.scenarios[0];
        s.fault = Some(super::super::report::Fault::new(
            "SIGKILL node 3".into(),
            Duration::from_secs(1),
            Duration::from_millis(400),
            &samples,
        ));
        let html = page(&faulted);
        assert_eq!(html.matches("<svg").count(), 5, "{html:.300}");
        assert!(html.contains("SIGKILL node 3"));

        // Side by side: the figures of both, with ratios to the first.
        let mut peer = report.clone();
        peer.system.name = "faiss".into();
        peer.scenarios[0].throughput_per_s /= 2.0;
        let html = side_by_side(&[report, peer]);
        assert!(html.contains("<td>faiss</td>"), "{html:.500}");
        assert!(html.contains("<td>0.50</td>"), "half the jobs/s");
        assert_eq!(html.matches("<svg").count(), 1, "one distribution chart");
    }
}
