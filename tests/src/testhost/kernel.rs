//! The L1 kernel: Debian's generic `linux-image-6.1.0-*-amd64-unsigned`, fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` (never installed), its XZ-compressed
//! `vmlinuz` turned into an ELF `vmlinux` once so QEMU can boot it directly (PVH), and
//! the modules L1 needs resolved in dependency order.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::TesthostError;

/// The package name pattern (the generic flavour: the cloud flavour lacks 9p).
const PKG_PREFIX: &str = "linux-image-6.1.0-";
const PKG_SUFFIX: &str = "-amd64-unsigned";

/// Modules L1 loads, by group, in this order. Their dependencies are added first.
/// Group `9p` and `kvm` are required; `vsock` (vhost-vsock for QEMU peers) is optional.
pub const MODULES: &[(&str, &str)] = &[
    ("virtio_pci", "9p"),
    ("9pnet_virtio", "9p"),
    ("9p", "9p"),
    ("kvm_amd", "kvm"),
    ("vhost_vsock", "vsock"),
];

/// An unpacked L1 kernel in the cache.
#[derive(Debug, Clone)]
pub struct L1Kernel {
    /// Package name, e.g. `linux-image-6.1.0-57-amd64-unsigned`.
    pub package: String,
    /// The ELF vmlinux to pass to `-kernel`.
    pub vmlinux: PathBuf,
    /// `lib/modules/<version>` of the unpacked package.
    pub modules_dir: PathBuf,
}

/// Returns the cached L1 kernel, fetching and preparing it first if the cache has none.
/// `HUSK_TESTHOST_KERNEL_PKG` names a specific package.
pub fn prepare(cache: &Path) -> Result<L1Kernel, TesthostError> {
    let root = cache.join("kernel");
    let wanted = std::env::var("HUSK_TESTHOST_KERNEL_PKG").ok();
    let cached = match &wanted {
        Some(p) => root.join(p).join("done").exists().then(|| p.clone()),
        None => newest(list_cached(&root)),
    };
    let package = match (cached, wanted) {
        (Some(p), _) => p,
        (None, Some(p)) => fetch(&root, &p)?,
        (None, None) => {
            let p = newest(apt_candidates()?).ok_or(TesthostError::NoKernelPackage(
                "apt-cache lists no linux-image-6.1.0-*-amd64-unsigned package".into(),
            ))?;
            fetch(&root, &p)?
        }
    };
    load(&root.join(&package), &package)
}

