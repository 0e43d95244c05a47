//! The read side: decode a stored blob and check it against its name while reading.
//!
//! A corrupt blob must never look like a complete response. Whole reads verify before the
//! first byte is sent; streamed reads hold back the last chunk until the hash has checked
//! out and end with an error instead, which aborts the HTTP response mid-body.

use super::{BlobInfo, Encoding};
use bytes::{Bytes, BytesMut};
use std::io::{self, Read};

fn corrupt(info: &BlobInfo, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("blob {} failed verification: {detail}", info.hash),
    )
}

fn decoder<'a, R: Read + Send + 'a>(source: R, encoding: Encoding) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match encoding {
        Encoding::Raw => Box::new(source),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(source)?),
    })
}

/// zstd reports a damaged frame as one of these; real disk errors (EIO, …) are left as they are.
fn is_decode_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Other | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
    )
}

/// Reads, decodes and verifies a whole blob. Errors of kind `InvalidData` mean corruption.
pub fn read_verified<R: Read + Send>(source: R, info: &BlobInfo) -> io::Result<Bytes> {
    let mut content = Vec::with_capacity(info.raw_size as usize);
    // One byte more than expected is enough to tell "too long" without reading a bomb.
    decoder(source, info.encoding)?
        .take(info.raw_size + 1)
        .read_to_end(&mut content)
        .map_err(|e| if is_decode_error(&e) { corrupt(info, e) } else { e })?;
    if content.len() as u64 != info.raw_size {
        return Err(corrupt(
            info,
            format!("{} bytes instead of {}", content.len(), info.raw_size),
        ));
    }
    let actual = blake3::hash(&content);
    if actual.to_hex().as_str() != info.hash {
        return Err(corrupt(info, format!("content hashes to {}", actual.to_hex())));
    }
    Ok(Bytes::from(content))
}

/// Decoded chunks of a blob, verified: the final chunk is released only after the whole
/// content hashed to the blob's name; otherwise the iterator ends with an `InvalidData` error.
pub struct VerifiedChunks<'a> {
    source: Box<dyn Read + Send + 'a>,
    info: BlobInfo,
    hasher: blake3::Hasher,
    seen: u64,
    chunk_size: usize,
    held: Option<Bytes>,
    done: bool,
}

impl<'a> VerifiedChunks<'a> {
    pub fn new<R: Read + Send + 'a>(source: R, info: BlobInfo, chunk_size: usize) -> io::Result<Self> {
        Ok(VerifiedChunks {
            source: decoder(source, info.encoding)?,
            info,
            hasher: blake3::Hasher::new(),
            seen: 0,
            chunk_size,
            held: None,
            done: false,
        })
    }

    /// Fills one chunk (short only at the end of the content).
    fn read_chunk(&mut self) -> io::Result<Bytes> {
        let mut buf = BytesMut::zeroed(self.chunk_size);
        let mut filled = 0;
        while filled < buf.len() {
            match self.source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_decode_error(&e) => return Err(corrupt(&self.info, e)),
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf.freeze())
    }

    fn verify_end(&self) -> io::Result<()> {
        if self.seen != self.info.raw_size {
            return Err(corrupt(
                &self.info,
                format!("{} bytes instead of {}", self.seen, self.info.raw_size),
            ));
        }
        let actual = self.hasher.finalize();
        if actual.to_hex().as_str() != self.info.hash {
            return Err(corrupt(&self.info, format!("content hashes to {}", actual.to_hex())));
        }
        Ok(())
    }
}

impl Iterator for VerifiedChunks<'_> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let chunk = match self.read_chunk() {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if chunk.is_empty() {
                self.done = true;
                return match self.verify_end() {
                    Ok(()) => self.held.take().map(Ok),
                    Err(e) => Some(Err(e)),
                };
            }
            self.hasher.update(&chunk);
            self.seen += chunk.len() as u64;
            if self.seen > self.info.raw_size {
                self.done = true;
                return Some(Err(corrupt(&self.info, "longer than recorded")));
            }
            if let Some(previous) = self.held.replace(chunk) {
                return Some(Ok(previous));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_for(content: &[u8], stored: &[u8], encoding: Encoding) -> BlobInfo {
        BlobInfo {
            meaning: None,
            hash: blake3::hash(content).to_hex().to_string(),
            raw_size: content.len() as u64,
            stored_size: stored.len() as u64,
            encoding,
        }
    }

    #[test]
    fn good_blobs_pass_both_ways() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let stored = zstd::encode_all(&content[..], 3).unwrap();
        let info = info_for(&content, &stored, Encoding::Zstd);
        assert_eq!(read_verified(&stored[..], &info).unwrap(), content);
        let chunks: Vec<Bytes> = VerifiedChunks::new(&stored[..], info, 4096)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(chunks.concat(), content);
    }

    #[test]
    fn a_flipped_byte_never_yields_the_full_body() {
        let content: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let info = info_for(&content, &content, Encoding::Raw);
        let mut damaged = content.clone();
        damaged[49_000] ^= 1;
        assert_eq!(
            read_verified(&damaged[..], &info).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut served = 0;
        let mut failed = false;
        for item in VerifiedChunks::new(&damaged[..], info, 4096).unwrap() {
            match item {
                Ok(chunk) => served += chunk.len(),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    failed = true;
                }
            }
        }
        assert!(failed);
        assert!(served < content.len());
    }

    #[test]
    fn truncated_or_garbage_zstd_is_corruption() {
        let content = vec![7u8; 10_000];
        let stored = zstd::encode_all(&content[..], 3).unwrap();
        let info = info_for(&content, &stored, Encoding::Zstd);
        let truncated = &stored[..stored.len() - 3];
        assert_eq!(
            read_verified(truncated, &info).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let garbage = vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5];
        assert!(read_verified(&garbage[..], &info).is_err());
    }
}
