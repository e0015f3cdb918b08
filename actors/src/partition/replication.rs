//! Pure policy of partition replication: where two replicas' histories part, and what a
//! replica is, given its replica set.
//!
//! Every write a primary makes gets the next sequence number and is labelled with the epoch
//! it was made in; a replica keeps, for each epoch it holds writes of, the first sequence
//! number of that epoch (its *history*, as Kafka's leader-epoch cache). Writes of one epoch
//! come from one primary, which writes them in order, and a replica only ever takes a
//! primary's writes right after the writes it already shares with that primary. So two
//! replicas that both hold writes of epoch `e` agree on everything up to the end of `e` in
//! the shorter of the two; the last epoch they share tells where they part
//! ([`common_prefix`]).

use crate::partition::store::History;

/// The last sequence number of `epoch` in `history`, whose replica holds writes up to
/// `seq`: the one before the next epoch's first, or `seq` for its last epoch.
fn end_of(history: &History, epoch: u64, seq: u64) -> u64 {
    history
        .iter()
        .find(|(e, _)| *e > epoch)
        .map_or(seq, |(_, start)| start.saturating_sub(1))
}

/// How many writes a replica with `(history, seq)` shares with its primary: it holds the
/// primary's writes `1..=common_prefix(..)`, and what it holds after that must be undone on
/// the primary's word before it takes the primary's writes after it.
pub fn common_prefix(
    follower: &History,
    follower_seq: u64,
    primary: &History,
    primary_seq: u64,
) -> u64 {
    let shared = follower
        .iter()
        .rev()
        .map(|(e, _)| *e)
        .find(|e| primary.iter().any(|(p, _)| p == e));
    match shared {
        None => 0,
        Some(e) => end_of(follower, e, follower_seq).min(end_of(primary, e, primary_seq)),
    }
}

/// What a replica is in its replica set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It orders writes, at this epoch.
    Primary { epoch: u64 },
    /// It holds every acknowledged write and takes the primary's (`primary`, at its
    /// generation).
    Follower { epoch: u64, primary: (u32, u64) },
    /// It catches up from the primary before it may join.
    Recovering { epoch: u64, primary: (u32, u64) },
    /// No in-sync replica can lead it: it waits.
    Waiting { epoch: u64 },
}

impl Role {
    /// The role of replica `me` at `generation` in `view`.
    pub fn of(view: &arbor_scheduler::state::PartitionView, me: u32, generation: u64) -> Role {
        let epoch = view.set.epoch;
        match view.primary() {
            Some((p, g)) if p == me && g == generation => Role::Primary { epoch },
            Some(primary) if view.set.is_in_sync(me, generation) => {
                Role::Follower { epoch, primary }
            }
            Some(primary) => Role::Recovering { epoch, primary },
            None => Role::Waiting { epoch },
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            Role::Primary { epoch }
            | Role::Follower { epoch, .. }
            | Role::Recovering { epoch, .. }
            | Role::Waiting { epoch } => *epoch,
        }
    }

    /// Whether this replica holds every acknowledged write.
    pub fn in_sync(&self) -> bool {
        matches!(self, Role::Primary { .. } | Role::Follower { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A replica's writes: `(epoch, unique write id)` in sequence order.
    type Log = Vec<(u64, u64)>;

    fn history(log: &Log) -> History {
        let mut h: History = Vec::new();
        for (i, (e, _)) in log.iter().enumerate() {
            if h.last().is_none_or(|(last, _)| last < e) {
                h.push((*e, i as u64 + 1));
            }
        }
        h
    }

    fn truly_common(a: &Log, b: &Log) -> u64 {
        a.iter().zip(b).take_while(|(x, y)| x == y).count() as u64
    }

    #[test]
    fn examples() {
        // Same epoch, one behind.
        assert_eq!(common_prefix(&vec![(1, 1)], 10, &vec![(1, 1)], 12), 10);
        // An old primary's unacknowledged write 11 that the new primary never had.
        assert_eq!(
            common_prefix(&vec![(1, 1)], 11, &vec![(1, 1), (2, 11)], 14),
            10
        );
        // Nothing shared.
        assert_eq!(common_prefix(&vec![(3, 1)], 5, &vec![(2, 1)], 9), 0);
        assert_eq!(common_prefix(&vec![], 0, &vec![(2, 1)], 9), 0);
    }

    proptest! {
        /// Replicas follow primaries epoch after epoch: each epoch's primary (any replica)
        /// brings some replicas in line with its log, then writes; each replica in line gets
        /// a prefix of those writes (the rest were lost with the primary, or were still on
        /// their way). At the end, for every pair, `common_prefix` is the true length of the
        /// writes they share from the start.
        #[test]
        fn common_prefix_is_the_shared_writes(
            epochs in proptest::collection::vec(
                (0usize..4, proptest::collection::vec(any::<bool>(), 4), 0u64..6, proptest::collection::vec(0u64..7, 4)),
                1..12,
            ),
        ) {
            let mut logs: Vec<Log> = vec![Vec::new(); 4];
            let mut next_id = 0u64;
            for (n, (primary, in_line, writes, received)) in epochs.into_iter().enumerate() {
                let epoch = n as u64 + 1;
                let base = logs[primary].clone();
                let mut written = base.clone();
                for _ in 0..writes {
                    next_id += 1;
                    written.push((epoch, next_id));
                }
                for r in 0..4 {
                    if r == primary {
                        logs[r] = written.clone();
                    } else if in_line[r] {
                        // Brought in line: the primary's log, then some of its new writes.
                        let got = (received[r] as usize).min(writes as usize);
                        logs[r] = written[..base.len() + got].to_vec();
                    }
                }
            }
            for a in &logs {
                for b in &logs {
                    let found = common_prefix(&history(a), a.len() as u64, &history(b), b.len() as u64);
                    prop_assert_eq!(found, truly_common(a, b), "{:?} vs {:?}", a, b);
                }
            }
        }
    }
}
