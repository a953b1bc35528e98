//! Ledger leaves: typed events, serialised as canonical JSON (RFC 8785 key
//! order, no insignificant whitespace) with a schema version.
//!
//! Leaves hold only strings, integers, and lists and objects of them (no
//! floats), so the canonical form is simply the compact JSON of key-sorted
//! objects.

use serde::{Deserialize, Serialize};

/// The schema version written in every leaf (`"v"`).
pub const SCHEMA_VERSION: u64 = 1;

/// A fact the ledger records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum Event {
    /// A datanet was created.
    #[serde(rename = "datanet.created")]
    DatanetCreated { datanet: String, owner: String, kind: String, at: i64 },
    /// A draft was published. Until now its events named it by `commitment`
    /// (`name_commitment(salt, datanet)`, so the public log showed no name a
    /// draft's owner had not published); `salt` opens the commitment. Both
    /// are null for a datanet whose events always carried its name.
    #[serde(rename = "datanet.published")]
    DatanetPublished { datanet: String, commitment: Option<String>, salt: Option<String>, at: i64 },
    /// A datanet's policy was set (at creation or changed before publishing).
    #[serde(rename = "datanet.policy")]
    DatanetPolicy { datanet: String, policy_hash: String, at: i64 },
    /// A file was submitted.
    #[serde(rename = "contribution.submitted")]
    ContributionSubmitted {
        contribution_id: i64,
        datanet: String,
        contributor: String,
        sha256: String,
        bytes: i64,
        at: i64,
    },
    /// A verdict on a contribution (at submission, or after review).
    #[serde(rename = "contribution.verdict")]
    ContributionVerdict {
        contribution_id: i64,
        datanet: String,
        contributor: String,
        status: String,
        reasons_digest: String,
        policy_hash: String,
        gate_version: String,
        /// Credit in millionths (integers keep leaves canonical).
        credit_micros: i64,
        reviewer: Option<String>,
        at: i64,
    },
    /// A new datanet version.
    #[serde(rename = "datanet.version")]
    DatanetVersion {
        datanet: String,
        version: i64,
        row_count: i64,
        byte_count: i64,
        rows_root: String,
        contribution_id: i64,
        at: i64,
    },
    /// A trained adapter was published: its bytes, base and training data.
    #[serde(rename = "adapter.published")]
    AdapterPublished {
        run_id: i64,
        publisher: String,
        base: String,
        /// SHA-256 of `adapter_model.safetensors`, hex.
        adapter_sha256: String,
        /// The datanet versions it was trained on, `NAME@VERSION`.
        datanets: Vec<String>,
        at: i64,
    },
    /// A charged request's answer and the contributions it was credited to.
    #[serde(rename = "attribution.recorded")]
    AttributionRecorded {
        request_id: String,
        model: String,
        payer: String,
        prompt_tokens: i64,
        completion_tokens: i64,
        credits: Vec<Credit>,
        at: i64,
    },
    /// A request's fee and how it was split: the payer's balance goes down
    /// by `fee_micros`, each payout's account up by its `micros`.
    #[serde(rename = "reward.paid")]
    RewardPaid {
        request_id: String,
        model: String,
        payer: String,
        fee_micros: i64,
        /// The model's prices per 1,000 input and output tokens, micro-credits.
        price_in_micros: i64,
        price_out_micros: i64,
        payouts: Vec<Payout>,
        at: i64,
    },
}

/// One contribution's share of an answer's attribution (millionths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub contribution_id: i64,
    pub contributor: String,
    pub datanet: String,
    pub score_micros: i64,
}

/// One payment of a fee split: `role` is publisher, contributor or owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub account: String,
    pub role: String,
    pub micros: i64,
}

/// An account's totals in micro-credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub balance_micros: i64,
    pub earned_micros: i64,
    pub spent_micros: i64,
}

/// Every account's totals from `reward.paid` events alone.
pub fn balances<'a>(events: impl IntoIterator<Item = &'a Event>) -> std::collections::BTreeMap<String, Totals> {
    let mut out: std::collections::BTreeMap<String, Totals> = std::collections::BTreeMap::new();
    for e in events {
        if let Event::RewardPaid { payer, fee_micros, payouts, .. } = e {
            let p = out.entry(payer.clone()).or_default();
            p.balance_micros -= fee_micros;
            p.spent_micros += fee_micros;
            for x in payouts {
                let a = out.entry(x.account.clone()).or_default();
                a.balance_micros += x.micros;
                a.earned_micros += x.micros;
            }
        }
    }
    out
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u64,
    #[serde(flatten)]
    event: Event,
}

