//! `hearth::meaning` on arbitrary bytes: the meaning of an upload, as computed while it streams
//! in, against the readers of the clients (the zip crate sccache uses; ccache's checksum).
//!
//! The meaning does not depend on how the body is cut into chunks. Whatever has a meaning is a
//! zip archive or a ccache entry. An archive the zip crate opens too, and reads every member of
//! it (stored, CRC intact) under a distinct name, at most `MAX_MEMBERS` of them; copied by the
//! zip crate (ASCII names, no extra fields: what sccache writes) in its order and in reverse,
//! both copies have a meaning, the same. A ccache entry ends in the XXH3-128 of the rest; with another creation
//! time and the checksum recomputed, it has the same meaning. Nothing panics.

#![no_main]

use hearth::meaning::{meaning_of, Meaning, MeaningHasher, MAX_MEMBERS};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::io::{Cursor, Read};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, content)) = data.split_first() else {
        return;
    };
    let whole = meaning_of(content);

    // The same content in pieces of 1 to 256 bytes, their sizes taken from the content.
    let mut hasher = MeaningHasher::new();
    let mut rest = content;
    let mut size = usize::from(cut) + 1;
    while !rest.is_empty() {
        let (piece, next) = rest.split_at(size.min(rest.len()));
        hasher.update(piece);
        size = usize::from(piece[0]) + 1;
        rest = next;
    }
    assert_eq!(hasher.finalize(), whole, "the meaning depends on the chunking");

    let Some(meaning) = whole else {
        return;
    };
    if content.starts_with(&[0xcc, 0xac]) {
        return ccache_entry(content, meaning);
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(content)).expect("hearth read an archive the zip crate refuses");
    assert!(archive.len() <= MAX_MEMBERS);
    let mut names = HashSet::new();
    let mut rewritable = true;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).expect("a member hearth read");
        assert_eq!(member.compression(), zip::CompressionMethod::Stored);
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).expect("a member whose bytes or CRC hearth accepted");
        assert!(names.insert(member.name().to_string()), "a name twice");
        rewritable &= member.name().is_ascii() && member.extra_data().is_empty();
    }
    if !rewritable {
        return;
    }
    // The zip crate's copy keeps a member's name, bytes and permissions but not every mode bit
    // (file type, DOS attributes): both copies lose the same, and differ in order alone.
    let count = archive.len();
    let mut copy = |order: &mut dyn Iterator<Item = usize>| {
        let mut copy = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in order {
            copy.raw_copy_file(archive.by_index(i).unwrap()).unwrap();
        }
        copy.finish().unwrap().into_inner()
    };
    let (forward, reversed) = (copy(&mut (0..count)), copy(&mut (0..count).rev()));
    let copied = meaning_of(&forward);
    assert!(copied.is_some(), "hearth refuses what the zip crate wrote");
    if forward == content {
        assert_eq!(copied, Some(meaning));
    }
    assert_eq!(meaning_of(&reversed), copied, "the order of the members changed the meaning");
});

/// Where ccache's header keeps the creation time, and the checksum's length.
const CREATION_TIME: std::ops::Range<usize> = 7..15;
const CHECKSUM_LEN: usize = 16;

fn ccache_entry(content: &[u8], meaning: Meaning) {
    let body = content.len() - CHECKSUM_LEN;
    let checksum = twox_hash::XxHash3_128::oneshot(&content[..body]).to_be_bytes();
    assert_eq!(content[body..], checksum, "an entry whose checksum ccache would refuse");
    let mut later = content.to_vec();
    later[CREATION_TIME].iter_mut().for_each(|b| *b = b.wrapping_add(1));
    let checksum = twox_hash::XxHash3_128::oneshot(&later[..body]).to_be_bytes();
    later[body..].copy_from_slice(&checksum);
    assert_eq!(meaning_of(&later), Some(meaning), "the creation time changed the meaning");
}
