//! Places under a limit, in all and per caller address, with a bounded line
//! of callers waiting for one.
//!
//! Why a line and not an outright refusal: a server that closes a connection
//! because it is merely full looks, from the client's side, exactly like a
//! server that is down, and a client that believes its primary is down fails
//! over to the secondary and tells the auditors so. A caller over the limits
//! therefore waits, for a bounded time, for a place to come free. The line
//! itself is bounded too: past it, a connection is closed at once, so a
//! flood still costs the server no more than a descriptor per waiting caller.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The sizes of one [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdmissionLimits {
    /// Places in all.
    pub(crate) total: usize,
    /// Places one address may hold.
    pub(crate) per_address: usize,
    /// Callers that may wait for a place, in all.
    pub(crate) waiting_total: usize,
    /// Callers from one address that may wait for a place.
    pub(crate) waiting_per_address: usize,
}

/// Counts of places (or of waiting callers), in all and per address.
#[derive(Debug, Default)]
struct Tally {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Tally {
    fn has_room(&self, address: IpAddr, total: usize, per_address: usize) -> bool {
        self.total < total && self.by_address.get(&address).copied().unwrap_or(0) < per_address
    }

    fn add(&mut self, address: IpAddr) {
        self.total += 1;
        *self.by_address.entry(address).or_default() += 1;
    }

    fn remove(&mut self, address: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(count) = self.by_address.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                self.by_address.remove(&address);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    inside: Tally,
    waiting: Tally,
}

/// Places under [`AdmissionLimits`]; see the module documentation.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
    /// Woken whenever a place is given back.
    freed: Notify,
}

/// A place, given back when dropped.
#[derive(Debug)]
pub(crate) struct Place {
    admission: Arc<Admission>,
    address: IpAddr,
}

/// A caller's place in the waiting line, given up when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
}

/// What an arriving caller gets.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// A place at once.
    Admitted(Place),
    /// A place in the line; [`Arrival::place_within`] waits for a place.
    Waiting(Ticket),
}

/// Why a caller was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TurnedAway {
    /// The line, in all or for the caller's address, is full as well.
    #[error("no place and the waiting line is full")]
    LineFull,
    /// No place came free while it waited.
    #[error("no place came free in time")]
    Timeout,
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::default(),
            freed: Notify::new(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `address` if one is free now.
    fn try_enter(self: &Arc<Self>, address: IpAddr) -> Option<Place> {
        let mut counts = self.counts();
        if !counts
            .inside
            .has_room(address, self.limits.total, self.limits.per_address)
        {
            return None;
        }
        counts.inside.add(address);
        Some(Place {
            admission: self.clone(),
            address,
        })
    }

    /// A place for a caller at `address` now, or a place in the line, or
    /// [`TurnedAway::LineFull`]. It does not wait, so the accept loop can
    /// call it before it spends anything on the connection.
    pub(crate) fn arrive(self: &Arc<Self>, address: IpAddr) -> Result<Arrival, TurnedAway> {
        if let Some(place) = self.try_enter(address) {
            return Ok(Arrival::Admitted(place));
        }
        let mut counts = self.counts();
        if !counts.waiting.has_room(
            address,
            self.limits.waiting_total,
            self.limits.waiting_per_address,
        ) {
            return Err(TurnedAway::LineFull);
        }
        counts.waiting.add(address);
        Ok(Arrival::Waiting(Ticket {
            admission: self.clone(),
            address,
        }))
    }
}

impl Arrival {
    /// The place: at once when admitted, otherwise the first one that comes
    /// free within `wait`.
    pub(crate) async fn place_within(self, wait: Duration) -> Result<Place, TurnedAway> {
        let ticket = match self {
            Arrival::Admitted(place) => return Ok(place),
            Arrival::Waiting(ticket) => ticket,
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Each turn waits for a place to be given back; the deadline bounds
        // the turns in time.
        loop {
            let freed = ticket.admission.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a place given back between the
            // check and the wait still wakes this caller.
            freed.as_mut().enable();
            if let Some(place) = ticket.admission.try_enter(ticket.address) {
                return Ok(place);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(TurnedAway::Timeout);
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.admission.counts().inside.remove(self.address);
        self.admission.freed.notify_waiters();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.counts().waiting.remove(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: usize, waiting_per_address: usize) -> AdmissionLimits {
        AdmissionLimits {
            total: 10,
            per_address,
            waiting_total: 10,
            waiting_per_address,
        }
    }

    fn admitted(arrival: Result<Arrival, TurnedAway>) -> Place {
        match arrival {
            Ok(Arrival::Admitted(place)) => place,
            other => panic!("expected a place at once, got {other:?}"),
        }
    }

    #[test]
    fn an_address_holds_at_most_its_places_and_gets_them_back() {
        let admission = Admission::new(limits(2, 0));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admitted(admission.arrive(a));
        let _second = admitted(admission.arrive(a));
        assert_eq!(
            admission.arrive(a).unwrap_err(),
            TurnedAway::LineFull,
            "a third is turned away when no line is allowed"
        );
        let _other = admitted(admission.arrive(b));
        drop(first);
        let _again = admitted(admission.arrive(a));
    }

    #[tokio::test]
    async fn a_waiting_caller_gets_the_first_place_given_back() {
        let admission = Admission::new(limits(1, 1));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let held = admitted(admission.arrive(a));
        let waiting = admission.arrive(a).expect("a place in the line");
        assert!(matches!(waiting, Arrival::Waiting(_)));
        assert_eq!(
            admission.arrive(a).unwrap_err(),
            TurnedAway::LineFull,
            "the line for the address is full"
        );
        let waiter = tokio::spawn(waiting.place_within(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let place = waiter.await.unwrap().expect("the given-back place");
        // The waiter left the line when it got its place: one may wait again.
        assert!(matches!(admission.arrive(a), Ok(Arrival::Waiting(_))));
        drop(place);
    }

    #[tokio::test]
    async fn a_waiting_caller_gives_up_after_its_wait() {
        let admission = Admission::new(limits(1, 1));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let _held = admitted(admission.arrive(a));
        let waiting = admission.arrive(a).expect("a place in the line");
        let result = waiting.place_within(Duration::from_millis(100)).await;
        assert_eq!(result.unwrap_err(), TurnedAway::Timeout);
        assert!(
            matches!(admission.arrive(a), Ok(Arrival::Waiting(_))),
            "a caller that gave up is out of the line"
        );
    }
}
