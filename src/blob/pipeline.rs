//! The write pipeline, one streaming pass per upload:
//!
//! ```text
//!  body chunks ──► blake3 (raw bytes) ──► first 64 KiB sampled ──► zstd encoder ──► sink
//!             └──► meaning (entries only)      │  decide once        └► or as-is ─┘
//! ```
//!
//! The decision is made from a prefix sample: content that already is compressed (sccache's
//! zip-of-zstd entries, ccache's entries) is stored raw; raw object files compress ~2×.

use super::Encoding;
use crate::meaning::{Meaning, MeaningHasher};
use std::io::{self, Write};
use std::sync::Mutex;
use zstd::stream::raw::{self, Operation};

/// Bytes sampled before deciding whether to compress.
pub const SAMPLE_SIZE: usize = 64 * 1024;
/// Compress only when the trial saves at least this share of the sample (in percent).
const MIN_SAVINGS_PERCENT: usize = 10;
/// Samples this small are stored raw: a zstd frame header would eat most of the gain.
const MIN_COMPRESSIBLE_LEN: usize = 256;
/// Magic numbers of formats that never compress further.
const COMPRESSED_MAGICS: &[&[u8]] = &[
    &[0x28, 0xb5, 0x2f, 0xfd], // zstd frame
    &[0x1f, 0x8b],             // gzip
    &[0xfd, b'7', b'z', b'X'], // xz
    &[0xcc, 0xac],             // ccache entry (zstd inside)
];

/// Above this order-0 entropy (bits per byte) a sample is taken for compressed data without
/// a trial: zstd's entropy stage cannot gain, and long repeats in such data are rare.
const INCOMPRESSIBLE_BITS_PER_BYTE: f64 = 7.9;
/// Bytes of the sample the entropy estimate and the trial look at: enough to predict, small
/// enough to be cheap.
const TRIAL_LEN: usize = 16 * 1024;

/// Picks the stored encoding from a sample of the content.
pub fn choose_encoding(sample: &[u8], level: i32) -> Encoding {
    if level == 0 || sample.len() < MIN_COMPRESSIBLE_LEN {
        return Encoding::Raw;
    }
    if COMPRESSED_MAGICS.iter().any(|m| sample.starts_with(m)) || is_zip_of_zstd(sample) {
        return Encoding::Raw;
    }
    let trial = &sample[..sample.len().min(TRIAL_LEN)];
    if bits_per_byte(trial) > INCOMPRESSIBLE_BITS_PER_BYTE {
        return Encoding::Raw;
    }
    // A fast trial at level 1 predicts well whether the real level will pay.
    match compress_trial(trial) {
        Some(len) if len * 100 <= trial.len() * (100 - MIN_SAVINGS_PERCENT) => Encoding::Zstd,
        _ => Encoding::Raw,
    }
}

/// Length of `data` compressed at level 1, with a compressor kept per thread (creating a
/// zstd context costs as much as the trial itself).
fn compress_trial(data: &[u8]) -> Option<usize> {
    thread_local! {
        static TRIAL: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    TRIAL.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(1).ok();
        }
        cell.as_mut()?.compress(data).ok().map(|out| out.len())
    })
}

