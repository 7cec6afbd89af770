//! Raising the contract's errors from Rust: `CODE: sentence` with the code's SQLSTATE.

use amba_core::{CoreError, ErrorCode};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

fn sql_error_code(code: ErrorCode) -> PgSqlErrorCode {
    match code {
        ErrorCode::ExperimentNotFound | ErrorCode::AssignmentRequired => {
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND
        }
        ErrorCode::ExperimentInactive => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        ErrorCode::ExperimentExists | ErrorCode::ApiKeyExists => {
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION
        }
        ErrorCode::InvalidArgument => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
    }
}

/// Raises `error` as a PostgreSQL ERROR; never returns.
pub fn raise(error: CoreError) -> ! {
    ErrorReport::new(sql_error_code(error.code), error.to_string(), "amba")
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn raise_code(code: ErrorCode, detail: impl Into<String>) -> ! {
    raise(CoreError::new(code, detail))
}

/// Unwraps a validation result, raising its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, CoreError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

pub fn code_from_name(name: &str) -> Option<ErrorCode> {
    [
        ErrorCode::ExperimentNotFound,
        ErrorCode::ExperimentInactive,
        ErrorCode::AssignmentRequired,
        ErrorCode::ExperimentExists,
        ErrorCode::ApiKeyExists,
        ErrorCode::InvalidArgument,
    ]
    .into_iter()
    .find(|c| c.as_str() == name)
}
