//! `bench capture`: what `meshctl capture` costs the worker that copies, measured on a whole
//! worker loop (ports, pipeline, housekeeping) over in-memory ports, one core, the established
//! ingress flows of `bench pipeline`. The modes run in turns, in one process, so the machine's
//! swings hit them alike: no capture; a capture whose filter matches nothing (every frame runs
//! the filter); one matching one flow in all; one copying every frame (no filter), drained by
//! the control thread's own code (`dataplane::capture::serve`) into a sink.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctl::proto::{CapturePorts, CaptureSpec};
use dataplane::buf::{PacketBuf, PortId};
use dataplane::pipeline::Pipeline;
use dataplane::port::mem::{self, MemPort};
use dataplane::worker::{Idle, Shared, Worker};

use crate::scenarios::{Kind, Scenario};

/// One way of running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    MatchesNothing,
    OneFlow,
    Everything,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Off,
        Mode::MatchesNothing,
        Mode::OneFlow,
        Mode::Everything,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "no capture",
            Mode::MatchesNothing => "filter matches nothing",
            Mode::OneFlow => "filter matches one flow",
            Mode::Everything => "every frame, no filter",
        }
    }

    /// The capture's filter (`None`: no capture).
    fn filter(self) -> Option<&'static str> {
        match self {
            Mode::Off => None,
            // UDP to port 9 (discard): none of the bench's frames.
            Mode::MatchesNothing => Some("udp port 9"),
            // The first client's port (bench's flows are 172.16.0.0:10000 and up).
            Mode::OneFlow => Some("tcp port 10000"),
            Mode::Everything => Some(""),
        }
    }
}

/// One mode's best run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub mode: &'static str,
    pub flows: usize,
    pub packets: usize,
    pub mpps: f64,
    pub ns_per_packet: f64,
    /// Against `no capture` in the same run.
    pub ratio: f64,
}

/// A writer that fails once told to: how the bench ends a capture (as a client hanging up).
struct Sink(Arc<AtomicBool>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.load(Ordering::Relaxed) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Bed {
    worker: Worker,
    shared: Arc<Shared>,
    up: MemPort,
    tasks: MemPort,
    frames: Vec<Vec<u8>>,
    free: Vec<PacketBuf>,
    cursor: usize,
    now: u64,
}

impl Bed {
    fn new(flows: usize) -> Bed {
        let s = Scenario::with(Kind::Ingress, flows, None, false);
        let (table, pipeline, frames): (_, Pipeline, _) = s.into_parts();
        let shared = Shared::new(table, 1, pipeline.neighbors().clone());
        let (up, up_peer) = mem::link(4096);
        let (tasks, tasks_peer) = mem::link(4096);
        let worker = Worker::with_pipeline(
            0,
            pipeline,
            Box::new(up),
            Box::new(tasks),
            shared.clone(),
            Idle::BusyPoll,
            256,
        );
        Bed {
            worker,
            shared,
            up: up_peer,
            tasks: tasks_peer,
            frames,
            free: (0..256).map(|_| PacketBuf::new()).collect(),
            cursor: 0,
            now: 1,
        }
    }

    /// Runs `packets` frames through the worker, 32 a loop; the buffers go round.
    fn run(&mut self, packets: usize) -> usize {
        let mut done = 0;
        let mut out = 0;
        while done < packets {
            for _ in 0..dataplane::port::BURST.min(packets - done) {
                // A frame the worker dropped left its buffer in the worker's pool.
                let Some(mut b) = self.free.pop().or_else(|| self.worker.pool.get()) else {
                    panic!(
                        "bench capture: out of buffers: {:?}",
                        self.worker.pipeline.stats
                    );
                };
                b.fill(&self.frames[self.cursor]);
                b.port = PortId::Uplink;
                self.cursor = (self.cursor + 1) % self.frames.len();
                if !self.up.send(b) {
                    panic!("bench capture: the uplink queue is full");
                }
                done += 1;
            }
            // The bench's clock, as `bench pipeline`'s: no flow times out mid-run.
            self.worker.poll_at(self.now);
            while let Some(b) = self.up.recv().or_else(|| self.tasks.recv()) {
                out += 1;
                self.free.push(b);
            }
            while let Some(b) = self.shared.to_host.pop() {
                self.free.push(b);
            }
        }
        self.now += 1;
        out
    }
}

/// Runs every mode `rounds` times in turn, `packets` frames each time, over `flows` flows.
// Casts: packet counts and nanoseconds as floats for rates.
#[allow(clippy::cast_precision_loss)]
pub fn measure(flows: usize, packets: usize, rounds: usize) -> Vec<Row> {
    let mut bed = Bed::new(flows);
    // Warm-up: every flow made.
    bed.run(bed.frames.len() * 2);
    let mut best = [f64::MAX; 4];
    for _ in 0..rounds.max(1) {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let server = mode.filter().map(|f| {
                let spec = CaptureSpec {
                    filter: f.into(),
                    ports: CapturePorts::All,
                    ..CaptureSpec::default()
                };
                let shared = bed.shared.clone();
                let mut sink = Sink(stop.clone());
                std::thread::spawn(move || dataplane::capture::serve(&shared, &spec, &mut sink))
            });
            if server.is_some() {
                // Until the worker took the session.
                let t0 = Instant::now();
                while bed.shared.capture.current().is_none()
                    && t0.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                bed.run(1024);
            }
            let t = Instant::now();
            let out = bed.run(packets);
            let ns = t.elapsed().as_nanos() as f64 / packets as f64;
            if out < packets * 9 / 10 {
                panic!(
                    "bench capture: {} of {packets} frames came out ({})",
                    out,
                    mode.name()
                );
            }
            best[i] = best[i].min(ns);
            stop.store(true, Ordering::Relaxed);
            if let Some(s) = server {
                // The capture ends at its next write (a heartbeat at the latest).
                while !s.is_finished() {
                    bed.run(256);
                }
                let _ = s.join();
            }
        }
    }
    Mode::ALL
        .iter()
        .zip(best)
        .map(|(m, ns)| Row {
            mode: m.name(),
            flows: bed.frames.len(),
            packets,
            mpps: 1e3 / ns,
            ns_per_packet: ns,
            ratio: best[0] / ns,
        })
        .collect()
}
