//! Cgroups, v1 and v2: plan (find the hierarchies, check controllers) before creating
//! anything, then create `<parent>/<id>` in each hierarchy, write the values, and let the
//! jailed child move itself in by writing `0` to `cgroup.procs`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::args::{CgroupSetting, CgroupVersion};
use crate::cleanup::{Cleanup, Undo};

/// Cgroup errors.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// /proc/mounts unreadable.
    #[error("cannot read /proc/mounts to find the cgroup hierarchies: mount /proc")]
    ReadMounts(#[source] io::Error),
    /// No cgroup2 mount.
    #[error("no cgroup2 hierarchy is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup) or use --cgroup-version 1")]
    NoV2Mount,
    /// v1 controller not mounted / v2 controller not available.
    #[error("unknown cgroup controller {controller:?} for cgroup v{version}: {hint}")]
    UnknownController {
        /// The controller named in `--cgroup`.
        controller: String,
        /// 1 or 2.
        version: u8,
        /// What is available.
        hint: String,
    },
    /// The sandbox cgroup exists already.
    #[error(
        "cgroup {0:?} already exists: another sandbox uses this id, pick a new --id or remove it"
    )]
    Exists(PathBuf),
    /// mkdir failed.
    #[error("cannot create cgroup directory {0:?}")]
    CreateDir(PathBuf, #[source] io::Error),
    /// Writing a control file failed.
    #[error("cannot write {value:?} to cgroup file {path:?}: check the file name and value")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading an inherited cpuset value failed.
    #[error("cannot read cgroup file {0:?}")]
    Read(PathBuf, #[source] io::Error),
}

/// One line of /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point.
    pub point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Parses /proc/mounts text (octal escapes such as `\040` decoded).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_src, point, fstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_string(),
                options: opts.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Picks the version: the requested one, else v2 when `/sys/fs/cgroup` itself is cgroup2.
pub fn detect_version(requested: Option<CgroupVersion>, mounts: &[Mount]) -> CgroupVersion {
    requested.unwrap_or_else(|| {
        let v2_root = mounts
            .iter()
            .any(|m| m.fstype == "cgroup2" && m.point == Path::new("/sys/fs/cgroup"));
        if v2_root {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    })
}

/// One sandbox cgroup directory to create in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// Mount point of the hierarchy.
    pub mount: PathBuf,
    /// `<mount>/<parent>/<id>`.
    pub path: PathBuf,
    /// v2 controllers to enable in `cgroup.subtree_control` of the ancestors.
    pub enable: Vec<String>,
    /// (file, value) pairs written after creation.
    pub writes: Vec<(String, String)>,
    /// v1 cpuset hierarchy: copy cpuset.cpus/mems from the parent into created dirs.
    pub cpuset: bool,
}

/// What the jailer will do with cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    /// Version in use.
    pub version: CgroupVersion,
    /// Directories, one per hierarchy.
    pub dirs: Vec<CgroupDir>,
}

/// Plans the cgroups without touching anything but `cgroup.controllers` (v2).
/// v1: one directory per hierarchy that holds a named controller (none without
/// `--cgroup`); v2: always one directory, so each sandbox is accounted on its own.
pub fn plan(
    version: CgroupVersion,
    settings: &[CgroupSetting],
    parent: &Path,
    id: &str,
    mounts: &[Mount],
) -> Result<CgroupPlan, CgroupError> {
    let rel = parent.join(id);
    let mut dirs: Vec<CgroupDir> = Vec::new();
    match version {
        CgroupVersion::V1 => {
            for s in settings {
                let mount = mounts
                    .iter()
                    .find(|m| m.fstype == "cgroup" && m.options.contains(&s.controller))
                    .ok_or_else(|| CgroupError::UnknownController {
                        controller: s.controller.clone(),
                        version: 1,
                        hint: format!(
                            "no v1 hierarchy has it mounted; mounted: {}",
                            v1_controllers(mounts).join(", ")
                        ),
                    })?;
                let idx = match dirs.iter().position(|d| d.mount == mount.point) {
                    Some(i) => i,
                    None => {
                        dirs.push(CgroupDir {
                            mount: mount.point.clone(),
                            path: mount.point.join(&rel),
                            enable: Vec::new(),
                            writes: Vec::new(),
                            cpuset: mount.options.iter().any(|o| o == "cpuset"),
                        });
                        dirs.len() - 1
                    }
                };
                dirs[idx].writes.push((s.file.clone(), s.value.clone()));
            }
        }
        CgroupVersion::V2 => {
            let mount = mounts
                .iter()
                .filter(|m| m.fstype == "cgroup2")
                .max_by_key(|m| m.point == Path::new("/sys/fs/cgroup"))
                .ok_or(CgroupError::NoV2Mount)?;
            let available = if settings.is_empty() {
                String::new()
            } else {
                let f = mount.point.join("cgroup.controllers");
                fs::read_to_string(&f).map_err(|e| CgroupError::Read(f, e))?
            };
            let available: Vec<&str> = available.split_whitespace().collect();
            let mut enable: Vec<String> = Vec::new();
            for s in settings {
                if !available.contains(&s.controller.as_str()) {
                    return Err(CgroupError::UnknownController {
                        controller: s.controller.clone(),
                        version: 2,
                        hint: format!("available at {:?}: {}", mount.point, available.join(", ")),
                    });
                }
                if !enable.contains(&s.controller) {
                    enable.push(s.controller.clone());
                }
            }
            dirs.push(CgroupDir {
                mount: mount.point.clone(),
                path: mount.point.join(&rel),
                enable,
                writes: settings
                    .iter()
                    .map(|s| (s.file.clone(), s.value.clone()))
                    .collect(),
                cpuset: false,
            });
        }
    }
    Ok(CgroupPlan { version, dirs })
}