/// An sccache entry: a zip archive whose first member is stored (method 0) and holds a zstd
/// frame. sccache compresses every member itself.
fn is_zip_of_zstd(sample: &[u8]) -> bool {
    const LOCAL_HEADER: usize = 30;
    if sample.len() < LOCAL_HEADER || !sample.starts_with(b"PK\x03\x04") {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([sample[at], sample[at + 1]]) as usize;
    let stored = u16_at(8) == 0;
    let data = LOCAL_HEADER + u16_at(26) + u16_at(28);
    stored && sample.get(data..data + 4) == Some(&[0x28, 0xb5, 0x2f, 0xfd][..])
}

/// Order-0 entropy of `data` in bits per byte (8 for uniformly random bytes).
fn bits_per_byte(data: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

enum Stage<W: Write> {
    Sampling { sink: W, sample: Vec<u8> },
    Raw(W),
    Zstd(zstd::stream::zio::Writer<W, raw::Encoder<'static>>),
}

/// zstd contexts kept between uploads, with their level. A new context allocates and zeroes
/// about 3 MiB of window and match tables, which costs more than compressing a 64 KiB body; a
/// reused one only resets its session. At most this many are kept, so the memory they hold
/// stays bounded whatever the number of uploads in flight.
const POOLED_ENCODERS: usize = 8;
static ENCODERS: Mutex<Vec<(i32, raw::Encoder<'static>)>> = Mutex::new(Vec::new());

fn take_encoder(level: i32) -> io::Result<raw::Encoder<'static>> {
    let pooled = {
        let mut pool = ENCODERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.iter()
            .position(|(l, _)| *l == level)
            .map(|at| pool.swap_remove(at).1)
    };
    match pooled {
        Some(encoder) => Ok(encoder),
        None => raw::Encoder::new(level),
    }
}

/// Returns a context whose frame ended; one that cannot be reset is dropped.
fn give_back_encoder(level: i32, mut encoder: raw::Encoder<'static>) {
    if encoder.reinit().is_err() {
        return;
    }
    let mut pool = ENCODERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if pool.len() < POOLED_ENCODERS {
        pool.push((level, encoder));
    }
}

/// A `Write` that hashes what it is given and writes it, encoded, into `sink`.
pub struct EncodingWriter<W: Write> {
    hasher: blake3::Hasher,
    meaning: MeaningHasher,
    raw_len: u64,
    level: i32,
    stage: Option<Stage<W>>,
}

/// What the pipeline learnt about the content it wrote.
#[derive(Debug)]
pub struct Digest {
    pub hash: String,
    pub raw_size: u64,
    pub encoding: Encoding,
    pub meaning: Option<Meaning>,
}

impl<W: Write> EncodingWriter<W> {
    pub fn new(sink: W, level: i32) -> Self {
        EncodingWriter {
            hasher: blake3::Hasher::new(),
            meaning: MeaningHasher::new(),
            raw_len: 0,
            level,
            stage: Some(Stage::Sampling {
                sink,
                sample: Vec::with_capacity(SAMPLE_SIZE),
            }),
        }
    }

    fn decide(&mut self) -> io::Result<()> {
        if !matches!(self.stage, Some(Stage::Sampling { .. })) {
            return Ok(());
        }
        if let Some(Stage::Sampling { sink, sample }) = self.stage.take() {
            let encoding = choose_encoding(&sample, self.level);
            let mut next = match encoding {
                Encoding::Raw => Stage::Raw(sink),
                Encoding::Zstd => Stage::Zstd(zstd::stream::zio::Writer::new(sink, take_encoder(self.level)?)),
            };
            match &mut next {
                Stage::Raw(w) => w.write_all(&sample)?,
                Stage::Zstd(w) => w.write_all(&sample)?,
                Stage::Sampling { .. } => unreachable!("decided"),
            }
            self.stage = Some(next);
        }
        Ok(())
    }

    /// Ends the content: flushes the encoder and returns the sink with the digest.
    pub fn finish(mut self) -> io::Result<(W, Digest)> {
        self.decide()?;
        let (sink, encoding) = match self.stage.take() {
            Some(Stage::Raw(w)) => (w, Encoding::Raw),
            Some(Stage::Zstd(mut w)) => {
                w.finish()?;
                let (sink, encoder) = w.into_inner();
                give_back_encoder(self.level, encoder);
                (sink, Encoding::Zstd)
            }
            _ => unreachable!("decided"),
        };
        let digest = Digest {
            hash: self.hasher.finalize().to_hex().to_string(),
            raw_size: self.raw_len,
            encoding,
            meaning: self.meaning.finalize(),
        };
        Ok((sink, digest))
    }
}

impl<W: Write> Write for EncodingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.meaning.update(buf);
        self.raw_len += buf.len() as u64;
        let mut rest = buf;
        if let Some(Stage::Sampling { sample, .. }) = &mut self.stage {
            let take = rest.len().min(SAMPLE_SIZE - sample.len());
            sample.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if sample.len() < SAMPLE_SIZE {
                return Ok(buf.len());
            }
            self.decide()?;
        }
        match &mut self.stage {
            Some(Stage::Raw(w)) => w.write_all(rest)?,
            Some(Stage::Zstd(w)) => w.write_all(rest)?,
            _ => unreachable!("decided"),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incompressible(len: usize) -> Vec<u8> {
        // xorshift: deterministic, no structure zstd can use.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn compressible(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"mov rax, [rbp-8]\ncall foo\n"[i % 26]).collect()
    }

    fn run(content: &[u8], level: i32, chunk: usize) -> (Vec<u8>, Digest) {
        let mut w = EncodingWriter::new(Vec::new(), level);
        for piece in content.chunks(chunk.max(1)) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn compressible_content_is_zstd_and_round_trips() {
        let content = compressible(300_000);
        let (stored, digest) = run(&content, 3, 7000);
        assert_eq!(digest.encoding, Encoding::Zstd);
        assert!(stored.len() < content.len() / 2);
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), content);
        assert_eq!(digest.hash, blake3::hash(&content).to_hex().to_string());
        assert_eq!(digest.raw_size, content.len() as u64);
    }

    #[test]
    fn reused_encoders_start_every_frame_afresh() {
        // The level is unique to this test, so the pool's contexts at it are this test's own.
        let level = 7;
        let first = compressible(200_000);
        let second: Vec<u8> = compressible(150_000).iter().map(|b| b.to_ascii_uppercase()).collect();
        for content in [&first, &second, &first] {
            let (stored, digest) = run(content, level, 5000);
            assert_eq!(digest.encoding, Encoding::Zstd);
            assert_eq!(&zstd::decode_all(&stored[..]).unwrap(), content);
        }
        // An upload abandoned mid-frame drops its context instead of returning it.
        let mut abandoned = EncodingWriter::new(Vec::new(), level);
        abandoned.write_all(&first).unwrap();
        drop(abandoned);
        let (stored, _) = run(&second, level, 5000);
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), second);
    }

    #[test]
    fn incompressible_and_precompressed_content_stays_raw() {
        let content = incompressible(200_000);
        let (stored, digest) = run(&content, 3, 65536);
        assert_eq!(digest.encoding, Encoding::Raw);
        assert_eq!(stored, content);

        let zstd_frame = zstd::encode_all(&compressible(100_000)[..], 3).unwrap();
        let mut padded = zstd_frame.clone();
        padded.extend(compressible(100_000)); // compressible tail, but the magic decides
        assert_eq!(run(&padded, 3, 4096).1.encoding, Encoding::Raw);
    }

    #[test]
    fn sccache_entries_are_recognised_as_compressed() {
        // A zip local header for member "out.o" (stored), then the member's zstd frame.
        let frame = zstd::encode_all(&compressible(50_000)[..], 3).unwrap();
        let mut entry = b"PK\x03\x04".to_vec();
        entry.extend([20, 0, 0, 0, 0, 0]); // version, flags, method 0 (stored)
        entry.extend([0u8; 16]); // times, crc, sizes
        entry.extend([5, 0, 0, 0]); // name length 5, extra length 0
        entry.extend(b"out.o");
        entry.extend(&frame);
        entry.extend(compressible(100_000)); // the magic decides, not the rest
        assert!(is_zip_of_zstd(&entry));
        assert_eq!(run(&entry, 3, 4096).1.encoding, Encoding::Raw);
        // A zip of uncompressed members is ordinary content.
        entry[30 + 5..30 + 9].copy_from_slice(b"text");
        assert!(!is_zip_of_zstd(&entry));
    }

    #[test]
    fn entropy_tells_random_from_structured_bytes() {
        assert!(bits_per_byte(&incompressible(65536)) > 7.99);
        assert!(bits_per_byte(&compressible(65536)) < 5.0);
        assert_eq!(bits_per_byte(&[7u8; 1000]), 0.0);
    }

    #[test]
    fn level_zero_and_tiny_content_stay_raw() {
        assert_eq!(run(&compressible(100_000), 0, 1000).1.encoding, Encoding::Raw);
        assert_eq!(run(b"Hello, World!", 3, 13).1.encoding, Encoding::Raw);
        assert_eq!(run(b"", 3, 1).1.raw_size, 0);
    }

    #[test]
    fn short_content_below_the_sample_is_decided_at_finish() {
        let content = compressible(10_000);
        let (stored, digest) = run(&content, 3, 1);
        assert_eq!(digest.encoding, Encoding::Zstd);
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), content);
    }
}
