//! The leaderboard: contributors ranked on what was accepted.
//!
//! * A row's validation score is in [0, 1] (the gates' margins, see `merit-gate`).
//! * A contribution's credit is the mean over its rows of the row score, where a
//!   row that is a near duplicate of a row accepted earlier counts 0.
//! * A contributor's score is the sum of the credits of their **accepted**
//!   contributions. Pending and rejected contributions add nothing and take
//!   nothing away.
//! * Ties go to the higher Wilson lower bound (95%) of the acceptance rate
//!   `accepted / (accepted + rejected)`, then to the earlier first acceptance,
//!   then to the name.

use serde::{Deserialize, Serialize};

use crate::verdict::Status;

/// One contribution, as the leaderboard sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub contributor: String,
    pub status: Status,
    /// The credit of the contribution (see [`credit`]); only counted when accepted.
    pub credit: f64,
    /// When it was submitted, in milliseconds since the epoch.
    pub submitted_at: i64,
    /// When it was accepted, in milliseconds since the epoch.
    pub accepted_at: Option<i64>,
}

/// One line of the leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub rank: u64,
    pub contributor: String,
    pub accepted: u64,
    pub rejected: u64,
    pub submitted: u64,
    pub acceptance_rate: f64,
    pub active_days: u64,
    pub score: f64,
}

/// The credit of a contribution from its rows: `(row score, is a near duplicate
/// of an earlier accepted row)`. The mean of the row scores with near
/// duplicates counted as 0, so it lies in [0, 1].
pub fn credit(rows: &[(f64, bool)]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let sum: f64 = rows.iter().map(|&(s, dup)| if dup { 0.0 } else { s.clamp(0.0, 1.0) }).sum();
    sum / rows.len() as f64
}

/// The lower bound of the Wilson score interval (z = 1.96) for `successes` out of `n`.
pub fn wilson_lower_bound(successes: u64, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let z = 1.96_f64;
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n_f);
    let margin = z * ((p * (1.0 - p) + z2 / (4.0 * n_f)) / n_f).sqrt();
    ((centre - margin) / (1.0 + z2 / n_f)).max(0.0)
}

