//! The contract's error codes. The extension maps each to its SQLSTATE; the message of
//! every error starts with the code, a colon and a sentence for humans.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ExperimentNotFound,
    ExperimentInactive,
    AssignmentRequired,
    ExperimentExists,
    ApiKeyExists,
    InvalidArgument,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ExperimentNotFound => "EXPERIMENT_NOT_FOUND",
            ErrorCode::ExperimentInactive => "EXPERIMENT_INACTIVE",
            ErrorCode::AssignmentRequired => "ASSIGNMENT_REQUIRED",
            ErrorCode::ExperimentExists => "EXPERIMENT_EXISTS",
            ErrorCode::ApiKeyExists => "API_KEY_EXISTS",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
        }
    }

    /// The five-character SQLSTATE of the contract's error table.
    pub fn sqlstate(self) -> &'static str {
        match self {
            ErrorCode::ExperimentNotFound | ErrorCode::AssignmentRequired => "P0002",
            ErrorCode::ExperimentInactive => "55000",
            ErrorCode::ExperimentExists | ErrorCode::ApiKeyExists => "23505",
            ErrorCode::InvalidArgument => "22023",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    pub code: ErrorCode,
    pub detail: String,
}

impl CoreError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        CoreError { code, detail: detail.into() }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        CoreError::new(ErrorCode::InvalidArgument, detail)
    }
}

impl fmt::Display for CoreError {
    /// `CODE: sentence`, the form every contract error message takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for CoreError {}