fn load(dir: &Path, package: &str) -> Result<L1Kernel, TesthostError> {
    let mods = dir.join("root/lib/modules");
    let version = fs::read_dir(&mods)
        .map_err(|e| TesthostError::io(&mods, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| {
            TesthostError::KernelPrep(format!("{} holds no module tree", mods.display()))
        })?;
    Ok(L1Kernel {
        package: package.to_string(),
        vmlinux: dir.join("vmlinux"),
        modules_dir: version,
    })
}

fn list_cached(root: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(root) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.path().join("done").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The ABI number of a package name (`...-6.1.0-57-amd64-unsigned` → 57).
fn abi(name: &str) -> Option<u32> {
    name.strip_prefix(PKG_PREFIX)?
        .strip_suffix(PKG_SUFFIX)?
        .parse()
        .ok()
}

fn newest(names: Vec<String>) -> Option<String> {
    names
        .into_iter()
        .filter_map(|n| abi(&n).map(|a| (a, n)))
        .max()
        .map(|(_, n)| n)
}

fn apt_candidates() -> Result<Vec<String>, TesthostError> {
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            "^linux-image-6\\.1\\.0-[0-9]+-amd64-unsigned$",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TesthostError::NoKernelPackage(format!("cannot run apt-cache: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), TesthostError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TesthostError::KernelPrep(format!("{what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(TesthostError::KernelPrep(format!(
        "{what} failed ({}): {}",
        out.status,
        err.trim()
    )))
}

fn fetch(root: &Path, package: &str) -> Result<String, TesthostError> {
    eprintln!(
        "husk-testhost: preparing L1 kernel {package} (once; cached in {})",
        root.display()
    );
    let dir = root.join(package);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| TesthostError::io(&dir, e))?;
    let out = Command::new("apt-get")
        .arg("download")
        .arg(package)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TesthostError::NoKernelPackage(format!("cannot run apt-get: {e}")))?;
    let deb = fs::read_dir(&dir)
        .map_err(|e| TesthostError::io(&dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    let Some(deb) = deb else {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(TesthostError::NoKernelPackage(format!(
            "apt-get download {package} failed: {}",
            err.trim()
        )));
    };
    let unpacked = dir.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg-deb -x",
    )?;
    let _ = fs::remove_file(&deb);
    let boot = unpacked.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .map_err(|e| TesthostError::io(&boot, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| TesthostError::KernelPrep(format!("no vmlinuz-* in {}", boot.display())))?;
    let image = fs::read(&vmlinuz).map_err(|e| TesthostError::io(&vmlinuz, e))?;
    let elf = extract_vmlinux(&image)?;
    let vmlinux = dir.join("vmlinux");
    fs::write(&vmlinux, elf).map_err(|e| TesthostError::io(&vmlinux, e))?;
    fs::write(dir.join("done"), b"").map_err(|e| TesthostError::io(&dir, e))?;
    Ok(package.to_string())
}

/// The XZ stream magic (`0xFD '7zXZ' 0x00`).
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

/// Finds the XZ stream holding the kernel inside a bzImage and decompresses it with
/// `xz`, trying each occurrence of the XZ magic until one yields an ELF image.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, TesthostError> {
    let mut tried = 0;
    for off in find_all(bzimage, XZ_MAGIC) {
        tried += 1;
        if let Some(elf) = xz_decompress(&bzimage[off..]).filter(|d| d.starts_with(b"\x7fELF")) {
            return Ok(elf);
        }
    }
    Err(TesthostError::KernelPrep(format!(
        "no XZ stream in the vmlinuz decompressed to an ELF image ({tried} candidates; is xz-utils installed?)"
    )))
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

fn xz_decompress(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = data.to_vec();
    // Feed stdin from a thread so a full stdout pipe cannot deadlock us.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().ok()?;
    let _ = feeder.join();
    out.status.success().then_some(out.stdout)
}

/// A module to put in the L1 initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalized name (underscores), e.g. `kvm_amd`.
    pub name: String,
    /// `9p`, `kvm` or `vsock` (the group of the module that pulled it in).
    pub group: String,
    /// The `.ko` or `.ko.xz` file.
    pub path: PathBuf,
}

/// Resolves [`MODULES`] and their dependencies (via `modinfo -F depends`) into load
/// order. Modules built into the kernel (`modules.builtin`) are skipped.
pub fn resolve_modules(modules_dir: &Path) -> Result<Vec<Module>, TesthostError> {
    let mut index = BTreeMap::new();
    index_modules(&modules_dir.join("kernel"), &mut index);
    let builtin: HashSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| norm(f.trim_end_matches(".ko")))
        .collect();
    let mut order = Vec::new();
    let mut done = HashSet::new();
    for (name, group) in MODULES {
        visit(
            &norm(name),
            group,
            &index,
            &builtin,
            &mut done,
            &mut order,
            0,
        )?;
    }
    Ok(order)
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            index_modules(&p, index);
        } else if let Some(f) = p.file_name().and_then(|f| f.to_str()) {
            if let Some(stem) = f.strip_suffix(".ko").or_else(|| f.strip_suffix(".ko.xz")) {
                index.insert(norm(stem), p.clone());
            }
        }
    }
}

fn visit(
    name: &str,
    group: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &HashSet<String>,
    done: &mut HashSet<String>,
    order: &mut Vec<Module>,
    depth: usize,
) -> Result<(), TesthostError> {
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if depth > 32 {
        return Err(TesthostError::KernelPrep(format!(
            "module dependency loop at {name}"
        )));
    }
    let path = index.get(name).ok_or_else(|| {
        TesthostError::KernelPrep(format!(
            "module {name} is neither built in nor in the package"
        ))
    })?;
    let out = Command::new("modinfo")
        .args(["-F", "depends"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            TesthostError::KernelPrep(format!(
                "cannot run modinfo (install kmod: scripts/setup.sh): {e}"
            ))
        })?;
    let deps = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for dep in deps.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        visit(&norm(dep), group, index, builtin, done, order, depth + 1)?;
    }
    done.insert(name.to_string());
    order.push(Module {
        name: name.to_string(),
        group: group.to_string(),
        path: path.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_abi() {
        let names = [
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-cloud",
        ];
        let got = newest(names.iter().map(|s| s.to_string()).collect());
        assert_eq!(got.as_deref(), Some("linux-image-6.1.0-57-amd64-unsigned"));
        assert_eq!(
            newest(vec!["linux-image-6.1.0-57-cloud-amd64-unsigned".into()]),
            None
        );
    }

    #[test]
    fn extracts_xz_payload_after_junk() {
        let mut payload = b"\x7fELF".to_vec();
        payload.extend((0..5000u32).map(|i| (i % 251) as u8));
        let mut child = Command::new("xz")
            .args(["-c", "--check=crc32"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &payload).unwrap();
        let xz = child.wait_with_output().unwrap().stdout;
        // A fake magic first (not a valid stream), then the real stream, then trailing data.
        let mut image = b"MZ header".to_vec();
        image.extend_from_slice(XZ_MAGIC);
        image.extend_from_slice(b"garbage");
        image.extend_from_slice(&xz);
        image.extend_from_slice(&[0u8; 64]);
        assert_eq!(extract_vmlinux(&image).unwrap(), payload);
        assert!(extract_vmlinux(b"no stream here").is_err());
    }
}
