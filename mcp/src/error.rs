//! Tool failures and their codes. The contract's codes come from `amba_core`'s
//! `ErrorCode` (the one table of names and SQLSTATEs); this server adds two of its own for
//! failures outside the contract. No code is spelled anywhere else in the server.

use amba_core::error::ErrorCode;

/// The code a failed tool call reports (the first word of its text and `code` of its
/// structured content).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// A contract code (SPEC §3, "Errors (SQL)"), raised by the SQL function
    /// or (for argument errors and unknown keys) by this server.
    Contract(ErrorCode),
    /// PostgreSQL cannot be reached or the connection was lost; the next call reconnects.
    DatabaseUnavailable,
    /// Any other database error (permission denied, extension missing, ...) or a reply
    /// this server does not understand.
    DatabaseError,
}

impl Code {
    pub const INVALID_ARGUMENT: Code = Code::Contract(ErrorCode::InvalidArgument);
    pub const EXPERIMENT_NOT_FOUND: Code = Code::Contract(ErrorCode::ExperimentNotFound);

    /// Every code the server can report, contract codes first.
    pub fn all() -> impl Iterator<Item = Code> {
        ErrorCode::ALL
            .into_iter()
            .map(Code::Contract)
            .chain([Code::DatabaseUnavailable, Code::DatabaseError])
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Contract(code) => code.as_str(),
            Code::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            Code::DatabaseError => "DATABASE_ERROR",
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn from_name(name: &str) -> Option<Code> {
        Code::all().find(|c| c.as_str() == name)
    }

    /// The contract code a database error message starts with (`CODE: sentence`, as
    /// every contract error is worded); `None` for other messages and other codes.
    pub fn from_message(message: &str) -> Option<Code> {
        ErrorCode::from_message(message).map(Code::Contract)
    }

    /// The SQLSTATE the contract gives the code.
    pub fn sqlstate(self) -> Option<&'static str> {
        match self {
            Code::Contract(code) => Some(code.sqlstate()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool failure, reported to the caller as a tool result with `isError: true`.
#[derive(Debug, Clone)]
pub struct ToolError {
    pub code: Code,
    /// The full message, starting with `CODE: ` like the SQL errors do.
    pub message: String,
    /// The SQLSTATE, when the error came from (or stands for) a database error.
    pub sqlstate: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ToolError {
    /// An error raised by this server; a contract code carries the contract's SQLSTATE.
    pub fn new(code: Code, sentence: impl AsRef<str>) -> Self {
        ToolError {
            code,
            message: format!("{code}: {}", sentence.as_ref()),
            sqlstate: code.sqlstate().map(str::to_string),
            detail: None,
            hint: None,
        }
    }

    pub fn invalid_argument(sentence: impl AsRef<str>) -> Self {
        Self::new(Code::INVALID_ARGUMENT, sentence)
    }

    pub fn experiment_not_found(key: &str) -> Self {
        Self::new(
            Code::EXPERIMENT_NOT_FOUND,
            format!("experiment \"{key}\" does not exist"),
        )
    }

    /// The text an agent reads: `CODE: sentence (SQLSTATE xxxxx)`, then detail and hint.
    pub fn text(&self) -> String {
        let mut text = self.message.clone();
        if let Some(state) = &self.sqlstate {
            text.push_str(&format!(" (SQLSTATE {state})"));
        }
        if let Some(detail) = &self.detail {
            text.push_str(&format!("\nDETAIL: {detail}"));
        }
        if let Some(hint) = &self.hint {
            text.push_str(&format!("\nHINT: {hint}"));
        }
        text
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("code".into(), self.code.as_str().into());
        obj.insert("message".into(), self.message.clone().into());
        if let Some(state) = &self.sqlstate {
            obj.insert("sqlstate".into(), state.clone().into());
        }
        if let Some(detail) = &self.detail {
            obj.insert("detail".into(), detail.clone().into());
        }
        if let Some(hint) = &self.hint {
            obj.insert("hint".into(), hint.clone().into());
        }
        serde_json::Value::Object(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_name() {
        let names: Vec<&str> = Code::all().map(Code::as_str).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for code in Code::all() {
            assert_eq!(Code::from_name(code.as_str()), Some(code));
        }
    }

    #[test]
    fn codes_are_read_from_messages() {
        assert_eq!(
            Code::from_message("EXPERIMENT_NOT_FOUND: experiment \"x\" does not exist"),
            Some(Code::EXPERIMENT_NOT_FOUND)
        );
        assert_eq!(
            Code::from_message("INVALID_ARGUMENT: bad"),
            Some(Code::INVALID_ARGUMENT)
        );
        assert_eq!(Code::from_message("function amba_x() does not exist"), None);
        assert_eq!(Code::from_message("permission denied: x"), None);
        assert_eq!(Code::from_message("NO colon here"), None);
        // Only contract codes come from the database.
        assert_eq!(Code::from_message("DATABASE_ERROR: x"), None);
        assert_eq!(Code::from_message("FORBIDDEN: x"), None);
    }

    #[test]
    fn server_errors_carry_the_contract_sqlstate() {
        let err = ToolError::experiment_not_found("k");
        assert_eq!(err.code, Code::EXPERIMENT_NOT_FOUND);
        assert!(err
            .text()
            .starts_with("EXPERIMENT_NOT_FOUND: experiment \"k\""));
        assert!(err.text().ends_with("(SQLSTATE P0002)"), "{}", err.text());
        assert_eq!(err.to_json()["code"], "EXPERIMENT_NOT_FOUND");
        let err = ToolError::new(Code::DatabaseUnavailable, "down");
        assert_eq!(err.sqlstate, None);
        assert_eq!(err.message, "DATABASE_UNAVAILABLE: down");
    }
}
