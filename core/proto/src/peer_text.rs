//! Strings a peer sends us (the WAN label in its path hello, its QUIC close reason) reach our events, log
//! and dashboard. A peer is authenticated, not trusted: it could forge log lines (`\n quicether: WARNING`),
//! control characters or megabytes of text. So labels keep a short safe alphabet and free text is escaped
//! and bounded before anything else sees them.

/// Longest WAN label we keep (config names WANs with short words like `wan0`, `lte`).
pub const MAX_LABEL_LEN: usize = 32;
/// Longest free text (close reason) we keep, in bytes of the escaped form.
pub const MAX_TEXT_LEN: usize = 120;
/// Stands for a label with nothing usable in it.
pub const EMPTY_LABEL: &str = "?";

fn label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

/// A peer's label made safe: ASCII letters, digits, `-`, `_` and `.` kept, any other byte becomes `_`,
/// at most `MAX_LABEL_LEN` bytes; `EMPTY_LABEL` if it was empty.
pub fn safe_label(raw: &[u8]) -> String {
    if raw.is_empty() {
        return EMPTY_LABEL.to_string();
    }
    raw.iter().take(MAX_LABEL_LEN).map(|&c| if label_char(c) { c as char } else { '_' }).collect()
}

/// True if `label` is already what `safe_label` would make of it (our own WAN names are checked with it).
pub fn is_safe_label(label: &str) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL_LEN && label.bytes().all(label_char)
}

/// Free text from a peer made safe to log: printable ASCII kept (space included), a backslash and every
/// other byte written as `\xNN`, cut at `MAX_TEXT_LEN` bytes with `...` appended when cut.
pub fn escape_text(raw: &[u8]) -> String {
    let mut out = String::new();
    for &c in raw {
        let piece =
            if (0x20..0x7f).contains(&c) && c != b'\\' { (c as char).to_string() } else { format!("\\x{c:02x}") };
        if out.len() + piece.len() > MAX_TEXT_LEN {
            out.push_str("...");
            return out;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_a_safe_alphabet_and_length() {
        assert_eq!(safe_label(b"wan0"), "wan0");
        assert_eq!(safe_label(b"lte.backup-2_x"), "lte.backup-2_x");
        assert_eq!(safe_label(b"evil\r\nquicether: WARNING"), "evil__quicether__WARNING");
        assert_eq!(safe_label(b"nul\0byte"), "nul_byte");
        assert_eq!(safe_label("wän".as_bytes()), "w__n", "every non-ASCII byte is replaced");
        assert_eq!(safe_label(b""), EMPTY_LABEL);
        assert_eq!(safe_label(&[b'a'; 200]).len(), MAX_LABEL_LEN);
        assert!(is_safe_label(&safe_label(b"<script>")));
        assert!(!is_safe_label("a b") && !is_safe_label("") && is_safe_label("wan0"));
    }

    #[test]
    fn text_is_escaped_and_bounded() {
        assert_eq!(escape_text(b"WAN removed"), "WAN removed");
        assert_eq!(escape_text(b"a\nb\r\0\\"), "a\\x0ab\\x0d\\x00\\x5c");
        assert_eq!(escape_text("é".as_bytes()), "\\xc3\\xa9");
        let long = escape_text(&[b'\n'; 1000]);
        assert!(long.len() <= MAX_TEXT_LEN + 3 && long.ends_with("..."), "{long}");
        assert!(!long.contains('\n'));
        let exact = escape_text(&[b'x'; MAX_TEXT_LEN]);
        assert_eq!(exact.len(), MAX_TEXT_LEN, "text that fits is not marked as cut");
    }
}
