//! The version this binary reports: the crate's, plus a build stamp.
//!
//! A build can be stamped after it was linked: the bytes after the marker
//! in [`BUILD_STAMP`] are overwritten in a copy of the binary (`rill
//! 0.1.0` becomes `rill 0.1.0+STAMP`). Release pipelines can record what
//! they built; the tests make a "new build" for `rill cluster upgrade`
//! without compiling again.

/// The marker, then up to 47 bytes of stamp (NUL-padded).
pub const STAMP_MARKER: &[u8; 17] = b"RILL-BUILD-STAMP:";
const STAMP_LEN: usize = 64;

#[used]
static BUILD_STAMP: [u8; STAMP_LEN] = {
    let mut bytes = [0u8; STAMP_LEN];
    let mut i = 0;
    while i < STAMP_MARKER.len() {
        bytes[i] = STAMP_MARKER[i];
        i += 1;
    }
    bytes
};

/// The stamp, if this binary has one (only `[A-Za-z0-9.-]`, else none).
pub fn stamp() -> Option<String> {
    // Read as memory, not as the constant the compiler knows: a stamped
    // copy differs from what was compiled.
    let bytes: Vec<u8> = (STAMP_MARKER.len()..STAMP_LEN)
        // SAFETY: in bounds of a static that lives for the whole program.
        .map(|i| unsafe { std::ptr::read_volatile(BUILD_STAMP.as_ptr().add(i)) })
        .take_while(|b| *b != 0)
        .collect();
    let text = String::from_utf8(bytes).ok()?;
    let valid = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    valid.then_some(text)
}

/// `0.1.0`, or `0.1.0+STAMP`.
pub fn full() -> String {
    match stamp() {
        Some(stamp) => format!("{}+{stamp}", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unstamped_build_reports_the_crate_version() {
        assert_eq!(super::stamp(), None);
        assert_eq!(super::full(), env!("CARGO_PKG_VERSION"));
    }
}
