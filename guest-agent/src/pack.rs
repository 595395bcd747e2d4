//! Packing a function into a guest initramfs: a reproducible newc cpio archive holding
//! `/init` (the agent), `/husk/function.json`, the function under `/husk/fn/`, extra
//! files, the directories they need and a `/dev/console` node. Entries are sorted, owned
//! by 0:0 and dated 0, so the same inputs give the same bytes. Optional gzip.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::config::{FunctionConfig, Mode};

/// Guest directory holding the function executable.
pub const FUNCTION_DIR: &str = "husk/fn";
/// Largest single file packed (the newc format stores sizes in 32 bits).
const MAX_FILE: u64 = u32::MAX as u64;

/// Packing errors.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// An input file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    /// An input file is too big for newc.
    #[error("{0} is larger than 4 GiB, the newc limit; put big runtimes on a block image")]
    TooLarge(PathBuf),
    /// A destination path is not acceptable.
    #[error("bad guest path {0:?}: {1}")]
    BadDest(String, &'static str),
    /// Two entries want the same path.
    #[error("guest path /{0} is packed twice; give each --file a distinct destination")]
    Duplicate(String),
    /// The function config is invalid.
    #[error("invalid function settings")]
    Config(#[source] crate::config::ConfigError),
    /// Writing the archive failed.
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
}

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackSpec {
    /// The `husk-agent` binary (becomes `/init`).
    pub agent: PathBuf,
    /// The function executable.
    pub function: PathBuf,
    /// Exec or worker.
    pub mode: Mode,
    /// Function arguments.
    pub args: Vec<String>,
    /// Function environment.
    pub env: BTreeMap<String, String>,
    /// Extra files: (host source, absolute guest destination).
    pub files: Vec<(PathBuf, String)>,
    /// Default deadline.
    pub deadline_ms: Option<u32>,
    /// Output cap.
    pub output_cap: Option<usize>,
    /// Gzip the archive.
    pub gzip: bool,
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with permission bits.
    Dir(u32),
    /// A regular file with permission bits and contents.
    File(u32, Vec<u8>),
    /// A character device with permission bits, major, minor.
    CharDev(u32, u32, u32),
}

/// The archive being built: guest path (no leading `/`) → node; sorted by path.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Normalise an absolute guest path to its relative form, refusing `..` and the like.
fn guest_rel(dest: &str) -> Result<String, PackError> {
    let bad = |why| PackError::BadDest(dest.to_string(), why);
    let p = Path::new(dest);
    if !p.is_absolute() {
        return Err(bad("must be absolute"));
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => parts.push(s.to_str().ok_or(bad("must be UTF-8"))?),
            _ => return Err(bad("must not contain . or ..")),
        }
    }
    if parts.is_empty() {
        return Err(bad("must name a file"));
    }
    Ok(parts.join("/"))
}

impl Tree {
    /// Add a directory and its parents (existing directories are kept).
    pub fn dir(&mut self, rel: &str, perm: u32) -> Result<(), PackError> {
        let mut path = String::new();
        for part in rel.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            match self.nodes.get(&path) {
                None => {
                    let p = if path == rel { perm } else { 0o755 };
                    self.nodes.insert(path.clone(), Node::Dir(p));
                }
                Some(Node::Dir(_)) => {}
                Some(_) => return Err(PackError::Duplicate(path)),
            }
        }
        Ok(())
    }

    /// Add a non-directory node, creating parents; duplicates are an error.
    pub fn put(&mut self, rel: &str, node: Node) -> Result<(), PackError> {
        if let Some((parent, _)) = rel.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        if self.nodes.contains_key(rel) {
            return Err(PackError::Duplicate(rel.to_string()));
        }
        self.nodes.insert(rel.to_string(), node);
        Ok(())
    }

    /// The entries, by guest path relative to `/` (sorted): what `husk image build`
    /// writes into a root filesystem.
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    /// Write the newc archive.
    pub fn write_cpio<W: Write>(&self, mut w: W) -> io::Result<W> {
        for (i, (name, node)) in self.nodes.iter().enumerate() {
            let ino = i as u32 + 1;
            let b = cpio::newc::Builder::new(name)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(0);
            let (b, data): (_, &[u8]) = match node {
                Node::Dir(perm) => (b.mode(0o040000 | perm).nlink(2), &[]),
                Node::File(perm, data) => (b.mode(0o100000 | perm).nlink(1), data),
                Node::CharDev(perm, major, minor) => (
                    b.mode(0o020000 | perm)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            let size = u32::try_from(data.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
            let mut entry = b.write(w, size);
            entry.write_all(data)?;
            w = entry.finish()?;
        }
        cpio::newc::trailer(w)
    }
}

fn read_file(p: &Path) -> Result<(u32, Vec<u8>), PackError> {
    let meta = std::fs::metadata(p).map_err(|e| PackError::Read(p.to_path_buf(), e))?;
    if meta.len() > MAX_FILE {
        return Err(PackError::TooLarge(p.to_path_buf()));
    }
    let data = std::fs::read(p).map_err(|e| PackError::Read(p.to_path_buf(), e))?;
    Ok((meta.permissions().mode() & 0o7777, data))
}

/// Build the tree for a spec (no I/O besides reading the inputs).
pub fn build_tree(spec: &PackSpec) -> Result<(Tree, FunctionConfig), PackError> {
    let mut t = Tree::default();
    for (d, perm) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        t.dir(d, perm)?;
    }
    t.put("dev/console", Node::CharDev(0o600, 5, 1))?;
    let (_, agent) = read_file(&spec.agent)?;
    t.put("init", Node::File(0o755, agent))?;

    let name = spec
        .function
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            PackError::BadDest(
                spec.function.display().to_string(),
                "function needs a UTF-8 file name",
            )
        })?;
    let fn_rel = format!("{FUNCTION_DIR}/{name}");
    let (_, function) = read_file(&spec.function)?;
    t.put(&fn_rel, Node::File(0o755, function))?;

    let mut cfg = FunctionConfig::new(format!("/{fn_rel}"), spec.mode);
    cfg.args = spec.args.clone();
    cfg.env = spec.env.clone();
    if let Some(d) = spec.deadline_ms {
        cfg.deadline_ms = d;
    }
    if let Some(c) = spec.output_cap {
        cfg.output_cap = c;
    }
    cfg.validate().map_err(PackError::Config)?;
    t.put("husk/function.json", Node::File(0o644, cfg.to_json()))?;

    let mut files = spec.files.clone();
    files.sort_by(|a, b| a.1.cmp(&b.1));
    for (src, dest) in &files {
        let rel = guest_rel(dest)?;
        let (perm, data) = read_file(src)?;
        t.put(&rel, Node::File(perm, data))?;
    }
    Ok((t, cfg))
}

/// Pack a spec into archive bytes (gzipped if asked).
pub fn pack(spec: &PackSpec) -> Result<Vec<u8>, PackError> {
    let (tree, _) = build_tree(spec)?;
    if spec.gzip {
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Vec::new(), flate2::Compression::default());
        let gz = tree.write_cpio(gz).map_err(PackError::Write)?;
        gz.finish().map_err(PackError::Write)
    } else {
        tree.write_cpio(Vec::new()).map_err(PackError::Write)
    }
}

#[cfg(test)]
mod tests;
