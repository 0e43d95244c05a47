//! sccache's entries: zip archives whose members are declared stored (their bytes are zstd
//! frames, `../shared/protocol/wire-protocols.md` §1.9), one member per output of a compilation,
//! written in hash-map order.
//!
//! The parse is strict, so that hearth and a client can never read one archive differently: the
//! local records follow each other from byte 0 without gaps, the central directory follows the
//! last member's bytes and describes the same members in the same order (offsets, flags, method,
//! CRC, sizes and names agree), the end record follows the central directory, counts it exactly
//! and ends the content (no comment, no trailing byte), and each member's CRC-32 matches its
//! bytes (a client's read checks it). Encryption, data descriptors, ZIP64,
//! compressed members, duplicate names and more than [`MAX_MEMBERS`] members make an archive
//! unrecognised, and byte identity applies to it.
//!
//! The meaning covers each member's name, its mode (the host system and external attributes of
//! its central record) and its bytes as stored (with their CRC and size), in name order. It
//! leaves out the order of the members, their timestamps, extra fields and comments, and the
//! version fields. A member recompressed with another zstd level or version has other bytes,
//! hence another meaning.

/// Members an entry may have. A compilation has a handful of outputs (an object or `.rlib` and
/// `.rmeta`, a dep file, `stdout`, `stderr`), and one split-DWARF file per codegen unit at most
/// (rustc's default is 256 units), so this leaves room fourfold while bounding the memory (a
/// hash and a name per member) and the sort at the end. Larger archives keep byte identity.
pub const MAX_MEMBERS: usize = 1024;
/// Bytes of all member names together: at most 64 KiB kept per upload.
pub const MAX_NAME_BYTES: usize = 64 * 1024;
/// Longest name, extra field or comment of one record.
const MAX_FIELD_LEN: usize = 1024;

const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
const END_SIGNATURE: u32 = 0x0605_4b50;
/// Bytes after the signature before the variable fields.
const LOCAL_FIXED_LEN: usize = 26;
const CENTRAL_FIXED_LEN: usize = 42;
const END_FIXED_LEN: usize = 18;
/// The only general-purpose flag allowed: bit 11, names in UTF-8. Bit 0 is encryption, bit 3
/// sizes in a data descriptor after the data; the rest mean nothing for stored members.
const ALLOWED_FLAGS: u16 = 1 << 11;
const METHOD_STORED: u16 = 0;
/// Extra field of ZIP64 sizes and offsets, which would override the 32-bit fields.
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// Separates this identity from every other use of blake3 in hearth.
const DOMAIN: &str = "hearth 2026-12-05 sccache zip entry meaning v1";

/// The incremental parse of one archive.
#[derive(Debug)]
pub(super) struct ZipEntry {
    expect: Expect,
    /// The record being gathered, up to `want` bytes.
    buf: Vec<u8>,
    want: usize,
    /// Bytes consumed so far.
    offset: u64,
    /// Where the record being gathered starts.
    record_start: u64,
    members: Vec<Member>,
    name_bytes: usize,
    /// Hashes the bytes of the member being read.
    data: blake3::Hasher,
    /// Their CRC-32, checked against the records'.
    crc: crc32fast::Hasher,
    /// Where the central directory starts, once it does.
    central_start: Option<u64>,
    /// Central records read so far.
    central_seen: usize,
}

#[derive(Debug)]
enum Expect {
    Signature,
    LocalFixed,
    LocalVariable(Local),
    Data { remaining: u64 },
    CentralFixed,
    CentralVariable(Central),
    EndFixed,
    Done,
    Invalid,
}

/// The fixed fields of a local record.
#[derive(Debug)]
struct Local {
    version_needed: u16,
    flags: u16,
    crc: u32,
    size: u32,
    /// The extra field follows the name.
    name_len: usize,
}

/// The fixed fields of a central record that the parse still needs.
#[derive(Debug)]
struct Central {
    host: u8,
    external_attributes: u32,
    name_len: usize,
    /// The comment follows the extra field.
    extra_len: usize,
}

#[derive(Debug)]
struct Member {
    header_offset: u64,
    version_needed: u16,
    flags: u16,
    crc: u32,
    size: u32,
    name: Vec<u8>,
    data_hash: [u8; 32],
    /// From the central record: the system that wrote it (3 = Unix) and its attributes (the
    /// Unix mode in the upper 16 bits).
    host: u8,
    external_attributes: u32,
}

