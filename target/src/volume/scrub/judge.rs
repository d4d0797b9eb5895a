//! What a scrub makes of the digests of one range (pure: no IO).
//!
//! Rules, given every healthy replica's [`DigestReply`] for the range:
//! - no answer: nothing compared ([`Verdict::Unanswered`]);
//! - every answer has the same digest and names no bad block: the copies
//!   agree ([`Verdict::Agree`]); with one answer only, that copy verified
//!   its checksums and there is nothing to compare it with;
//! - a *good* copy names no bad block. The winner is the group of good
//!   copies with one digest held by more than half of the answers (a
//!   majority), or, when every good copy has the same digest and the others
//!   name bad blocks, that group (a block that failed its checksum is known
//!   bad, so the copies that verified are the only candidates). Otherwise
//!   nothing decides: the range is [`Verdict::Undecided`] (e.g. two copies
//!   that differ and verify, or no copy that verifies);
//! - with a winner, every other copy is repaired: the ranges it names bad,
//!   or the whole range when it names none (it differs somewhere); the
//!   data comes from the first replica of the winning group
//!   ([`Verdict::Repair`]). The scrub compares the range again afterwards,
//!   so a copy that had bad blocks *and* differed elsewhere is found then.

use std::collections::BTreeMap;

use cstor_proto::DigestReply;

use crate::volume::controller::ReplicaIndex;

/// What to do with one range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No replica answered.
    Unanswered,
    /// The copies agree (or the only one verified).
    Agree,
    /// Read `ranges` (offset, len; within the range, ascending, disjoint)
    /// from `source` and write them back.
    Repair {
        source: ReplicaIndex,
        ranges: Vec<(u64, u64)>,
        /// Replicas whose copy differs from the winner's without naming a
        /// bad block.
        differing: Vec<ReplicaIndex>,
        /// Replicas that named bad blocks.
        bad: Vec<ReplicaIndex>,
    },
    /// No copy can be chosen; `why` says what was found.
    Undecided { why: String },
}

/// Judges the answers for `[offset, offset + len)` (module doc).
pub fn judge(offset: u64, len: u64, replies: &[(ReplicaIndex, DigestReply)]) -> Verdict {
    if replies.is_empty() {
        return Verdict::Unanswered;
    }
    let n = replies.len();
    let mut good: BTreeMap<u64, Vec<ReplicaIndex>> = BTreeMap::new();
    for (replica, reply) in replies {
        if reply.bad.is_empty() {
            good.entry(reply.digest).or_default().push(*replica);
        }
    }
    if good.len() == 1 && good.values().all(|g| g.len() == n) {
        return Verdict::Agree;
    }
    let majority = good.values().find(|g| g.len() * 2 > n);
    let winner = match majority {
        Some(group) => group,
        None if good.len() == 1 => match good.values().next() {
            Some(group) => group,
            None => return undecided(replies),
        },
        None => return undecided(replies),
    };
    let Some(&source) = winner.first() else {
        return undecided(replies);
    };
    let end = offset.saturating_add(len);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let (mut differing, mut bad) = (Vec::new(), Vec::new());
    for (replica, reply) in replies {
        if winner.contains(replica) {
            continue;
        }
        if reply.bad.is_empty() {
            differing.push(*replica);
            ranges.push((offset, len));
        } else {
            bad.push(*replica);
            for r in &reply.bad {
                let start = r.offset.max(offset);
                let stop = r.end().unwrap_or(u64::MAX).min(end);
                if start < stop {
                    ranges.push((start, stop - start));
                }
            }
        }
    }
    Verdict::Repair {
        source,
        ranges: merge(ranges),
        differing,
        bad,
    }
}

fn undecided(replies: &[(ReplicaIndex, DigestReply)]) -> Verdict {
    let what: Vec<String> = replies
        .iter()
        .map(|(replica, reply)| {
            if reply.bad.is_empty() {
                format!("replica {replica}: digest {:016x}", reply.digest)
            } else {
                format!(
                    "replica {replica}: digest {:016x}, {} bad range(s)",
                    reply.digest,
                    reply.bad.len()
                )
            }
        })
        .collect();
    Verdict::Undecided {
        why: format!("no majority of verified copies: {}", what.join("; ")),
    }
}

/// Sorts and merges overlapping or touching ranges.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (offset, len) in ranges {
        let end = offset.saturating_add(len);
        if let Some(last) = out.last_mut() {
            let last_end = last.0.saturating_add(last.1);
            if offset <= last_end {
                last.1 = end.max(last_end) - last.0;
                continue;
            }
        }
        out.push((offset, len));
    }
    out
}

#[cfg(test)]
mod tests {
    use cstor_proto::ByteRange;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn good(digest: u64) -> DigestReply {
        DigestReply {
            digest,
            mapped_blocks: 1,
            bad: Vec::new(),
        }
    }

