//! Single-flight: concurrent misses of one key inside one worker share one
//! MySQL read (and one fill) instead of each sending its own — a hot pair
//! whose entry expires or is evicted would otherwise send a burst of
//! identical selects.
//!
//! A request joins only a flight that started after the request itself
//! began (it takes a [`Ticket`] first; flights are numbered in order). The
//! flight's read then began after the request did, so the shared answer is
//! as fresh as one the request would have read itself: joining never
//! returns a state older than the request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;

use futures_util::future::{FutureExt, LocalBoxFuture, Shared};

/// The flights of one worker (one thread: no locks).
pub struct Flights<K, V: Clone> {
    flying: RefCell<HashMap<K, Flight<V>>>,
    /// The number of the last flight started.
    last_id: Cell<u64>,
}

/// When a request began, in this worker's flight numbers: it may join only
/// flights numbered above it.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

struct Flight<V: Clone> {
    id: u64,
    result: Shared<LocalBoxFuture<'static, V>>,
}

impl<K: Hash + Eq + Clone, V: Clone + 'static> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            flying: RefCell::new(HashMap::new()),
            last_id: Cell::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone + 'static> Flights<K, V> {
    /// A ticket for a request beginning now (a read of a counter: cheap
    /// enough to take on every request, hit or miss).
    pub fn ticket(&self) -> Ticket {
        Ticket(self.last_id.get())
    }

    /// The result of `work` for `key`: of a flight already under way that
    /// started after `ticket` was taken (when the caller's request began),
    /// or else of a new flight running `work`. The second value says whether
    /// this call joined another's flight.
    pub async fn run<F>(&self, key: K, ticket: Ticket, work: impl FnOnce() -> F) -> (V, bool)
    where
        F: Future<Output = V> + 'static,
    {
        let under_way = self
            .flying
            .borrow()
            .get(&key)
            .filter(|flight| flight.id > ticket.0)
            .map(|flight| flight.result.clone());
        if let Some(result) = under_way {
            return (result.await, true);
        }
        let id = self.last_id.get() + 1;
        self.last_id.set(id);
        let result = work().boxed_local().shared();
        self.flying.borrow_mut().insert(
            key.clone(),
            Flight {
                id,
                result: result.clone(),
            },
        );
        // Lands (leaves the map) when this call ends, even if it is dropped
        // half-way (a client gone): joiners still hold the shared result.
        let _landing = Landing {
            flights: self,
            key,
            id,
        };
        (result.await, false)
    }
}

struct Landing<'a, K: Hash + Eq + Clone, V: Clone> {
    flights: &'a Flights<K, V>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Landing<'_, K, V> {
    fn drop(&mut self) {
        // A newer flight for the key may have replaced this one: leave it.
        if let Ok(mut flying) = self.flights.flying.try_borrow_mut() {
            if flying.get(&self.key).is_some_and(|f| f.id == self.id) {
                flying.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// A flight that counts its runs and finishes when `gate` opens.
    fn counted(
        runs: &Rc<Cell<u32>>,
        gate: &Rc<tokio::sync::Notify>,
    ) -> impl FnOnce() -> LocalBoxFuture<'static, u32> {
        let (runs, gate) = (runs.clone(), gate.clone());
        move || {
            async move {
                runs.set(runs.get() + 1);
                gate.notified().await;
                runs.get()
            }
            .boxed_local()
        }
    }

    /// Opens `gate` after `ms` milliseconds.
    async fn open_after(ms: u64, gate: &tokio::sync::Notify) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        gate.notify_waiters();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn callers_that_began_before_a_flight_share_it() {
        let flights: Flights<u32, u32> = Flights::default();
        let runs = Rc::new(Cell::new(0));
        let gate = Rc::new(tokio::sync::Notify::new());
        let ticket = flights.ticket();
        let first = flights.run(7, ticket, counted(&runs, &gate));
        let second = flights.run(7, ticket, counted(&runs, &gate));
        let open = open_after(20, &gate);
        let ((a, joined_a), (b, joined_b), ()) = tokio::join!(first, second, open);
        assert_eq!(runs.get(), 1, "one run for both");
        assert_eq!((a, b), (1, 1));
        assert_eq!((joined_a, joined_b), (false, true));
        assert!(flights.flying.borrow().is_empty(), "landed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_began_after_a_flight_started_never_joins_it() {
        let flights: Flights<u32, u32> = Flights::default();
        let runs = Rc::new(Cell::new(0));
        let gate = Rc::new(tokio::sync::Notify::new());
        let first = flights.run(7, flights.ticket(), counted(&runs, &gate));
        let later = async {
            // Let the first flight start, then begin a request after it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            flights
                .run(7, flights.ticket(), counted(&runs, &gate))
                .await
        };
        let open = open_after(30, &gate);
        let ((_, joined_first), (_, joined_later), ()) = tokio::join!(first, later, open);
        assert_eq!(runs.get(), 2, "the later caller read for itself");
        assert!(!joined_first && !joined_later);
        assert!(flights.flying.borrow().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn other_keys_fly_apart_and_a_dropped_caller_still_lands() {
        let flights: Flights<u32, u32> = Flights::default();
        let runs = Rc::new(Cell::new(0));
        let gate = Rc::new(tokio::sync::Notify::new());
        let ticket = flights.ticket();
        let a = flights.run(1, ticket, counted(&runs, &gate));
        let b = flights.run(2, ticket, counted(&runs, &gate));
        let open = open_after(20, &gate);
        let (_, _, ()) = tokio::join!(a, b, open);
        assert_eq!(runs.get(), 2);

        // A caller dropped mid-flight (its client went away) leaves no entry.
        let gone = flights.run(3, flights.ticket(), counted(&runs, &gate));
        let timed_out = tokio::time::timeout(Duration::from_millis(10), gone).await;
        assert!(timed_out.is_err());
        assert!(flights.flying.borrow().is_empty());
    }
}
