//! What reading an upload's meaning costs on the write path (a benchmark, not a test; `harness
//! = false`): the throughput of hearth's write pipeline (`EncodingWriter`: blake3, the
//! compression decision, the meaning) on 1 MiB of incompressible bytes as such, as an sccache
//! entry (a zip of stored members) and as a ccache entry, fed in 64 KiB chunks as an HTTP body
//! arrives, each with the meaning alone beside it.
//!
//! ```text
//! cargo bench --bench meaning
//! ```

use hearth::blob::EncodingWriter;
use hearth::meaning::MeaningHasher;
use std::io::Write;
use std::time::{Duration, Instant};

const SIZE: usize = 1 << 20;
const CHUNK: usize = 64 << 10;
const ROUNDS: usize = 300;

fn main() {
    let bytes = random(SIZE);
    let sccache = zip(&[
        ("libdemo.rlib", &bytes[..SIZE - 4096]),
        ("libdemo.rmeta", &bytes[SIZE - 4096..]),
        ("stderr", b""),
    ]);
    let ccache = ccache_entry(&bytes);
    assert!(hearth::meaning::meaning_of(&sccache).is_some() && hearth::meaning::meaning_of(&ccache).is_some());
    println!("{:<22} {:>12} {:>12}", "content (1 MiB)", "pipeline", "meaning");
    for (name, content) in [
        ("not an entry", &bytes),
        ("sccache entry", &sccache),
        ("ccache entry", &ccache),
    ] {
        let pipeline = rate(content, |c| {
            let mut writer = EncodingWriter::new(std::io::sink(), 3);
            c.chunks(CHUNK).for_each(|chunk| writer.write_all(chunk).unwrap());
            writer.finish().unwrap();
        });
        let meaning = rate(content, |c| {
            let mut hasher = MeaningHasher::new();
            c.chunks(CHUNK).for_each(|chunk| hasher.update(chunk));
            hasher.finalize();
        });
        println!("{name:<22} {pipeline:>8.0} MiB/s {meaning:>8.0} MiB/s");
    }
}

/// MiB/s of `run` over `content`, best of three batches.
fn rate(content: &[u8], run: impl Fn(&[u8])) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ROUNDS / 3 {
                run(std::hint::black_box(content));
            }
            let elapsed = started.elapsed().max(Duration::from_nanos(1));
            (content.len() * (ROUNDS / 3)) as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn random(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

/// A zip of stored members, laid out as the zip crate writes sccache's entries.
fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    let u16s = |v: &mut Vec<u8>, fields: &[u16]| fields.iter().for_each(|f| v.extend_from_slice(&f.to_le_bytes()));
    let u32s = |v: &mut Vec<u8>, fields: &[u32]| fields.iter().for_each(|f| v.extend_from_slice(&f.to_le_bytes()));
    for (name, data) in members {
        let (offset, crc, len) = (out.len() as u32, crc32fast::hash(data), data.len() as u32);
        u32s(&mut out, &[0x0403_4b50]);
        u16s(&mut out, &[20, 0, 0]);
        u32s(&mut out, &[0x0021_0000, crc, len, len]);
        u16s(&mut out, &[name.len() as u16, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        u32s(&mut central, &[0x0201_4b50]);
        u16s(&mut central, &[0x032e, 20, 0, 0]);
        u32s(&mut central, &[0x0021_0000, crc, len, len]);
        u16s(&mut central, &[name.len() as u16, 0, 0, 0, 0]);
        u32s(&mut central, &[0o100644 << 16, offset]);
        central.extend_from_slice(name.as_bytes());
    }
    let offset = out.len() as u32;
    out.extend_from_slice(&central);
    u32s(&mut out, &[0x0605_4b50]);
    u16s(&mut out, &[0, 0, members.len() as u16, members.len() as u16]);
    u32s(&mut out, &[central.len() as u32, offset]);
    u16s(&mut out, &[0]);
    out
}

/// A ccache result entry (format 1) around `payload`, with its checksum.
fn ccache_entry(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0xcc, 0xac, 1, 0, 1, 1, 1];
    out.extend_from_slice(&1_796_000_000u64.to_be_bytes());
    out.push(5);
    out.extend_from_slice(b"4.7.5");
    out.push(0);
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    let checksum = twox_hash::XxHash3_128::oneshot(&out).to_be_bytes();
    out.extend_from_slice(&checksum);
    out
}
