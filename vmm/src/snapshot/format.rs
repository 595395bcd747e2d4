//! The snapshot state file's container: a fixed header, then a postcard body.
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"HUSKSNAP"
//!      8     4  format version (u32, little endian)
//!     12     8  body length in bytes (u64, LE), at most MAX_STATE_BYTES
//!     20     8  CRC-64/XZ of the body (u64, LE)
//!     28     n  body: the state, encoded with postcard
//! ```
//!
//! postcard (a maintained, documented, stable wire format with varint integers) keeps
//! the body compact — the KVM structures are byte blobs, which JSON would inflate about
//! threefold and parse slowly on the restore path. The header is checked before the body
//! is decoded, so a file of another format version, a truncated or bit-flipped file, or
//! one larger than the limit is refused without decoding untrusted bytes.
//!
//! Files are written to a temporary name in the target directory, fsynced, renamed
//! over the target and the directory fsynced: a crash (even `kill -9`) at any moment
//! leaves either the old file, no file, or a complete one — never a partial file that
//! loads (a partial temporary file fails the length or CRC check anyway).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The state file's magic number.
pub const MAGIC: [u8; 8] = *b"HUSKSNAP";
/// The format version this build writes and the only one it loads. 2: the i8042 state
/// and the boot marker's restore generation joined the device states.
pub const FORMAT_VERSION: u32 = 2;
/// Header length in bytes.
pub const HEADER_LEN: usize = 28;
/// Upper bound on the body (a 32-vCPU VM's state is well below 1 MiB).
pub const MAX_STATE_BYTES: u64 = 16 << 20;

const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Errors reading or writing a state file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file is shorter than its header.
    #[error("the snapshot state file is truncated (no complete header)")]
    TruncatedHeader,
    /// Not a husk state file.
    #[error("not a husk snapshot state file (bad magic number)")]
    BadMagic,
    /// Another format version.
    #[error("snapshot format version {found} is not supported by this husk (it reads version {FORMAT_VERSION}); take the snapshot again with this husk")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// The body is larger than allowed.
    #[error("the snapshot state is {0} bytes, more than the limit of {MAX_STATE_BYTES}")]
    TooLarge(u64),
    /// The body is shorter or longer than the header says.
    #[error("the snapshot state file is truncated or has trailing data (body {found} bytes, header says {expected})")]
    Length {
        /// What the header says.
        expected: u64,
        /// What the file holds.
        found: u64,
    },
    /// The checksum does not match: the file is corrupt.
    #[error("the snapshot state file is corrupt (CRC64 mismatch)")]
    Checksum,
    /// The body does not decode.
    #[error("the snapshot state does not decode")]
    Decode(#[source] postcard::Error),
    /// The state does not encode (cannot happen for husk's types).
    #[error("cannot encode the snapshot state")]
    Encode(#[source] postcard::Error),
    /// File I/O failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The CRC-64/XZ of `body`, as the header carries it.
pub fn checksum(body: &[u8]) -> u64 {
    CRC.checksum(body)
}

/// Encode `state` into a complete state file image (header + body).
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let body = postcard::to_stdvec(state).map_err(FormatError::Encode)?;
    let len = body.len() as u64;
    if len > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&CRC.checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Check a state file image's header and checksum and decode its body. Never panics
/// on any input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::TruncatedHeader);
    }
    if bytes[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    let version = u32::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let len = le_u64(&bytes[12..20]);
    if len > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(len));
    }
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(FormatError::Length {
            expected: len,
            found: body.len() as u64,
        });
    }
    if CRC.checksum(body) != le_u64(&bytes[20..28]) {
        return Err(FormatError::Checksum);
    }
    postcard::from_bytes(body).map_err(FormatError::Decode)
}

/// Read and decode a state file, reading at most the header plus [`MAX_STATE_BYTES`].
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, FormatError> {
    let io = |what| {
        move |source| FormatError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let f = File::open(path).map_err(io("cannot open the snapshot state file"))?;
    let mut bytes = Vec::new();
    f.take(HEADER_LEN as u64 + MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io("cannot read the snapshot state file"))?;
    decode(&bytes)
}

/// The temporary name next to `path` used while writing it.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Write `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the
/// directory. `fill` writes the content (so large files can be streamed).
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), FormatError> {
    let io = |what| {
        move |source| FormatError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("cannot write the snapshot file")(e));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot fsync the directory of"))
}

/// Encode `state` and write it to `path` atomically.
pub fn write_file<T: Serialize>(path: &Path, state: &T) -> Result<u64, FormatError> {
    let bytes = encode(state)?;
    write_atomic(path, |f| f.write_all(&bytes))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        a: u64,
        b: Vec<u8>,
        c: String,
    }

    fn sample() -> S {
        S {
            a: 0x1234_5678_9abc,
            b: (0..200u8).collect(),
            c: "state".into(),
        }
    }

    #[test]
    fn roundtrip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"HUSKSNAP");
        assert_eq!(decode::<S>(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            let e = decode::<S>(&bytes[..n]).unwrap_err();
            if n < HEADER_LEN {
                assert!(matches!(e, FormatError::TruncatedHeader), "{n}: {e}");
            } else {
                assert!(matches!(e, FormatError::Length { .. }), "{n}: {e}");
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<S>(&long),
            Err(FormatError::Length { .. })
        ));
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode::<S>(&b).is_err(), "bit {i} flip accepted");
        }
    }

    #[test]
    fn other_version_and_magic_and_oversize_say_so() {
        let mut b = encode(&sample()).unwrap();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let e = decode::<S>(&b).unwrap_err();
        assert!(matches!(e, FormatError::Version { found: 1 }));
        assert!(
            e.to_string().contains("version 1 is not supported")
                && e.to_string().contains("reads version 2"),
            "{e}"
        );

        let mut b = encode(&sample()).unwrap();
        b[0] = b'X';
        assert!(matches!(decode::<S>(&b), Err(FormatError::BadMagic)));

        let mut b = encode(&sample()).unwrap();
        b[12..20].copy_from_slice(&(MAX_STATE_BYTES + 1).to_le_bytes());
        assert!(matches!(decode::<S>(&b), Err(FormatError::TooLarge(_))));
    }

    #[test]
    fn garbage_body_with_valid_crc_is_a_decode_error() {
        let body = [0xffu8; 5];
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(body.len() as u64).to_le_bytes());
        b.extend_from_slice(&CRC.checksum(&body).to_le_bytes());
        b.extend_from_slice(&body);
        assert!(matches!(decode::<S>(&b), Err(FormatError::Decode(_))));
    }

    #[test]
    fn atomic_write_leaves_no_temp_file_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("husk-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state");
        write_file(&p, &sample()).unwrap();
        assert_eq!(read_file::<S>(&p).unwrap(), sample());
        assert!(!temp_path(&p).exists());
        // A partial temporary file (what kill -9 mid-write leaves) never loads.
        let bytes = encode(&sample()).unwrap();
        std::fs::write(temp_path(&p), &bytes[..bytes.len() / 2]).unwrap();
        assert!(read_file::<S>(&temp_path(&p)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
