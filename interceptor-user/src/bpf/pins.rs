//! The bpffs directory holding our map pins: pins left by an earlier agent are re-adopted when they
//! still fit (so counters survive restarts), replaced when not; on drop the capture maps are
//! unpinned and the counter maps stay for the next agent.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::BpfError;

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What a pinned map must look like to be re-adopted: the kernel's view of our definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PinSpec {
    /// Map name (and pin file name).
    pub(crate) name: &'static str,
    /// Key size in bytes.
    pub(crate) key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub(crate) value_size: u32,
    /// Capacity.
    pub(crate) max_entries: u32,
    /// Left pinned on drop, for the next agent to adopt (counters).
    pub(crate) keep: bool,
}

/// Pin files named after our maps in one bpffs directory. Dropping removes the pins not marked
/// `keep`, and the directory too if that leaves it empty.
#[derive(Debug)]
pub(crate) struct PinDir {
    dir: PathBuf,
    specs: &'static [PinSpec],
}

/// What to do with a pin found at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Same shape: the load reuses it, with its contents.
    Adopt,
    /// Another shape (an agent of another version) or not a map: removed, a fresh map is pinned.
    Replace,
}

/// Decides whether a pinned map with the given kernel sizes can serve as `spec`.
pub(crate) fn judge(spec: &PinSpec, key_size: u32, value_size: u32, max_entries: u32) -> Found {
    if (key_size, value_size, max_entries) == (spec.key_size, spec.value_size, spec.max_entries) {
        Found::Adopt
    } else {
        Found::Replace
    }
}

impl PinDir {
    /// Creates `dir` if needed, checks that it is on a bpffs, and looks at the pins already there:
    /// those of the same shape are kept for the load to re-adopt (aya opens an existing pin instead
    /// of creating the map), the others are removed.
    pub(crate) fn prepare(dir: &Path, specs: &'static [PinSpec]) -> Result<Self, BpfError> {
        fs::create_dir_all(dir).map_err(|source| BpfError::PinDir { path: dir.into(), source })?;
        let pins = Self { dir: dir.to_owned(), specs };
        if !is_bpffs(dir).map_err(|source| BpfError::PinDir { path: dir.into(), source })? {
            return Err(BpfError::NotBpffs { path: dir.into() });
        }
        owner_only(dir)?;
        for spec in specs {
            let path = pins.path(spec.name);
            if !path.exists() {
                continue;
            }
            // aya re-adopts any pin by name without comparing shapes, so we do it here: a pin of
            // another layout (an agent of another version, e.g. before IPv6 widened the address
            // keys from 8 to 20 bytes) would otherwise fail the load or be misread.
            let found = match aya::maps::MapInfo::from_pin(&path) {
                Ok(info) => {
                    let seen = (info.key_size(), info.value_size(), info.max_entries());
                    (judge(spec, seen.0, seen.1, seen.2), Some(seen))
                }
                Err(_) => (Found::Replace, None),
            };
            match found {
                (Found::Adopt, _) => tracing::info!(path = %path.display(), "re-adopting pinned map"),
                (Found::Replace, seen) => {
                    fs::remove_file(&path).map_err(|source| BpfError::StalePin { path: path.clone(), source })?;
                    let (key, value, entries) = seen.unwrap_or_default();
                    tracing::warn!(
                        path = %path.display(),
                        found = %format!("key {key} B, value {value} B, {entries} entries"),
                        expected = %format!("key {} B, value {} B, {} entries", spec.key_size, spec.value_size, spec.max_entries),
                        "pinned map of another layout (an agent of another version) replaced by a fresh one; its contents are lost"
                    );
                }
            }
        }
        Ok(pins)
    }

    /// Where map `name` is pinned.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for path in self.specs.iter().filter(|s| !s.keep).map(|s| self.path(s.name)) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing map pin"),
            }
        }
        // Fails, harmlessly, while other files are there (or when it is the bpffs mount itself).
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Makes `dir` reachable by its owner only (0700), unless it is the root of a bpffs mount that
/// other programs share (their pins must stay reachable to them). Pin files themselves are made
/// by the kernel readable and writable by their owner only (0600, less the umask): with the
/// directory closed too, nobody else can open a map or link, nor learn the pins' names.
pub(crate) fn owner_only(dir: &Path) -> Result<(), BpfError> {
    use std::os::unix::fs::PermissionsExt as _;

    let shared_root = match dir.parent() {
        Some(parent) => !is_bpffs(parent).map_err(|source| BpfError::PinDir { path: parent.into(), source })?,
        None => true,
    };
    if shared_root {
        tracing::warn!(dir = %dir.display(), "pin directory is a bpffs mount root: its mode is left as it is");
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|source| BpfError::PinDir { path: dir.into(), source })
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;

    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is a writable `statfs` buffer.
    let ret = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "f_type's width differs between libcs")]
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pins_of_the_same_shape_are_adopted() {
        let spec = PinSpec { name: "M", key_size: 8, value_size: 8, max_entries: 16, keep: true };
        assert_eq!(judge(&spec, 8, 8, 16), Found::Adopt);
        assert_eq!(judge(&spec, 8, 16, 16), Found::Replace);
        assert_eq!(judge(&spec, 4, 8, 16), Found::Replace);
        assert_eq!(judge(&spec, 8, 8, 32), Found::Replace);
    }
}
