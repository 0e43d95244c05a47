//! ccache's entries (results and manifests; entry format 1, ccache 4.7 and later): a header,
//! the payload (zstd-compressed, or not) and an XXH3-128 checksum of every byte before it. Two
//! runs that compile the same thing write the same entry but for the header's creation time,
//! and so the checksum: cold builds of one file 2 s apart (ccache 4.7.5) differ in exactly
//! those 24 bytes.
//!
//! The meaning is every byte of the entry but the creation time and the checksum, once the
//! checksum is checked as a client's read does: a changed payload, level, version or namespace
//! is another meaning, and an entry whose checksum is wrong has none. The header is read
//! strictly (magic, format version, known entry and compression types, printable strings).
//!
//! Header layout: magic `cc ac`, format version, entry type, compression type, compression
//! level, self-contained flag (one byte each), creation time (u64), ccache's version and the
//! namespace (a length byte each, then the bytes), the entry's size (u64).

use std::ops::Range;

const MAGIC: [u8; 2] = [0xcc, 0xac];
const FORMAT_VERSION: u8 = 1;
/// Where the creation time is, in the header.
const CREATION_TIME: Range<u64> = 7..15;
/// Where the length of ccache's version string is.
const VERSION_LEN_AT: usize = 15;
const CHECKSUM_LEN: usize = 16;
/// The longest header: the fixed part, two strings of up to 255 bytes, the entry's size.
const MAX_HEADER_LEN: usize = VERSION_LEN_AT + 1 + 255 + 1 + 255 + 8;
/// Separates this identity from every other use of blake3 in hearth.
const DOMAIN: &str = "hearth 2026-12-05 ccache entry meaning v1";

/// The incremental read of one entry.
pub(super) struct CcacheEntry {
    /// The first bytes, until the header is complete and checked.
    header: Vec<u8>,
    header_len: Option<usize>,
    valid: bool,
    /// Bytes hashed so far (all but the last [`CHECKSUM_LEN`] seen).
    hashed: u64,
    checksum: twox_hash::XxHash3_128,
    meaning: blake3::Hasher,
    /// The last bytes seen: the checksum, if the content ends here.
    tail: Vec<u8>,
}

impl std::fmt::Debug for CcacheEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CcacheEntry")
            .field("header_len", &self.header_len)
            .field("valid", &self.valid)
            .field("hashed", &self.hashed)
            .finish_non_exhaustive()
    }
}

impl Default for CcacheEntry {
    fn default() -> Self {
        CcacheEntry {
            header: Vec::new(),
            header_len: None,
            valid: true,
            hashed: 0,
            checksum: twox_hash::XxHash3_128::new(),
            meaning: blake3::Hasher::new_derive_key(DOMAIN),
            tail: Vec::with_capacity(CHECKSUM_LEN),
        }
    }
}

impl CcacheEntry {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        if !self.valid || bytes.is_empty() {
            return;
        }
        if self.header_len.is_none() {
            let take = bytes.len().min(MAX_HEADER_LEN - self.header.len());
            self.header.extend_from_slice(&bytes[..take]);
            match header_len(&self.header) {
                Err(Malformed) => return self.valid = false,
                Ok(Some(len)) => {
                    self.header_len = Some(len);
                    self.header = Vec::new();
                }
                Ok(None) => {}
            }
        }
        // Everything but the last CHECKSUM_LEN bytes is hashed now.
        let total = self.tail.len() + bytes.len();
        if total <= CHECKSUM_LEN {
            self.tail.extend_from_slice(bytes);
            return;
        }
        let ready = total - CHECKSUM_LEN;
        let mut tail = std::mem::take(&mut self.tail);
        let from_tail = ready.min(tail.len());
        self.hash(&tail[..from_tail]);
        let from_bytes = ready - from_tail;
        self.hash(&bytes[..from_bytes]);
        tail.drain(..from_tail);
        tail.extend_from_slice(&bytes[from_bytes..]);
        self.tail = tail;
    }

    /// The meaning, if the content was one complete entry with a correct checksum.
    pub(super) fn finalize(self) -> Option<[u8; 32]> {
        let header_len = self.header_len?;
        let complete = self.valid && self.hashed >= header_len as u64 && self.tail.len() == CHECKSUM_LEN;
        let checksum = self.checksum.finish_128().to_be_bytes();
        (complete && self.tail == checksum).then(|| *self.meaning.finalize().as_bytes())
    }

    /// Feeds bytes before the checksum to both hashes; the meaning skips the creation time.
    fn hash(&mut self, bytes: &[u8]) {
        self.checksum.write(bytes);
        let start = self.hashed;
        self.hashed += bytes.len() as u64;
        let skip_from = CREATION_TIME.start.clamp(start, self.hashed) - start;
        let skip_to = CREATION_TIME.end.clamp(start, self.hashed) - start;
        self.meaning.update(&bytes[..skip_from as usize]);
        self.meaning.update(&bytes[skip_to as usize..]);
    }
}

