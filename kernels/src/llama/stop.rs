//! Streaming text with stop strings: what may be shown now, and where the text ends.

/// Where the generated text stands against the stop strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopScan {
    /// A stop string starts at this byte: the text ends there.
    Stopped(usize),
    /// No stop string yet; bytes up to this one can be shown, the rest could still begin one.
    Safe(usize),
}

/// Looks for stop strings in `text`. Text that could be the beginning of a stop string is held
/// back (not `Safe`), so a stop string is never partly streamed.
pub fn scan(text: &str, stops: &[String]) -> StopScan {
    let first = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    if let Some(at) = first {
        return StopScan::Stopped(at);
    }
    let mut safe = text.len();
    for stop in stops {
        // The longest suffix of `text` that is a proper prefix of `stop`.
        for (i, _) in stop.char_indices().skip(1) {
            if text.ends_with(&stop[..i]) {
                safe = safe.min(text.len() - i);
            }
        }
    }
    StopScan::Safe(safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_the_earliest_stop() {
        assert_eq!(
            scan("hello\n\nworld END", &stops(&["END", "\n\n"])),
            StopScan::Stopped(5)
        );
        assert_eq!(scan("abc", &stops(&[])), StopScan::Safe(3));
        assert_eq!(scan("abc", &stops(&[""])), StopScan::Safe(3));
    }

    #[test]
    fn holds_back_a_possible_beginning() {
        assert_eq!(scan("the E", &stops(&["END"])), StopScan::Safe(4));
        assert_eq!(scan("the EN", &stops(&["END"])), StopScan::Safe(4));
        assert_eq!(scan("the ENX", &stops(&["END"])), StopScan::Safe(7));
        assert_eq!(scan("né", &stops(&["éa"])), StopScan::Safe(1));
    }
}
