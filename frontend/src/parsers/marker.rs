//! Finding markers (`<think>`, `<tool_call>`, …) in text that arrives in pieces: what cannot be
//! the start of a marker is released at once, the rest is held until the next piece decides.

/// Where the first of `markers` is in `text`, or how much of `text` can be released.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// `markers[which]` starts at byte `at`.
    Found { at: usize, which: usize },
    /// No marker; `text[..release]` cannot begin one, the rest may.
    NotFound { release: usize },
}

pub(super) fn scan(text: &str, markers: &[&str]) -> Scan {
    let found = markers
        .iter()
        .enumerate()
        .filter_map(|(which, m)| text.find(m).map(|at| (at, which)))
        .min();
    if let Some((at, which)) = found {
        return Scan::Found { at, which };
    }
    let held = markers.iter().map(|m| partial_suffix(text, m)).max().unwrap_or(0);
    Scan::NotFound { release: text.len() - held }
}

/// Length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    let longest = marker.len().saturating_sub(1).min(text.len());
    (1..=longest)
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k) && marker.starts_with(&text[text.len() - k..])
        })
        .unwrap_or(0)
}

/// Whether `text` could still grow into something starting with one of `prefixes`.
pub(super) fn may_start_with(text: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| p.starts_with(text) || text.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_possible_starts() {
        assert_eq!(scan("abc<to", &["<tool_call>"]), Scan::NotFound { release: 3 });
        assert_eq!(scan("abc<x", &["<tool_call>"]), Scan::NotFound { release: 5 });
        assert_eq!(scan("a<b>c<think>", &["<think>", "<b>"]), Scan::Found { at: 1, which: 1 });
        assert_eq!(scan("é<", &["<think>"]), Scan::NotFound { release: 2 });
    }
}
