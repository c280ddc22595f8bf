//! "Did you mean ...?" for misspelled names.

/// The candidate closest to `wrong`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Allow roughly one typo per three characters, at least one.
    let limit = (wrong.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(wrong, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// A suffix for "no X named `wrong`": the likely typo, then the known
/// names (at most 20), e.g. "; did you mean `sink`? (nodes: sink, source)"
/// or " (nodes: sink, source)". Empty when nothing is known.
pub fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>, noun: &str) -> String {
    const LISTED: usize = 20;
    let mut known: Vec<&str> = known.into_iter().collect();
    known.sort_unstable();
    known.dedup();
    if known.is_empty() {
        return String::new();
    }
    let mut list = known.iter().take(LISTED).copied().collect::<Vec<_>>().join(", ");
    let more = known.len().saturating_sub(LISTED);
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    match closest(wrong, known.iter().copied()) {
        Some(close) => format!("; did you mean `{close}`? ({noun}: {list})"),
        None => format!(" ({noun}: {list})"),
    }
}

/// Levenshtein distance, counted in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_only() {
        assert_eq!(closest("ouputs", ["inputs", "outputs", "env"]), Some("outputs"));
        assert_eq!(closest("camra", ["camera", "sink"]), Some("camera"));
        assert_eq!(closest("zzz", ["camera", "sink"]), None);
    }

    #[test]
    fn did_you_mean_suggests_then_lists() {
        assert_eq!(did_you_mean("snk", ["source", "sink"], "nodes"), "; did you mean `sink`? (nodes: sink, source)");
        assert_eq!(did_you_mean("zzz", ["b", "a"], "nodes"), " (nodes: a, b)");
        assert_eq!(did_you_mean("zzz", [], "nodes"), "");
        let many: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
        assert!(did_you_mean("x", many.iter().map(String::as_str), "nodes").ends_with("n19 and 5 more)"));
    }
}
