//! What the file hooks watch, and how the kernel is told.
//!
//! The kernel filter (auditor-ebpf `filter.rs`) needs two things: the watched trees as
//! absolute path prefixes (for absolute names) and as (device, inode) keys (for names
//! relative to a directory fd or the cwd). This module computes both from the watch
//! list: each tree, every other mountpoint through which the same directory is reachable
//! (bind mounts, from /proc/self/mountinfo), the directories holding users' shell history
//! files, and the ancestors of all of these (a relative name from `/var` may reach
//! `/var/log`; userspace then decides exactly).

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use auditor_common::{InodeKey, PrefixHeads, WatchPrefix, limits, watch_mode};

/// Shell and REPL history files, relative to a home directory.
pub const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".history",
    ".ash_history",
    ".python_history",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".local/share/fish/fish_history",
];

pub const DEFAULT_TREES: &[&str] = &["/var/log"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchList {
    /// Watched trees, canonical.
    pub trees: Vec<PathBuf>,
    /// Watched single files (history files), absolute.
    pub files: Vec<PathBuf>,
    /// Every prefix the kernel compares absolute names with: trees and their bind-mount
    /// aliases (whole subtree).
    pub prefixes: Vec<String>,
    /// Directories holding history files: the kernel passes up their direct entries that
    /// could be one (first byte and length, see `entries_of_interest`) and userspace keeps
    /// only the history files.
    pub entry_dirs: Vec<String>,
    /// (device, inode) -> watch mode.
    pub inodes: BTreeMap<(u32, u64), u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("too many watch prefixes ({0}); the kernel filter holds {max}", max = limits::WATCH_PREFIXES_MAX)]
    TooManyPrefixes(usize),
    #[error("watch path {0} is longer than {max} bytes", max = limits::PREFIX_LEN_MAX - 1)]
    TooLong(String),
    #[error("reading /proc/self/mountinfo (to find bind mounts of watched trees): {0}")]
    Mountinfo(std::io::Error),
}

/// The kernel's `s_dev` encoding (MKDEV: major << 20 | minor) of a `stat` st_dev.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev as libc::dev_t);
    let minor = libc::minor(st_dev as libc::dev_t);
    (major << 20) | minor
}

fn inode_of(p: &Path) -> Option<(u32, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((kernel_dev(m.dev()), m.ino()))
}

/// Home directories from /etc/passwd (plus /root), existing ones only.
pub fn home_dirs() -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(5))
        .filter(|h| h.starts_with('/') && *h != "/" && *h != "/nonexistent")
        .map(PathBuf::from)
        .filter(|h| h.is_dir())
        .collect();
    homes.push(PathBuf::from("/root"));
    homes.sort();
    homes.dedup();
    homes
}

/// One /proc/self/mountinfo line: mount root (inside the filesystem) and mountpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: String,
    pub root: String,
    pub mountpoint: String,
}

/// Parses /proc/self/mountinfo text (octal escapes in paths decoded).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() >= 5).then(|| Mount {
                dev: f[2].to_string(),
                root: unescape(f[3]),
                mountpoint: unescape(f[4]),
            })
        })
        .collect()
}

