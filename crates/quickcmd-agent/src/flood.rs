//! Keeping the audit of a flood of refused submissions bounded without losing count. Each
//! source address (IP, any port) gets `audit_refusals_per_source_per_minute` refusal rows
//! per [`WINDOW`];
//! further refusals in that window are only counted, then written as one summary row
//! ("N more refusals from ADDR", with the count per code) when the window ends, when that
//! source is refused again after it, or at shutdown. Sources beyond [`MAX_SOURCES`] share
//! one entry, so the table stays bounded whatever the addresses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::audit::{AuditEvent, AuditKind};
use crate::clock;

/// The window refusals are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Refusal rows one source gets per window when the config says nothing.
pub(crate) const DEFAULT_ROWS_PER_WINDOW: u32 = 100;
/// Sources tracked apart; beyond, they are counted together as [`MANY_SOURCES`].
pub(crate) const MAX_SOURCES: usize = 4096;
/// The source name of the shared entry.
pub(crate) const MANY_SOURCES: &str = "*";

struct Window {
    started: Instant,
    started_ms: i64,
    written: u32,
    /// Refusals counted but not written, per code.
    counted: BTreeMap<String, u64>,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            started_ms: clock::now_ms(),
            written: 0,
            counted: BTreeMap::new(),
        }
    }

    fn summary(&self, source: &str) -> Option<AuditEvent> {
        let count: u64 = self.counted.values().sum();
        if count == 0 {
            return None;
        }
        let codes: Vec<String> = self.counted.keys().cloned().collect();
        Some(AuditEvent {
            remote_addr: Some(source.to_string()),
            accepted: Some(false),
            details: json!({
                "summary": true,
                "verified": false,
                "refusals": count,
                "codes": self.counted,
                "window_start": clock::rfc3339_ms(self.started_ms),
                "window_seconds": WINDOW.as_secs(),
                "message": format!(
                    "{count} more refusals from {source}, codes {}",
                    codes.join(", ")
                ),
            }),
            ..AuditEvent::new(AuditKind::Submission)
        })
    }
}

/// What to do with one refusal.
pub(crate) struct Decision {
    /// Whether the refusal gets its own row.
    pub write_row: bool,
    /// Summary rows of windows that ended, to write now.
    pub summaries: Vec<AuditEvent>,
}

/// The per-source refusal windows.
#[derive(Default)]
pub(crate) struct RefusalLog {
    windows: Mutex<HashMap<String, Window>>,
}

impl RefusalLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one refusal of `code` from `source` at `now`; the source gets
    /// `rows_per_window` rows per window.
    pub(crate) fn record(
        &self,
        source: &str,
        code: &str,
        rows_per_window: u32,
        now: Instant,
    ) -> Decision {
        let mut windows = self.lock();
        let key = if windows.contains_key(source) || windows.len() < MAX_SOURCES {
            source
        } else {
            MANY_SOURCES
        };
        let mut summaries = Vec::new();
        let window = windows
            .entry(key.to_string())
            .or_insert_with(|| Window::new(now));
        if now.duration_since(window.started) >= WINDOW {
            summaries.extend(window.summary(key));
            *window = Window::new(now);
        }
        let write_row = window.written < rows_per_window;
        if write_row {
            window.written += 1;
        } else {
            *window.counted.entry(code.to_string()).or_default() += 1;
        }
        Decision {
            write_row,
            summaries,
        }
    }

    /// Summaries of every window that ended by `now` (those windows are forgotten).
    pub(crate) fn take_ended(&self, now: Instant) -> Vec<AuditEvent> {
        let mut windows = self.lock();
        let mut summaries = Vec::new();
        windows.retain(|source, window| {
            if now.duration_since(window.started) < WINDOW {
                return true;
            }
            summaries.extend(window.summary(source));
            false
        });
        summaries
    }

    /// Summaries of every window, ended or not (shutdown).
    pub(crate) fn take_all(&self) -> Vec<AuditEvent> {
        let mut windows = self.lock();
        windows
            .drain()
            .filter_map(|(source, window)| window.summary(&source))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS_PER_WINDOW: u32 = 20;

    fn refusals(event: &AuditEvent) -> u64 {
        event.details["refusals"].as_u64().unwrap_or(0)
    }

    #[test]
    fn a_flood_is_counted_not_written_and_nothing_is_lost() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let mut rows = 0;
        let mut summarized = 0;
        for i in 0..100 {
            let code = if i % 2 == 0 {
                "INVALID_JSON"
            } else {
                "INVALID_SIGNATURE"
            };
            let decision = log.record("10.0.0.1", code, ROWS_PER_WINDOW, start);
            rows += u64::from(decision.write_row);
            summarized += decision.summaries.iter().map(refusals).sum::<u64>();
        }
        assert_eq!(rows, u64::from(ROWS_PER_WINDOW));
        // Another source has its own budget.
        assert!(
            log.record("10.0.0.2", "INVALID_JSON", ROWS_PER_WINDOW, start)
                .write_row
        );
        assert!(log.take_ended(start).is_empty(), "no window ended yet");
        // The next window: the old one's summary comes with the first refusal.
        let later = start + WINDOW;
        let decision = log.record("10.0.0.1", "INVALID_JSON", ROWS_PER_WINDOW, later);
        assert!(decision.write_row);
        assert_eq!(decision.summaries.len(), 1);
        let summary = &decision.summaries[0];
        summarized += refusals(summary);
        assert_eq!(rows + summarized, 100);
        assert_eq!(summary.remote_addr.as_deref(), Some("10.0.0.1"));
        let message = summary.details["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(
                "80 more refusals from 10.0.0.1, codes INVALID_JSON, INVALID_SIGNATURE"
            ),
            "{message}"
        );
        for _ in 0..30 {
            log.record("10.0.0.1", "INVALID_JSON", ROWS_PER_WINDOW, later);
        }
        let all = log.take_all();
        assert_eq!(all.iter().map(refusals).sum::<u64>(), 11);
        assert!(log.take_all().is_empty());
    }

    #[test]
    fn sources_beyond_the_cap_share_one_entry() {
        let log = RefusalLog::default();
        let now = Instant::now();
        for i in 0..MAX_SOURCES {
            log.record(&format!("source-{i}"), "X", ROWS_PER_WINDOW, now);
        }
        for _ in 0..(ROWS_PER_WINDOW + 5) {
            log.record("one-more", "X", ROWS_PER_WINDOW, now);
        }
        let all = log.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].remote_addr.as_deref(), Some(MANY_SOURCES));
        assert_eq!(refusals(&all[0]), 5);
    }
}
