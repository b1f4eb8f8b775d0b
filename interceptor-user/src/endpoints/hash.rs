//! Consistent-hash tables: Envoy's ring hash (ketama-style) and Maglev.

use std::fmt::Write;
use std::net::SocketAddr;

use xxhash_rust::xxh3::xxh3_64;

/// The most points a ring gets, whatever `minimumRingSize` asks: 2^20, 16 MiB per ring. Envoy
/// allows 2^23 (128 MiB per cluster, and a reload holds two tables); on an agent that runs on
/// every node one DestinationRule line should not cost half a gigabyte, and at 2^20 points the
/// spread over even thousands of endpoints is already even.
pub const MAX_RING_SIZE: u64 = 1 << 20;

/// A hash ring: each endpoint at many points, a key goes to the next point clockwise.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring with at least `min_size` points spread evenly over `endpoints`.
    pub fn new(endpoints: &[SocketAddr], min_size: usize) -> Self {
        let per_endpoint = min_size.div_ceil(endpoints.len().max(1)).max(1);
        let mut points = Vec::with_capacity(per_endpoint * endpoints.len());
        // One key buffer, `<endpoint>_<replica>`, rewritten in place: rings run to millions of
        // points, and a string per point was most of their cost.
        let mut key = String::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            key.clear();
            let _ = write!(key, "{endpoint}_");
            let stem = key.len();
            for replica in 0..per_endpoint {
                key.truncate(stem);
                let _ = write!(key, "{replica}");
                points.push((xxh3_64(key.as_bytes()), index));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint owning `hash`, walking clockwise past endpoints `ok` rejects.
    pub fn lookup(&self, hash: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(h, _)| *h < hash);
        (0..self.points.len()).map(|k| self.points[(start + k) % self.points.len()].1).find(|&i| ok(i))
    }
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016): every slot names an endpoint, each
/// endpoint owns an almost equal share, and few slots move when endpoints change.
#[derive(Debug)]
pub struct MaglevTable {
    slots: Vec<usize>,
}

impl MaglevTable {
    /// A table of `size` slots (should be prime and much larger than the endpoint count).
    pub fn new(endpoints: &[SocketAddr], size: usize) -> Self {
        let n = endpoints.len();
        if n == 0 || size == 0 {
            return Self { slots: Vec::new() };
        }
        let size_u64 = size as u64;
        let perms: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|e| {
                let name = e.to_string();
                let offset = xxh3_64(format!("{name}#offset").as_bytes()) % size_u64;
                let skip = xxh3_64(format!("{name}#skip").as_bytes()) % (size_u64 - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut slots = vec![usize::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (i, (offset, skip)) in perms.iter().enumerate() {
                let mut c = (offset + next[i] * skip) % size_u64;
                while slots[c as usize] != usize::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % size_u64;
                }
                slots[c as usize] = i;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Self { slots }
    }

    /// The endpoint index for `hash`.
    pub fn lookup(&self, hash: u64) -> usize {
        if self.slots.is_empty() {
            return 0;
        }
        self.slots[(hash % self.slots.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i))).collect()
    }

    #[test]
    fn maglev_shares_are_nearly_equal() {
        let table = MaglevTable::new(&addrs(4), 65537);
        let mut counts = [0usize; 4];
        for slot in &table.slots {
            counts[*slot] += 1;
        }
        for c in counts {
            assert!((16000..=16800).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys_on_the_ring() {
        let all = addrs(5);
        // Same number of points per endpoint on both rings (Envoy derives it from the ring size).
        let before = Ring::new(&all, 1000);
        let after = Ring::new(&all[..4], 800);
        let keys: Vec<u64> = (0..2000u64).map(|k| xxh3_64(&k.to_le_bytes())).collect();
        let moved = keys
            .iter()
            .filter(|&&k| {
                let b = before.lookup(k, &|_| true).unwrap();
                b != 4 && after.lookup(k, &|_| true).unwrap() != b
            })
            .count();
        assert_eq!(moved, 0);
    }
}
