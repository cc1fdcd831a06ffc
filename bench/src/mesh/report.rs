//! The results of `bench mesh`: per-run records, per-system summaries (median and spread of
//! the repeats), the Markdown table with ratios, the JSON file and the SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::cost;
use super::tcp::ConnRate;
use super::MeshError;
use crate::pktgen::Percentiles;

/// One trial at one offered rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trial {
    /// The rate asked for; `None`: as fast as the generator can.
    pub target_pps: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub secs: f64,
    pub sent_pps: f64,
    pub delivered_pps: f64,
    pub loss_pct: f64,
    pub reordered: u64,
    /// Frames the sink's own ring dropped (should be 0: else the sink was the bottleneck).
    pub sink_dropped: u64,
    /// Loss at or under the threshold.
    pub loss_ok: bool,
    /// `loss_ok` and the generator sent at least 95% of the target rate.
    pub passed: bool,
}

/// The cost step: one trial at the cost rate, with the CPU time spent meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostStep {
    pub trial: Trial,
    /// Run time of the generator, the sink, the system's processes and `ksoftirqd`, all CPUs, ns
    /// (see [`super::cost`]).
    pub cpu_ns: u64,
    /// Non-idle time of all CPUs over the same step (wall time less `/proc/stat`'s idle), ns:
    /// what is above `cpu_ns` is other work that ran meanwhile.
    pub machine_busy_ns: u64,
}

impl CostStep {
    /// CPU ns per delivered packet; `None` when the step did not sustain the rate (lost more
    /// than the threshold, or the generator sent less than 95% of it).
    pub fn per_packet_ns(&self) -> Option<f64> {
        if !self.trial.passed {
            return None;
        }
        cost::per_packet_ns(self.cpu_ns, self.trial.received)
    }
}

/// The bare path's cost step in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BareRun {
    pub round: usize,
    pub step: CostStep,
}

/// A run's own cost: its CPU ns per delivered packet less the bare path's of the same round.
/// `None` when either step did not sustain the rate, or no bare step ran in that round.
pub fn own_cost_ns(run: &Run, bare: &[BareRun]) -> Option<f64> {
    let path = run.cost.as_ref()?.per_packet_ns()?;
    let b = bare
        .iter()
        .find(|b| b.round == run.round)?
        .step
        .per_packet_ns()?;
    Some(cost::own_ns(path, b))
}

/// One system's run in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub system: String,
    pub name: String,
    pub round: usize,
    pub full_load: Trial,
    /// The highest rate sent with loss under the threshold, over every trial of the run.
    pub zero_loss_pps: f64,
    pub search: Vec<Trial>,
    pub latency_at_pps: f64,
    pub latency: Percentiles,
    pub latency_trial: Trial,
    pub tcp: Option<ConnRate>,
    /// The cost step (none with `--cost-secs 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostStep>,
    /// meshd's counters on each node after the run (`meshctl stats`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meshd_stats: Vec<serde_json::Value>,
}

/// Median, minimum and maximum over a system's rounds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }
}

/// One system over all rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub system: String,
    pub name: String,
    pub zero_loss_pps: Spread,
    /// Rounds whose full-load step lost nothing: the system kept up with everything the
    /// generator could send, so its zero-loss rate is at least this, not at most.
    #[serde(default)]
    pub generator_limited: usize,
    pub full_load_delivered_pps: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub p999_us: Spread,
    pub tcp_conn_per_sec: Option<Spread>,
    /// CPU ns per delivered packet at the cost rate, the bare path subtracted, over the rounds
    /// where the system and the bare path both sustained the rate.
    #[serde(default)]
    pub cpu_ns_per_packet: Option<Spread>,
    /// Rounds with a cost step that gave no figure (the rate was not sustained).
    #[serde(default)]
    pub cost_missed: usize,
}

/// A ratio of two medians, with the worst and best pairing of the spreads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub what: String,
    pub median: f64,
    pub low: f64,
    pub high: f64,
    /// The target, and whether the median meets it.
    pub target: String,
    pub met: bool,
}

