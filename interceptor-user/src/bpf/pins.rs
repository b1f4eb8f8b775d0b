//! The bpffs directory holding our map pins: prepared before load, emptied on drop.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::BpfError;

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Pin files named after our maps in one bpffs directory. Dropping removes them, and the directory
/// too if that leaves it empty.
#[derive(Debug)]
pub(crate) struct PinDir {
    dir: PathBuf,
    names: &'static [&'static str],
}

impl PinDir {
    /// Creates `dir` if needed, checks that it is on a bpffs, and removes stale pins of `names`
    /// (left by an agent that did not shut down cleanly), so the load creates fresh maps.
    pub(crate) fn prepare(dir: &Path, names: &'static [&'static str]) -> Result<Self, BpfError> {
        fs::create_dir_all(dir).map_err(|source| BpfError::PinDir { path: dir.into(), source })?;
        let pins = Self { dir: dir.to_owned(), names };
        if !is_bpffs(dir).map_err(|source| BpfError::PinDir { path: dir.into(), source })? {
            return Err(BpfError::NotBpffs { path: dir.into() });
        }
        for path in pins.paths() {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed stale map pin"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(BpfError::StalePin { path, source }),
            }
        }
        Ok(pins)
    }

    /// Where map `name` is pinned.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.names.iter().map(|name| self.path(name))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for path in self.paths() {
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