impl Default for ZipEntry {
    fn default() -> Self {
        ZipEntry {
            expect: Expect::Signature,
            buf: Vec::new(),
            want: 4,
            offset: 0,
            record_start: 0,
            members: Vec::new(),
            name_bytes: 0,
            data: blake3::Hasher::new(),
            crc: crc32fast::Hasher::new(),
            central_start: None,
            central_seen: 0,
        }
    }
}

impl ZipEntry {
    pub(super) fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.expect {
                Expect::Invalid => return,
                // Trailing data: a reader searching for the end record from the end could see
                // another archive.
                Expect::Done => return self.expect = Expect::Invalid,
                Expect::Data { remaining } => {
                    let take = (*remaining).min(bytes.len() as u64) as usize;
                    self.data.update(&bytes[..take]);
                    self.crc.update(&bytes[..take]);
                    *remaining -= take as u64;
                    self.offset += take as u64;
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        self.expect = self.end_member();
                    }
                }
                _ => {
                    let take = (self.want - self.buf.len()).min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..take]);
                    self.offset += take as u64;
                    bytes = &bytes[take..];
                    if self.buf.len() == self.want {
                        let expect = std::mem::replace(&mut self.expect, Expect::Invalid);
                        self.expect = self.step(expect).unwrap_or(Expect::Invalid);
                        self.buf.clear();
                    }
                }
            }
        }
    }

    /// The meaning, if the content was one complete, well-formed archive.
    pub(super) fn finalize(self) -> Option<[u8; 32]> {
        if !matches!(self.expect, Expect::Done) {
            return None;
        }
        let mut members: Vec<&Member> = self.members.iter().collect();
        members.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        if members.windows(2).any(|pair| pair[0].name == pair[1].name) {
            return None;
        }
        let mut hasher = blake3::Hasher::new_derive_key(DOMAIN);
        hasher.update(&(members.len() as u64).to_le_bytes());
        for m in members {
            hasher.update(&(m.name.len() as u64).to_le_bytes());
            hasher.update(&m.name);
            hasher.update(&[m.host]);
            hasher.update(&m.external_attributes.to_le_bytes());
            hasher.update(&m.crc.to_le_bytes());
            hasher.update(&u64::from(m.size).to_le_bytes());
            hasher.update(&m.data_hash);
        }
        Some(*hasher.finalize().as_bytes())
    }

    /// Reads the gathered record; `None` when the archive is not one this module recognises.
    fn step(&mut self, expect: Expect) -> Option<Expect> {
        let mut fields = Fields(&self.buf);
        Some(match expect {
            Expect::Signature => self.record(fields.u32())?,
            Expect::LocalFixed => {
                let version_needed = fields.u16();
                let flags = fields.u16();
                let method = fields.u16();
                let _modified = fields.u32();
                let crc = fields.u32();
                let (compressed, size) = (fields.u32(), fields.u32());
                let (name_len, extra_len) = (usize::from(fields.u16()), usize::from(fields.u16()));
                known(flags & !ALLOWED_FLAGS == 0 && method == METHOD_STORED)?;
                known(compressed == size && size != u32::MAX)?;
                known((1..=MAX_FIELD_LEN).contains(&name_len) && extra_len <= MAX_FIELD_LEN)?;
                self.want = name_len + extra_len;
                Expect::LocalVariable(Local {
                    version_needed,
                    flags,
                    crc,
                    size,
                    name_len,
                })
            }
            Expect::LocalVariable(local) => return self.local_fields(local),
            Expect::CentralFixed => {
                let member = self.members.get(self.central_seen)?;
                let made_by = fields.u16();
                let version_needed = fields.u16();
                let flags = fields.u16();
                let method = fields.u16();
                let _modified = fields.u32();
                let crc = fields.u32();
                let (compressed, size) = (fields.u32(), fields.u32());
                let (name_len, extra_len) = (usize::from(fields.u16()), usize::from(fields.u16()));
                let comment_len = usize::from(fields.u16());
                let disk = fields.u16();
                let _internal_attributes = fields.u16();
                let external_attributes = fields.u32();
                let header_offset = u64::from(fields.u32());
                known(version_needed == member.version_needed && flags == member.flags && method == METHOD_STORED)?;
                known(crc == member.crc && compressed == member.size && size == member.size)?;
                known(disk == 0 && header_offset == member.header_offset && name_len == member.name.len())?;
                known(extra_len <= MAX_FIELD_LEN && comment_len <= MAX_FIELD_LEN)?;
                self.want = name_len + extra_len + comment_len;
                Expect::CentralVariable(Central {
                    host: (made_by >> 8) as u8,
                    external_attributes,
                    name_len,
                    extra_len,
                })
            }
            Expect::CentralVariable(central) => {
                let member = &mut self.members[self.central_seen];
                let (name, rest) = self.buf.split_at(central.name_len);
                known(name == member.name.as_slice() && extra_is_plain(&rest[..central.extra_len]))?;
                member.host = central.host;
                member.external_attributes = central.external_attributes;
                self.central_seen += 1;
                self.next_record()
            }
            Expect::EndFixed => {
                let central_start = self.central_start?;
                let count = self.members.len() as u64;
                let agrees = fields.u16() == 0
                    && fields.u16() == 0
                    && u64::from(fields.u16()) == count
                    && u64::from(fields.u16()) == count
                    && u64::from(fields.u32()) == self.record_start - central_start
                    && u64::from(fields.u32()) == central_start
                    && fields.u16() == 0;
                known(agrees)?;
                Expect::Done
            }
            Expect::Data { .. } | Expect::Done | Expect::Invalid => return None,
        })
    }

    /// What the signature just read starts: a member before the central directory, a central
    /// record for each member, then the end record.
    fn record(&mut self, signature: u32) -> Option<Expect> {
        match signature {
            LOCAL_SIGNATURE if self.central_start.is_none() => {
                known(self.members.len() < MAX_MEMBERS)?;
                self.want = LOCAL_FIXED_LEN;
                Some(Expect::LocalFixed)
            }
            CENTRAL_SIGNATURE if !self.members.is_empty() && self.central_seen < self.members.len() => {
                self.central_start.get_or_insert(self.record_start);
                self.want = CENTRAL_FIXED_LEN;
                Some(Expect::CentralFixed)
            }
            END_SIGNATURE if self.central_start.is_some() && self.central_seen == self.members.len() => {
                self.want = END_FIXED_LEN;
                Some(Expect::EndFixed)
            }
            _ => None,
        }
    }

    /// The name and extra field of a local record: the member starts.
    fn local_fields(&mut self, local: Local) -> Option<Expect> {
        let (name, extra) = self.buf.split_at(local.name_len);
        known(extra_is_plain(extra))?;
        self.name_bytes += name.len();
        known(self.name_bytes <= MAX_NAME_BYTES)?;
        self.members.push(Member {
            header_offset: self.record_start,
            version_needed: local.version_needed,
            flags: local.flags,
            crc: local.crc,
            size: local.size,
            name: name.to_vec(),
            data_hash: [0; 32],
            host: 0,
            external_attributes: 0,
        });
        self.data.reset();
        self.crc.reset();
        if local.size == 0 {
            return Some(self.end_member());
        }
        Some(Expect::Data {
            remaining: local.size.into(),
        })
    }

    /// The member's bytes are all read: what comes next.
    fn end_member(&mut self) -> Expect {
        let crc = std::mem::take(&mut self.crc).finalize();
        match self.members.last_mut() {
            Some(member) if member.crc == crc => member.data_hash = *self.data.finalize().as_bytes(),
            _ => return Expect::Invalid,
        }
        self.next_record()
    }

    fn next_record(&mut self) -> Expect {
        self.record_start = self.offset;
        self.want = 4;
        Expect::Signature
    }
}

