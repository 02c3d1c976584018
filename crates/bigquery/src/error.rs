//! BigQuery failures, classified at the boundary: retry now, retry later, or never.

use std::fmt;

/// The reason ferry gives a wait that ran out ([`BqError::still_running`]).
pub const STILL_RUNNING: &str = "ferryStillRunning";

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, 5xx, backend errors, timeouts: the same call may succeed in a moment.
    Retryable,
    /// A quota that resets with time (daily load jobs per table): retry, but not now.
    RetryLater,
    /// Invalid requests, schema conflicts, missing tables, access denied: retrying cannot help.
    Permanent,
}

/// A failed BigQuery call, with what BigQuery said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BqError {
    /// What was being done (`load job ferry_...`, `tables.get p.d.t`).
    pub context: String,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// BigQuery's error reason (`backendError`, `invalid`, `duplicate`, ...).
    pub reason: Option<String>,
    /// BigQuery's (or the transport's) message.
    pub message: String,
    /// The classification.
    pub class: ErrorClass,
}

impl fmt::Display for BqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.context)?;
        match (self.status, &self.reason) {
            (Some(s), Some(r)) => write!(f, "HTTP {s} {r}: ")?,
            (Some(s), None) => write!(f, "HTTP {s}: ")?,
            (None, Some(r)) => write!(f, "{r}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)?;
        if self.class == ErrorClass::RetryLater {
            f.write_str(" (quota: retry later)")?;
        }
        Ok(())
    }
}

impl BqError {
    /// An error from an HTTP status and BigQuery's reason, classified.
    pub fn from_response(
        context: impl Into<String>,
        status: Option<u16>,
        reason: Option<String>,
        message: impl Into<String>,
    ) -> BqError {
        let message = message.into();
        let class = classify(status, reason.as_deref(), &message);
        BqError {
            context: context.into(),
            status,
            reason,
            message,
            class,
        }
    }

    /// A transport failure (connection refused, timeout, reset): retryable.
    pub fn transport(context: impl Into<String>, message: impl Into<String>) -> BqError {
        BqError {
            context: context.into(),
            status: None,
            reason: None,
            message: message.into(),
            class: ErrorClass::Retryable,
        }
    }

    /// A wait that ran out while the job or statement still runs in BigQuery: retryable (the
    /// next delivery finds it by its id), and the work may still be going on.
    pub fn still_running(context: impl Into<String>, message: impl Into<String>) -> BqError {
        BqError {
            context: context.into(),
            status: None,
            reason: Some(STILL_RUNNING.into()),
            message: message.into(),
            class: ErrorClass::Retryable,
        }
    }

    /// Whether this is a wait that ran out with the work still running.
    pub fn is_still_running(&self) -> bool {
        self.reason.as_deref() == Some(STILL_RUNNING)
    }

    /// A response ferry cannot read (malformed JSON, missing fields).
    pub fn malformed(context: impl Into<String>, message: impl Into<String>) -> BqError {
        // A garbled response is most often a proxy or a truncated body: worth another try.
        BqError {
            context: context.into(),
            status: None,
            reason: Some("malformedResponse".into()),
            message: message.into(),
            class: ErrorClass::Retryable,
        }
    }

    /// A permanent error ferry detects itself (schema conflict, bad configuration).
    pub fn permanent(context: impl Into<String>, message: impl Into<String>) -> BqError {
        BqError {
            context: context.into(),
            status: None,
            reason: None,
            message: message.into(),
            class: ErrorClass::Permanent,
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.class != ErrorClass::Permanent
    }
}

/// Classifies a failure by BigQuery's documented reasons first, then by HTTP status.
///
/// Two reasons BigQuery also uses for requests that can never succeed are transient for DML
/// (page "DML", "Quotas and limits"): a mutating statement that lost to a concurrent one after
/// BigQuery's own retries fails `invalidQuery` "Could not serialize access to table ... due to
/// concurrent update", and one beyond the per-table DML queue fails `resourcesExceeded` "Too
/// many DML statements outstanding". Both are retried with backoff.
pub fn classify(status: Option<u16>, reason: Option<&str>, message: &str) -> ErrorClass {
    let transient_dml = match reason {
        Some("invalidQuery") => message.contains("Could not serialize access"),
        Some("resourcesExceeded") => message.contains("Too many DML statements outstanding"),
        _ => false,
    };
    if transient_dml {
        return ErrorClass::Retryable;
    }
    match reason {
        Some(
            "backendError"
            | "internalError"
            | "rateLimitExceeded"
            | "jobBackendError"
            | "jobInternalError"
            | "tableUnavailable"
            | "timeout"
            | "jobRateLimitExceeded",
        ) => return ErrorClass::Retryable,
        Some("quotaExceeded") => return ErrorClass::RetryLater,
        Some(
            "invalid"
            | "invalidQuery"
            | "notFound"
            | "accessDenied"
            | "billingNotEnabled"
            | "billingTierLimitExceeded"
            | "blocked"
            | "duplicate"
            | "notImplemented"
            | "resourceInUse"
            | "resourcesExceeded"
            | "responseTooLarge"
            | "stopped",
        ) => return ErrorClass::Permanent,
        _ => {}
    }
    match status {
        Some(408 | 429 | 500 | 502 | 503 | 504) | None => ErrorClass::Retryable,
        // 401: an expired token is refreshed by the next call.
        Some(401) => ErrorClass::Retryable,
        Some(_) => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_win_over_status() {
        // BigQuery answers rateLimitExceeded with 403: still retryable.
        assert_eq!(
            classify(Some(403), Some("rateLimitExceeded"), ""),
            ErrorClass::Retryable
        );
        assert_eq!(
            classify(Some(403), Some("quotaExceeded"), ""),
            ErrorClass::RetryLater
        );
        assert_eq!(
            classify(Some(403), Some("accessDenied"), ""),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(Some(400), Some("invalid"), ""),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(Some(200), Some("backendError"), ""),
            ErrorClass::Retryable
        );
    }

    #[test]
    fn statuses_without_reason() {
        for s in [429, 500, 502, 503, 504] {
            assert_eq!(classify(Some(s), None, ""), ErrorClass::Retryable, "{s}");
        }
        assert_eq!(classify(Some(404), None, ""), ErrorClass::Permanent);
        assert_eq!(classify(None, None, ""), ErrorClass::Retryable);
    }

    #[test]
    fn dml_conflicts_and_queue_overflow_are_transient() {
        let conflict = "Could not serialize access to table p:d.t due to concurrent update";
        assert_eq!(
            classify(Some(400), Some("invalidQuery"), conflict),
            ErrorClass::Retryable
        );
        assert_eq!(
            classify(
                Some(400),
                Some("resourcesExceeded"),
                "Too many DML statements outstanding against table p:d.t, limit is 20"
            ),
            ErrorClass::Retryable
        );
        // The same reasons with other messages stay permanent.
        assert_eq!(
            classify(Some(400), Some("invalidQuery"), "Syntax error"),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(
                Some(400),
                Some("resourcesExceeded"),
                "Resources exceeded during query execution"
            ),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn display_names_context_status_reason() {
        let e = BqError::from_response(
            "load job x",
            Some(403),
            Some("quotaExceeded".into()),
            "too many",
        );
        assert_eq!(
            e.to_string(),
            "load job x: HTTP 403 quotaExceeded: too many (quota: retry later)"
        );
        assert!(e.is_retryable());
    }
}
