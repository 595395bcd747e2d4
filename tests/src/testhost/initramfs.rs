//! The L1 initramfs: static busybox, the two-stage init script and the kernel modules
//! L1 needs. Built into the cache and rebuilt whenever an input changes (the file name
//! carries a hash of the inputs).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{fs, io};

use super::kernel::{self, L1Kernel};
use super::TesthostError;
use crate::cpio::Cpio;

/// The L1 init script (see its header for what the two stages do).
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// The static busybox from Debian's busybox-static.
const BUSYBOX: &str = "/usr/bin/busybox";

/// Returns the initramfs for `k`, building it if the cache has none for these inputs.
pub fn prepare(cache: &Path, k: &L1Kernel) -> Result<PathBuf, TesthostError> {
    let busybox = fs::read(BUSYBOX).map_err(|_| TesthostError::Busybox)?;
    if !is_static_elf(&busybox) {
        return Err(TesthostError::Busybox);
    }
    let modules = kernel::resolve_modules(&k.modules_dir)?;
    let mut h = DefaultHasher::new();
    (INIT_SCRIPT, &busybox, &k.package).hash(&mut h);
    for m in &modules {
        (&m.name, &m.group, &m.path).hash(&mut h);
    }
    let out = cache.join(format!("initramfs-{:016x}.cpio", h.finish()));
    if out.exists() {
        // Mark it used, so the cleanup below (run by builds of other inputs) keeps it.
        if let Ok(f) = fs::File::options().append(true).open(&out) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        return Ok(out);
    }
    let mut a = Cpio::new();
    let cp = |e| TesthostError::KernelPrep(format!("building the L1 initramfs: {e}"));
    for d in ["proc", "sys", "dev", "tmp", "newroot", "modules"] {
        a.dir(d, 0o755).map_err(cp)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1).map_err(cp)?;
    a.file("bin/busybox", &busybox, 0o755).map_err(cp)?;
    a.file("init", INIT_SCRIPT.as_bytes(), 0o755).map_err(cp)?;
    let mut order = String::new();
    for m in &modules {
        let data = read_module(&m.path)?;
        a.file(&format!("modules/{}.ko", m.name), &data, 0o644)
            .map_err(cp)?;
        order.push_str(&format!("{} {}\n", m.name, m.group));
    }
    a.file("modules/order", order.as_bytes(), 0o644)
        .map_err(cp)?;
    // Drop images of other inputs unused for a day (another husk-testhost build may be
    // using a different one right now), then write atomically.
    if let Ok(rd) = fs::read_dir(cache) {
        let day = std::time::Duration::from_secs(24 * 3600);
        for e in rd.filter_map(Result::ok) {
            let n = e.file_name().to_string_lossy().into_owned();
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > day);
            if n.starts_with("initramfs-") && n.ends_with(".cpio") && stale {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, a.finish()).map_err(|e| TesthostError::io(&tmp, e))?;
    fs::rename(&tmp, &out).map_err(|e| TesthostError::io(&out, e))?;
    Ok(out)
}

fn read_module(path: &Path) -> Result<Vec<u8>, TesthostError> {
    if path.extension().is_some_and(|x| x == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| TesthostError::io(path, e))?;
        if !out.status.success() {
            let e = io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned());
            return Err(TesthostError::io(path, e));
        }
        return Ok(out.stdout);
    }
    fs::read(path).map_err(|e| TesthostError::io(path, e))
}

/// True for a 64-bit ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    };
    if !b.starts_with(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..phnum).all(|i| {
        let off = phoff.saturating_add(i.saturating_mul(phentsize));
        u32_at(off).is_some_and(|t| t != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn static_check() {
        assert!(super::is_static_elf(
            &std::fs::read("/usr/bin/busybox").unwrap()
        ));
        assert!(!super::is_static_elf(&std::fs::read("/bin/sh").unwrap()));
        assert!(!super::is_static_elf(b"#!/bin/sh"));
    }
}
