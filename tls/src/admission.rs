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
//!
//! A place given back goes straight to the first caller in line that it
//! fits (first come, first served; a caller held back by its address's cap
//! does not hold back callers from other addresses). Nobody else is woken,
//! so a caller that opens and closes connections cannot make the server
//! wake the whole line each time.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

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
    /// Bits of an IPv6 address that name one caller ([`crate::limit_key`]).
    pub(crate) ipv6_prefix: u8,
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

/// A caller in line: where its place is to be sent.
#[derive(Debug)]
struct Waiter {
    id: u64,
    address: IpAddr,
    place: oneshot::Sender<Place>,
}

#[derive(Debug, Default)]
struct State {
    inside: Tally,
    waiting: Tally,
    line: VecDeque<Waiter>,
    next_id: u64,
}

/// Places under [`AdmissionLimits`]; see the module documentation.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
}

/// A place, given back when dropped.
#[derive(Debug)]
pub(crate) struct Place {
    admission: Arc<Admission>,
    address: IpAddr,
    /// Cleared when the place has been given back another way (see
    /// [`Admission::give_back`]), so that dropping it does nothing more.
    held: bool,
}

/// A caller's place in the line: its place arrives on `place`. Dropped, it
/// leaves the line.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    place: oneshot::Receiver<Place>,
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
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn place(self: &Arc<Self>, address: IpAddr) -> Place {
        Place {
            admission: self.clone(),
            address,
            held: true,
        }
    }

    /// A place for a caller at `address` now, or a place in the line, or
    /// [`TurnedAway::LineFull`]. It does not wait, so the accept loop can
    /// call it before it spends anything on the connection. A place free
    /// now jumps nobody: every place given back goes at once to the first
    /// caller in line it fits, so none that would fit is waiting. IPv6
    /// callers are counted per prefix ([`crate::limit_key`]).
    pub(crate) fn arrive(self: &Arc<Self>, address: IpAddr) -> Result<Arrival, TurnedAway> {
        let address = crate::limit_key(address, self.limits.ipv6_prefix);
        let mut state = self.state();
        let limits = self.limits;
        if state
            .inside
            .has_room(address, limits.total, limits.per_address)
        {
            state.inside.add(address);
            return Ok(Arrival::Admitted(self.place(address)));
        }
        if !state
            .waiting
            .has_room(address, limits.waiting_total, limits.waiting_per_address)
        {
            return Err(TurnedAway::LineFull);
        }
        let (sender, receiver) = oneshot::channel();
        let id = state.next_id;
        state.next_id += 1;
        state.waiting.add(address);
        state.line.push_back(Waiter {
            id,
            address,
            place: sender,
        });
        Ok(Arrival::Waiting(Ticket {
            admission: self.clone(),
            id,
            place: receiver,
        }))
    }

    /// Gives back a place of `address` and hands it to the first caller in
    /// line it fits. When that caller has just given up (its ticket is
    /// gone), the place comes back and goes to the next; each turn takes one
    /// caller out of the line, so the loop ends.
    fn give_back(self: &Arc<Self>, mut address: IpAddr) {
        loop {
            let handed = {
                let mut state = self.state();
                state.inside.remove(address);
                let limits = self.limits;
                let fits = state.line.iter().position(|w| {
                    state
                        .inside
                        .has_room(w.address, limits.total, limits.per_address)
                });
                let Some(waiter) = fits.and_then(|at| state.line.remove(at)) else {
                    return;
                };
                state.waiting.remove(waiter.address);
                state.inside.add(waiter.address);
                waiter
            };
            // Sent outside the lock: a place that comes back is given back
            // by this loop, not by its drop (which would take the lock).
            match handed.place.send(self.place(handed.address)) {
                Ok(()) => return,
                Err(mut unwanted) => {
                    unwanted.held = false;
                    address = unwanted.address;
                }
            }
        }
    }
}

