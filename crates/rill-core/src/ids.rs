//! The spelling of node, input and output ids.

/// Whether `id` is a valid node, input or output id: `[A-Za-z0-9_.-]+`.
pub(crate) fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Hint for an id that fails [`is_valid`].
pub(crate) const ID_HINT: &str = "ids may contain only letters, digits, '_', '-' and '.'";

/// Prefixes of built-in sources; nodes may not use them as ids or inputs would be ambiguous.
pub(crate) const RESERVED: [&str; 2] = ["rill", "dora"];
