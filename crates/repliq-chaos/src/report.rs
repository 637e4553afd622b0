//! The one-screen summary and the latency plot.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use repliq_chaos::checker::{self, Report};
use repliq_chaos::history::{EventType, History, Mode, OpFn};

use crate::run::fault_counts;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Enqueue latencies: (invoke time, latency, outcome, mode).
fn latencies(h: &History) -> Vec<(u64, u64, EventType, Mode)> {
    let mut open = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in h.events.iter().filter(|e| e.f == OpFn::Enqueue) {
        if e.kind == EventType::Invoke {
            open.insert((e.process, e.value), e.time_ns);
        } else if let Some(t) = open.remove(&(e.process, e.value)) {
            out.push((t, e.time_ns.saturating_sub(t), e.kind, e.mode));
        }
    }
    out
}

fn hist(values: impl Iterator<Item = u64>) -> Option<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).ok()?;
    let mut any = false;
    for v in values {
        h.saturating_record(v.max(1));
        any = true;
    }
    any.then_some(h)
}

/// The one-screen summary, ending with the verdict line.
pub fn summary(h: &History, r: &Report, header: &str, harness_failures: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}");
    let _ = writeln!(s, "operations            ok     fail     info");
    for (name, o) in [("enqueue sync ", &r.sync), ("enqueue async", &r.r#async)] {
        let _ = writeln!(s, "  {name}  {:>8} {:>8} {:>8}", o.ok, o.fail, o.info);
    }
    let _ = writeln!(s, "  dequeue        {:>8}", r.dequeued);
    let fc = fault_counts(h);
    let _ = writeln!(
        s,
        "faults injected: {}",
        if fc.is_empty() {
            "none".to_string()
        } else {
            fc.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    for (k, why) in &h.unavailable {
        let _ = writeln!(s, "  nemesis {k} unavailable: {why}");
    }
    let fo = checker::failovers(h);
    for (mode, name) in [(Mode::Sync, "sync"), (Mode::Async, "async")] {
        let these: Vec<&checker::Failover> = fo.iter().filter(|f| f.mode == mode).collect();
        match hist(these.iter().map(|f| f.gap_ns)) {
            Some(u) => {
                let _ = writeln!(
                    s,
                    "failover, {name} queues (last acknowledged write in one epoch to the first in a higher one): {} failovers, p50 {:.0} ms, max {:.0} ms",
                    these.len(),
                    ms(u.value_at_quantile(0.5)),
                    ms(u.max())
                );
                for f in these.iter().take(6) {
                    let _ = writeln!(
                        s,
                        "      {}: epoch {} on {} -> epoch {} on {} in {:.0} ms",
                        f.queue,
                        f.from_epoch,
                        f.from_node,
                        f.to_epoch,
                        f.to_node,
                        ms(f.gap_ns)
                    );
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "failover, {name} queues: none seen by acknowledged writes"
                );
            }
        }
    }
    match hist(checker::unavailability(h).into_iter()) {
        Some(u) => {
            let _ = writeln!(
                s,
                "unavailability (longest gap between acknowledged sync writes to a queue overlapping a fault): p50 {:.0} ms, max {:.0} ms, over {} faults",
                ms(u.value_at_quantile(0.5)),
                ms(u.max()),
                u.len()
            );
        }
        None => {
            let _ = writeln!(s, "unavailability: no faults");
        }
    }
    let lat = latencies(h);
    if let Some(l) = hist(
        lat.iter()
            .filter(|x| x.2 == EventType::Ok && x.3 == Mode::Sync)
            .map(|x| x.1),
    ) {
        let _ = writeln!(
            s,
            "sync enqueue latency (ok): p50 {:.2} ms, p99 {:.2} ms, max {:.0} ms",
            ms(l.value_at_quantile(0.5)),
            ms(l.value_at_quantile(0.99)),
            ms(l.max())
        );
    }
    for g in &r.groups {
        let _ = writeln!(
            s,
            "group {} on {}: taken {} ({} values, {} leaderships), redelivered {} (max window {:.0} ms of {:.0}), group lost {}",
            g.group,
            g.queue,
            g.taken,
            g.distinct,
            g.leaderships,
            g.redelivered,
            ms(g.max_window_ns),
            ms(r.redelivery_window_ns),
            g.lost
        );
    }
    let _ = writeln!(s, "anomalies");
    let _ = writeln!(s, "  lost         {:>6}", r.lost.len());
    for x in r.lost.iter().take(3) {
        let _ = writeln!(
            s,
            "      {}: value {} missing on {:?}",
            x.queue, x.value, x.missing_on
        );
    }
    let _ = writeln!(s, "  duplicated   {:>6}", r.duplicated.len());
    for x in r.duplicated.iter().take(3) {
        let _ = writeln!(
            s,
            "      {} {}: value {} x{}",
            x.queue, x.r#where, x.value, x.count
        );
    }
    let _ = writeln!(s, "  unexpected   {:>6}", r.unexpected.len());
    for x in r.unexpected.iter().take(3) {
        let _ = writeln!(
            s,
            "      {} on {} id {}: {:?} {}",
            x.queue, x.node, x.id, x.value, x.reason
        );
    }
    let _ = writeln!(s, "  divergent    {:>6}", r.divergent.len());
    for x in r.divergent.iter().take(3) {
        let _ = writeln!(s, "      {} id {}: {}", x.queue, x.id, x.detail.join("; "));
    }
    let _ = writeln!(s, "  order        {:>6}", r.order.len());
    for x in r.order.iter().take(3) {
        let _ = writeln!(
            s,
            "      {} process {}: {} acked before {} but after it in the log",
            x.queue, x.process, x.first, x.second
        );
    }
    let _ = writeln!(s, "  split-brain  {:>6}", r.split_brain.len());
    for x in r.split_brain.iter().take(3) {
        let _ = writeln!(
            s,
            "      {}: {} and {} both accepted appends for {:.0} ms",
            x.queue,
            x.nodes.0,
            x.nodes.1,
            ms(x.end_ns.saturating_sub(x.start_ns))
        );
    }
    let _ = writeln!(s, "  group lost   {:>6}", r.group_lost.len());
    for x in r.group_lost.iter().take(3) {
        let _ = writeln!(
            s,
            "      {} {}: acknowledged value {} never taken",
            x.queue, x.group, x.value
        );
    }
    let _ = writeln!(
        s,
        "  redelivered  {} after a leadership change, max window {:.0} ms (bound {:.0} ms): at-least-once, not a failure",
        r.redelivered.len(),
        ms(r.redelivered.iter().map(|x| x.window_ns).max().unwrap_or(0)),
        ms(r.redelivery_window_ns)
    );
    let a = &r.async_loss;
    let _ = writeln!(
        s,
        "  async        {} of {} acknowledged absent from the primary, from {} epochs (bound: at most {} from one epoch, acknowledged at most {:.0} ms before that epoch's last acknowledgement); async promises no replication: not a pass",
        a.lost,
        a.acknowledged,
        a.epochs,
        a.max_per_epoch,
        ms(a.window_ns)
    );
    for x in r.lagging.iter().take(3) {
        let _ = writeln!(s, "  lagging replica: {x}");
    }
    for x in &r.unreadable {
        let _ = writeln!(s, "  UNREADABLE: {x}");
    }
    for x in harness_failures {
        let _ = writeln!(s, "  HARNESS: {x}");
    }
    let pass = r.pass() && harness_failures.is_empty();
    let _ = writeln!(s, "VERDICT: {}", if pass { "PASS" } else { "FAIL" });
    s
}

/// Draws latency over time with the fault windows shaded (SVG: no fonts
/// are loaded; text is left to the viewer).
pub fn plot(h: &History, path: &Path) -> Result<(), String> {
    let lat = latencies(h);
    let t0 = h.events.iter().map(|e| e.time_ns).min().unwrap_or(0);
    let secs = |t: u64| t.saturating_sub(t0) as f64 / 1e9;
    let tmax = h
        .events
        .iter()
        .map(|e| secs(e.time_ns))
        .fold(1.0f64, f64::max);
    let ymax = lat.iter().map(|x| ms(x.1)).fold(10.0f64, f64::max) * 1.5;
    let root = SVGBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .margin(15)
        .caption(
            "enqueue latency (ms, log) over time (s); faults shaded",
            ("sans-serif", 20),
        )
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..tmax, (0.01f64..ymax).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency ms")
        .draw()
        .map_err(|e| e.to_string())?;
    let colour = |k: &str| -> RGBColor {
        match k {
            "kill" => RGBColor(220, 50, 50),
            "pause" => RGBColor(50, 90, 220),
            "lost-disk" => RGBColor(120, 60, 20),
            "writer-kill" => RGBColor(200, 120, 0),
            "replica-write" => RGBColor(160, 0, 160),
            "netem" => RGBColor(0, 150, 150),
            _ => RGBColor(120, 120, 120),
        }
    };
    for f in &h.faults {
        let (a, b) = (secs(f.start_ns), secs(f.end_ns).max(secs(f.start_ns) + 0.2));
        let c = colour(&f.kind);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.01), (b, ymax)],
                c.mix(0.18).filled(),
            )))
            .map_err(|e| e.to_string())?;
    }
    for (outcome, mode, c) in [
        (EventType::Ok, Mode::Sync, RGBColor(0, 140, 0)),
        (EventType::Ok, Mode::Async, RGBColor(0, 0, 0)),
        (EventType::Info, Mode::Sync, RGBColor(240, 150, 0)),
        (EventType::Fail, Mode::Sync, RGBColor(255, 0, 0)),
    ] {
        chart
            .draw_series(
                lat.iter()
                    .filter(|x| x.2 == outcome && (outcome != EventType::Ok || x.3 == mode))
                    .map(|x| Circle::new((secs(x.0), ms(x.1).max(0.011)), 2, c.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_harness_failure_turns_a_clean_history_into_a_fail() {
        let (h, r) = (History::default(), Report::default());
        assert!(r.pass(), "an empty history has no anomaly");
        let clean = summary(&h, &r, "t", &[]);
        assert!(clean.ends_with("VERDICT: PASS\n"), "{clean}");
        let failed = summary(&h, &r, "t", &["node2 was not taken back".to_string()]);
        assert!(
            failed.contains("  HARNESS: node2 was not taken back\n"),
            "{failed}"
        );
        assert!(failed.ends_with("VERDICT: FAIL\n"), "{failed}");
    }
}
