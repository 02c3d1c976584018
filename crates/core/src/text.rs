//! Untrusted text (object keys, source values, reasons built from them) made safe to show: cut
//! to a length and with control characters escaped, so that it fits SQS message attributes
//! (which refuse most control characters) and cannot drive an operator's terminal.

/// Longest source value quoted in an error message, in characters.
pub const VALUE_MAX: usize = 120;

/// `text` with every control character (and U+FFFE/U+FFFF, which SQS refuses) written as
/// `\u{…}`, so the result is printable and a valid SQS attribute value.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}') {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` cut to at most `max` characters, marked with `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A source value as an error message quotes it: escaped and cut to [`VALUE_MAX`].
pub fn quote_value(value: &str) -> String {
    escape_controls(&cut(value, VALUE_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_long_text_cut() {
        assert_eq!(escape_controls("a\u{1b}[2Jb\u{0}"), "a\\u{1b}[2Jb\\u{0}");
        assert_eq!(escape_controls("tab\there\n"), "tab\\u{9}here\\u{a}");
        assert_eq!(escape_controls("你好 😊"), "你好 😊");
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("😊😊😊😊", 2), "😊😊…");
        assert_eq!(
            quote_value(&"x".repeat(1000)).chars().count(),
            VALUE_MAX + 1
        );
    }
}
