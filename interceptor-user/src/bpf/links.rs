//! Pinned bpf links: every attachment the agent makes is pinned under `<bpffs>/links/`, so it
//! outlives the agent process. A SIGKILLed agent leaves its programs attached — the kernel then
//! fails open by the stale heartbeat, or keeps capturing with `failurePolicy: closed` — and the
//! next agent removes the stale pins (which detaches the old programs) before attaching its own.
//! A clean stop unpins everything: capture is then gone.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};

use super::BpfError;

/// The pinned links of one agent, by pin name.
pub(crate) struct LinkPins {
    dir: PathBuf,
    links: BTreeMap<String, PinnedLink>,
    /// Set by [`LinkPins::close`]: later links are dropped (detached) instead of pinned, so a
    /// follower task still running during shutdown cannot leave one behind.
    closed: bool,
}

impl LinkPins {
    /// Creates `<bpffs>/links`, removing pins left by an earlier agent.
    pub(crate) fn prepare(bpffs: &Path) -> Result<Self, BpfError> {
        let dir = bpffs.join("links");
        let pin_err = |source| BpfError::PinDir { path: dir.clone(), source };
        fs::create_dir_all(&dir).map_err(pin_err)?;
        super::pins::owner_only(&dir)?;
        for entry in fs::read_dir(&dir).map_err(pin_err)? {
            let path = entry.map_err(pin_err)?.path();
            fs::remove_file(&path).map_err(|source| BpfError::StalePin { path: path.clone(), source })?;
            tracing::info!(path = %path.display(), "removed stale link pin (detached the old program)");
        }
        Ok(Self { dir, links: BTreeMap::new(), closed: false })
    }

    /// Pins `link` as `name`, replacing (and so detaching) an earlier link of that name.
    pub(crate) fn pin(&mut self, name: &str, link: FdLink) -> Result<(), BpfError> {
        self.unpin(name);
        if self.closed {
            return Ok(());
        }
        let path = self.dir.join(name);
        let pinned = link.pin(&path).map_err(|e| BpfError::PinLink { path, source: Box::new(e) })?;
        self.links.insert(name.to_owned(), pinned);
        Ok(())
    }

    /// Unpins and detaches link `name`, if pinned.
    pub(crate) fn unpin(&mut self, name: &str) {
        if let Some(link) = self.links.remove(name) {
            match link.unpin() {
                // Dropping the last descriptor detaches the program.
                Ok(fd) => drop(fd),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(name, error = %e, "unpinning link"),
            }
        }
    }

    /// Unpins (detaches) every link and refuses new ones.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        let names: Vec<String> = self.links.keys().cloned().collect();
        for name in names {
            self.unpin(&name);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Drop for LinkPins {
    fn drop(&mut self) {
        self.close();
    }
}
