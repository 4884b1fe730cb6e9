//! How a catalog picks one of the listed copies: the policy ([`Pick`]) and the pure picking
//! state of one `get_address` closure ([`Picker`]).

use persistent_connection_core::rand_chacha::ChaCha8Rng;
use persistent_connection_core::rand_chacha::rand_core::{Rng, SeedableRng};

/// How a catalog with several listed addresses picks one among those not tried yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Pick {
    /// The first candidate in listing order: a priority list. Each sweep starts again from
    /// the top (skipping the address handed out last).
    #[default]
    InOrder,
    /// The first candidate after the previous pick, wrapping around: sweeps continue where
    /// the last one ended.
    RoundRobin,
    /// A uniformly random candidate from a ChaCha generator seeded with `seed`: the same
    /// seed and the same listings give the same picks (use the connection's own
    /// [`seed`](crate::Builder::seed) to keep a run reproducible). Give each client its own
    /// seed to spread clients over the copies.
    Random {
        /// The generator's seed.
        seed: u64,
    },
}

/// The picking state of one `get_address` closure: the policy, the addresses tried since
/// the last sweep and the last pick. Pure and deterministic, so it can be tested alone.
///
/// ```
/// use persistent_connection::catalog::{Pick, Picker};
///
/// let mut p = Picker::new(Pick::InOrder);
/// assert_eq!(p.pick(&["a", "b", "c"]), Some("a"));
/// assert_eq!(p.pick(&["a", "b", "c"]), Some("b")); // "a" was tried
/// assert_eq!(p.pick(&["a", "b", "c"]), Some("c"));
/// assert_eq!(p.pick(&["a", "b", "c"]), Some("a")); // a new sweep, from the top
/// assert_eq!(p.pick(&["a"]), Some("a"));           // the only one listed
/// assert_eq!(p.pick(&[]), None);
/// ```
#[derive(Debug)]
pub struct Picker<A> {
    pick: Pick,
    rng: Option<ChaCha8Rng>,
    tried: Vec<A>,
    last: Option<A>,
    /// Index in the listing of the last pick, for round robin when the last address is no
    /// longer listed.
    last_index: usize,
}

impl<A: Clone + PartialEq> Picker<A> {
    /// A picker with nothing tried yet.
    pub fn new(pick: Pick) -> Picker<A> {
        let rng = match pick {
            Pick::Random { seed } => Some(ChaCha8Rng::seed_from_u64(seed)),
            _ => None,
        };
        Picker {
            pick,
            rng,
            tried: Vec::new(),
            last: None,
            last_index: 0,
        }
    }

