//! Retries as protocol v1's transport promises: on network errors, 5xx and 429 (honouring
//! `Retry-After`), back off 1 s, 2 s, 4 s — at most three retries — resending the same
//! request; never on another 4xx.

use std::future::Future;
use std::time::Duration;

use super::ClientError;

/// How often and how long to wait between attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before each retry; its length is the number of retries.
    pub delays: Vec<Duration>,
    /// The longest `Retry-After` we honour; an agent asking for more gets this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// `retries` retries waiting 1 s, 2 s, 4 s, then 8 s each (`--retries`).
    pub fn with_retries(retries: usize) -> RetryPolicy {
        RetryPolicy {
            delays: (0..retries)
                .map(|n| Duration::from_secs(1 << n.min(3)))
                .collect(),
            ..RetryPolicy::default()
        }
    }

    /// No retries at all.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            delays: Vec::new(),
            max_retry_after: Duration::ZERO,
        }
    }
}

/// One retry about to happen, for the operator (`quickcmd: web-1: submit: connection
/// refused; retry 1 of 3 in 1s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryNotice {
    pub agent: String,
    /// What was tried: `submit`, `GET /api/v1/jobs/…`, `log stream of job …`.
    pub what: String,
    /// Why it failed.
    pub problem: String,
    /// 1 for the first retry.
    pub retry: usize,
    pub retries: usize,
    pub delay: Duration,
}

impl std::fmt::Display for RetryNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}; retry {} of {} in {}",
            self.agent,
            self.what,
            self.problem,
            self.retry,
            self.retries,
            crate::output::format_duration_ms(
                i64::try_from(self.delay.as_millis()).unwrap_or(i64::MAX)
            )
        )
    }
}

/// Called before each retry (the CLI prints the notice on stderr).
pub type OnRetry = std::sync::Arc<dyn Fn(&RetryNotice) + Send + Sync>;

/// One HTTP answer, read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

/// Runs `attempt` until it gives an answer that is not 5xx/429, a failure that is not
/// transient, or the policy's retries are spent; then returns the last outcome.
pub(crate) async fn with_retries<F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    notify: impl Fn(&str, usize, Duration),
    mut attempt: F,
) -> Result<Answer, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Answer, ClientError>>,
{
    let mut retries_done = 0usize;
    loop {
        let outcome = attempt().await;
        let wait = match &outcome {
            Ok(answer) if answer.status >= 500 || answer.status == 429 => {
                answer.retry_after.map(|d| d.min(policy.max_retry_after))
            }
            Ok(_) => return outcome,
            Err(error) if error.is_retryable() => None,
            Err(_) => return outcome,
        };
        let Some(backoff) = policy.delays.get(retries_done) else {
            return outcome;
        };
        let delay = wait.unwrap_or(*backoff);
        let problem = match &outcome {
            Ok(answer) => ClientError::from_response(answer.status, &answer.body, None).to_string(),
            Err(error) => error.to_string(),
        };
        tracing::debug!("{what}: {problem}, retry {} in {delay:?}", retries_done + 1);
        notify(&problem, retries_done + 1, delay);
        tokio::time::sleep(delay).await;
        retries_done += 1;
    }
}

/// Parses `Retry-After`: delta-seconds, or an HTTP date (IMF-fixdate).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let when = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let now = time::OffsetDateTime::now_utc();
    Some(Duration::from_secs(
        u64::try_from((when - now).whole_seconds()).unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn answer(status: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: Vec::new(),
        }
    }

    /// Runs the loop over scripted outcomes; returns the final status (or error) and how
    /// many attempts were made.
    async fn check(script: Vec<Result<Answer, ClientError>>) -> (Result<u16, String>, usize) {
        let script = Arc::new(std::sync::Mutex::new(script.into_iter()));
        let count = Arc::new(AtomicUsize::new(0));
        let outcome = with_retries(
            &RetryPolicy::default(),
            "test",
            |_, _, _| {},
            || {
                count.fetch_add(1, Ordering::SeqCst);
                let next = script
                    .lock()
                    .expect("lock")
                    .next()
                    .unwrap_or_else(|| Ok(answer(200, None)));
                async move { next }
            },
        )
        .await;
        (
            outcome.map(|a| a.status).map_err(|e| e.to_string()),
            count.load(Ordering::SeqCst),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_with_backoff() {
        let start = tokio::time::Instant::now();
        let (outcome, attempts) = check(vec![
            Err(ClientError::ConnectionRefused),
            Ok(answer(503, None)),
            Ok(answer(202, None)),
        ])
        .await;
        assert_eq!((outcome, attempts), (Ok(202), 3));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_three_retries() {
        let start = tokio::time::Instant::now();
        let (outcome, attempts) = check(vec![
            Ok(answer(500, None)),
            Ok(answer(500, None)),
            Ok(answer(500, None)),
            Ok(answer(500, None)),
            Ok(answer(202, None)),
        ])
        .await;
        assert_eq!((outcome, attempts), (Ok(500), 4));
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_up_to_the_cap() {
        let start = tokio::time::Instant::now();
        let (outcome, attempts) = check(vec![
            Ok(answer(429, Some(10))),
            Ok(answer(429, Some(1000))),
            Ok(answer(202, None)),
        ])
        .await;
        assert_eq!((outcome, attempts), (Ok(202), 3));
        assert_eq!(start.elapsed(), Duration::from_secs(70));
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_other_4xx_or_tls() {
        assert_eq!(check(vec![Ok(answer(401, None))]).await, (Ok(401), 1));
        assert_eq!(check(vec![Ok(answer(409, None))]).await, (Ok(409), 1));
        let (outcome, attempts) = check(vec![Err(ClientError::Tls {
            message: "bad cert".into(),
        })])
        .await;
        assert_eq!(attempts, 1);
        assert!(outcome.is_err());
    }

    #[test]
    fn retries_flag_sets_the_delays() {
        let secs = |n| {
            RetryPolicy::with_retries(n)
                .delays
                .iter()
                .map(Duration::as_secs)
                .collect::<Vec<_>>()
        };
        assert_eq!(secs(0), Vec::<u64>::new());
        assert_eq!(
            secs(3),
            RetryPolicy::default()
                .delays
                .iter()
                .map(Duration::as_secs)
                .collect::<Vec<_>>()
        );
        assert_eq!(secs(5), vec![1, 2, 4, 8, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn each_retry_is_announced() {
        let seen = std::sync::Mutex::new(Vec::new());
        let mut script =
            vec![Err(ClientError::ConnectionRefused), Ok(answer(503, None))].into_iter();
        let outcome = with_retries(
            &RetryPolicy::default(),
            "submit",
            |problem, retry, delay| {
                seen.lock()
                    .expect("lock")
                    .push((problem.to_string(), retry, delay.as_secs()))
            },
            || {
                let next = script.next().unwrap_or_else(|| Ok(answer(202, None)));
                async move { next }
            },
        )
        .await;
        assert_eq!(outcome.map(|a| a.status).ok(), Some(202));
        let seen = seen.into_inner().expect("lock");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], ("connection refused".to_string(), 1, 1));
        assert_eq!(seen[1].1, 2);
        assert!(seen[1].0.starts_with("HTTP 503"), "{:?}", seen[1]);
        let notice = RetryNotice {
            agent: "web-1".into(),
            what: "submit".into(),
            problem: "connection refused".into(),
            retry: 1,
            retries: 3,
            delay: Duration::from_secs(1),
        };
        assert_eq!(
            notice.to_string(),
            "web-1: submit: connection refused; retry 1 of 3 in 1.0s"
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
