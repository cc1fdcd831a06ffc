//! A capture of what a port receives and sends, around any [`Port`]: every frame is written to a
//! libpcap file (the classic format, `LINKTYPE_ETHERNET`), which `tcpdump -r` and Wireshark
//! read. As smoltcp's `phy::PcapWriter`, it wraps the port and leaves the frames untouched.
//!
//! It writes on the worker's thread, one record per frame, through a buffer shared by every
//! port of the process behind a mutex (the workers of one meshd write one file), and reads the
//! clock once per burst for the time stamps: a debugging tool that costs a copy, a lock and a
//! clock read, not something to leave on under load. Without `--pcap` none of it runs.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{Burst, Port, PortCounters};
use crate::buf::Pool;

/// The classic pcap file header: magic (microsecond timestamps), version 2.4, GMT offset 0,
/// accuracy 0, snapshot length, link type 1 (Ethernet).
const MAGIC: u32 = 0xa1b2_c3d4;
/// Frames longer than this are cut in the capture (the record keeps their real length).
pub const SNAPLEN: u32 = 65_535;
const LINKTYPE_ETHERNET: u32 = 1;

/// One capture file, shared by the ports that write to it.
#[derive(Debug, Clone)]
pub struct Capture {
    out: Arc<Mutex<BufWriter<File>>>,
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Capture {
    /// Creates (or truncates) `path` and writes the pcap header.
    pub fn create(path: &Path) -> io::Result<Capture> {
        let mut w = BufWriter::new(File::create(path)?);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        w.write_all(&h)?;
        w.flush()?;
        Ok(Capture {
            out: Arc::new(Mutex::new(w)),
        })
    }

    /// Appends one frame seen at `us` (microseconds since the epoch). A write error ends
    /// nothing: the frame goes on, the capture may miss it.
    fn record(&self, us: u64, frame: &[u8]) {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let cut = len.min(SNAPLEN);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(
            &u32::try_from(us / 1_000_000)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        h[4..8].copy_from_slice(&u32::try_from(us % 1_000_000).unwrap_or(0).to_le_bytes());
        h[8..12].copy_from_slice(&cut.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        if let Ok(mut w) = self.out.lock() {
            let body = &frame[..frame.len().min(SNAPLEN as usize)];
            let _ = w.write_all(&h).and_then(|()| w.write_all(body));
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&self) -> io::Result<()> {
        match self.out.lock() {
            Ok(mut w) => w.flush(),
            Err(_) => Err(io::Error::other("a capture writer panicked")),
        }
    }
}

/// A port whose received and sent frames are also written to a [`Capture`].
#[derive(Debug)]
pub struct PcapWriter<P> {
    inner: P,
    capture: Capture,
}

impl<P: Port> PcapWriter<P> {
    pub fn new(inner: P, capture: Capture) -> Self {
        PcapWriter { inner, capture }
    }

    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P: Port> Port for PcapWriter<P> {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        let before = out.len();
        let n = self.inner.rx_burst(pool, out);
        if n > 0 {
            let us = now_us();
            for b in out.iter().skip(before) {
                self.capture.record(us, b.data());
            }
        }
        n
    }

    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        if !frames.is_empty() {
            let us = now_us();
            for b in frames.iter() {
                self.capture.record(us, b.data());
            }
        }
        self.inner.tx_burst(frames, pool)
    }

    fn flush(&mut self) {
        self.inner.flush();
        let _ = self.capture.flush();
    }

    fn counters(&mut self) -> PortCounters {
        self.inner.counters()
    }

    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wait_fd()
    }

    fn unsent(&self) -> bool {
        self.inner.unsent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{PacketBuf, PortId};
    use crate::port::mem;

    fn frame(n: u8, len: usize) -> Vec<u8> {
        let mut f = vec![n; len];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    /// A file header's magic, version, snapshot length and link type.
    type Head = (u32, u16, u16, u32, u32);
    /// A record's captured length, real length and bytes.
    type Record = (u32, u32, Vec<u8>);

    /// Reads a pcap file back.
    fn read(path: &Path) -> (Head, Vec<Record>) {
        let b = std::fs::read(path).unwrap();
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        let head = (u32_at(0), u16_at(4), u16_at(6), u32_at(16), u32_at(20));
        let mut recs = Vec::new();
        let mut i = 24;
        while i < b.len() {
            let (incl, orig) = (u32_at(i + 8), u32_at(i + 12));
            let body = b[i + 16..i + 16 + incl as usize].to_vec();
            recs.push((incl, orig, body));
            i += 16 + incl as usize;
        }
        (head, recs)
    }

    #[test]
    fn received_and_sent_frames_land_in_a_pcap_file_tcpdump_reads() {
        let dir = std::env::temp_dir().join(format!("meshd-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cap.pcap");
        let cap = Capture::create(&path).unwrap();
        let (a, b) = mem::link(16);
        let mut a = PcapWriter::new(a, cap.clone());
        let mut b = PcapWriter::new(b, cap);
        let mut pool = Pool::new(16);
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(PortId::Uplink, &frame(1, 60)));
        burst.push(PacketBuf::from_frame(PortId::Uplink, &frame(2, 1514)));
        assert_eq!(a.tx_burst(&mut burst, &mut pool), 2);
        let mut got = Burst::new();
        assert_eq!(b.rx_burst(&mut pool, &mut got), 2);
        a.flush();
        let (head, recs) = read(&path);
        assert_eq!(head, (MAGIC, 2, 4, SNAPLEN, LINKTYPE_ETHERNET));
        // Sent twice (a's tx), then received twice (b's rx), byte for byte.
        assert_eq!(recs.len(), 4);
        for (i, want) in [frame(1, 60), frame(2, 1514), frame(1, 60), frame(2, 1514)]
            .iter()
            .enumerate()
        {
            let len = u32::try_from(want.len()).unwrap();
            assert_eq!(recs[i], (len, len, want.clone()), "record {i}");
        }
        // The frames themselves are untouched.
        assert_eq!(got[0].data(), &frame(1, 60)[..]);
        if std::process::Command::new("tcpdump")
            .arg("--version")
            .output()
            .is_ok()
        {
            let out = std::process::Command::new("tcpdump")
                .args(["-n", "-r"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