/// `Some(())` when `condition` holds: lets a failed check end the parse with `?`.
fn known(condition: bool) -> Option<()> {
    condition.then_some(())
}

/// An extra field made of whole (id, length, data) blocks, none of them ZIP64's.
fn extra_is_plain(mut extra: &[u8]) -> bool {
    while !extra.is_empty() {
        if extra.len() < 4 {
            return false;
        }
        let mut fields = Fields(extra);
        let (id, len) = (fields.u16(), usize::from(fields.u16()));
        if id == ZIP64_EXTRA_ID || fields.0.len() < len {
            return false;
        }
        extra = &fields.0[len..];
    }
    true
}

/// Little-endian fields read in order from a record whose length was checked before.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u16(&mut self) -> u16 {
        let (field, rest) = self.0.split_at(2);
        self.0 = rest;
        u16::from_le_bytes([field[0], field[1]])
    }

    fn u32(&mut self) -> u32 {
        let (field, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_le_bytes([field[0], field[1], field[2], field[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member as sccache writes it.
    #[derive(Clone)]
    struct TestMember {
        name: &'static str,
        mode: u32,
        bytes: Vec<u8>,
        /// DOS time and date.
        modified: u32,
    }

    fn member(name: &'static str, bytes: &[u8]) -> TestMember {
        TestMember {
            name,
            mode: 0o100644,
            bytes: bytes.to_vec(),
            modified: 0x0021_0000,
        }
    }

    /// The zip crate's layout for stored members, written to a seekable buffer.
    fn zip(members: &[TestMember]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for m in members {
            let offset = out.len() as u32;
            let crc = crc32(&m.bytes);
            let size = m.bytes.len() as u32;
            out.extend_from_slice(&LOCAL_SIGNATURE.to_le_bytes());
            for field in [20u16, 0, METHOD_STORED] {
                out.extend_from_slice(&field.to_le_bytes());
            }
            for field in [m.modified, crc, size, size] {
                out.extend_from_slice(&field.to_le_bytes());
            }
            out.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(m.name.as_bytes());
            out.extend_from_slice(&m.bytes);

            central.extend_from_slice(&CENTRAL_SIGNATURE.to_le_bytes());
            for field in [(3u16 << 8) | 46, 20, 0, METHOD_STORED] {
                central.extend_from_slice(&field.to_le_bytes());
            }
            for field in [m.modified, crc, size, size] {
                central.extend_from_slice(&field.to_le_bytes());
            }
            for field in [m.name.len() as u16, 0, 0, 0, 0] {
                central.extend_from_slice(&field.to_le_bytes());
            }
            central.extend_from_slice(&(m.mode << 16).to_le_bytes());
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(m.name.as_bytes());
        }
        let central_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&END_SIGNATURE.to_le_bytes());
        let count = members.len() as u16;
        for field in [0u16, 0, count, count] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&central_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn meaning(content: &[u8]) -> Option<[u8; 32]> {
        let mut entry = ZipEntry::default();
        entry.update(content);
        entry.finalize()
    }

    /// A Rust compilation's outputs, the first bytes of each a zstd frame.
    fn outputs() -> Vec<TestMember> {
        vec![
            member("libserde-1a2b.rlib", b"\x28\xb5\x2f\xfd rlib bytes"),
            member("libserde-1a2b.rmeta", b"\x28\xb5\x2f\xfd rmeta bytes"),
            member("stderr", b""),
            member("serde-1a2b.d", b"\x28\xb5\x2f\xfd dep file"),
        ]
    }

    #[test]
    fn the_same_members_in_another_order_have_the_same_meaning() {
        let members = outputs();
        let first = meaning(&zip(&members)).expect("recognised");
        let mut reordered = members.clone();
        reordered.reverse();
        reordered.swap(0, 1);
        assert_ne!(zip(&members), zip(&reordered));
        assert_eq!(meaning(&zip(&reordered)), Some(first));
    }

    #[test]
    fn timestamps_are_not_meaning() {
        let mut members = outputs();
        members[1].modified = 0x5a21_6b3c;
        assert_eq!(meaning(&zip(&members)), meaning(&zip(&outputs())));
    }

    #[test]
    fn other_bytes_another_mode_or_another_name_mean_something_else() {
        let first = meaning(&zip(&outputs())).expect("recognised");
        let mut bytes = outputs();
        bytes[0].bytes[6] ^= 1;
        let mut mode = outputs();
        mode[3].mode = 0o100755;
        let mut name = outputs();
        name[2].name = "stdout";
        let mut fewer = outputs();
        fewer.pop();
        for other in [bytes, mode, name, fewer] {
            let other = meaning(&zip(&other)).expect("recognised");
            assert_ne!(other, first);
        }
    }

    #[test]
    fn the_meaning_does_not_depend_on_how_the_body_is_cut() {
        let content = zip(&outputs());
        let whole = meaning(&content);
        for piece in [1, 2, 3, 7, 30, 64] {
            let mut entry = ZipEntry::default();
            for chunk in content.chunks(piece) {
                entry.update(chunk);
            }
            assert_eq!(entry.finalize(), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_unrecognised() {
        let content = zip(&outputs());
        for len in 0..content.len() {
            assert_eq!(meaning(&content[..len]), None, "first {len} bytes");
        }
        let mut longer = content.clone();
        longer.push(0);
        assert_eq!(meaning(&longer), None);
    }

    #[test]
    fn every_changed_byte_changes_the_meaning_or_is_refused_unless_it_is_a_timestamp_or_version() {
        let content = zip(&outputs());
        let first = meaning(&content).expect("recognised");
        let mut unchanged = 0;
        for i in 0..content.len() {
            let mut changed = content.clone();
            changed[i] ^= 0x40;
            if meaning(&changed) == Some(first) {
                unchanged += 1;
            }
        }
        // Per member: the time and date of both records (8 bytes), the low byte of the central
        // record's version made by (the high one is the host) and its internal attributes (2).
        assert_eq!(unchanged, 11 * outputs().len());
    }

    #[test]
    fn a_crc_that_does_not_match_the_bytes_is_refused() {
        let members = outputs();
        let content = zip(&members);
        let central = content.len() - 22 - members.iter().map(|m| 46 + m.name.len()).sum::<usize>();
        let mut changed = content.clone();
        for crc in [14, central + 16] {
            changed[crc] ^= 1;
        }
        assert_eq!(meaning(&changed), None, "both records agree, the bytes do not");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut members = outputs();
        members[2].name = "stdout";
        members[3].name = "stdout";
        assert_eq!(meaning(&zip(&members)), None);
    }

    #[test]
    fn a_central_record_that_disagrees_with_its_member_is_refused() {
        let members = outputs();
        let content = zip(&members);
        let central = content.len() - 22 - members.iter().map(|m| 46 + m.name.len()).sum::<usize>();
        // The CRC (offset 16), the size (24), the local offset (42) of the first central record.
        for field in [16, 20, 24, 42] {
            let mut changed = content.clone();
            changed[central + field] ^= 1;
            assert_eq!(meaning(&changed), None, "field at {field}");
        }
    }

    #[test]
    fn encrypted_described_compressed_or_commented_archives_are_refused() {
        let content = zip(&outputs());
        let flag = |bit: u16| {
            let mut changed = content.clone();
            changed[6..8].copy_from_slice(&(1u16 << bit).to_le_bytes());
            changed
        };
        let mut deflated = content.clone();
        deflated[8] = 8;
        let mut comment = content.clone();
        let len = comment.len();
        comment[len - 2] = 1;
        comment.push(b'x');
        for refused in [flag(0), flag(3), deflated, comment] {
            assert_eq!(meaning(&refused), None);
        }
        // Names in UTF-8 are fine, given the central record says so too.
        let mut utf8 = outputs();
        utf8.truncate(1);
        let mut utf8 = zip(&utf8);
        let central = utf8.len() - 22 - 46 - "libserde-1a2b.rlib".len();
        utf8[6..8].copy_from_slice(&(1u16 << 11).to_le_bytes());
        utf8[central + 8..central + 10].copy_from_slice(&(1u16 << 11).to_le_bytes());
        assert!(meaning(&utf8).is_some());
    }

    #[test]
    fn too_many_members_or_names_are_refused() {
        let names: Vec<&'static str> = (0..=MAX_MEMBERS)
            .map(|i| &*Box::leak(format!("out{i}").into_boxed_str()))
            .collect();
        let members: Vec<TestMember> = names.iter().map(|n| member(n, b"x")).collect();
        assert!(meaning(&zip(&members[..MAX_MEMBERS])).is_some());
        assert_eq!(meaning(&zip(&members)), None);

        let long: &'static str = Box::leak("n".repeat(MAX_FIELD_LEN + 1).into_boxed_str());
        assert_eq!(meaning(&zip(&[member(long, b"x")])), None);
    }

    #[test]
    fn other_content_is_unrecognised() {
        for content in [&b""[..], b"PK", b"plain text", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0]] {
            assert_eq!(meaning(content), None);
        }
    }
}