/// Everything `bench mesh` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub command: String,
    pub date_utc: String,
    pub machine: Machine,
    pub settings: Settings,
    pub summaries: Vec<Summary>,
    pub ratios: Vec<Ratio>,
    pub runs: Vec<Run>,
    /// The bare path's cost step, one per round.
    #[serde(default)]
    pub bare_path: Vec<BareRun>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub load_avg_at_start: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub frame_bytes: usize,
    pub protocol: String,
    pub flows: u32,
    pub tasks: usize,
    pub step_secs: f64,
    pub search_steps: usize,
    pub loss_threshold_pct: f64,
    pub latency_secs: f64,
    pub tcp_secs: f64,
    pub tcp_threads: usize,
    pub cores: Vec<usize>,
    #[serde(default)]
    pub rps: bool,
    /// The cost step's offered rate (pps) and length (0: no cost step).
    #[serde(default)]
    pub cost_pps: f64,
    #[serde(default)]
    pub cost_secs: f64,
}

impl Summary {
    /// `bare`: the bare path's cost steps of every round.
    pub fn of(system: &str, name: &str, runs: &[&Run], bare: &[BareRun]) -> Summary {
        let pick = |f: &dyn Fn(&Run) -> f64| Spread::of(runs.iter().map(|r| f(r)).collect());
        let tcp: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.tcp.map(|t| t.per_sec))
            .collect();
        let with_cost: Vec<&&Run> = runs.iter().filter(|r| r.cost.is_some()).collect();
        let costs: Vec<f64> = with_cost
            .iter()
            .filter_map(|r| own_cost_ns(r, bare))
            .collect();
        Summary {
            system: system.into(),
            name: name.into(),
            zero_loss_pps: pick(&|r| r.zero_loss_pps),
            generator_limited: runs.iter().filter(|r| r.full_load.loss_ok).count(),
            full_load_delivered_pps: pick(&|r| r.full_load.delivered_pps),
            p50_us: pick(&|r| r.latency.p50_us),
            p99_us: pick(&|r| r.latency.p99_us),
            p999_us: pick(&|r| r.latency.p999_us),
            tcp_conn_per_sec: (!tcp.is_empty()).then(|| Spread::of(tcp)),
            cost_missed: with_cost.len() - costs.len(),
            cpu_ns_per_packet: (!costs.is_empty()).then(|| Spread::of(costs)),
        }
    }
}

/// Ratios of each meshd variant to the kernel and to the ceiling, against the targets.
pub fn ratios(s: &[Summary]) -> Vec<Ratio> {
    let find = |k: &str| s.iter().find(|x| x.system == k);
    let mut out = Vec::new();
    let ratio = |what: String, a: Spread, b: Spread, target: &str, met: &dyn Fn(f64) -> bool| {
        let div = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        let median = div(a.median, b.median);
        Ratio {
            what,
            median,
            low: div(a.min, b.max),
            high: div(a.max, b.min),
            target: target.into(),
            met: met(median),
        }
    };
    for m in s.iter().filter(|x| x.system.starts_with("meshd")) {
        if let Some(k) = find("kernel") {
            out.push(ratio(
                format!("{} / kernel: zero-loss throughput", m.name),
                m.zero_loss_pps,
                k.zero_loss_pps,
                "≥ 2",
                &|r| r >= 2.0,
            ));
            out.push(ratio(
                format!("{} / kernel: p99 latency", m.name),
                m.p99_us,
                k.p99_us,
                "≤ 1",
                &|r| r <= 1.0,
            ));
            if let (Some(a), Some(b)) = (m.tcp_conn_per_sec, k.tcp_conn_per_sec) {
                out.push(ratio(
                    format!("{} / kernel: TCP connections/s", m.name),
                    a,
                    b,
                    "≥ 1",
                    &|r| r >= 1.0,
                ));
            }
            if let (Some(a), Some(b)) = (m.cpu_ns_per_packet, k.cpu_ns_per_packet) {
                out.push(ratio(
                    format!("{} / kernel: CPU per packet", m.name),
                    a,
                    b,
                    "< 1",
                    &|r| r < 1.0,
                ));
            }
        }
        // Each meshd against the forwarder on its own ports (and testpmd); meshd on AF_XDP also
        // against meshd on AF_PACKET, one worker each.
        let xdp = m.system == "meshd-afxdp";
        if xdp {
            if let Some(c) = find("meshd-1w") {
                out.push(ratio(
                    format!("{} / {}: zero-loss throughput", m.name, c.name),
                    m.zero_loss_pps,
                    c.zero_loss_pps,
                    "≥ 1",
                    &|r| r >= 1.0,
                ));
            }
        }
        let own = if xdp {
            ("afxdp-fwd", "AF_XDP forwarder")
        } else {
            ("afpacket-fwd", "AF_PACKET forwarder")
        };
        for (key, label) in [own, ("testpmd", "testpmd")] {
            if let Some(c) = find(key) {
                out.push(ratio(
                    format!("{} / {label}: zero-loss throughput", m.name),
                    m.zero_loss_pps,
                    c.zero_loss_pps,
                    "≥ 0.9",
                    &|r| r >= 0.9,
                ));
            }
        }
    }
    out
}

