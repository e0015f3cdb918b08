//! `report.html`: one self-contained file (inline SVG charts drawn with plotters, inline
//! style, no script) that shows a report: the machine, and per scenario its figures, jobs/s
//! and latency p50/p99 second by second, and its latency distribution.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::report::{Report, ScenarioReport};

const SIZE: (u32, u32) = (560, 260);

/// The page. Pure.
pub fn page(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>arbor bench</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2433}}\
         table{{border-collapse:collapse}}td,th{{padding:3px 10px;border-bottom:1px solid #e4e7ec;\
         text-align:right}}th:first-child,td:first-child{{text-align:left}}\
         .charts{{display:flex;flex-wrap:wrap;gap:12px}}h2{{margin-top:32px}}</style></head><body>\
         <h1>arbor bench</h1><p>arbor {} · {} · {} nodes · client: {} ({} cores, {:.1} GiB)</p>",
        escape(&report.arbor),
        escape(&report.started),
        report.nodes,
        escape(&m.cpu),
        m.cores,
        m.memory_bytes as f64 / (1u64 << 30) as f64
    );
    let gpus: Vec<&String> = m.gpus.iter().chain(&report.cluster_gpus).collect();
    if !gpus.is_empty() {
        let list: Vec<String> = gpus.iter().map(|g| escape(g)).collect();
        let _ = write!(out, "<p>GPUs: {}</p>", list.join("; "));
    }
    for s in &report.scenarios {
        scenario(&mut out, s);
    }
    out.push_str("</body></html>\n");
    out
}

fn scenario(out: &mut String, s: &ScenarioReport) {
    let load = match s.load.rate {
        Some(rate) => format!("open loop at {rate} jobs/s"),
        None => format!("closed loop, {} in flight each", s.load.in_flight),
    };
    let l = &s.latency_us;
    let errors: u64 = s.errors.values().sum();
    let _ = write!(
        out,
        "<h2>{}</h2><p>{} connections, {load}; {} measured after {} of warm-up</p>\
         <table><tr><th>jobs/s</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th>\
         <th>p99.9 µs</th><th>max µs</th><th>errors</th></tr>\
         <tr><td>{:.0}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td>\
         <td>{errors}</td></tr></table>{}<div class=\"charts\">",
        escape(&s.name),
        s.load.connections,
        humantime::format_duration(s.load.duration),
        humantime::format_duration(s.load.warmup),
        s.throughput_per_s,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        s.fault.as_ref().map_or(String::new(), |f| format!(
            "<p>Fault: {} at {:.1} s; recovered {:.1} s later (the errors and latency around \
             it are in the charts).</p>",
            escape(&f.what),
            f.at_s,
            f.recovered_after_s
        )),
    );
    let seconds: Vec<f64> = s.per_second.iter().map(|p| p.second as f64).collect();
    let per = |f: fn(&super::report::Second) -> f64| -> Vec<(f64, f64)> {
        seconds
            .iter()
            .zip(&s.per_second)
            .map(|(x, p)| (*x, f(p)))
            .collect()
    };
    out.push_str(&chart(
        "jobs/s, second by second",
        "s",
        &[("jobs/s", per(|p| p.succeeded as f64))],
    ));
    out.push_str(&chart(
        "latency, second by second (µs)",
        "s",
        &[("p50", per(|p| p.p50_us)), ("p99", per(|p| p.p99_us))],
    ));
    let cdf: Vec<(f64, f64)> = s.cdf.iter().map(|(q, us)| (*us, q * 100.0)).collect();
    out.push_str(&chart(
        "latency distribution (% of jobs within)",
        "µs",
        &[("jobs", cdf)],
    ));
    out.push_str("</div>");
}

/// One line chart as inline SVG; an empty string when there is nothing to draw.
fn chart(title: &str, x_label: &str, lines: &[(&str, Vec<(f64, f64)>)]) -> String {
    let points = lines.iter().flat_map(|(_, v)| v.iter());
    let (mut x_max, mut y_max) = (0f64, 0f64);
    for (x, y) in points {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    if x_max <= 0.0 && y_max <= 0.0 {
        return String::new();
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut c = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..x_max.max(1.0) * 1.02, 0f64..y_max.max(1.0) * 1.1)?;
            c.configure_mesh().x_desc(x_label).draw()?;
            let colors = [RGBColor(46, 90, 172), RGBColor(196, 50, 10)];
            for (i, (name, v)) in lines.iter().enumerate() {
                let color = colors[i % colors.len()];
                c.draw_series(LineSeries::new(v.iter().copied(), color.stroke_width(2)))?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            }
            if lines.len() > 1 {
                c.configure_series_labels()
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
            arbor: "0.1.0".into(),
            started: "2026-12-07T00:00:00Z".into(),
            machine: Machine {
                cpu: "<cpu & co>".into(),
                cores: 2,
                memory_bytes: 1 << 30,
                gpus: vec![],
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
        assert!(!html.contains("<script"), "no script");
    }
}
