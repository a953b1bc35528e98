//! Attribution of generated answers to the training rows behind them.
//!
//! [`span`] is the verbatim-span method (as OLMoTrace over infini-gram): a
//! suffix array over the tokenized rows of the datanet versions an adapter
//! was trained on, queried for the maximal spans of an answer that occur in
//! those rows, each credited to the rows containing it by length and rarity.
//! [`influence`] is the gradient method (TracIn with random projections);
//! [`rewards`] splits a served answer's fee.

pub mod influence;
pub mod rewards;
pub mod span;

pub use influence::{Influence, InfluenceTable, Projector};
pub use rewards::{split, Payment, Role, Shares};
pub use span::{normalize, Attribution, Span, SpanIndex, SpanIndexError};