impl Arrival {
    /// The place: at once when admitted, otherwise the one handed over
    /// within `wait`.
    pub(crate) async fn place_within(self, wait: Duration) -> Result<Place, TurnedAway> {
        let mut ticket = match self {
            Arrival::Admitted(place) => return Ok(place),
            Arrival::Waiting(ticket) => ticket,
        };
        match tokio::time::timeout(wait, &mut ticket.place).await {
            Ok(Ok(place)) => Ok(place),
            // A place sent in the moment the wait ended stays in the
            // channel; dropping the ticket drops it, which gives it back.
            Ok(Err(_)) | Err(_) => Err(TurnedAway::Timeout),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.held {
            self.admission.give_back(self.address);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.state();
        let at = state.line.iter().position(|w| w.id == self.id);
        if let Some(waiter) = at.and_then(|at| state.line.remove(at)) {
            state.waiting.remove(waiter.address);
        }
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
            ipv6_prefix: 64,
        }
    }

    fn admitted(arrival: Result<Arrival, TurnedAway>) -> Place {
        match arrival {
            Ok(Arrival::Admitted(place)) => place,
            other => panic!("expected a place at once, got {other:?}"),
        }
    }

    fn waiting(arrival: Result<Arrival, TurnedAway>) -> Arrival {
        match arrival {
            Ok(a @ Arrival::Waiting(_)) => a,
            other => panic!("expected a place in line, got {other:?}"),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn an_address_holds_at_most_its_places_and_gets_them_back() {
        let admission = Admission::new(limits(2, 0));
        let first = admitted(admission.arrive(A));
        let _second = admitted(admission.arrive(A));
        assert_eq!(
            admission.arrive(A).unwrap_err(),
            TurnedAway::LineFull,
            "a third is turned away when no line is allowed"
        );
        let _other = admitted(admission.arrive(B));
        drop(first);
        let _again = admitted(admission.arrive(A));
    }

    #[test]
    fn one_ipv6_64_holds_the_places_of_one_address_whichever_addresses_it_uses() {
        let admission = Admission::new(limits(2, 0));
        let host =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        let first = admitted(admission.arrive(host(1)));
        let _second = admitted(admission.arrive(host(2)));
        assert_eq!(
            admission.arrive(host(3)).unwrap_err(),
            TurnedAway::LineFull,
            "a third address of the same /64 counts as the same caller"
        );
        let other_64 = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        let _other = admitted(admission.arrive(other_64));
        drop(first);
        let _again = admitted(admission.arrive(host(4)));
    }

    #[tokio::test]
    async fn places_given_back_go_to_the_line_first_come_first_served() {
        let admission = Admission::new(limits(1, 2));
        let held = admitted(admission.arrive(A));
        let first = waiting(admission.arrive(A));
        let second = waiting(admission.arrive(A));
        assert_eq!(admission.arrive(A).unwrap_err(), TurnedAway::LineFull);
        let second = tokio::spawn(second.place_within(Duration::from_secs(10)));
        let first = tokio::spawn(first.place_within(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let place = first.await.unwrap().expect("the first in line gets it");
        assert!(!second.is_finished(), "the second still waits");
        // A newcomer does not jump the line either.
        assert!(matches!(admission.arrive(A), Ok(Arrival::Waiting(_))));
        drop(place);
        second.await.unwrap().expect("then the second");
    }

    #[tokio::test]
    async fn a_caller_held_back_by_its_address_does_not_hold_back_others() {
        let admission = Admission::new(AdmissionLimits {
            total: 2,
            per_address: 1,
            waiting_total: 4,
            waiting_per_address: 4,
            ipv6_prefix: 64,
        });
        let a_held = admitted(admission.arrive(A));
        let b_held = admitted(admission.arrive(B));
        let a_waits =
            tokio::spawn(waiting(admission.arrive(A)).place_within(Duration::from_secs(10)));
        let b_waits =
            tokio::spawn(waiting(admission.arrive(B)).place_within(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // B's place comes back: A, first in line, cannot take it (its
        // address is at its cap); B, behind it, can.
        drop(b_held);
        let _b = b_waits.await.unwrap().expect("B's waiter gets B's place");
        assert!(!a_waits.is_finished());
        drop(a_held);
        let _a = a_waits.await.unwrap().expect("then A's");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_line_and_its_turn_passes_on() {
        let admission = Admission::new(limits(1, 2));
        let held = admitted(admission.arrive(A));
        let impatient = waiting(admission.arrive(A));
        let patient = waiting(admission.arrive(A));
        let result = impatient.place_within(Duration::from_millis(50)).await;
        assert_eq!(result.unwrap_err(), TurnedAway::Timeout);
        let patient = tokio::spawn(patient.place_within(Duration::from_secs(10)));
        // A cancelled wait (its task dropped) leaves the line as well.
        let cancelled =
            tokio::spawn(waiting(admission.arrive(A)).place_within(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(held);
        let place = patient
            .await
            .unwrap()
            .expect("the place passes to the next");
        drop(place);
        let state = admission.state();
        assert_eq!(
            (state.inside.total, state.waiting.total, state.line.len()),
            (0, 0, 0),
            "every count is back to nothing"
        );
    }

    #[tokio::test]
    async fn a_place_handed_to_a_caller_that_just_left_goes_to_the_next() {
        let admission = Admission::new(limits(1, 2));
        let held = admitted(admission.arrive(A));
        // A caller whose wait ended in the very moment its place was sent:
        // still in line, nobody receiving.
        {
            let (sender, receiver) = oneshot::channel();
            drop(receiver);
            let mut state = admission.state();
            state.waiting.add(A);
            state.line.push_back(Waiter {
                id: u64::MAX,
                address: A,
                place: sender,
            });
        }
        let next = waiting(admission.arrive(A));
        drop(held);
        let place = next
            .place_within(Duration::from_secs(1))
            .await
            .expect("the next in line");
        drop(place);
        let state = admission.state();
        assert_eq!(
            (state.inside.total, state.waiting.total, state.line.len()),
            (0, 0, 0)
        );
    }
}