    /// Picks one of `listed` (see [`Pick`] and the module docs) and counts it as tried;
    /// `None` if nothing is listed.
    pub fn pick(&mut self, listed: &[A]) -> Option<A> {
        if listed.is_empty() {
            return None;
        }
        self.tried.retain(|a| listed.contains(a));
        let mut candidates: Vec<usize> = (0..listed.len())
            .filter(|&i| !self.tried.contains(&listed[i]))
            .collect();
        if candidates.is_empty() {
            // Every listed copy has had its turn: a new sweep, skipping the last pick when
            // there is another address to try.
            self.tried.clear();
            candidates = (0..listed.len())
                .filter(|&i| self.last.as_ref() != Some(&listed[i]))
                .collect();
            if candidates.is_empty() {
                candidates = (0..listed.len()).collect();
            }
        }
        let chosen = match self.pick {
            Pick::InOrder => candidates[0],
            Pick::RoundRobin => {
                let after = match &self.last {
                    Some(last) => listed
                        .iter()
                        .position(|a| a == last)
                        .map_or(self.last_index, |i| i + 1),
                    None => 0,
                };
                let after = after % listed.len();
                candidates
                    .iter()
                    .copied()
                    .find(|&i| i >= after)
                    .unwrap_or(candidates[0])
            }
            Pick::Random { .. } => {
                let rng = self.rng.get_or_insert_with(|| ChaCha8Rng::seed_from_u64(0));
                let n = candidates.len() as u64;
                candidates[(rng.next_u64() % n) as usize]
            }
        };
        let address = listed[chosen].clone();
        self.tried.push(address.clone());
        self.last = Some(address.clone());
        self.last_index = chosen;
        Some(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks<A: Clone + PartialEq>(p: &mut Picker<A>, listed: &[A], n: usize) -> Vec<A> {
        (0..n).map(|_| p.pick(listed).unwrap()).collect()
    }

    #[test]
    fn in_order_sweeps_from_the_top_and_skips_the_last_pick() {
        let mut p = Picker::new(Pick::InOrder);
        assert_eq!(picks(&mut p, &[1, 2, 3], 7), [1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn in_order_new_sweep_never_repeats_the_last_pick() {
        let mut p = Picker::new(Pick::InOrder);
        assert_eq!(p.pick(&[1, 2]), Some(1));
        assert_eq!(p.pick(&[1, 2]), Some(2));
        // Sweep over: a new one starts, but not with 2 again.
        assert_eq!(p.pick(&[1, 2]), Some(1));
        // 3 appears: 2 and 3 are untried in this sweep; in order, 2 first.
        assert_eq!(p.pick(&[1, 2, 3]), Some(2));
        assert_eq!(p.pick(&[1, 2, 3]), Some(3));
    }

    #[test]
    fn round_robin_continues_after_the_previous_pick() {
        let mut p = Picker::new(Pick::RoundRobin);
        assert_eq!(picks(&mut p, &[1, 2, 3], 7), [1, 2, 3, 1, 2, 3, 1]);
        // 1 leaves the listing: next after 1's old place is 2.
        let mut p = Picker::new(Pick::RoundRobin);
        assert_eq!(p.pick(&[1, 2, 3]), Some(1));
        assert_eq!(p.pick(&[2, 3]), Some(2));
        assert_eq!(p.pick(&[2, 3]), Some(3));
        assert_eq!(p.pick(&[2, 3]), Some(2));
    }

    #[test]
    fn round_robin_follows_the_last_pick_to_its_new_place_in_a_reordered_listing() {
        let mut p = Picker::new(Pick::RoundRobin);
        assert_eq!(p.pick(&[1, 2, 3, 4]), Some(1));
        // The catalog now lists 1 third: the next untried copy after it is 2, not the
        // first untried copy of the listing (3).
        assert_eq!(p.pick(&[3, 4, 1, 2]), Some(2));
        assert_eq!(p.pick(&[3, 4, 1, 2]), Some(3));
    }

    #[test]
    fn a_removed_last_pick_does_not_stall_round_robin() {
        let mut p = Picker::new(Pick::RoundRobin);
        assert_eq!(p.pick(&[1, 2, 3]), Some(1));
        assert_eq!(p.pick(&[1, 2, 3]), Some(2));
        // 2 leaves: round robin goes on from its old index (1), so 3 is next.
        assert_eq!(p.pick(&[1, 3]), Some(3));
    }

    #[test]
    fn a_single_address_is_picked_every_time() {
        for pick in [Pick::InOrder, Pick::RoundRobin, Pick::Random { seed: 7 }] {
            let mut p = Picker::new(pick);
            assert_eq!(picks(&mut p, &["only"], 4), ["only"; 4], "{pick:?}");
        }
    }

    #[test]
    fn no_policy_repeats_a_pick_while_another_address_is_listed() {
        for pick in [Pick::InOrder, Pick::RoundRobin, Pick::Random { seed: 3 }] {
            let mut p = Picker::new(pick);
            let got = picks(&mut p, &[10, 20, 30, 40], 200);
            for w in got.windows(2) {
                assert_ne!(w[0], w[1], "{pick:?} repeated {}", w[0]);
            }
            // Every address gets a turn in each sweep of 4.
            for sweep in got.chunks(4).take(10) {
                let mut s = sweep.to_vec();
                s.sort();
                assert_eq!(s, [10, 20, 30, 40], "{pick:?}");
            }
        }
    }

    #[test]
    fn random_is_fixed_by_its_seed_and_covers_every_copy() {
        let listed = [1, 2, 3, 4, 5];
        let a = picks(&mut Picker::new(Pick::Random { seed: 42 }), &listed, 100);
        let b = picks(&mut Picker::new(Pick::Random { seed: 42 }), &listed, 100);
        let c = picks(&mut Picker::new(Pick::Random { seed: 43 }), &listed, 100);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Each sweep of five hands out every copy once.
        for sweep in a.chunks(5) {
            let mut s = sweep.to_vec();
            s.sort();
            assert_eq!(s, listed);
        }
    }

    #[test]
    fn empty_listing_picks_nothing_and_keeps_the_state() {
        let mut p = Picker::new(Pick::InOrder);
        assert_eq!(p.pick(&[1, 2]), Some(1));
        assert_eq!(p.pick(&[]), None);
        assert_eq!(p.pick(&[1, 2]), Some(2));
    }
}
