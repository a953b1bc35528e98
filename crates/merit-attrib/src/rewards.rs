//! Splitting a request's fee between the adapter's publisher, the
//! contributors its answer drew on and the owners of the datanets it was
//! trained on. Amounts are integer micro-credits and every split adds up to
//! the fee exactly (largest remainders), so balances replayed from the
//! ledger are the balances stored.

use std::collections::BTreeMap;

/// The fractions of a fee for each role; they sum to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub publisher: f64,
    pub contributors: f64,
    pub owners: f64,
}

impl Default for Shares {
    fn default() -> Shares {
        Shares { publisher: 0.2, contributors: 0.7, owners: 0.1 }
    }
}

impl Shares {
    /// Checks the fractions: each in [0, 1], summing to 1 (within 1e-9).
    pub fn new(publisher: f64, contributors: f64, owners: f64) -> Result<Shares, String> {
        let all = [("publisher", publisher), ("contributors", contributors), ("owners", owners)];
        if let Some((name, v)) = all.iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err(format!("the {name} share {v} is not between 0 and 1"));
        }
        let sum = publisher + contributors + owners;
        if (sum - 1.0).abs() > 1e-9 {
            return Err(format!("the shares add up to {sum}, not 1"));
        }
        Ok(Shares { publisher, contributors, owners })
    }
}

/// Who is paid, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Publisher,
    Contributor,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Contributor => "contributor",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Publisher, Role::Contributor, Role::Owner].into_iter().find(|r| r.as_str() == s)
    }
}

/// One payment of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub account: String,
    pub role: Role,
    pub micros: i64,
}

/// `total` shared by `weights` (all ≥ 0, not all 0) as integers that add up
/// to `total`: floors first, then one more to the largest remainders (ties
/// to the earlier entry).
fn apportion(total: i64, weights: &[f64]) -> Vec<i64> {
    let sum: f64 = weights.iter().sum();
    if weights.is_empty() || sum <= 0.0 || total <= 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut out: Vec<i64> = exact.iter().map(|x| x.floor() as i64).collect();
    let mut left = total - out.iter().sum::<i64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    for &i in order.iter().cycle() {
        if left <= 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    // Rounding can overshoot by a unit: take it back from the smallest remainders.
    for &i in order.iter().rev() {
        if left >= 0 {
            break;
        }
        if out[i] > 0 {
            out[i] -= 1;
            left += 1;
        }
    }
    out
}

/// Splits `fee` micro-credits: `shares.publisher` to `publisher`,
/// `shares.contributors` to `contributors` pro rata to their (positive)
/// attribution scores, `shares.owners` equally to `owners`. A role with
/// nobody to pay passes its part on: contributors' to the owners, owners'
/// to the publisher. Payments to the same account in the same role are
/// merged; the result adds up to `fee` and is sorted.
pub fn split(
    fee: i64,
    shares: Shares,
    publisher: &str,
    contributors: &[(String, f64)],
    owners: &[String],
) -> Vec<Payment> {
    if fee <= 0 {
        return Vec::new();
    }
    let contributors: Vec<&(String, f64)> = contributors.iter().filter(|(_, s)| *s > 0.0 && s.is_finite()).collect();
    let mut weights = vec![shares.publisher, shares.contributors, shares.owners];
    if contributors.is_empty() {
        weights[2] += weights[1];
        weights[1] = 0.0;
    }
    if owners.is_empty() {
        weights[0] += weights[2];
        weights[2] = 0.0;
    }
    if weights.iter().all(|w| *w <= 0.0) {
        weights[0] = 1.0;
    }
    let pools = apportion(fee, &weights);
    let mut paid: BTreeMap<(Role, String), i64> = BTreeMap::new();
    let mut pay = |role: Role, account: &str, micros: i64| {
        if micros > 0 {
            *paid.entry((role, account.to_string())).or_default() += micros;
        }
    };
    pay(Role::Publisher, publisher, pools[0]);
    let scores: Vec<f64> = contributors.iter().map(|(_, s)| *s).collect();
    for ((name, _), m) in contributors.iter().zip(apportion(pools[1], &scores)) {
        pay(Role::Contributor, name, m);
    }
    for (name, m) in owners.iter().zip(apportion(pools[2], &vec![1.0; owners.len()])) {
        pay(Role::Owner, name, m);
    }
    paid.into_iter().map(|((role, account), micros)| Payment { account, role, micros }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_fee_goes_to_each_role() {
        let s = Shares::new(0.2, 0.7, 0.1).unwrap();
        let p = split(1_000_000, s, "pat", &[("ann".into(), 0.75), ("bob".into(), 0.25)], &["olga".into()]);
        let get = |a: &str| p.iter().find(|x| x.account == a).unwrap().micros;
        assert_eq!((get("pat"), get("ann"), get("bob"), get("olga")), (200_000, 525_000, 175_000, 100_000));
        // No attribution: the contributors' part goes to the owners.
        let p = split(1000, s, "pat", &[], &["olga".into()]);
        assert_eq!(p.iter().map(|x| (x.account.as_str(), x.micros)).collect::<Vec<_>>(), [("pat", 200), ("olga", 800)]);
        // Nobody but the publisher.
        assert_eq!(split(7, s, "pat", &[], &[])[0].micros, 7);
        assert!(split(0, s, "pat", &[], &[]).is_empty());
        assert!(Shares::new(0.5, 0.6, 0.1).unwrap_err().contains("add up to"));
        assert!(Shares::new(-0.1, 1.0, 0.1).unwrap_err().contains("publisher"));
    }

    proptest! {
        #[test]
        fn splits_add_up_to_the_fee(
            fee in 0i64..10_000_000,
            p in 0.0f64..1.0,
            c in 0.0f64..1.0,
            scores in proptest::collection::vec(0.0f64..1.0, 0..6),
            owners in 0usize..4,
        ) {
            let c = c * (1.0 - p);
            let shares = Shares::new(p, c, 1.0 - p - c).unwrap();
            let contributors: Vec<(String, f64)> = scores.iter().enumerate().map(|(i, s)| (format!("c{}", i % 3), *s)).collect();
            let owners: Vec<String> = (0..owners).map(|i| format!("o{i}")).collect();
            let paid = split(fee, shares, "pub", &contributors, &owners);
            prop_assert_eq!(paid.iter().map(|x| x.micros).sum::<i64>(), fee);
            prop_assert!(paid.iter().all(|x| x.micros > 0));
            prop_assert_eq!(paid.clone(), split(fee, shares, "pub", &contributors, &owners));
        }
    }
}
