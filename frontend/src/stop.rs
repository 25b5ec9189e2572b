//! Stop strings, matched on the detokenized text. Text that might be the start of a stop
//! string is held back until it is known not to be; the stop string itself is never shown.

/// Matches one response's text against its stop strings.
#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Longest stop string, in bytes.
    longest: usize,
    /// Text seen but not yet released: a possible beginning of a stop string.
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        StopMatcher { stops, longest, held: String::new() }
    }

    /// Adds `text`; appends to `out` what can be shown. True when a stop string was found:
    /// `out` then ends just before it and the rest is dropped.
    pub fn push(&mut self, text: &str, out: &mut String) -> bool {
        if self.stops.is_empty() {
            out.push_str(text);
            return false;
        }
        // A match must end in the new text, so it starts at most `longest - 1` bytes into
        // what was held (and `held` is always shorter than `longest`).
        let search_from = self.held.len();
        self.held.push_str(text);
        let window_start =
            floor_char_boundary(&self.held, search_from.saturating_sub(self.longest - 1));
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.held[window_start..].find(stop.as_str()))
            .min();
        if let Some(at) = found {
            out.push_str(&self.held[..window_start + at]);
            self.held.clear();
            return true;
        }
        let keep =
            self.stops.iter().map(|stop| partial_suffix(&self.held, stop)).max().unwrap_or(0);
        let release = self.held.len() - keep;
        out.push_str(&self.held[..release]);
        self.held.drain(..release);
        false
    }

    /// Appends what is still held: at the end it cannot become a stop string any more.
    pub fn flush(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let (text, stop) = (text.as_bytes(), stop.as_bytes());
    (1..stop.len().min(text.len() + 1)).rev().find(|&k| text.ends_with(&stop[..k])).unwrap_or(0)
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| (*s).to_owned()).collect());
        let mut out = String::new();
        for piece in pieces {
            if m.push(piece, &mut out) {
                return (out, true);
            }
        }
        m.flush(&mut out);
        (out, false)
    }

    #[test]
    fn no_stops_pass_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn a_stop_split_across_pieces_is_found_and_not_shown() {
        assert_eq!(run(&["STOP"], &["hello S", "TO", "P and more"]), ("hello ".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn held_text_is_released_when_it_cannot_match() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        let mut out = String::new();
        assert!(!m.push("ab ST", &mut out));
        assert_eq!(out, "ab ");
        assert!(!m.push("ART", &mut out));
        assert_eq!(out, "ab START");
        assert!(!m.push("S", &mut out));
        m.flush(&mut out);
        assert_eq!(out, "ab STARTS");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["wörld", "ö"], &["héllo wö", "rld"]), ("héllo w".into(), true));
        assert_eq!(run(&["日本"], &["こんにちは日", "本語"]), ("こんにちは".into(), true));
        assert_eq!(run(&["end"], &["e", "n", "d"]), (String::new(), true));
    }
}
