//! Errors of the Kubernetes glue. API failures are told apart by their HTTP status code, never
//! by their text; each error has a static category for metrics and knows whether retrying
//! can help. No I/O.

use kube::runtime::watcher;

use crate::keys::Gvr;

/// What an API request's failure means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFailure {
    /// 404: the object, or the resource type (CRD not installed), does not exist.
    NotFound,
    /// 403: RBAC forbids it.
    Forbidden,
    /// 409: a concurrent write won; the watch brings the newer state.
    Conflict,
    /// 410: a watch's resourceVersion is too old; relist.
    Gone,
    /// 422 and other 4xx: the request itself is wrong (a user's template, a bad name).
    Invalid,
    /// 429: throttled.
    TooManyRequests,
    /// 5xx: the API server failed.
    Server,
    /// No HTTP status: connection refused, TLS, timeouts.
    Transport,
}

impl ApiFailure {
    /// Classifies a client error by its status code.
    pub fn of(e: &kube::Error) -> ApiFailure {
        match e {
            kube::Error::Api(s) => ApiFailure::of_code(s.code),
            _ => ApiFailure::Transport,
        }
    }

    /// Classifies a watch stream error.
    pub fn of_watch(e: &watcher::Error) -> ApiFailure {
        match e {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => ApiFailure::of(e),
            watcher::Error::WatchError(s) => ApiFailure::of_code(s.code),
            watcher::Error::NoResourceVersion => ApiFailure::Invalid,
        }
    }

    /// Classifies an HTTP status code.
    pub fn of_code(code: u16) -> ApiFailure {
        match code {
            404 => ApiFailure::NotFound,
            403 => ApiFailure::Forbidden,
            409 => ApiFailure::Conflict,
            410 => ApiFailure::Gone,
            429 => ApiFailure::TooManyRequests,
            500..=599 => ApiFailure::Server,
            _ => ApiFailure::Invalid,
        }
    }

    /// Whether the same request can succeed later without anyone changing the cluster's
    /// configuration or the user's input.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ApiFailure::Conflict
                | ApiFailure::Gone
                | ApiFailure::TooManyRequests
                | ApiFailure::Server
                | ApiFailure::Transport
        )
    }
}

/// An error of the glue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write was refused because this replica does not hold the lease.
    #[error("not the leader")]
    NotLeader,
    /// An API request failed. `action` says what was attempted ("apply VirtualService a/b").
    #[error("failed to {action}: {}", describe(source))]
    Api {
        action: String,
        failure: ApiFailure,
        #[source]
        source: kube::Error,
    },
    /// Discovery does not list the resource type (its CRD is not installed).
    #[error("the API server does not serve {0}")]
    NotServed(Gvr),
    /// The object exists and belongs to someone else; the controller does not take it over.
    #[error("{0}")]
    Taken(String),
}

impl Error {
    /// An API error with what was being done.
    pub fn api(action: impl Into<String>, source: kube::Error) -> Error {
        Error::Api {
            action: action.into(),
            failure: ApiFailure::of(&source),
            source,
        }
    }

    /// Whether retrying later can help without anyone changing anything. A type that is
    /// not served yet may be installed later, so it counts as transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::NotLeader => false,
            Error::Api { failure, .. } => failure.is_transient(),
            Error::NotServed(_) => true,
            Error::Taken(_) => false,
        }
    }

    /// The classified API failure, if this is one.
    pub fn failure(&self) -> Option<ApiFailure> {
        match self {
            Error::Api { failure, .. } => Some(*failure),
            _ => None,
        }
    }
}

/// Delays for retrying a failing request: from `min`, doubling with jitter, at most about
/// `max`, forever (every retry loop of the controller uses this).
pub fn backoff(
    min: std::time::Duration,
    max: std::time::Duration,
) -> impl Iterator<Item = std::time::Duration> + Send {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min.min(max))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The API server's own message for status errors (kube's Display repeats the whole status).
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

/// The same for watch errors.
pub fn describe_watch(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => describe(e),
        watcher::Error::WatchError(s) => format!("{} ({})", s.message, s.code),
        watcher::Error::NoResourceVersion => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_decide_the_class() {
        for (code, want, transient) in [
            (404, ApiFailure::NotFound, false),
            (403, ApiFailure::Forbidden, false),
            (409, ApiFailure::Conflict, true),
            (410, ApiFailure::Gone, true),
            (422, ApiFailure::Invalid, false),
            (400, ApiFailure::Invalid, false),
            (429, ApiFailure::TooManyRequests, true),
            (500, ApiFailure::Server, true),
            (503, ApiFailure::Server, true),
        ] {
            let got = ApiFailure::of_code(code);
            assert_eq!(got, want, "code {code}");
            assert_eq!(got.is_transient(), transient, "code {code}");
        }
    }

    #[test]
    fn a_status_message_that_looks_like_another_code_does_not_fool_it() {
        // The old classification searched the text for "404"/"Forbidden".
        let status = kube::core::Status::failure("object \"forbidden-404\" is invalid", "Invalid")
            .with_code(422);
        let e = kube::Error::Api(Box::new(status));
        assert_eq!(ApiFailure::of(&e), ApiFailure::Invalid);
        let err = Error::api("apply VirtualService a/forbidden-404", e);
        assert_eq!(
            err.to_string(),
            "failed to apply VirtualService a/forbidden-404: object \"forbidden-404\" is invalid"
        );
        assert!(!err.is_transient());
    }
}
