//! The contract's error codes, in one table: name, SQLSTATE and HTTP status. The extension
//! raises them with the SQLSTATE, the HTTP surface maps them with the status, the MCP server
//! reports the name; none of them spells the table again. The message of every error
//! starts with the code, a colon and a sentence for humans.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ExperimentNotFound,
    ExperimentInactive,
    AssignmentRequired,
    ExperimentExists,
    ApiKeyExists,
    InvalidArgument,
}

/// (code, name, SQLSTATE, HTTP status): SPEC §3 and §5.
const TABLE: [(ErrorCode, &str, &str, u16); 6] = [
    (
        ErrorCode::ExperimentNotFound,
        "EXPERIMENT_NOT_FOUND",
        "P0002",
        404,
    ),
    (
        ErrorCode::ExperimentInactive,
        "EXPERIMENT_INACTIVE",
        "55000",
        409,
    ),
    (
        ErrorCode::AssignmentRequired,
        "ASSIGNMENT_REQUIRED",
        "P0002",
        404,
    ),
    (
        ErrorCode::ExperimentExists,
        "EXPERIMENT_EXISTS",
        "23505",
        409,
    ),
    (ErrorCode::ApiKeyExists, "API_KEY_EXISTS", "23505", 409),
    (ErrorCode::InvalidArgument, "INVALID_ARGUMENT", "22023", 400),
];

impl ErrorCode {
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::ExperimentNotFound,
        ErrorCode::ExperimentInactive,
        ErrorCode::AssignmentRequired,
        ErrorCode::ExperimentExists,
        ErrorCode::ApiKeyExists,
        ErrorCode::InvalidArgument,
    ];

    fn row(self) -> &'static (ErrorCode, &'static str, &'static str, u16) {
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every code is in the table")
    }

    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    /// The five-character SQLSTATE of the contract's error table.
    pub fn sqlstate(self) -> &'static str {
        self.row().2
    }

    /// The HTTP status PostgREST answers with (SPEC §5).
    pub fn http_status(self) -> u16 {
        self.row().3
    }

    pub fn from_name(name: &str) -> Option<ErrorCode> {
        TABLE.iter().find(|r| r.1 == name).map(|r| r.0)
    }

    /// The code a contract error message starts with (`CODE: sentence`).
    pub fn from_message(message: &str) -> Option<ErrorCode> {
        Self::from_name(message.split_once(':')?.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    pub code: ErrorCode,
    pub detail: String,
}

impl CoreError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        CoreError {
            code,
            detail: detail.into(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_code_once() {
        for code in ErrorCode::ALL {
            assert_eq!(TABLE.iter().filter(|r| r.0 == code).count(), 1);
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
            assert_eq!(
                ErrorCode::from_message(&CoreError::new(code, "x").to_string()),
                Some(code)
            );
        }
        assert_eq!(ErrorCode::from_name("FORBIDDEN"), None);
    }
}
