//! Merit's domain types and pure rules.
//!
//! * [`policy`]: the datanet policy — what a datanet accepts — parsed from TOML
//!   with refusals that name the key ([`Policy::from_toml`]).
//! * [`verdict`]: a contribution's [`Status`] and the machine-readable
//!   [`Reason`]s behind a rejection.
//! * [`quota`]: UTC days and the daily-limit admission rule.
//! * [`score`]: the leaderboard rule.
//! * [`names`]: which names are valid for users and datanets.
//!
//! Architecture invariant: this crate never does I/O.
//!
//! ```
//! use merit_core::{Policy, Kind};
//! let p = Policy::from_toml("kind = \"image\"", |_| Err("no files".into())).unwrap();
//! assert_eq!(p.kind, Kind::Image);
//! assert_eq!(p.limits.user_files_per_day, 20);
//! ```

pub mod lang;
pub mod names;
pub mod policy;
pub mod quota;
pub mod schema;
pub mod score;
pub mod verdict;

pub use policy::{Format, Gates, Kind, Limits, PiiMode, Policy, PolicyError, Review, RowSchema};
pub use verdict::{Reason, Status};

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
