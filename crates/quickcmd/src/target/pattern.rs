//! Host patterns and label selectors: `web-*`, `web-?`, `web-[1-3]`, `db-[01-12,20]`
//! (numeric ranges as pdsh writes them; a zero-padded bound fixes the width), and
//! `env=prod,role!=db,canary,!legacy` (all terms must hold). Plus the "did you mean"
//! of an unknown name.

use std::collections::BTreeMap;

/// Whether `text` is a pattern rather than a plain name.
pub fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(char),
    /// `*`: any run of characters.
    Star,
    /// `?`: one character.
    One,
    /// `[1-3,7]`: a number in one of the ranges, each with its width when its low bound
    /// was zero-padded (`01-10`: two digits).
    Range(Vec<(u64, u64, Option<usize>)>),
}

/// A compiled host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
    pieces: Vec<Piece>,
}

impl HostPattern {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let mut pieces = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '*' => pieces.push(Piece::Star),
                '?' => pieces.push(Piece::One),
                '[' => {
                    let body: String = chars.by_ref().take_while(|c| *c != ']').collect();
                    pieces.push(parse_range(text, &body)?);
                }
                ']' => return Err(format!("pattern `{text}` has `]` without `[`")),
                other => pieces.push(Piece::Literal(other)),
            }
        }
        if text.matches('[').count() != text.matches(']').count() {
            return Err(format!("pattern `{text}` has `[` without `]`"));
        }
        Ok(HostPattern {
            text: text.to_string(),
            pieces,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let chars: Vec<char> = name.chars().collect();
        matches_from(&self.pieces, &chars)
    }
}

fn parse_range(text: &str, body: &str) -> Result<Piece, String> {
    let bad = || {
        format!("pattern `{text}`: `[{body}]` must be numbers and ranges like [1-3] or [01-10,20]")
    };
    let mut ranges = Vec::new();
    for part in body.split(',') {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let number = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        let (low_n, high_n) = (number(low)?, number(high)?);
        if low_n > high_n {
            return Err(format!("pattern `{text}`: range {part} runs backwards"));
        }
        let width = (low.len() > 1 && low.starts_with('0')).then_some(low.len());
        ranges.push((low_n, high_n, width));
    }
    Ok(Piece::Range(ranges))
}

fn matches_from(pieces: &[Piece], name: &[char]) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return name.is_empty();
    };
    match first {
        Piece::Literal(c) => name.first() == Some(c) && matches_from(rest, &name[1..]),
        Piece::One => !name.is_empty() && matches_from(rest, &name[1..]),
        Piece::Star => (0..=name.len()).any(|skip| matches_from(rest, &name[skip..])),
        Piece::Range(ranges) => {
            let digits = name.iter().take_while(|c| c.is_ascii_digit()).count();
            (1..=digits).any(|len| {
                let text: String = name[..len].iter().collect();
                let Ok(number) = text.parse::<u64>() else {
                    return false;
                };
                let fits = |(low, high, width): &(u64, u64, Option<usize>)| {
                    let width_ok = match width {
                        Some(width) => len == *width,
                        None => len == 1 || !text.starts_with('0'),
                    };
                    width_ok && (*low..=*high).contains(&number)
                };
                ranges.iter().any(fits) && matches_from(rest, &name[len..])
            })
        }
    }
}

/// One term of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// `env=prod,role!=db,canary,!legacy`: every term must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<LabelTerm>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim) {
            let key_ok = |k: &str| !k.is_empty() && !k.contains(['=', '!', ' ']);
            let parsed = if let Some((key, value)) = term.split_once("!=") {
                key_ok(key).then(|| LabelTerm::NotEquals(key.into(), value.into()))
            } else if let Some((key, value)) = term.split_once('=') {
                key_ok(key).then(|| LabelTerm::Equals(key.into(), value.into()))
            } else if let Some(key) = term.strip_prefix('!') {
                key_ok(key).then(|| LabelTerm::Absent(key.into()))
            } else {
                key_ok(term).then(|| LabelTerm::Exists(term.into()))
            };
            terms.push(parsed.ok_or_else(|| {
                format!(
                    "label selector `{text}`: `{term}` must be key=value, key!=value, key or !key"
                )
            })?);
        }
        Ok(LabelSelector { terms })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|term| match term {
            LabelTerm::Equals(k, v) => labels.get(k) == Some(v),
            LabelTerm::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelTerm::Exists(k) => labels.contains_key(k),
            LabelTerm::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// Edit distance (Levenshtein) between two short names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// The known names closest to `given` (at most three, within a third of its length, or
/// sharing its prefix), best first.
pub fn did_you_mean<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let limit = (given.chars().count() / 3).max(2);
    let mut close: Vec<(usize, &str)> = known
        .into_iter()
        .filter_map(|name| {
            let d = distance(given, name);
            let prefix = given.len() >= 3 && name.starts_with(given);
            (d <= limit || prefix).then_some((d, name))
        })
        .collect();
    close.sort();
    close.dedup();
    close
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        let compiled = HostPattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"));
        for name in yes {
            assert!(compiled.matches(name), "{pattern} should match {name}");
        }
        for name in no {
            assert!(!compiled.matches(name), "{pattern} should not match {name}");
        }
    }

    #[test]
    fn patterns() {
        check(
            "web-*",
            &["web-1", "web-", "web-eu-12"],
            &["db-1", "xweb-1"],
        );
        check("web-?", &["web-1", "web-a"], &["web-12", "web-"]);
        check(
            "web-[1-3]",
            &["web-1", "web-3"],
            &["web-4", "web-0", "web-12", "web-01"],
        );
        check(
            "web-[1-12]",
            &["web-1", "web-10", "web-12"],
            &["web-13", "web-01"],
        );
        check(
            "db-[01-03,7]",
            &["db-01", "db-03", "db-7"],
            &["db-1", "db-04", "db-07"],
        );
        check(
            "*-[1-2].eu",
            &["web-1.eu", "db-2.eu"],
            &["web-1.us", "web-3.eu"],
        );
        check("plain", &["plain"], &["plain2"]);
        for bad in ["web-[1-", "web-]", "web-[a-c]", "web-[3-1]", "web-[]"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(is_pattern("web-[1-3]") && is_pattern("w*") && !is_pattern("web-1"));
    }

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("env", "prod"), ("role", "web")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (selector, expected) in [
            ("env=prod", true),
            ("env=prod,role!=db", true),
            ("env=prod,role!=web", false),
            ("env=dev", false),
            ("role", true),
            ("canary", false),
            ("!canary", true),
            ("!env", false),
            ("zone!=eu", true),
        ] {
            let parsed = LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.matches(&labels), expected, "{selector}");
        }
        for bad in ["", "=x", "env=prod,", "!=x", "a b=c"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        let known = ["web-1", "web-2", "db-1", "cache"];
        assert_eq!(did_you_mean("web1", known), vec!["web-1", "web-2"]);
        assert_eq!(did_you_mean("chace", known), vec!["cache"]);
        assert!(did_you_mean("zzzzzzzz", known).is_empty());
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