/// `path` is `prefix` or below it (no allocation: checked for every event).
fn is_under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn under(path: &str, prefix: &str) -> Option<String> {
    if prefix == "/" {
        return Some(path.to_string());
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then(|| rest.to_string())
}

/// Other absolute paths through which `dir` is reachable: every mount of the same
/// filesystem whose root contains `dir`'s location in that filesystem.
pub fn mount_aliases(dir: &str, mounts: &[Mount]) -> Vec<String> {
    // The mount `dir` is on: the longest mountpoint that is a prefix of it.
    let Some(home) = mounts
        .iter()
        .filter(|m| under(dir, &m.mountpoint).is_some())
        .max_by_key(|m| m.mountpoint.len())
    else {
        return Vec::new();
    };
    let Some(rel) = under(dir, &home.mountpoint) else {
        return Vec::new();
    };
    let fs_path = if home.root == "/" {
        if rel.is_empty() { "/".to_string() } else { rel }
    } else {
        format!("{}{}", home.root, rel)
    };
    let mut out = Vec::new();
    for m in mounts
        .iter()
        .filter(|m| m.dev == home.dev && m.mountpoint != home.mountpoint)
    {
        if let Some(inner) = under(&fs_path, &m.root) {
            let alias = if m.mountpoint == "/" {
                if inner.is_empty() { "/".into() } else { inner }
            } else {
                format!("{}{}", m.mountpoint, inner)
            };
            if alias != dir {
                out.push(alias);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl WatchList {
    /// The watch list of this machine: `trees` (the default trees when empty), the
    /// history files of every home directory, bind mounts from /proc/self/mountinfo.
    pub fn for_trees(trees: &[PathBuf]) -> Result<Self, WatchError> {
        let defaults: Vec<PathBuf>;
        let trees = if trees.is_empty() {
            defaults = DEFAULT_TREES
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .collect();
            &defaults
        } else {
            trees
        };
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(WatchError::Mountinfo)?;
        Self::build(trees, &home_dirs(), &mountinfo)
    }

    /// Builds the list from watched trees (already canonical) and the users' homes.
    pub fn build(
        trees: &[PathBuf],
        homes: &[PathBuf],
        mountinfo: &str,
    ) -> Result<Self, WatchError> {
        let mounts = parse_mountinfo(mountinfo);
        let mut prefixes = Vec::new();
        let mut inodes: BTreeMap<(u32, u64), u8> = BTreeMap::new();
        let mark = |p: &Path, mode: u8, inodes: &mut BTreeMap<(u32, u64), u8>| {
            if let Some(k) = inode_of(p) {
                // TREE wins over ENTRIES wins over ANCESTOR.
                let e = inodes.entry(k).or_insert(mode);
                if mode == watch_mode::TREE
                    || (mode == watch_mode::ENTRIES && *e == watch_mode::ANCESTOR)
                {
                    *e = mode;
                }
            }
        };
        for t in trees {
            let s = t.to_string_lossy().into_owned();
            prefixes.push(s.clone());
            prefixes.extend(mount_aliases(&s, &mounts));
            mark(t, watch_mode::TREE, &mut inodes);
            for a in t.ancestors().skip(1) {
                mark(a, watch_mode::ANCESTOR, &mut inodes);
            }
        }
        let mut files = Vec::new();
        let mut entry_dirs = Vec::new();
        for h in homes {
            for f in HISTORY_FILES {
                let p = h.join(f);
                files.push(p.clone());
                if let Some(dir) = p.parent() {
                    entry_dirs.push(dir.to_string_lossy().into_owned());
                    mark(dir, watch_mode::ENTRIES, &mut inodes);
                    for a in dir.ancestors().skip(1) {
                        mark(a, watch_mode::ANCESTOR, &mut inodes);
                    }
                }
            }
        }
        prefixes.sort();
        prefixes.dedup();
        // A prefix inside another adds nothing.
        let all = prefixes.clone();
        prefixes.retain(|p| !all.iter().any(|q| q != p && under(p, q).is_some()));
        entry_dirs.sort();
        entry_dirs.dedup();
        // Entries of a directory inside a watched tree are covered by the tree.
        entry_dirs.retain(|d| !prefixes.iter().any(|p| under(d, p).is_some()));
        let total = prefixes.len() + entry_dirs.len();
        if total > limits::WATCH_PREFIXES_MAX as usize {
            return Err(WatchError::TooManyPrefixes(total));
        }
        if let Some(long) = prefixes
            .iter()
            .chain(&entry_dirs)
            .find(|p| p.len() >= limits::PREFIX_LEN_MAX)
        {
            return Err(WatchError::TooLong(long.clone()));
        }
        Ok(Self {
            trees: trees.to_vec(),
            files,
            prefixes,
            entry_dirs,
            inodes,
        })
    }

    /// Entries of the kernel's prefix map.
    pub fn prefix_count(&self) -> usize {
        self.prefixes.len() + self.entry_dirs.len()
    }

    /// The prefixes as the kernel map stores them: trees first, then the `ENTRIES`
    /// directories shortest first (the kernel keeps the *last* `ENTRIES` match, which
    /// must be the longest: `/root` before `/root/.local/share/fish`).
    pub fn kernel_prefixes(&self) -> Vec<WatchPrefix> {
        let tree = self.prefixes.iter().map(|p| (p, watch_mode::TREE));
        let mut dirs: Vec<&String> = self.entry_dirs.iter().collect();
        dirs.sort_by_key(|d| d.len());
        let entries = dirs.into_iter().map(|p| (p, watch_mode::ENTRIES));
        tree.chain(entries)
            .map(|(p, mode)| {
                let (lead, entry_max) = if mode == watch_mode::ENTRIES {
                    self.entries_of_interest(p)
                } else {
                    (0, 0)
                };
                watch_prefix(p, mode, lead, entry_max)
            })
            .collect()
    }

    /// For an `ENTRIES` directory: the first byte all its history files' names share (0
    /// if they differ) and the longest such name (0 if over 255 bytes), so that the
    /// kernel passes up only entries that could be one of them.
    fn entries_of_interest(&self, dir: &str) -> (u8, u8) {
        let names: Vec<&[u8]> = self
            .files
            .iter()
            .filter(|f| f.parent().is_some_and(|d| d.as_os_str() == dir))
            .filter_map(|f| f.file_name())
            .map(|n| n.as_encoded_bytes())
            .collect();
        let lead = match names.first().and_then(|n| n.first()) {
            Some(&b) if names.iter().all(|n| n.first() == Some(&b)) => b,
            _ => 0,
        };
        let longest = names.iter().map(|n| n.len()).max().unwrap_or(0);
        (lead, u8::try_from(longest).unwrap_or(0))
    }

    /// The prefixes grouped into runs by their first eight bytes, and the runs' heads:
    /// what `WATCH_PREFIXES` and `WATCH_HEADS` hold.
    pub fn kernel_filter(&self) -> KernelFilter {
        KernelFilter::of(self.kernel_prefixes())
    }

    pub fn kernel_inodes(&self) -> Vec<(InodeKey, u8)> {
        self.inodes
            .iter()
            .map(|(&(dev, ino), &m)| (InodeKey { dev, _pad: 0, ino }, m))
            .collect()
    }

    /// Is this absolute, normalised path watched? Returns what matched.
    pub fn classify(&self, path: &str) -> Option<Scope> {
        if self.files.iter().any(|f| f.as_os_str() == path) {
            return Some(Scope::History);
        }
        self.prefixes
            .iter()
            .any(|p| is_under(path, p))
            .then_some(Scope::Tree)
    }
}

/// Why a path is in scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Inside a watched tree (logs).
    Tree,
    /// A user's shell history file.
    History,
}

/// One entry of the kernel's prefix map (`p` is at most `PREFIX_LEN_MAX - 1` bytes:
/// `WatchList::build` refuses longer ones).
fn watch_prefix(p: &str, mode: u8, lead: u8, entry_max: u8) -> WatchPrefix {
    let mut bytes = [0u8; limits::PREFIX_LEN_MAX];
    bytes[..p.len()].copy_from_slice(p.as_bytes());
    WatchPrefix {
        len: p.len() as u32,
        mode: u16::from(mode),
        lead,
        entry_max,
        bytes,
    }
}

/// What the kernel's file filter holds: the prefixes in the order of `WATCH_PREFIXES`,
/// grouped into runs by their first eight bytes, and the heads of the runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFilter {
    pub prefixes: Vec<WatchPrefix>,
    pub heads: PrefixHeads,
}

impl KernelFilter {
    /// Groups `flat` (trees first, then `ENTRIES` shortest first) into runs, each
    /// keeping that order, so that within a run the last `ENTRIES` match is the longest.
    pub fn of(flat: Vec<WatchPrefix>) -> Self {
        let head = |p: &WatchPrefix| {
            let n = (p.len as usize).min(8);
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&p.bytes[..n]);
            let mask = if n == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * n)) - 1
            };
            (u64::from_le_bytes(b) & mask, mask)
        };
        // `(w, m)` implies `(kw, km)`: its mask covers that one's and agrees there.
        let implies = |(w, m): (u64, u64), (kw, km): (u64, u64)| km & m == km && w & km == kw;
        // The minimal heads, shortest first: a head's bytes start with a kept one's, or
        // it is kept. Heads are byte prefixes, so each prefix implies exactly one kept
        // head, and a name matches at most one.
        let mut all: Vec<(u64, u64)> = flat.iter().map(head).collect();
        all.sort_by_key(|&(_, m)| m.count_ones());
        let mut kept: Vec<(u64, u64)> = Vec::new();
        for h in all {
            if !kept.iter().any(|&k| implies(h, k)) {
                kept.push(h);
            }
        }
        // '/' is the first byte of every absolute name; this word's first byte is not.
        let mut heads = PrefixHeads {
            word: [0; limits::PREFIX_HEADS],
            mask: [0xff; limits::PREFIX_HEADS],
            range: [0; limits::PREFIX_HEADS],
            ready: 1,
        };
        if kept.len() > limits::PREFIX_HEADS {
            heads.mask[0] = 0;
            heads.range[0] = (flat.len() as u64) << 8;
            return Self {
                prefixes: flat,
                heads,
            };
        }
        let mut prefixes = Vec::with_capacity(flat.len());
        for (i, &k) in kept.iter().enumerate() {
            let start = prefixes.len();
            prefixes.extend(flat.iter().filter(|p| implies(head(p), k)).copied());
            heads.word[i] = k.0;
            heads.mask[i] = k.1;
            heads.range[i] = start as u64 | (((prefixes.len() - start) as u64) << 8);
        }
        Self { prefixes, heads }
    }

    /// The run of prefixes (start, length) a name whose first eight bytes are
    /// `name_word` may lie under: the kernel's test (`auditor-ebpf/src/filter.rs`).
    #[cfg(test)]
    fn run_of(&self, name_word: u64) -> (usize, usize) {
        let h = &self.heads;
        let run = (0..limits::PREFIX_HEADS)
            .filter(|&i| name_word & h.mask[i] == h.word[i])
            .fold(0, |r, i| r | h.range[i]);
        ((run & 0xff) as usize, ((run >> 8) & 0xff) as usize)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 254:0 /var/log /mnt/logs rw - ext4 /dev/vda rw
31 22 254:0 /var /srv/var rw - ext4 /dev/vda rw
32 22 0:5 / /proc rw - proc proc rw
33 22 254:0 /home /mnt/with\\040space rw - ext4 /dev/vda rw";

    #[test]
    fn bind_mounts_of_a_watched_tree_are_prefixes_too() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m[4].mountpoint, "/mnt/with space");
        assert_eq!(
            mount_aliases("/var/log", &m),
            vec!["/mnt/logs".to_string(), "/srv/var/log".to_string()]
        );
        assert!(mount_aliases("/proc", &m).is_empty());
    }

    /// /var/log watched, /root a home, on the mounts of `MOUNTINFO`.
    fn sample() -> WatchList {
        WatchList::build(
            &[PathBuf::from("/var/log")],
            &[PathBuf::from("/root")],
            MOUNTINFO,
        )
        .unwrap()
    }

    #[test]
    fn scope_of_paths() {
        let w = sample();
        assert_eq!(w.classify("/var/log/auth.log"), Some(Scope::Tree));
        assert_eq!(w.classify("/var/log"), Some(Scope::Tree));
        assert_eq!(w.classify("/var/logs/x"), None);
        assert_eq!(w.classify("/mnt/logs/syslog"), Some(Scope::Tree));
        assert_eq!(w.classify("/root/.bash_history"), Some(Scope::History));
        assert_eq!(w.classify("/root/.bashrc"), None);
        assert!(w.entry_dirs.contains(&"/root".to_string()));
        assert!(
            w.entry_dirs
                .contains(&"/root/.local/share/fish".to_string())
        );
        assert_eq!(w.prefix_count(), w.kernel_prefixes().len());
        // ENTRIES prefixes come shortest first: the kernel keeps the last match.
        let entries: Vec<u32> = w
            .kernel_prefixes()
            .iter()
            .filter(|p| p.mode == u16::from(watch_mode::ENTRIES))
            .map(|p| p.len)
            .collect();
        assert!(entries.windows(2).all(|w| w[0] <= w[1]), "{entries:?}");
        // The kernel passes up only possible history files: dotfiles of the home, at most
        // as long as ".node_repl_history"; "fish_history" in the fish directory.
        let of = |d: &str| {
            let p = w
                .kernel_prefixes()
                .into_iter()
                .find(|p| p.bytes[..p.len as usize] == *d.as_bytes())
                .unwrap();
            (p.lead, p.entry_max)
        };
        assert_eq!(of("/root"), (b'.', ".node_repl_history".len() as u8));
        assert_eq!(
            of("/root/.local/share/fish"),
            (b'f', "fish_history".len() as u8)
        );
        assert_eq!(of("/var/log"), (0, 0));
        // /var/log and /var are real here: their inodes are marked.
        let var = inode_of(Path::new("/var")).unwrap();
        assert_eq!(w.inodes.get(&var), Some(&watch_mode::ANCESTOR));
        let root_home = inode_of(Path::new("/root")).unwrap();
        assert_eq!(w.inodes.get(&root_home), Some(&watch_mode::ENTRIES));
    }

    /// The name's first eight bytes as the kernel reads them from its scratch buffer: the
    /// name, its NUL, then whatever an earlier record left there (`stale`).
    fn first_word(name: &str, stale: &[u8]) -> u64 {
        let mut b: Vec<u8> = name
            .bytes()
            .chain([0])
            .chain(stale.iter().copied())
            .collect();
        b.resize(8.max(b.len()), 0xa5);
        u64::from_le_bytes(b[..8].try_into().unwrap())
    }

    fn prefix(p: &str) -> WatchPrefix {
        watch_prefix(p, watch_mode::TREE, 0, 0)
    }

    /// The prefixes of `f` a name may lie under, as the kernel compares them.
    fn compared(f: &KernelFilter, name: &str, stale: &[u8]) -> Vec<String> {
        let (start, len) = f.run_of(first_word(name, stale));
        f.prefixes[start..start + len]
            .iter()
            .map(|p| String::from_utf8_lossy(&p.bytes[..p.len as usize]).into_owned())
            .collect()
    }

    #[test]
    fn a_name_is_compared_only_with_the_prefixes_sharing_its_head() {
        let w = sample();
        let f = w.kernel_filter();
        let mut a: Vec<_> = f.prefixes.iter().map(|p| p.bytes.to_vec()).collect();
        let mut b: Vec<_> = w
            .kernel_prefixes()
            .iter()
            .map(|p| p.bytes.to_vec())
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "the runs hold every prefix once");
        for name in [
            "/usr/lib/x.so",
            "/tmp/a",
            "/proc/1/stat",
            "/var/lib/dpkg/lock",
        ] {
            assert!(compared(&f, name, b"stale").is_empty(), "{name}");
        }
        assert_eq!(compared(&f, "/var/log/auth.log", b""), ["/var/log"]);
        assert_eq!(compared(&f, "/srv/var/log/x", b""), ["/srv/var/log"]);
        // The home and its fish directory share a run, shortest first: the kernel keeps
        // the last ENTRIES match, which must be the longest.
        assert_eq!(
            compared(&f, "/root/.bash_history", b"x"),
            ["/root", "/root/.local/share/fish"]
        );
        // More heads than slots: every name is compared with every prefix.
        let many: Vec<WatchPrefix> = (0..=limits::PREFIX_HEADS)
            .map(|i| prefix(&format!("/w{i:02}")))
            .collect();
        let f = KernelFilter::of(many);
        assert_eq!(compared(&f, "/usr", b"").len(), limits::PREFIX_HEADS + 1);
        // No prefixes: nothing compared; "/" watches everything.
        assert!(compared(&KernelFilter::of(Vec::new()), "/", b"").is_empty());
        let f = KernelFilter::of(vec![prefix("/"), prefix("/var/log")]);
        assert_eq!(compared(&f, "/x", b""), ["/", "/var/log"]);
    }

    proptest::proptest! {
        /// Whatever the prefixes and the stale bytes after a name, every prefix the
        /// kernel's full compare would match the name with is in the run it compares.
        #[test]
        fn every_prefix_a_name_lies_under_is_compared(
            prefixes in proptest::collection::vec("/[ab/]{0,11}", 1..=limits::PREFIX_HEADS + 4),
            name in "/[ab/]{0,14}",
            stale in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let f = KernelFilter::of(prefixes.iter().map(|p| prefix(p)).collect());
            let run = compared(&f, &name, &stale);
            for p in &prefixes {
                let under = name.starts_with(p.as_str())
                    && (p == "/" || name.len() == p.len() || name.as_bytes()[p.len()] == b'/');
                if under {
                    proptest::prop_assert!(run.contains(p), "{name} under {p}, run {run:?}");
                }
            }
        }
    }

    #[test]
    fn kernel_dev_encoding() {
        // st_dev 0xfe00 is 254:0 -> MKDEV = 254 << 20.
        assert_eq!(kernel_dev(libc::makedev(254, 0)), 254 << 20);
        assert_eq!(kernel_dev(libc::makedev(8, 17)), (8 << 20) | 17);
    }
}