    fn bad(digest: u64, ranges: &[(u64, u64)]) -> DigestReply {
        DigestReply {
            digest,
            mapped_blocks: 1,
            bad: ranges
                .iter()
                .map(|&(offset, len_bytes)| ByteRange { offset, len_bytes })
                .collect(),
        }
    }

    #[test]
    fn copies_that_agree_are_left_alone() {
        let replies = [(0, good(7)), (1, good(7)), (2, good(7))];
        assert_eq!(judge(0, MIB, &replies), Verdict::Agree);
        assert_eq!(judge(0, MIB, &[(1, good(7))]), Verdict::Agree);
        assert_eq!(judge(0, MIB, &[]), Verdict::Unanswered);
    }

    #[test]
    fn the_majority_wins_and_the_minority_gets_the_whole_range() {
        let replies = [(0, good(7)), (1, good(9)), (2, good(7))];
        assert_eq!(
            judge(MIB, MIB, &replies),
            Verdict::Repair {
                source: 0,
                ranges: vec![(MIB, MIB)],
                differing: vec![1],
                bad: vec![],
            }
        );
        // Four copies, three agree.
        let replies = [(0, good(3)), (1, good(7)), (2, good(7)), (3, good(7))];
        assert!(matches!(
            judge(0, MIB, &replies),
            Verdict::Repair { source: 1, ref differing, .. } if differing == &vec![0]
        ));
    }

    #[test]
    fn two_copies_that_differ_are_undecided() {
        let replies = [(0, good(7)), (1, good(9))];
        assert!(matches!(judge(0, MIB, &replies), Verdict::Undecided { .. }));
        // Three copies, all different: no majority either.
        let replies = [(0, good(1)), (1, good(2)), (2, good(3))];
        assert!(matches!(judge(0, MIB, &replies), Verdict::Undecided { .. }));
        // Two against two.
        let replies = [(0, good(1)), (1, good(1)), (2, good(2)), (3, good(2))];
        assert!(matches!(judge(0, MIB, &replies), Verdict::Undecided { .. }));
    }

    #[test]
    fn bad_blocks_are_repaired_from_a_copy_that_verified() {
        let replies = [
            (0, good(7)),
            (1, bad(8, &[(MIB + 4096, 4096)])),
            (2, good(7)),
        ];
        assert_eq!(
            judge(MIB, MIB, &replies),
            Verdict::Repair {
                source: 0,
                ranges: vec![(MIB + 4096, 4096)],
                differing: vec![],
                bad: vec![1],
            }
        );
        // With two replicas the verified copy is the only candidate.
        let replies = [(0, bad(8, &[(0, 4096), (8192, 4096)])), (1, good(7))];
        assert_eq!(
            judge(0, MIB, &replies),
            Verdict::Repair {
                source: 1,
                ranges: vec![(0, 4096), (8192, 4096)],
                differing: vec![],
                bad: vec![0],
            }
        );
    }

    #[test]
    fn without_a_verified_copy_nothing_is_decided() {
        // The only copy has a bad block.
        let replies = [(0, bad(8, &[(0, 4096)]))];
        assert!(matches!(judge(0, MIB, &replies), Verdict::Undecided { .. }));
        // Every copy has one.
        let replies = [(0, bad(8, &[(0, 4096)])), (1, bad(9, &[(4096, 4096)]))];
        assert!(matches!(judge(0, MIB, &replies), Verdict::Undecided { .. }));
        // The verified copies disagree among themselves.
        let replies = [(0, good(1)), (1, good(2)), (2, bad(3, &[(0, 4096)]))];
        assert!(matches!(judge(0, MIB, &replies), Verdict::Undecided { .. }));
    }

    #[test]
    fn repair_ranges_are_clipped_to_the_range_and_merged() {
        let replies = [
            (0, good(7)),
            (1, bad(8, &[(0, 8192), (MIB - 4096, 8192)])),
            (2, bad(9, &[(4096, 8192)])),
            (3, good(7)),
            (4, good(7)),
        ];
        assert_eq!(
            judge(0, MIB, &replies),
            Verdict::Repair {
                source: 0,
                ranges: vec![(0, 12288), (MIB - 4096, 4096)],
                differing: vec![],
                bad: vec![1, 2],
            }
        );
        // A differing copy and a bad one: the whole range.
        let replies = [
            (0, good(7)),
            (1, good(6)),
            (2, good(7)),
            (3, bad(1, &[(0, 4096)])),
            (4, good(7)),
        ];
        assert!(matches!(
            judge(0, MIB, &replies),
            Verdict::Repair { ref ranges, .. } if ranges == &vec![(0, MIB)]
        ));
    }
}