fn kpps(s: Spread) -> String {
    if s.n == 0 {
        return "–".into();
    }
    if s.n == 1 {
        return format!("{:.0}", s.median / 1e3);
    }
    format!(
        "{:.0} ({:.0}–{:.0})",
        s.median / 1e3,
        s.min / 1e3,
        s.max / 1e3
    )
}

fn us(s: Spread) -> String {
    if s.n == 0 {
        return "–".into();
    }
    if s.n == 1 {
        return format!("{:.0}", s.median);
    }
    format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
}

impl Report {
    /// The Markdown table and the ratios, as in `bench/out/mesh.md`.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let st = &self.settings;
        let _ = writeln!(
            m,
            "{} B {} frames, {} flows, {} tasks; {} round(s), systems alternating; {:.1} s per rate step, {} search steps, loss threshold {}%; latency at 50% of each run's zero-loss rate for {:.1} s; cost at {:.0} kpps for {:.1} s; TCP: {} client threads for {:.1} s. Machine: {} CPUs ({}), Linux {}, load average at start {}. {}",
            st.frame_bytes,
            st.protocol,
            st.flows,
            st.tasks,
            st.rounds,
            st.step_secs,
            st.search_steps,
            st.loss_threshold_pct,
            st.latency_secs,
            st.cost_pps / 1e3,
            st.cost_secs,
            st.tcp_threads,
            st.tcp_secs,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.load_avg_at_start,
            self.date_utc,
        );
        let _ = writeln!(m);
        let _ = writeln!(
            m,
            "Each cell: median of the rounds, (min–max) when there are several. \"≥ in k/n\": in k of the n rounds the system lost nothing even at the generator's full rate, so the limit there was the generator's thread: for meshd and the forwarders their own rate is higher; for the kernel without RPS its whole forwarding path runs on that thread, so that rate is the kernel's.\n"
        );
        let _ = writeln!(
            m,
            "| system | zero-loss kpps | delivered kpps at full load | p50 µs | p99 µs | p99.9 µs | TCP conn/s | CPU ns/packet at {:.0} kpps |",
            st.cost_pps / 1e3
        );
        let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for s in &self.summaries {
            let tcp = s
                .tcp_conn_per_sec
                .map(|t| {
                    if t.n > 1 {
                        format!("{:.0} ({:.0}–{:.0})", t.median, t.min, t.max)
                    } else {
                        format!("{:.0}", t.median)
                    }
                })
                .unwrap_or_else(|| "n/a".into());
            let zl = if s.generator_limited > 0 {
                format!(
                    "{} ≥ in {}/{}",
                    kpps(s.zero_loss_pps),
                    s.generator_limited,
                    s.zero_loss_pps.n
                )
            } else {
                kpps(s.zero_loss_pps)
            };
            let cost = match (s.cpu_ns_per_packet, s.cost_missed) {
                (None, 0) => "–".to_string(),
                (None, k) => format!("not sustained in {k}/{k}"),
                (Some(c), 0) => us(c),
                (Some(c), k) => format!("{} (not sustained in {k}/{})", us(c), k + c.n),
            };
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                zl,
                kpps(s.full_load_delivered_pps),
                us(s.p50_us),
                us(s.p99_us),
                us(s.p999_us),
                tcp,
                cost
            );
        }
        if let Some(c) = self.cost_paragraph() {
            let _ = writeln!(m);
            let _ = writeln!(m, "{c}");
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(m);
            let _ = writeln!(
                m,
                "| ratio | median | range (worst–best pairing) | target | met |"
            );
            let _ = writeln!(m, "|---|---:|---:|---|---|");
            for r in &self.ratios {
                let _ = writeln!(
                    m,
                    "| {} | {:.2} | {:.2}–{:.2} | {} | {} |",
                    r.what,
                    r.median,
                    r.low,
                    r.high,
                    r.target,
                    if r.met { "yes" } else { "**no**" }
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(m);
            for n in &self.notes {
                let _ = writeln!(m, "- {n}");
            }
        }
        m
    }

    /// What the cost column means, with the bare path's figure and how much other work ran on
    /// the machine during the cost steps (from the runs, so `--render` says it too).
    fn cost_paragraph(&self) -> Option<String> {
        if self.bare_path.is_empty() {
            return None;
        }
        let bare = Spread::of(
            self.bare_path
                .iter()
                .filter_map(|b| b.step.per_packet_ns())
                .collect(),
        );
        let steps: Vec<&CostStep> = self
            .runs
            .iter()
            .filter_map(|r| r.cost.as_ref())
            .chain(self.bare_path.iter().map(|b| &b.step))
            .collect();
        let (ours, machine, secs) = steps.iter().fold((0u64, 0u64, 0f64), |a, s| {
            (a.0 + s.cpu_ns, a.1 + s.machine_busy_ns, a.2 + s.trial.secs)
        });
        let other = if secs > 0.0 {
            machine.saturating_sub(ours) as f64 / 1e9 / secs
        } else {
            0.0
        };
        let bare = if bare.n > 0 {
            format!("{} ns per packet", us(bare))
        } else {
            "not sustained: no figure".into()
        };
        Some(format!(
            "CPU ns/packet: CPU time per delivered packet at {:.0} kpps offered (a rate every system should sustain; a step that loses more than the threshold or sends less than 95% of it gives no figure), all CPUs: the run time of the generator and the sink, of the system's processes and of the kernel's ksoftirqd threads (the kernel forwards in softirq, charged to the thread it runs on), less the same on the bare path (generator → switch → sink, no node) in the same round: {bare}. What is left is the system's own cost, the underlay hop from n1 to n2 included. Other work on the machine during the cost steps (the CPUs' non-idle time from /proc/stat, less these threads'): {other:.2} CPUs on average.",
            self.settings.cost_pps / 1e3,
        ))
    }

    /// Writes `mesh.json`, `mesh.md` and `mesh.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), MeshError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| MeshError::Report(format!("encoding the report: {e}")))?;
        let p = dir.join("mesh.json");
        std::fs::write(&p, json).map_err(|e| io(&p, e))?;
        let p = dir.join("mesh.md");
        let md = format!("Command: `{}`\n\n{}", self.command, self.markdown());
        std::fs::write(&p, md).map_err(|e| io(&p, e))?;
        self.chart(&dir.join("mesh.svg"))
    }

    /// Draws the chart: throughput (zero-loss and delivered at full load), latency
    /// percentiles, TCP connection rate; bars are medians, whiskers the min–max of the rounds.
    pub fn chart(&self, path: &Path) -> Result<(), MeshError> {
        let err = |e: String| MeshError::Report(format!("drawing {}: {e}", path.display()));
        let root = SVGBackend::new(path, (2000, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let title = format!(
            "bench mesh: {} B {}, {} flows, {} round(s) — bars: median, whiskers: min–max",
            self.settings.frame_bytes,
            self.settings.protocol,
            self.settings.flows,
            self.settings.rounds
        );
        let root = root
            .titled(&title, ("sans-serif", 20))
            .map_err(|e| err(e.to_string()))?;
        let panels = root.split_evenly((1, 4));
        let names: Vec<String> = self.summaries.iter().map(|s| short(&s.name)).collect();
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
        ];

        let cost_caption = format!(
            "CPU ns per packet at {:.0} kpps (bare path subtracted)",
            self.settings.cost_pps / 1e3
        );
        let groups: [Panel; 4] = [
            (
                "throughput, kpps",
                vec![
                    (
                        "zero-loss",
                        self.summaries
                            .iter()
                            .map(|s| scale(s.zero_loss_pps, 1e-3))
                            .collect(),
                    ),
                    (
                        "delivered at full load",
                        self.summaries
                            .iter()
                            .map(|s| scale(s.full_load_delivered_pps, 1e-3))
                            .collect(),
                    ),
                ],
                false,
            ),
            (
                "one-way latency at 50% of zero-loss rate, µs (log)",
                vec![
                    ("p50", self.summaries.iter().map(|s| s.p50_us).collect()),
                    ("p99", self.summaries.iter().map(|s| s.p99_us).collect()),
                    ("p99.9", self.summaries.iter().map(|s| s.p999_us).collect()),
                ],
                true,
            ),
            (
                "new TCP connections per second",
                vec![(
                    "conn/s",
                    self.summaries
                        .iter()
                        .map(|s| s.tcp_conn_per_sec.unwrap_or_default())
                        .collect(),
                )],
                false,
            ),
            (
                &cost_caption,
                vec![(
                    "ns/packet",
                    self.summaries
                        .iter()
                        .map(|s| s.cpu_ns_per_packet.unwrap_or_default())
                        .collect(),
                )],
                false,
            ),
        ];
        for (area, (caption, series, log)) in panels.iter().zip(groups.iter()) {
            let top = series
                .iter()
                .flat_map(|(_, v)| v.iter().map(|s| s.max))
                .fold(0.0f64, f64::max)
                .max(1.0)
                * 1.15;
            let n = names.len().max(1);
            let k = series.len().max(1) as f64;
            let draw =
                |area: &DrawingArea<SVGBackend, plotters::coord::Shift>| -> Result<(), String> {
                    if *log {
                        let bottom = series
                            .iter()
                            .flat_map(|(_, v)| v.iter().map(|s| s.min))
                            .filter(|x| *x > 0.0)
                            .fold(f64::INFINITY, f64::min);
                        let bottom = if bottom.is_finite() {
                            (bottom / 2.0).max(0.1)
                        } else {
                            1.0
                        };
                        let mut chart = ChartBuilder::on(area)
                            .caption(*caption, ("sans-serif", 16))
                            .margin(12)
                            .x_label_area_size(60)
                            .y_label_area_size(60)
                            .build_cartesian_2d(0f64..n as f64, (bottom..top * 2.0).log_scale())
                            .map_err(|e| e.to_string())?;
                        mesh_axes(&mut chart, &names)?;
                        for (si, (label, v)) in series.iter().enumerate() {
                            let c = colors[si % colors.len()];
                            bars(&mut chart, v, si, k, c, bottom, label)?;
                        }
                        legend(&mut chart)?;
                    } else {
                        let mut chart = ChartBuilder::on(area)
                            .caption(*caption, ("sans-serif", 16))
                            .margin(12)
                            .x_label_area_size(60)
                            .y_label_area_size(60)
                            .build_cartesian_2d(0f64..n as f64, 0f64..top)
                            .map_err(|e| e.to_string())?;
                        mesh_axes(&mut chart, &names)?;
                        for (si, (label, v)) in series.iter().enumerate() {
                            let c = colors[si % colors.len()];
                            bars(&mut chart, v, si, k, c, 0.0, label)?;
                        }
                        legend(&mut chart)?;
                    }
                    Ok(())
                };
            draw(area).map_err(err)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

/// One chart panel: caption, series (label, one spread per system), log scale.
type Panel<'a> = (&'a str, Vec<(&'a str, Vec<Spread>)>, bool);

type Chart<'a, Y> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

// Casts: a chart coordinate, floored, within the axis' few hundred ticks.
#[allow(clippy::cast_possible_truncation)]
fn mesh_axes<Y>(chart: &mut Chart<'_, Y>, names: &[String]) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let names = names.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 12))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())
}

fn bars<Y>(
    chart: &mut Chart<'_, Y>,
    v: &[Spread],
    si: usize,
    k: f64,
    c: RGBColor,
    base: f64,
    label: &str,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let w = 0.8 / k;
    let x0 = |i: usize| i as f64 + 0.1 + w * si as f64;
    chart
        .draw_series(v.iter().enumerate().filter(|(_, s)| s.n > 0).map(|(i, s)| {
            Rectangle::new(
                [(x0(i), base), (x0(i) + w * 0.9, s.median.max(base))],
                c.filled(),
            )
        }))
        .map_err(|e| e.to_string())?
        .label(label.to_string())
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    // The median over each bar.
    chart
        .draw_series(v.iter().enumerate().filter(|(_, s)| s.n > 0).map(|(i, s)| {
            Text::new(
                format!("{:.0}", s.median),
                (x0(i), s.median.max(base)),
                ("sans-serif", 10)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Bottom)),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(v.iter().enumerate().filter(|(_, s)| s.n > 1).map(|(i, s)| {
            let xm = x0(i) + w * 0.45;
            PathElement::new(
                vec![(xm, s.min.max(base)), (xm, s.max.max(base))],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn legend<Y>(chart: &mut Chart<'_, Y>) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())
}

fn scale(s: Spread, f: f64) -> Spread {
    Spread {
        median: s.median * f,
        min: s.min * f,
        max: s.max * f,
        n: s.n,
    }
}

/// A system name short enough for an axis label.
fn short(name: &str) -> String {
    name.replace(" (nftables+vxlan)", "")
        .replace(" (veth ceiling)", "")
        .replace("AF_PACKET forwarder", "af_packet fwd")
        .replace("AF_XDP forwarder", "af_xdp fwd")
        .replace("meshd AF_XDP", "meshd xdp")
        .replace(" workers)", "w)")
        .replace(" worker)", "w)")
}

fn io(p: &Path, e: std::io::Error) -> MeshError {
    MeshError::Report(format!("writing {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quick run's report of `summaries` (ratios from them), no runs, no notes.
    fn test_report(summaries: Vec<Summary>) -> Report {
        Report {
            command: "bench mesh --quick".into(),
            date_utc: "today".into(),
            machine: Machine {
                cpus: 2,
                kernel: "6".into(),
                cpu_model: "x".into(),
                load_avg_at_start: "0".into(),
            },
            settings: Settings {
                quick: true,
                rounds: 1,
                frame_bytes: 64,
                protocol: "udp".into(),
                flows: 1024,
                tasks: 2,
                step_secs: 1.0,
                search_steps: 3,
                loss_threshold_pct: 0.1,
                latency_secs: 1.0,
                tcp_secs: 1.0,
                tcp_threads: 2,
                cores: vec![0, 1],
                rps: true,
                cost_pps: 30e3,
                cost_secs: 1.0,
            },
            ratios: ratios(&summaries),
            summaries,
            runs: Vec::new(),
            bare_path: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn spread_takes_the_median() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(vec![1.0, 2.0]).median, 1.5);
        assert_eq!(Spread::of(vec![]).n, 0);
        assert_eq!(Spread::of(vec![f64::NAN, 4.0]).median, 4.0);
    }

    fn sp(m: f64) -> Spread {
        Spread {
            median: m,
            min: m * 0.9,
            max: m * 1.1,
            n: 3,
        }
    }

    fn summary(system: &str, zl: f64, p99: f64, tcp: Option<f64>) -> Summary {
        Summary {
            system: system.into(),
            name: system.into(),
            zero_loss_pps: sp(zl),
            generator_limited: 0,
            full_load_delivered_pps: sp(zl * 1.2),
            p50_us: sp(p99 / 3.0),
            p99_us: sp(p99),
            p999_us: sp(p99 * 2.0),
            tcp_conn_per_sec: tcp.map(sp),
            cpu_ns_per_packet: None,
            cost_missed: 0,
        }
    }

    #[test]
    fn ratios_say_whether_targets_are_met() {
        let s = vec![
            summary("meshd-1w", 500e3, 40.0, Some(3000.0)),
            summary("kernel", 200e3, 50.0, Some(3500.0)),
            summary("testpmd", 600e3, 30.0, None),
        ];
        let r = ratios(&s);
        assert_eq!(r.len(), 4);
        assert!((r[0].median - 2.5).abs() < 1e-9 && r[0].met);
        assert!(r[1].met, "p99 40 vs 50");
        assert!(!r[2].met, "3000 vs 3500 conn/s");
        assert!(!r[3].met && (r[3].median - 500.0 / 600.0).abs() < 1e-9);
        assert!(r[0].low < r[0].median && r[0].median < r[0].high);
    }

    #[test]
    fn the_chart_and_table_are_written() {
        let s = vec![
            summary("meshd-1w", 500e3, 40.0, Some(3000.0)),
            summary("kernel", 200e3, 50.0, Some(3500.0)),
        ];
        let mut report = test_report(s);
        report.notes = vec!["a note".into()];
        let md = report.markdown();
        assert!(md.contains("| meshd-1w | 500 (450–550) |"), "{md}");
        assert!(
            md.contains("meshd-1w / kernel: zero-loss throughput | 2.50"),
            "{md}"
        );
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        report.write(&dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("mesh.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("zero-loss"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        assert!(std::fs::read_to_string(dir.join("mesh.json"))
            .unwrap()
            .contains("\"zero_loss_pps\""));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn trial(sent: u64, received: u64, passed: bool) -> Trial {
        Trial {
            target_pps: Some(30e3),
            sent,
            received,
            secs: 1.0,
            sent_pps: sent as f64,
            delivered_pps: received as f64,
            loss_pct: 0.0,
            reordered: 0,
            sink_dropped: 0,
            loss_ok: passed,
            passed,
        }
    }

    fn step(cpu_ms: u64, delivered: u64, passed: bool) -> CostStep {
        CostStep {
            trial: trial(delivered, delivered, passed),
            cpu_ns: cpu_ms * 1_000_000,
            machine_busy_ns: cpu_ms * 2_000_000,
        }
    }

    fn run(system: &str, round: usize, cost: Option<CostStep>) -> Run {
        Run {
            system: system.into(),
            name: system.into(),
            round,
            full_load: trial(100, 100, true),
            zero_loss_pps: 100.0,
            search: Vec::new(),
            latency_at_pps: 50.0,
            latency: Percentiles::default(),
            latency_trial: trial(50, 50, true),
            tcp: None,
            cost,
            meshd_stats: Vec::new(),
        }
    }

    #[test]
    fn the_cost_is_the_run_less_the_bare_path_of_its_round() {
        let bare = vec![
            BareRun {
                round: 0,
                step: step(30, 30_000, true),
            },
            BareRun {
                round: 1,
                step: step(45, 30_000, true),
            },
            BareRun {
                round: 2,
                step: step(30, 30_000, false),
            },
        ];
        // 3000 ns per packet less 1000 (round 0), less 1500 (round 1); no figure where either
        // step missed the rate, or without a bare step in the round.
        assert_eq!(
            own_cost_ns(&run("m", 0, Some(step(90, 30_000, true))), &bare),
            Some(2000.0)
        );
        assert_eq!(
            own_cost_ns(&run("m", 1, Some(step(90, 30_000, true))), &bare),
            Some(1500.0)
        );
        assert_eq!(
            own_cost_ns(&run("m", 2, Some(step(90, 30_000, true))), &bare),
            None
        );
        assert_eq!(
            own_cost_ns(&run("m", 0, Some(step(90, 30_000, false))), &bare),
            None
        );
        assert_eq!(
            own_cost_ns(&run("m", 3, Some(step(90, 30_000, true))), &bare),
            None
        );
        assert_eq!(own_cost_ns(&run("m", 0, None), &bare), None);

        let runs = [
            run("m", 0, Some(step(90, 30_000, true))),
            run("m", 1, Some(step(90, 30_000, true))),
            run("m", 2, Some(step(90, 30_000, true))),
        ];
        let refs: Vec<&Run> = runs.iter().collect();
        let s = Summary::of("m", "m", &refs, &bare);
        let c = s.cpu_ns_per_packet.unwrap();
        assert_eq!((c.median, c.min, c.max, c.n), (1750.0, 1500.0, 2000.0, 2));
        assert_eq!(s.cost_missed, 1);
        // No cost step at all: no figure and nothing missed.
        let runs = [run("m", 0, None)];
        let refs: Vec<&Run> = runs.iter().collect();
        let s = Summary::of("m", "m", &refs, &bare);
        assert!(s.cpu_ns_per_packet.is_none() && s.cost_missed == 0);
    }

    #[test]
    fn meshd_must_cost_less_than_the_kernel() {
        let mut m = summary("meshd-1w", 500e3, 40.0, None);
        let mut k = summary("kernel", 200e3, 50.0, None);
        m.cpu_ns_per_packet = Some(sp(1500.0));
        k.cpu_ns_per_packet = Some(sp(2000.0));
        let r = ratios(&[m.clone(), k.clone()]);
        let c = r
            .iter()
            .find(|r| r.what == "meshd-1w / kernel: CPU per packet")
            .unwrap();
        assert!((c.median - 0.75).abs() < 1e-9 && c.met && c.target == "< 1");
        m.cpu_ns_per_packet = Some(sp(2000.0));
        let r = ratios(&[m, k]);
        let c = r
            .iter()
            .find(|r| r.what.ends_with("CPU per packet"))
            .unwrap();
        assert!(!c.met, "equal is not below");
    }

    #[test]
    fn the_table_has_the_cost_column_and_the_bare_path() {
        let mut m = summary("meshd-1w", 500e3, 40.0, None);
        m.cpu_ns_per_packet = Some(Spread {
            median: 1750.0,
            min: 1500.0,
            max: 2000.0,
            n: 2,
        });
        m.cost_missed = 1;
        let mut k = summary("kernel", 200e3, 50.0, None);
        k.cost_missed = 3;
        let mut report = test_report(vec![m, k]);
        report.command = "bench mesh".into();
        (report.settings.quick, report.settings.rounds) = (false, 3);
        (report.settings.tcp_secs, report.settings.rps) = (0.0, false);
        report.runs = vec![run("meshd-1w", 0, Some(step(90, 30_000, true)))];
        report.bare_path = vec![BareRun {
            round: 0,
            step: step(30, 30_000, true),
        }];
        let md = report.markdown();
        assert!(md.contains("| CPU ns/packet at 30 kpps |"), "{md}");
        assert!(
            md.contains("| 1750 (1500–2000) (not sustained in 1/3) |"),
            "{md}"
        );
        assert!(md.contains("| not sustained in 3/3 |"), "{md}");
        assert!(md.contains("bare path (generator → switch → sink, no node) in the same round: 1000 ns per packet"), "{md}");
        // 240 ms busy, 120 ms ours, over 2 s of steps.
        assert!(md.contains("0.06 CPUs on average"), "{md}");
    }
}
