//! [`InvalidArgument`]: a request field that failed validation. A module of its own, below
//! everything that validates input (ids, PANs, reasons, tokens), so that none of them depends
//! on the domain's error type or what it names.

/// A request field that failed validation. The message names the field and the rule it broke,
/// never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidArgument {
    /// The request field, as the API spells it.
    pub field: &'static str,
    /// What is wrong with it, in words that hold no part of the input.
    pub problem: &'static str,
}
