//! A small writer for "newc" cpio archives, the format Linux unpacks as an initramfs.
//!
//! The archive is built in memory: add directories, files, symlinks and device nodes
//! with archive-relative paths (a leading `/` is accepted and stripped), then call
//! [`Cpio::finish`]. Parent directories are added automatically (mode 0755), so
//! `file("bin/init", ..)` alone yields a valid tree. Every entry is owned by root and
//! has mtime 0, which makes the output reproducible for the same inputs.
//!
//! ```
//! let mut a = husk_tests::cpio::Cpio::new();
//! a.char_dev("/dev/console", 0o600, 5, 1).unwrap();
//! a.file("/init", b"#!/bin/sh\n", 0o755).unwrap();
//! let bytes = a.finish();
//! assert!(bytes.starts_with(b"070701"));
//! ```

use std::collections::HashSet;

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Errors while building an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A path was empty, had `..` or an empty component, or contained a NUL byte.
    #[error("invalid archive path {0:?}: use a relative or absolute path without `..`, empty components or NUL")]
    BadPath(String),
    /// The same path was added twice with different content.
    #[error("archive path {0:?} was added twice; add each path once")]
    Duplicate(String),
    /// A file is larger than the 4 GiB that newc can describe.
    #[error("file {0:?} is larger than 4 GiB, which a newc cpio archive cannot hold")]
    TooLarge(String),
}

/// An in-memory newc cpio archive under construction.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    next_ino: u32,
    seen: HashSet<String>,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
            seen: HashSet::new(),
        }
    }

    /// Adds a directory with the given permission bits (e.g. `0o755`). Adding a
    /// directory that already exists (also implicitly, as a parent) is a no-op.
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        let p = normalize(path)?;
        if self.seen.contains(&p) {
            return Ok(());
        }
        self.parents(&p)?;
        self.seen.insert(p.clone());
        self.entry(&p, S_IFDIR | (perm & 0o7777), 2, 0, 0, &[])
    }

    /// Adds a regular file with the given content and permission bits.
    pub fn file(&mut self, path: &str, data: &[u8], perm: u32) -> Result<(), CpioError> {
        let p = self.claim(path)?;
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(p));
        }
        self.entry(&p, S_IFREG | (perm & 0o7777), 1, 0, 0, data)
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let p = self.claim(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::BadPath(target.to_string()));
        }
        self.entry(&p, S_IFLNK | 0o777, 1, 0, 0, target.as_bytes())
    }

    /// Adds a character device node (e.g. `/dev/console` is 5:1), which the kernel
    /// needs to give an initramfs init its console before devtmpfs is mounted.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let p = self.claim(path)?;
        self.entry(&p, S_IFCHR | (perm & 0o7777), 1, major, minor, &[])
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        // The trailer carries no data; writing it cannot fail.
        let _ = self.entry("TRAILER!!!", 0, 1, 0, 0, &[]);
        self.buf
    }

    fn claim(&mut self, path: &str) -> Result<String, CpioError> {
        let p = normalize(path)?;
        if self.seen.contains(&p) {
            return Err(CpioError::Duplicate(p));
        }
        self.parents(&p)?;
        self.seen.insert(p.clone());
        Ok(p)
    }

    fn parents(&mut self, p: &str) -> Result<(), CpioError> {
        let mut acc = String::new();
        let comps: Vec<&str> = p.split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            if !self.seen.contains(&acc) {
                self.seen.insert(acc.clone());
                let dir = acc.clone();
                self.entry(&dir, S_IFDIR | 0o755, 2, 0, 0, &[])?;
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rmaj: u32,
        rmin: u32,
        data: &[u8],
    ) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.to_string()))?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        self.next_ino = self.next_ino.wrapping_add(1);
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rmaj,
            rmin,
            namesize as u32,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
        Ok(())
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

fn normalize(path: &str) -> Result<String, CpioError> {
    let p = path.trim_start_matches('/');
    let bad = p.is_empty() || p.contains('\0') || p.split('/').any(|c| c.is_empty() || c == "..");
    if bad {
        return Err(CpioError::BadPath(path.to_string()));
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, rdev major, rdev minor, data).
    fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "bad magic at {off}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_start = (110 + namesize + 3) & !3;
            let data = b[data_start..data_start + size].to_vec();
            let next = (data_start + size + 3) & !3;
            off += next;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn round_trip_with_implicit_parents() {
        let mut a = Cpio::new();
        a.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        a.file("/usr/bin/init", b"hello", 0o755).unwrap();
        a.symlink("bin", "usr/bin").unwrap();
        a.dir("/usr", 0o755).unwrap();
        let entries = parse(&a.finish());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "usr",
                "usr/bin",
                "usr/bin/init",
                "bin"
            ]
        );
        assert_eq!(entries[1].1, S_IFCHR | 0o600);
        assert_eq!((entries[1].2, entries[1].3), (5, 1));
        assert_eq!(entries[4].1, S_IFREG | 0o755);
        assert_eq!(entries[4].4, b"hello");
        assert_eq!(entries[5].1, S_IFLNK | 0o777);
        assert_eq!(entries[5].4, b"usr/bin");
    }

    #[test]
    fn rejects_bad_paths_and_duplicates() {
        let mut a = Cpio::new();
        assert!(matches!(a.file("", b"", 0o644), Err(CpioError::BadPath(_))));
        assert!(matches!(
            a.file("a/../b", b"", 0o644),
            Err(CpioError::BadPath(_))
        ));
        assert!(matches!(
            a.file("a//b", b"", 0o644),
            Err(CpioError::BadPath(_))
        ));
        a.file("x", b"1", 0o644).unwrap();
        assert!(matches!(
            a.file("/x", b"2", 0o644),
            Err(CpioError::Duplicate(_))
        ));
    }
}