/// Why leaf bytes could not be read as an event.
#[derive(Debug, thiserror::Error)]
#[error("leaf is not a Merit event: {0}")]
pub struct DecodeError(String);

impl Event {
    /// The canonical JSON bytes of this event: the leaf.
    pub fn to_leaf(&self) -> Vec<u8> {
        let value = serde_json::to_value(Envelope { v: SCHEMA_VERSION, event: self.clone() }).unwrap_or_default();
        // serde_json's Map is ordered by key (it is a BTreeMap without the
        // `preserve_order` feature), and compact output has no whitespace.
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// Reads a leaf back.
    pub fn from_leaf(leaf: &[u8]) -> Result<Event, DecodeError> {
        let env: Envelope = serde_json::from_slice(leaf).map_err(|e| DecodeError(e.to_string()))?;
        if env.v != SCHEMA_VERSION {
            return Err(DecodeError(format!("schema version {} is not {SCHEMA_VERSION}", env.v)));
        }
        Ok(env.event)
    }

    /// What the event is about, for lookups: `contribution:<id>` or `datanet:<name>`.
    pub fn subject(&self) -> String {
        match self {
            Event::DatanetCreated { datanet, .. }
            | Event::DatanetPublished { datanet, .. }
            | Event::DatanetPolicy { datanet, .. }
            | Event::DatanetVersion { datanet, .. } => {
                format!("datanet:{datanet}")
            }
            Event::ContributionSubmitted { contribution_id, .. }
            | Event::ContributionVerdict { contribution_id, .. } => {
                format!("contribution:{contribution_id}")
            }
            Event::AdapterPublished { run_id, .. } => format!("run:{run_id}"),
            Event::AttributionRecorded { request_id, .. } | Event::RewardPaid { request_id, .. } => {
                format!("request:{request_id}")
            }
        }
    }

    /// Whether a `datanet.published` event's salt opens its commitment to its
    /// name (true for every other event, and for one without a commitment).
    pub fn opens(&self) -> bool {
        match self {
            Event::DatanetPublished { datanet, commitment: Some(c), salt: Some(salt), .. } => {
                *c == name_commitment(salt, datanet)
            }
            Event::DatanetPublished { commitment, salt, .. } => commitment.is_none() && salt.is_none(),
            _ => true,
        }
    }

    /// The event's type name, such as `contribution.verdict`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DatanetCreated { .. } => "datanet.created",
            Event::DatanetPublished { .. } => "datanet.published",
            Event::DatanetPolicy { .. } => "datanet.policy",
            Event::ContributionSubmitted { .. } => "contribution.submitted",
            Event::ContributionVerdict { .. } => "contribution.verdict",
            Event::DatanetVersion { .. } => "datanet.version",
            Event::AdapterPublished { .. } => "adapter.published",
            Event::AttributionRecorded { .. } => "attribution.recorded",
            Event::RewardPaid { .. } => "reward.paid",
        }
    }
}

/// The prefix of a name commitment: `h:` and 64 hex digits.
pub const COMMITMENT_PREFIX: &str = "h:";

/// How an unpublished datanet is named on the ledger: `h:` and the hex
/// SHA-256 of a domain tag, the datanet's secret `salt` (hex) and its name.
/// Without the salt the name cannot be guessed from the log; the
/// `datanet.published` event reveals the salt.
pub fn name_commitment(salt: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"merit.datanet-name.v1\0");
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(COMMITMENT_PREFIX.len() + 64);
    out.push_str(COMMITMENT_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Commitments opened by `datanet.published` events (commitment → name);
/// commitments whose salt does not open them are left out.
pub fn opened_names<'a>(events: impl IntoIterator<Item = &'a Event>) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for e in events {
        if let Event::DatanetPublished { datanet, commitment: Some(c), .. } = e {
            if e.opens() {
                out.insert(c.clone(), datanet.clone());
            }
        }
    }
    out
}

