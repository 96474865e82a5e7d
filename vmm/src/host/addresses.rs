//! The address pools of a [`Host`](super::Host): which /30 of an IPv4 pool and which /64 of an
//! IPv6 pool each of its VMs takes, so that no two running VMs share a subnet (design §6).
//!
//! A pool is identified by its prefix (`172.16.0.0/12`, `fd42:6d73:62::/48`: the defaults, or
//! what a VM's `UserNetSettings` names); VMs on different pools never collide. Indices are
//! handed out lowest first and come back when the [`AddressLease`] is dropped: when the VM
//! has stopped and been torn down, or when its start failed. This module owns the
//! bookkeeping only; the netstack derives the addresses from the indices.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use super::{DEFAULT_IPV4_POOL as DEFAULT_V4, DEFAULT_IPV6_POOL as DEFAULT_V6};

/// Why a VM got no addresses ([`VmError::Addresses`](crate::VmError::Addresses) from
/// [`Host::start`](super::Host::start)).
///
/// ```
/// use ringfence::host::AddressPoolError;
///
/// let e = AddressPoolError::Ipv4Exhausted {
///     pool: "10.0.0.0".parse().unwrap(),
///     prefix: 29,
///     capacity: 2,
/// };
/// assert!(e.to_string().contains("10.0.0.0/29 is exhausted"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressPoolError {
    /// Every /30 of the IPv4 pool is taken by a running VM.
    #[error(
        "the IPv4 pool {pool}/{prefix} is exhausted: all {capacity} /30 subnets are taken by \
         running VMs; stop one, or give this VM a larger --ipv4-pool (UserNetSettings::ipv4_pool)"
    )]
    Ipv4Exhausted {
        /// The pool's network address.
        pool: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
        /// How many /30s it holds.
        capacity: u64,
    },
    /// Every /64 of the IPv6 pool is taken by a running VM.
    #[error(
        "the IPv6 pool {pool}/{prefix} is exhausted: all {capacity} /64 prefixes are taken by \
         running VMs; stop one, or give this VM a larger --ipv6-pool (UserNetSettings::ipv6_pool)"
    )]
    Ipv6Exhausted {
        /// The pool's prefix.
        pool: Ipv6Addr,
        /// Its prefix length.
        prefix: u8,
        /// How many /64s it holds (capped at 2^32).
        capacity: u64,
    },
}

/// Indices taken in one pool.
#[derive(Debug, Default)]
struct Taken(BTreeSet<u32>);

