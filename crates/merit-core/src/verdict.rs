//! Verdicts on contributions and the machine-readable reasons behind them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a contribution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed every gate (and review, where the datanet asks for one); its rows are in the datanet.
    Accepted,
    /// Passed every gate and waits for the owner or a curator.
    Pending,
    /// Failed a gate or was refused in review; `reasons` says why.
    Rejected,
}

impl Status {
    /// The lowercase name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Pending => "pending",
            Status::Rejected => "rejected",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "accepted" => Some(Status::Accepted),
            "pending" => Some(Status::Pending),
            "rejected" => Some(Status::Rejected),
            _ => None,
        }
    }
}

/// One reason a file was refused: which gate, which measurement, the value
/// measured, the threshold it crossed and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The gate, such as `format`, `size`, `gopher_quality`, `language`, `near_duplicate`, `pii`, `review`.
    pub gate: String,
    /// What the gate measured, such as `word_count` or `symbol_word_ratio`.
    pub metric: String,
    /// The measured value (a number, a string or null).
    pub value: Value,
    /// The limit the value crossed (a number, a list or null).
    pub threshold: Value,
    /// A sentence saying what was wrong.
    pub message: String,
    /// The row of the file the reason is about, counting from 0, when it is about one row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
}

impl Reason {
    /// A reason about the whole file.
    pub fn new(
        gate: &str,
        metric: &str,
        value: impl Into<Value>,
        threshold: impl Into<Value>,
        message: impl Into<String>,
    ) -> Reason {
        Reason {
            gate: gate.to_string(),
            metric: metric.to_string(),
            value: value.into(),
            threshold: threshold.into(),
            message: message.into(),
            row: None,
        }
    }

    /// The same reason, about row `row`.
    pub fn at_row(mut self, row: u64) -> Reason {
        self.row = Some(row);
        self
    }
}

/// SHA-256 over the canonical JSON of a list of reasons, as lowercase hex;
/// the ledger records this digest with each verdict.
pub fn reasons_digest(reasons: &[Reason]) -> String {
    crate::sha256_hex(serde_json::to_string(reasons).unwrap_or_default().as_bytes())
}

/// The reason for row `row` that repeats, after normalising case and white
/// space, row `earlier` of `place` ("this file", "datanet `qa`").
pub fn exact_duplicate(row: u64, earlier: u64, place: &str) -> Reason {
    Reason::new(
        "exact_duplicate",
        "sha256",
        earlier,
        Value::Null,
        format!("row {row} repeats row {earlier} of {place} (after normalising case and white space)"),
    )
    .at_row(row)
}

/// The reason for row `row` whose estimated Jaccard similarity to row
/// `earlier` of `place` reaches the policy's threshold.
pub fn near_duplicate(row: u64, earlier: u64, place: &str, similarity: f64, threshold: f64) -> Reason {
    Reason::new(
        "near_duplicate",
        "jaccard",
        (similarity * 1e4).round() / 1e4,
        threshold,
        format!(
            "row {row} is a near duplicate of row {earlier} of {place} (estimated Jaccard similarity {similarity:.2}, threshold {threshold})"
        ),
    )
    .at_row(row)
}
