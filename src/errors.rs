//! Raising the contract's errors from Rust: `CODE: sentence` with the code's SQLSTATE, both
//! from the core's one error table.

use amba_core::{CoreError, ErrorCode};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// PostgreSQL's packed form of a five-character SQLSTATE (MAKE_SQLSTATE).
fn packed_sqlstate(sqlstate: &str) -> i32 {
    sqlstate.bytes().enumerate().fold(0, |acc, (i, c)| {
        acc + ((((c - b'0') & 0x3f) as i32) << (6 * i))
    })
}

fn sql_error_code(code: ErrorCode) -> PgSqlErrorCode {
    PgSqlErrorCode::from(packed_sqlstate(code.sqlstate()))
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

/// 40001, as PostgreSQL raises it when a REPEATABLE READ or SERIALIZABLE transaction
/// would act on data its snapshot cannot see; the client retries the transaction.
pub fn raise_serialization_failure(message: &str) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        message.to_string(),
        "amba",
    )
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Runs `f`, statistics over stored event values, raising PostgreSQL's 22003 (a property
/// value beyond double precision, or a square or sum that overflows or underflows it) as
/// INVALID_ARGUMENT naming `what`, so a caller gets the contract's code and knows which
/// input to look at. The transaction aborts as it would have.
pub fn values_in_double_range<R>(what: &str, f: impl FnOnce() -> R) -> R {
    use pgrx::pg_sys::panic::CaughtError;
    pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .catch_when(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            |caught| {
                if let CaughtError::RustPanic { .. } = caught {
                    caught.rethrow()
                }
                // Not PostgreSQL's message: it quotes the value in full (1e400 is 401 digits).
                raise_code(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{what} cannot be computed in double precision: a value, or a product or \
                     sum of values, is out of its range (magnitudes between about 1e-150 and \
                     1e150 are safe)"
                    ),
                )
            },
        )
        .execute()
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

#[cfg(test)]
mod tests {
    #[test]
    fn packs_sqlstates_as_postgres_does() {
        assert_eq!(
            super::packed_sqlstate("22023"),
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32
        );
        assert_eq!(
            super::packed_sqlstate("P0002"),
            pgrx::PgSqlErrorCode::ERRCODE_NO_DATA_FOUND as i32
        );
    }
}
