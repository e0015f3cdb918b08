//! Connections (or handshakes) in flight per source address, so that one machine cannot take
//! every slot a port has. A place is held while its [`AddressPlace`] lives.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The counts of one listener. Cloning shares them.
#[derive(Clone, Default)]
pub struct PerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One place taken by an address, given back when dropped.
pub struct AddressPlace {
    counts: PerAddress,
    ip: IpAddr,
}

impl PerAddress {
    /// A place for `ip`, unless it already holds `max`.
    pub fn enter(&self, ip: IpAddr, max: usize) -> Option<AddressPlace> {
        let mut counts = self.lock();
        let n = counts.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressPlace {
            counts: self.clone(),
            ip,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_places_and_gets_them_back() {
        let counts = PerAddress::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = counts.enter(a, 2).unwrap();
        let _second = counts.enter(a, 2).unwrap();
        assert!(counts.enter(a, 2).is_none());
        assert!(
            counts.enter(b, 2).is_some(),
            "another address has places of its own"
        );
        drop(first);
        assert!(counts.enter(a, 2).is_some());
    }
}
