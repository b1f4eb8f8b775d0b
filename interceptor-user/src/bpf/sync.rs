//! Making the capture map equal a desired set: pure diff logic over a small store trait, so it is
//! testable without a kernel.

use std::{collections::BTreeMap, net::SocketAddr};

use super::BpfError;

/// What [`super::Capture::sync_capture`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Addresses that were not captured before.
    pub added: usize,
    /// Addresses whose service id changed.
    pub changed: usize,
    /// Addresses no longer captured.
    pub removed: usize,
}

impl SyncReport {
    /// True when the store already matched.
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }
}

/// A capture map: service address → service id.
pub(crate) trait CaptureStore {
    /// Every entry.
    fn entries(&self) -> Result<BTreeMap<SocketAddr, u32>, BpfError>;
    /// Inserts or replaces one entry.
    fn put(&mut self, addr: SocketAddr, service_id: u32) -> Result<(), BpfError>;
    /// Removes one entry; removing an absent one is not an error.
    fn delete(&mut self, addr: SocketAddr) -> Result<(), BpfError>;
}

/// Makes `store` equal `desired`. Inserts come before deletes so a service that moves keeps being
/// captured at every instant.
pub(crate) fn sync(store: &mut impl CaptureStore, desired: &BTreeMap<SocketAddr, u32>) -> Result<SyncReport, BpfError> {
    let current = store.entries()?;
    let mut report = SyncReport::default();
    for (&addr, &id) in desired {
        match current.get(&addr) {
            Some(&old) if old == id => continue,
            Some(_) => report.changed += 1,
            None => report.added += 1,
        }
        store.put(addr, id)?;
    }
    for &addr in current.keys().filter(|addr| !desired.contains_key(addr)) {
        store.delete(addr)?;
        report.removed += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeStore {
        map: BTreeMap<SocketAddr, u32>,
        writes: usize,
    }

    impl CaptureStore for FakeStore {
        fn entries(&self) -> Result<BTreeMap<SocketAddr, u32>, BpfError> {
            Ok(self.map.clone())
        }
        fn put(&mut self, addr: SocketAddr, service_id: u32) -> Result<(), BpfError> {
            self.writes += 1;
            self.map.insert(addr, service_id);
            Ok(())
        }
        fn delete(&mut self, addr: SocketAddr) -> Result<(), BpfError> {
            self.writes += 1;
            self.map.remove(&addr);
            Ok(())
        }
    }

    fn set(entries: &[(&str, u32)]) -> BTreeMap<SocketAddr, u32> {
        entries.iter().map(|(a, id)| (a.parse().unwrap(), *id)).collect()
    }

    #[test]
    fn fills_an_empty_store() {
        let mut store = FakeStore::default();
        let desired = set(&[("10.96.0.10:80", 0), ("10.96.0.11:9080", 1)]);
        let report = sync(&mut store, &desired).unwrap();
        assert_eq!(report, SyncReport { added: 2, changed: 0, removed: 0 });
        assert_eq!(store.map, desired);
    }

    #[test]
    fn adds_changes_and_removes() {
        let mut store = FakeStore {
            map: set(&[("10.96.0.10:80", 0), ("10.96.0.11:80", 1), ("10.96.0.12:80", 2)]),
            ..FakeStore::default()
        };
        let desired = set(&[("10.96.0.10:80", 0), ("10.96.0.11:80", 7), ("10.96.0.13:80", 3)]);
        let report = sync(&mut store, &desired).unwrap();
        assert_eq!(report, SyncReport { added: 1, changed: 1, removed: 1 });
        assert_eq!(store.map, desired);
        assert_eq!(store.writes, 3, "the unchanged entry is not rewritten");
    }

    #[test]
    fn same_set_is_a_noop() {
        let desired = set(&[("10.96.0.10:80", 0)]);
        let mut store = FakeStore { map: desired.clone(), ..FakeStore::default() };
        assert!(sync(&mut store, &desired).unwrap().is_noop());
        assert_eq!(store.writes, 0);
    }

    #[test]
    fn empty_desired_clears() {
        let mut store = FakeStore { map: set(&[("10.96.0.10:80", 0)]), ..FakeStore::default() };
        let report = sync(&mut store, &BTreeMap::new()).unwrap();
        assert_eq!(report.removed, 1);
        assert!(store.map.is_empty());
    }
}
