//! Where in the config text a key or value is, for messages about values that parse but
//! fail a check. Found once, from the text of the one read.

/// serde_yaml appends " at line L column C"; we print the location up front instead.
pub(super) fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

/// The 1-based line of the first line that holds both `key:` and `value`.
pub(super) fn line_with_key_and_value(text: &str, key: &str, value: &str) -> Option<usize> {
    nth_line_with_key_and_value(text, key, value, 1)
}

/// The 1-based line of the `n`th line that holds both `key:` and `value`.
pub(super) fn nth_line_with_key_and_value(
    text: &str,
    key: &str,
    value: &str,
    n: usize,
) -> Option<usize> {
    let key = format!("{key}:");
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(&key) && line.contains(value))
        .nth(n.saturating_sub(1))
        .map(|(index, _)| index + 1)
}

/// The 1-based line of the `n`th line containing `needle`.
pub(super) fn nth_line_containing(text: &str, needle: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .nth(n.saturating_sub(1))
        .map(|(index, _)| index + 1)
}

/// The 1-based line where top-level `key:` is set (no indentation).
pub(super) fn top_level_line(text: &str, key: &str) -> Option<usize> {
    let key = format!("{key}:");
    text.lines()
        .position(|line| line.starts_with(&key))
        .map(|index| index + 1)
}

/// The 1-based line of the first `key:` at or after line `from` (1-based): an agent's
/// field, searched from the line of its name.
pub(super) fn line_of_key_from(text: &str, key: &str, from: usize) -> Option<usize> {
    let key = format!("{key}:");
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| line.contains(&key))
        .map(|(index, _)| index + 1)
}