/// The leaderboard's input for datanet `datanet`, from ledger events alone:
/// each contribution's latest verdict, its credit and its times (events
/// from before its publication, under its commitment, included).
pub fn outcomes<'a>(events: impl IntoIterator<Item = &'a Event>, datanet: &str) -> Vec<merit_core::score::Outcome> {
    use merit_core::score::Outcome;
    use merit_core::Status;
    let events: Vec<&Event> = events.into_iter().collect();
    let names = opened_names(events.iter().copied());
    let is_it = |d: &String| d == datanet || names.get(d).is_some_and(|n| n == datanet);
    let mut by_id: std::collections::BTreeMap<i64, Outcome> = std::collections::BTreeMap::new();
    for e in events {
        match e {
            Event::ContributionSubmitted { contribution_id, datanet: d, contributor, at, .. } if is_it(d) => {
                by_id.insert(
                    *contribution_id,
                    Outcome {
                        contributor: contributor.clone(),
                        status: Status::Pending,
                        credit: 0.0,
                        submitted_at: *at,
                        accepted_at: None,
                    },
                );
            }
            Event::ContributionVerdict { contribution_id, datanet: d, status, credit_micros, at, .. } if is_it(d) => {
                if let Some(o) = by_id.get_mut(contribution_id) {
                    o.status = Status::parse(status).unwrap_or(Status::Pending);
                    o.credit = *credit_micros as f64 / 1e6;
                    o.accepted_at = (o.status == Status::Accepted).then_some(*at);
                }
            }
            _ => {}
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_canonical_and_roundtrip() {
        let e = Event::DatanetVersion {
            datanet: "qa".into(),
            version: 2,
            row_count: 10,
            byte_count: 999,
            rows_root: "ab".into(),
            contribution_id: 7,
            at: 1,
        };
        let leaf = e.to_leaf();
        assert_eq!(
            String::from_utf8(leaf.clone()).unwrap(),
            r#"{"at":1,"byte_count":999,"contribution_id":7,"datanet":"qa","row_count":10,"rows_root":"ab","type":"datanet.version","v":1,"version":2}"#
        );
        assert_eq!(Event::from_leaf(&leaf).unwrap(), e);
        assert!(Event::from_leaf(b"{\"v\":2,\"type\":\"datanet.version\"}").is_err());
    }

    #[test]
    fn commitments_hide_names_until_publication_opens_them() {
        let salt = "00ff".repeat(16);
        let c = name_commitment(&salt, "secret");
        assert!(c.starts_with("h:") && c.len() == 66, "{c}");
        assert_eq!(c, name_commitment(&salt, "secret"));
        assert_ne!(c, name_commitment(&"01ff".repeat(16), "secret"), "another salt, another commitment");
        assert_ne!(c, name_commitment(&salt, "secreT"));
        let at = 1;
        let draft_events = [
            Event::ContributionSubmitted {
                contribution_id: 1,
                datanet: c.clone(),
                contributor: "ann".into(),
                sha256: "ab".into(),
                bytes: 3,
                at,
            },
            Event::ContributionVerdict {
                contribution_id: 1,
                datanet: c.clone(),
                contributor: "ann".into(),
                status: "accepted".into(),
                reasons_digest: String::new(),
                policy_hash: String::new(),
                gate_version: String::new(),
                credit_micros: 500_000,
                reviewer: None,
                at,
            },
        ];
        assert!(draft_events.iter().all(|e| !String::from_utf8(e.to_leaf()).unwrap().contains("secret")));
        // Before publication the leaderboard has nothing under the name.
        assert!(outcomes(&draft_events, "secret").is_empty());
        let published = Event::DatanetPublished {
            datanet: "secret".into(),
            commitment: Some(c.clone()),
            salt: Some(salt.clone()),
            at,
        };
        assert!(published.opens());
        let all: Vec<Event> = draft_events.iter().cloned().chain([published]).collect();
        let o = outcomes(&all, "secret");
        assert_eq!((o.len(), o[0].credit), (1, 0.5));
        // A salt that does not open the commitment links nothing.
        let forged = Event::DatanetPublished { datanet: "other".into(), commitment: Some(c), salt: Some(salt), at };
        assert!(!forged.opens());
        let all: Vec<Event> = draft_events.iter().cloned().chain([forged]).collect();
        assert!(outcomes(&all, "other").is_empty());
    }
}
