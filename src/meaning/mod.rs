//! Content identity by meaning: what an entry says, not how its bytes happen to be laid out.
//!
//! hearth addresses blobs by the blake3 of their exact bytes. For the archives compiler caches
//! store, two deterministic builds can produce different bytes with the same meaning: sccache
//! writes an entry's members (`.rlib`, `.rmeta`, `stderr`, …) in hash-map order
//! ([`sccache_zip`]), ccache stamps each entry with its creation time ([`ccache`]). The meaning
//! computed here lets a rewrite of a key with the same meaning count as such, not as a
//! conflicting write. It is computed while the body streams in, in bounded memory; content
//! that is not a recognised entry, or that is malformed in any way, has no meaning beyond its
//! bytes ([`MeaningHasher::finalize`] returns `None`), and byte identity applies.

mod ccache;
mod sccache_zip;

pub use sccache_zip::{MAX_MEMBERS, MAX_NAME_BYTES};

/// The identity of an entry's meaning: equal for two entries exactly when they are entries of
/// the same kind with the same content (see [`sccache_zip`] and [`ccache`] for what that
/// covers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Meaning([u8; 32]);

impl Meaning {
    /// Lowercase hex, as stored next to the blob's hash.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Reads what [`Self::to_hex`] wrote.
    pub fn from_hex(hex: &str) -> Option<Meaning> {
        blake3::Hash::from_hex(hex).ok().map(|hash| Meaning(*hash.as_bytes()))
    }
}

/// Computes the [`Meaning`] of content fed to it in pieces of any size.
#[derive(Debug, Default)]
pub struct MeaningHasher {
    zip: sccache_zip::ZipEntry,
    ccache: ccache::CcacheEntry,
}

impl MeaningHasher {
    pub fn new() -> Self {
        MeaningHasher::default()
    }

    /// Feeds the next bytes of the content. Cheap once the content is known not to be an entry.
    pub fn update(&mut self, bytes: &[u8]) {
        // Each gives up within its magic number on the other's entries and on anything else.
        self.zip.update(bytes);
        self.ccache.update(bytes);
    }

    /// The content's meaning, or `None` when it is not a well-formed entry.
    pub fn finalize(self) -> Option<Meaning> {
        self.zip.finalize().or(self.ccache.finalize()).map(Meaning)
    }
}

/// The meaning of `content` in one piece.
pub fn meaning_of(content: &[u8]) -> Option<Meaning> {
    let mut hasher = MeaningHasher::new();
    hasher.update(content);
    hasher.finalize()
}
