//! Undo list: everything the jailer creates on the host is recorded here and removed in
//! reverse order on failure (and, in foreground mode, after the VMM exits).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// One thing to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// A directory we created that others may share: removed only if empty.
    SharedDir(PathBuf),
    /// A directory we created and own with everything in it (the `<id>` directory).
    Tree(PathBuf),
    /// A file (or device node) we created.
    File(PathBuf),
    /// A cgroup directory we created: rmdir, retried briefly while exiting tasks leave.
    Cgroup(PathBuf),
    /// A parent cgroup we created on the way to ours, which other jails may have put
    /// their cgroups under since: removed only if it has no child cgroup left.
    SharedCgroup(PathBuf),
    /// A pre-staged directory we chowned: its original uid and gid are given back.
    Owner(PathBuf, u32, u32),
}

/// The ordered undo list.
#[derive(Debug, Default)]
pub struct Cleanup {
    actions: Vec<Undo>,
}

impl Cleanup {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one undo action; later actions are undone first.
    pub fn push(&mut self, undo: Undo) {
        self.actions.push(undo);
    }

    /// The recorded actions, oldest first.
    #[cfg(test)]
    pub fn actions(&self) -> &[Undo] {
        &self.actions
    }

    /// Undoes everything, newest first; returns the failures (best effort, never stops).
    pub fn run(&mut self) -> Vec<(Undo, io::Error)> {
        let mut failures = Vec::new();
        while let Some(action) = self.actions.pop() {
            if let Err(e) = undo_one(&action) {
                failures.push((action, e));
            }
        }
        failures
    }
}

fn undo_one(action: &Undo) -> io::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    match action {
        // Another jail still uses it: leave it. A parent cgroup with another jail's
        // cgroup below it is busy (not empty, for the plain directories of the tests);
        // the last jail to leave removes it.
        Undo::SharedDir(p) | Undo::SharedCgroup(p) => match std::fs::remove_dir(p) {
            Err(e)
                if e.kind() == io::ErrorKind::DirectoryNotEmpty
                    || e.raw_os_error() == Some(libc::EBUSY) =>
            {
                Ok(())
            }
            other => ignore_missing(other),
        },
        Undo::Tree(p) => ignore_missing(std::fs::remove_dir_all(p)),
        Undo::File(p) => ignore_missing(std::fs::remove_file(p)),
        Undo::Owner(p, uid, gid) => {
            ignore_missing(std::os::unix::fs::chown(p, Some(*uid), Some(*gid)))
        }
        Undo::Cgroup(p) => {
            let mut last = Ok(());
            for _ in 0..50 {
                last = ignore_missing(std::fs::remove_dir(p));
                match &last {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
            last
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoes_in_reverse_and_keeps_shared_dirs_in_use() {
        let tmp = std::env::temp_dir().join(format!("husk-cleanup-{}", std::process::id()));
        let shared = tmp.join("shared");
        let other = shared.join("other-jail");
        let mine = shared.join("mine");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::create_dir_all(mine.join("root/dev")).unwrap();
        std::fs::write(mine.join("root/file"), b"x").unwrap();
        let single = tmp.join("f");
        std::fs::write(&single, b"x").unwrap();

        let mut c = Cleanup::new();
        c.push(Undo::SharedDir(tmp.clone()));
        c.push(Undo::SharedDir(shared.clone()));
        c.push(Undo::Tree(mine.clone()));
        c.push(Undo::File(single.clone()));
        c.push(Undo::File(tmp.join("never-created")));
        assert!(c.run().is_empty());
        assert!(!mine.exists());
        assert!(!single.exists());
        assert!(
            other.exists(),
            "a shared dir in use by another jail must stay"
        );
        assert!(c.actions().is_empty());

        let mut c = Cleanup::new();
        c.push(Undo::SharedDir(tmp.clone()));
        c.push(Undo::SharedDir(shared.clone()));
        c.push(Undo::SharedDir(other.clone()));
        assert!(c.run().is_empty());
        assert!(!tmp.exists());
    }

    #[test]
    fn shared_parent_cgroup_in_use_is_kept_without_waiting_or_failing() {
        let tmp = std::env::temp_dir().join(format!("husk-cleanup-cg-{}", std::process::id()));
        let parent = tmp.join("husk-pool-1");
        let mine = parent.join("sb-1");
        let other = parent.join("sb-2");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let mut c = Cleanup::new();
        c.push(Undo::SharedCgroup(parent.clone()));
        c.push(Undo::Cgroup(mine.clone()));
        let t = std::time::Instant::now();
        assert!(c.run().is_empty());
        // Not the Cgroup retry loop (50 x 10 ms) on the parent another jail still uses.
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert!(!mine.exists());
        assert!(other.exists(), "the other jail's cgroup must stay");
        // The last jail to leave removes the parent.
        let mut c = Cleanup::new();
        c.push(Undo::SharedCgroup(parent.clone()));
        c.push(Undo::Cgroup(other.clone()));
        assert!(c.run().is_empty());
        assert!(!parent.exists());
        std::fs::remove_dir_all(tmp).unwrap();
    }
}
