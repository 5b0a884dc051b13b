//! Untrusted text stays text. Process names (any process may name itself
//! anything, `prctl(PR_SET_NAME)`) and paths reach the terminal of whoever
//! runs fpl, often root: a name like `ESC[2J` would clear it, others can
//! retitle windows or fake lines. The text output therefore shows control
//! characters as escapes, and backslash as `\\` so that an escape in the
//! output always means one in the name. JSON output stays exact: serde
//! escapes control characters itself.

use std::borrow::Cow;
use std::fmt::Write;

use fpl::Error;

/// `text` with C0 controls, DEL and C1 controls (U+0080 to U+009F) escaped:
/// `\t`, `\n`, `\r`, `\xNN` for the other C0 controls and DEL, `\u{NN}` for
/// C1 (a character, not a byte: UTF-8 spells it in two), and `\\`.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => shown.push_str(r"\\"),
            '\t' => shown.push_str(r"\t"),
            '\n' => shown.push_str(r"\n"),
            '\r' => shown.push_str(r"\r"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(shown, r"\x{:02x}", u32::from(c));
            }
            '\u{80}'..='\u{9f}' => {
                let _ = write!(shown, r"\u{{{:x}}}", u32::from(c));
            }
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control()
}

/// A path as text output shows it.
pub fn path(path: &std::path::Path) -> String {
    escape(&path.to_string_lossy()).into_owned()
}

/// `e`'s message with its untrusted parts escaped. A conflict's message has
/// one line break of its own, before QEMU's hint, which stays: it is built
/// here from its parts (the same words as the library's `Display`), so that a
/// name holding a line break cannot fake a line.
pub fn error(e: &Error) -> String {
    let Some(c) = e.conflict() else {
        return escape(&e.to_string()).into_owned();
    };
    let held_by = match &c.holder {
        None => String::new(),
        Some(h) if h.name.is_empty() => format!(" (held by pid {})", h.pid),
        Some(h) => format!(" (held by {}, pid {})", escape(&h.name), h.pid),
    };
    format!("{}{held_by}\n{}", c.qemu_message(), escape(&c.hint()))
}