/// The header does not start an entry this module reads.
struct Malformed;

/// The header's length once `start` holds all of it, `None` while it may still come.
fn header_len(start: &[u8]) -> Result<Option<usize>, Malformed> {
    let check = |ok: bool| if ok { Ok(()) } else { Err(Malformed) };
    let fixed = [MAGIC[0], MAGIC[1], FORMAT_VERSION];
    check(start.iter().zip(fixed).all(|(byte, expected)| *byte == expected))?;
    if start.len() <= VERSION_LEN_AT {
        return Ok(None);
    }
    // Entry type (result, manifest), compression type (none, zstd), self-contained flag.
    check(start[3] <= 1 && start[4] <= 1 && start[6] <= 1)?;
    let version_len = usize::from(start[VERSION_LEN_AT]);
    check(version_len > 0)?;
    let namespace_len_at = VERSION_LEN_AT + 1 + version_len;
    let Some(&namespace_len) = start.get(namespace_len_at) else {
        return Ok(None);
    };
    let end = namespace_len_at + 1 + usize::from(namespace_len) + 8;
    if start.len() < end {
        return Ok(None);
    }
    let printable = |text: &[u8]| text.iter().all(|b| b.is_ascii_graphic());
    check(printable(&start[VERSION_LEN_AT + 1..namespace_len_at]))?;
    check(printable(&start[namespace_len_at + 1..end - 8]))?;
    Ok(Some(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by ccache 4.7.5 for one C file, in two cold builds 2 s apart, and the manifest.
    const RESULT_1: &[u8] = include_bytes!("../../tests/fixtures/ccache-entries/result-1");
    const RESULT_2: &[u8] = include_bytes!("../../tests/fixtures/ccache-entries/result-2");
    const MANIFEST: &[u8] = include_bytes!("../../tests/fixtures/ccache-entries/manifest-1");

    fn meaning(content: &[u8]) -> Option<[u8; 32]> {
        let mut entry = CcacheEntry::default();
        entry.update(content);
        entry.finalize()
    }

    /// `content` with its checksum recomputed, as a writer would.
    fn resealed(mut content: Vec<u8>) -> Vec<u8> {
        let body = content.len() - CHECKSUM_LEN;
        let checksum = twox_hash::XxHash3_128::oneshot(&content[..body]).to_be_bytes();
        content[body..].copy_from_slice(&checksum);
        content
    }

    #[test]
    fn two_builds_of_the_same_file_have_the_same_meaning() {
        assert_ne!(RESULT_1, RESULT_2);
        let first = meaning(RESULT_1).expect("recognised");
        assert_eq!(meaning(RESULT_2), Some(first));
        assert_ne!(meaning(MANIFEST).expect("recognised"), first);
    }

    #[test]
    fn the_meaning_does_not_depend_on_how_the_body_is_cut() {
        for piece in [1, 2, 7, 15, 16, 17, 100] {
            let mut entry = CcacheEntry::default();
            for chunk in RESULT_1.chunks(piece) {
                entry.update(chunk);
            }
            assert_eq!(entry.finalize(), meaning(RESULT_1), "pieces of {piece}");
        }
    }

    #[test]
    fn any_changed_byte_breaks_the_checksum() {
        for i in 0..RESULT_1.len() {
            let mut changed = RESULT_1.to_vec();
            changed[i] ^= 0x10;
            assert_eq!(meaning(&changed), None, "byte {i}");
        }
        for len in 0..RESULT_1.len() {
            assert_eq!(meaning(&RESULT_1[..len]), None, "first {len} bytes");
        }
        let mut longer = RESULT_1.to_vec();
        longer.push(0);
        assert_eq!(meaning(&longer), None);
    }

    #[test]
    fn resealed_only_the_creation_time_keeps_the_meaning() {
        let first = meaning(RESULT_1).expect("recognised");
        for i in 0..RESULT_1.len() - CHECKSUM_LEN {
            let mut changed = RESULT_1.to_vec();
            changed[i] ^= 0x10;
            let expected = CREATION_TIME.contains(&(i as u64)).then_some(first);
            let changed = meaning(&resealed(changed));
            if expected.is_some() {
                assert_eq!(changed, expected, "byte {i}, the creation time");
            } else {
                assert_ne!(changed, Some(first), "byte {i}");
            }
        }
    }

    #[test]
    fn other_formats_are_unrecognised() {
        let mut version_2 = RESULT_1.to_vec();
        version_2[2] = 2;
        let mut unknown_compression = RESULT_1.to_vec();
        unknown_compression[4] = 2;
        let mut unprintable_version = RESULT_1.to_vec();
        unprintable_version[VERSION_LEN_AT + 1] = b' ';
        for content in [version_2, unknown_compression, unprintable_version] {
            assert_eq!(meaning(&resealed(content)), None);
        }
        for content in [&b""[..], b"\xcc\xac", b"PK\x03\x04", &[0xcc; 64]] {
            assert_eq!(meaning(content), None);
        }
    }
}