impl Taken {
    /// The lowest index below `capacity` not taken, now taken.
    fn take(&mut self, capacity: u64) -> Option<u32> {
        let mut candidate = 0u32;
        for &used in &self.0 {
            if used != candidate {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        if u64::from(candidate) >= capacity {
            return None;
        }
        self.0.insert(candidate);
        Some(candidate)
    }
}

#[derive(Debug, Default)]
struct Pools {
    v4: HashMap<(Ipv4Addr, u8), Taken>,
    v6: HashMap<(Ipv6Addr, u8), Taken>,
}

/// Every pool of one host, shared by the host and the leases it gave out.
#[derive(Debug, Default, Clone)]
pub(crate) struct AddressPools(Arc<Mutex<Pools>>);

impl AddressPools {
    /// Takes a /30 of `v4` and a /64 of `v6` (`None`: the default pools) for one VM.
    pub(crate) fn lease(
        &self,
        v4: Option<(Ipv4Addr, u8)>,
        v6: Option<(Ipv6Addr, u8)>,
    ) -> Result<AddressLease, AddressPoolError> {
        let v4 = v4.unwrap_or(DEFAULT_V4);
        let v6 = v6.unwrap_or(DEFAULT_V6);
        let cap4 = 1u64 << (30u8.saturating_sub(v4.1));
        let cap6 = 1u64 << (64u8.saturating_sub(v6.1)).min(32);
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let index4 =
            pools
                .v4
                .entry(v4)
                .or_default()
                .take(cap4)
                .ok_or(AddressPoolError::Ipv4Exhausted {
                    pool: v4.0,
                    prefix: v4.1,
                    capacity: cap4,
                })?;
        let Some(index6) = pools.v6.entry(v6).or_default().take(cap6) else {
            if let Some(t) = pools.v4.get_mut(&v4) {
                t.0.remove(&index4);
            }
            return Err(AddressPoolError::Ipv6Exhausted {
                pool: v6.0,
                prefix: v6.1,
                capacity: cap6,
            });
        };
        Ok(AddressLease {
            pools: self.clone(),
            v4,
            v6,
            index4,
            index6,
        })
    }

    /// Subnets taken now (IPv4 /30s, over every pool): each running VM with `--net user`
    /// holds one.
    pub(crate) fn in_use(&self) -> usize {
        let pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pools.v4.values().map(|t| t.0.len()).sum()
    }
}

/// One VM's /30 and /64, given back when dropped. A [`Host`](super::Host) keeps it with the
/// VM until the VM has been torn down; it is public only so that the error and the indices
/// can be named.
///
/// ```no_run
/// # fn f(lease: ringfence::host::AddressLease) {
/// // Index 3 of 172.16.0.0/12: gateway 172.16.0.13, guest 172.16.0.14.
/// println!("/30 #{} and /64 #{}", lease.ipv4_index(), lease.ipv6_index());
/// # }
/// ```
#[derive(Debug)]
pub struct AddressLease {
    pools: AddressPools,
    v4: (Ipv4Addr, u8),
    v6: (Ipv6Addr, u8),
    index4: u32,
    index6: u32,
}

impl AddressLease {
    /// Which /30 of its IPv4 pool the VM has (0: the first).
    pub fn ipv4_index(&self) -> u32 {
        self.index4
    }

    /// Which /64 of its IPv6 pool the VM has.
    pub fn ipv6_index(&self) -> u32 {
        self.index6
    }
}

impl Drop for AddressLease {
    fn drop(&mut self) {
        let mut pools = self.pools.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = pools.v4.get_mut(&self.v4) {
            t.0.remove(&self.index4);
        }
        if let Some(t) = pools.v6.get_mut(&self.v6) {
            t.0.remove(&self.index6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_lowest_first_and_come_back() {
        let pools = AddressPools::default();
        let a = pools.lease(None, None).unwrap();
        let b = pools.lease(None, None).unwrap();
        let c = pools.lease(None, None).unwrap();
        assert_eq!([a.ipv4_index(), b.ipv4_index(), c.ipv4_index()], [0, 1, 2]);
        assert_eq!([a.ipv6_index(), b.ipv6_index(), c.ipv6_index()], [0, 1, 2]);
        drop(b);
        assert_eq!(pools.in_use(), 2);
        let d = pools.lease(None, None).unwrap();
        assert_eq!(
            (d.ipv4_index(), d.ipv6_index()),
            (1, 1),
            "the freed pair is reused"
        );
        drop((a, c, d));
        assert_eq!(pools.in_use(), 0);
    }

    #[test]
    fn a_full_pool_says_so_and_leaks_nothing() {
        let pools = AddressPools::default();
        let small4 = Some((Ipv4Addr::new(10, 0, 0, 0), 29)); // two /30s
        let a = pools.lease(small4, None).unwrap();
        let b = pools.lease(small4, None).unwrap();
        let e = pools.lease(small4, None).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/29 is exhausted"), "{e}");
        assert!(matches!(
            e,
            AddressPoolError::Ipv4Exhausted { capacity: 2, .. }
        ));
        // Other pools are independent.
        let other = pools.lease(None, None).unwrap();
        assert_eq!(other.ipv4_index(), 0);
        // An exhausted IPv6 pool gives the IPv4 index back.
        let one6 = Some((Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 64));
        let only = pools.lease(None, one6).unwrap();
        let before = pools.in_use();
        assert!(matches!(
            pools.lease(None, one6),
            Err(AddressPoolError::Ipv6Exhausted { capacity: 1, .. })
        ));
        assert_eq!(pools.in_use(), before);
        drop((a, b, other, only));
        assert_eq!(pools.in_use(), 0);
    }
}