/// Ranks contributors from their contributions.
pub fn leaderboard(outcomes: &[Outcome]) -> Vec<Standing> {
    use std::collections::{BTreeMap, BTreeSet};
    #[derive(Default)]
    struct Acc {
        accepted: u64,
        rejected: u64,
        submitted: u64,
        score: f64,
        days: BTreeSet<i64>,
        first_accept: Option<i64>,
    }
    let mut by: BTreeMap<&str, Acc> = BTreeMap::new();
    for o in outcomes {
        let a = by.entry(o.contributor.as_str()).or_default();
        a.submitted += 1;
        a.days.insert(crate::quota::utc_day(o.submitted_at));
        match o.status {
            Status::Accepted => {
                a.accepted += 1;
                a.score += o.credit.clamp(0.0, 1.0);
                let at = o.accepted_at.unwrap_or(o.submitted_at);
                a.first_accept = Some(a.first_accept.map_or(at, |f| f.min(at)));
            }
            Status::Rejected => a.rejected += 1,
            Status::Pending => {}
        }
    }
    let mut rows: Vec<(Standing, f64, i64)> = by
        .into_iter()
        .map(|(name, a)| {
            let decided = a.accepted + a.rejected;
            let rate = if decided == 0 { 0.0 } else { a.accepted as f64 / decided as f64 };
            let standing = Standing {
                rank: 0,
                contributor: name.to_string(),
                accepted: a.accepted,
                rejected: a.rejected,
                submitted: a.submitted,
                acceptance_rate: rate,
                active_days: a.days.len() as u64,
                // Rounded so that sums in different orders compare equal.
                score: (a.score * 1e9).round() / 1e9,
            };
            (standing, wilson_lower_bound(a.accepted, decided), a.first_accept.unwrap_or(i64::MAX))
        })
        .collect();
    rows.sort_by(|(a, wa, fa), (b, wb, fb)| {
        b.score.total_cmp(&a.score).then(wb.total_cmp(wa)).then(fa.cmp(fb)).then(a.contributor.cmp(&b.contributor))
    });
    rows.into_iter()
        .enumerate()
        .map(|(i, (mut s, _, _))| {
            s.rank = i as u64 + 1;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outcome(who: &str, status: Status, credit: f64, t: i64) -> Outcome {
        Outcome {
            contributor: who.to_string(),
            status,
            credit,
            submitted_at: t,
            accepted_at: (status == Status::Accepted).then_some(t),
        }
    }

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        (0..4usize, 0..3usize, 0.0f64..=1.0, 0i64..10 * crate::quota::DAY_MS).prop_map(|(who, st, credit, t)| {
            let status = [Status::Accepted, Status::Pending, Status::Rejected][st];
            outcome(["ann", "bob", "cy", "dee"][who], status, credit, t)
        })
    }

    fn score_of(board: &[Standing], who: &str) -> f64 {
        board.iter().find(|s| s.contributor == who).map_or(0.0, |s| s.score)
    }

    #[test]
    fn wilson_known_values() {
        assert_eq!(wilson_lower_bound(0, 0), 0.0);
        assert!((wilson_lower_bound(1, 1) - 0.2065).abs() < 1e-3);
        assert!((wilson_lower_bound(90, 100) - 0.8256).abs() < 1e-3);
        assert!(wilson_lower_bound(10, 10) > wilson_lower_bound(1, 1));
    }

    #[test]
    fn ties_go_to_wilson_then_earlier_acceptance() {
        let board = leaderboard(&[
            outcome("ann", Status::Accepted, 0.5, 10),
            outcome("ann", Status::Rejected, 0.0, 11),
            outcome("bob", Status::Accepted, 0.5, 20),
            outcome("cy", Status::Accepted, 0.5, 5),
        ]);
        let names: Vec<&str> = board.iter().map(|s| s.contributor.as_str()).collect();
        // bob and cy: 1/1 accepted (same Wilson), cy accepted earlier; ann has 1/2.
        assert_eq!(names, ["cy", "bob", "ann"]);
        assert_eq!(board[2].acceptance_rate, 0.5);
        assert_eq!(board.iter().map(|s| s.rank).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn near_duplicates_earn_nothing() {
        assert_eq!(credit(&[(1.0, true), (1.0, true)]), 0.0);
        assert_eq!(credit(&[(0.8, false), (1.0, true)]), 0.4);
        assert_eq!(credit(&[]), 0.0);
    }

    proptest! {
        #[test]
        fn score_is_the_sum_of_accepted_credits(outcomes in proptest::collection::vec(arb_outcome(), 0..40)) {
            let board = leaderboard(&outcomes);
            for s in &board {
                let want: f64 = outcomes.iter()
                    .filter(|o| o.contributor == s.contributor && o.status == Status::Accepted)
                    .map(|o| o.credit).sum();
                prop_assert!((s.score - want).abs() < 1e-6);
                prop_assert!(s.acceptance_rate >= 0.0 && s.acceptance_rate <= 1.0);
            }
        }

        #[test]
        fn a_rejection_never_lowers_a_score(outcomes in proptest::collection::vec(arb_outcome(), 0..40),
                                            who in 0..4usize, t in 0i64..1000) {
            let before = leaderboard(&outcomes);
            let mut more = outcomes.clone();
            more.push(outcome(["ann", "bob", "cy", "dee"][who], Status::Rejected, 1.0, t));
            let after = leaderboard(&more);
            for name in ["ann", "bob", "cy", "dee"] {
                prop_assert_eq!(score_of(&before, name), score_of(&after, name));
            }
        }

        #[test]
        fn a_near_duplicate_adds_nothing(outcomes in proptest::collection::vec(arb_outcome(), 0..30),
                                         who in 0..4usize, row_score in 0.0f64..=1.0) {
            let before = leaderboard(&outcomes);
            let mut more = outcomes.clone();
            more.push(outcome(["ann", "bob", "cy", "dee"][who], Status::Accepted, credit(&[(row_score, true)]), 1));
            let after = leaderboard(&more);
            for name in ["ann", "bob", "cy", "dee"] {
                prop_assert_eq!(score_of(&before, name), score_of(&after, name));
            }
        }
    }
}
