//! The codes of every error that reaches a client. Each error type a client can see
//! implements [`Coded`], so the gateway maps it to its protocol error one to one instead of
//! guessing from text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a request was refused or a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON.
    MalformedJson,
    /// The frame is JSON but not an object.
    NotAnObject,
    /// `type` (or `job.kind`) names nothing this gateway knows.
    UnknownType,
    MissingField,
    UnknownField,
    /// A field has the wrong type or an impossible value.
    InvalidField,
    UnsupportedVersion,
    MessageTooLarge,
    /// Only `auth` is accepted before a good `auth`.
    NotAuthenticated,
    AuthFailed,
    AlreadyAuthenticated,
    /// The token's role may not do this.
    Forbidden,
    /// Too many jobs in flight on this connection or for this token.
    Overloaded,
    NotFound,
    /// The job's arguments are well-formed but cannot be carried out (e.g. k = 0).
    InvalidJob,
    /// The job ran and failed.
    JobFailed,
    /// The job has already finished (so it cannot be cancelled).
    JobFinished,
    /// The control plane or the actors needed are not reachable now; retry.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidJob => "invalid_job",
            ErrorCode::JobFailed => "job_failed",
            ErrorCode::JobFinished => "job_finished",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that a client may see: the protocol code it is reported under.
pub trait Coded {
    fn code(&self) -> ErrorCode;
}