fn v1_controllers(mounts: &[Mount]) -> Vec<String> {
    let known = [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "net_cls",
        "net_prio",
        "perf_event",
        "hugetlb",
        "rdma",
        "misc",
    ];
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .flat_map(|m| {
            m.options
                .iter()
                .filter(|o| known.contains(&o.as_str()))
                .cloned()
        })
        .collect()
}

fn write_file(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// Creates the planned directories (recording each in `cleanup`), enables v2 controllers
/// and writes the values. Run in the jailer's parent process, before the fork.
pub fn apply(plan: &CgroupPlan, cleanup: &mut Cleanup) -> Result<(), CgroupError> {
    for dir in &plan.dirs {
        if dir.path.exists() {
            return Err(CgroupError::Exists(dir.path.clone()));
        }
        let rel = dir.path.strip_prefix(&dir.mount).unwrap_or(&dir.path);
        let mut cur = dir.mount.clone();
        for comp in rel.components() {
            if !dir.enable.is_empty() {
                write_file(
                    cur.join("cgroup.subtree_control"),
                    &enable_line(&dir.enable),
                )?;
            }
            let parent = cur.clone();
            cur.push(comp);
            match fs::create_dir(&cur) {
                Ok(()) => {
                    cleanup.push(if cur == dir.path {
                        Undo::Cgroup(cur.clone())
                    } else {
                        Undo::SharedCgroup(cur.clone())
                    });
                    if dir.cpuset {
                        inherit_cpuset(&parent, &cur)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && cur != dir.path => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Exists(cur))
                }
                Err(e) => return Err(CgroupError::CreateDir(cur, e)),
            }
        }
        for (file, value) in &dir.writes {
            write_file(dir.path.join(file), value)?;
        }
    }
    Ok(())
}

fn enable_line(controllers: &[String]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn inherit_cpuset(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let target = child.join(file);
        let current =
            fs::read_to_string(&target).map_err(|e| CgroupError::Read(target.clone(), e))?;
        if current.trim().is_empty() {
            let src = parent.join(file);
            let value = fs::read_to_string(&src).map_err(|e| CgroupError::Read(src, e))?;
            write_file(target, value.trim())?;
        }
    }
    Ok(())
}

/// Moves the calling process into every planned cgroup (`0` means "the writer", which
/// also works from inside a new PID namespace). Run in the jailed child.
pub fn join(plan: &CgroupPlan) -> Result<(), CgroupError> {
    for dir in &plan.dirs {
        write_file(dir.path.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
tmpfs /mnt/with\\040space tmpfs rw 0 0
";

    fn setting(s: &str) -> CgroupSetting {
        crate::args::parse_cgroup(s).unwrap()
    }

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("husk-cg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn parses_mounts_and_detects_version() {
        let m = parse_mounts(MOUNTS);
        assert_eq!(m.len(), 7);
        assert_eq!(m[2].point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m[2].options, vec!["rw", "relatime", "cpu", "cpuacct"]);
        assert_eq!(m[6].point, Path::new("/mnt/with space"));
        assert_eq!(detect_version(None, &m), CgroupVersion::V1);
        assert_eq!(
            detect_version(Some(CgroupVersion::V2), &m),
            CgroupVersion::V2
        );
        let l1 = parse_mounts("none /sys/fs/cgroup cgroup2 rw 0 0\n");
        assert_eq!(detect_version(None, &l1), CgroupVersion::V2);
    }

    #[test]
    fn v1_plan_groups_by_hierarchy() {
        let m = parse_mounts(MOUNTS);
        let s = [
            setting("cpu.shares=512"),
            setting("cpuacct.x=1"),
            setting("memory.limit_in_bytes=1G"),
        ];
        let p = plan(CgroupVersion::V1, &s, Path::new("husk"), "sb-1", &m).unwrap();
        assert_eq!(p.dirs.len(), 2);
        assert_eq!(
            p.dirs[0].path,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/husk/sb-1")
        );
        assert_eq!(p.dirs[0].writes.len(), 2);
        assert_eq!(p.dirs[1].path, Path::new("/sys/fs/cgroup/memory/husk/sb-1"));
        assert!(plan(CgroupVersion::V1, &[], Path::new("husk"), "x", &m)
            .unwrap()
            .dirs
            .is_empty());
        let e = plan(
            CgroupVersion::V1,
            &[setting("bogus.max=1")],
            Path::new("husk"),
            "x",
            &m,
        )
        .unwrap_err();
        assert!(
            matches!(e, CgroupError::UnknownController { ref controller, version: 1, .. } if controller == "bogus"),
            "{e}"
        );
        // "name=systemd" is not a controller called "systemd".
        assert!(plan(
            CgroupVersion::V1,
            &[setting("systemd.x=1")],
            Path::new("husk"),
            "x",
            &m
        )
        .is_err());
    }

    #[test]
    fn v2_plan_checks_controllers() {
        let root = tmp("v2plan");
        fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let m = vec![Mount {
            point: root.clone(),
            fstype: "cgroup2".into(),
            options: vec![],
        }];
        let s = [
            setting("pids.max=64"),
            setting("memory.max=1G"),
            setting("memory.high=900M"),
        ];
        let p = plan(CgroupVersion::V2, &s, Path::new("husk/pool"), "sb-2", &m).unwrap();
        assert_eq!(p.dirs.len(), 1);
        assert_eq!(p.dirs[0].path, root.join("husk/pool/sb-2"));
        assert_eq!(p.dirs[0].enable, vec!["pids", "memory"]);
        let e = plan(
            CgroupVersion::V2,
            &[setting("io.max=1")],
            Path::new("husk"),
            "x",
            &m,
        )
        .unwrap_err();
        assert!(
            matches!(e, CgroupError::UnknownController { version: 2, .. }),
            "{e}"
        );
        let e = plan(
            CgroupVersion::V2,
            &[],
            Path::new("husk"),
            "x",
            &parse_mounts("a / ext4 rw 0 0"),
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::NoV2Mount));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn apply_on_a_directory_tree_and_clean_up() {
        let root = tmp("apply");
        fs::write(root.join("cgroup.controllers"), "pids memory\n").unwrap();
        fs::create_dir_all(root.join("husk")).unwrap(); // pre-existing parent: kept
        let m = vec![Mount {
            point: root.clone(),
            fstype: "cgroup2".into(),
            options: vec![],
        }];
        let s = [setting("pids.max=64")];
        let p = plan(CgroupVersion::V2, &s, Path::new("husk/pool"), "sb-3", &m).unwrap();
        let mut c = Cleanup::new();
        apply(&p, &mut c).unwrap();
        let leaf = root.join("husk/pool/sb-3");
        assert_eq!(fs::read_to_string(leaf.join("pids.max")).unwrap(), "64");
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert_eq!(
            fs::read_to_string(root.join("husk/pool/cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert_eq!(
            c.actions(),
            &[
                Undo::SharedCgroup(root.join("husk/pool")),
                Undo::Cgroup(leaf.clone())
            ]
        );
        // Same id again: refused.
        let mut c2 = Cleanup::new();
        assert!(matches!(apply(&p, &mut c2), Err(CgroupError::Exists(_))));
        assert!(c2.actions().is_empty());
        // On a plain directory tree rmdir fails on the files we wrote: remove them first,
        // as the kernel would for a real cgroup.
        fs::remove_file(leaf.join("pids.max")).unwrap();
        fs::remove_file(root.join("husk/pool/cgroup.subtree_control")).unwrap();
        assert!(c.run().is_empty());
        assert!(!root.join("husk/pool").exists());
        assert!(root.join("husk").exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn v1_cpuset_inherits_parent_values() {
        let root = tmp("cpuset");
        fs::write(root.join("cpuset.cpus"), "0-1\n").unwrap();
        fs::write(root.join("cpuset.mems"), "0\n").unwrap();
        let m = vec![Mount {
            point: root.clone(),
            fstype: "cgroup".into(),
            options: vec!["rw".into(), "cpuset".into()],
        }];
        let p = plan(
            CgroupVersion::V1,
            &[setting("cpuset.cpus=1")],
            Path::new("husk"),
            "sb-4",
            &m,
        )
        .unwrap();
        // A real cgroupfs creates the files empty; simulate by pre-creating nothing and
        // letting inherit_cpuset fail clearly on a plain directory.
        let mut c = Cleanup::new();
        let e = apply(&p, &mut c).unwrap_err();
        assert!(
            matches!(e, CgroupError::Read(ref f, _) if f.ends_with("husk/cpuset.cpus")),
            "{e}"
        );
        assert_eq!(c.run().len(), 0);
        assert!(!root.join("husk").exists());
        fs::remove_dir_all(root).unwrap();
    }
}
