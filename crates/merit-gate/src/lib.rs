//! merit-gate
