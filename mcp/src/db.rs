//! The PostgreSQL side: one lazily (re)connected `tokio_postgres::Client`, and the
//! mapping of database errors to the contract's error codes.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{types::ToSql, Client, Config, NoTls, Row};

/// A tool failure, reported to the caller as a tool result with `isError: true`.
#[derive(Debug, Clone)]
pub struct ToolError {
    /// The contract code (`EXPERIMENT_NOT_FOUND`, `INVALID_ARGUMENT`, ...), or
    /// `DATABASE_UNAVAILABLE` / `DATABASE_ERROR` for failures outside the contract.
    pub code: String,
    /// The full message, starting with `CODE: ` like the SQL errors do.
    pub message: String,
    /// The SQLSTATE, when the error came from (or stands for) a database error.
    pub sqlstate: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ToolError {
    pub fn new(code: &str, sentence: impl AsRef<str>) -> Self {
        ToolError {
            code: code.to_string(),
            message: format!("{code}: {}", sentence.as_ref()),
            sqlstate: None,
            detail: None,
            hint: None,
        }
    }

    pub fn invalid_argument(sentence: impl AsRef<str>) -> Self {
        Self::new("INVALID_ARGUMENT", sentence)
    }

    pub fn with_sqlstate(mut self, sqlstate: &str) -> Self {
        self.sqlstate = Some(sqlstate.to_string());
        self
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
        obj.insert("code".into(), self.code.clone().into());
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

/// The leading `CODE` of a message shaped `CODE: sentence` (upper-case letters, digits
/// and underscores, starting with a letter), as every contract error message is.
pub fn message_code(message: &str) -> Option<&str> {
    let (head, _) = message.split_once(':')?;
    let mut chars = head.chars();
    let first = chars.next()?;
    if first.is_ascii_uppercase()
        && head.len() >= 3
        && head
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        Some(head)
    } else {
        None
    }
}

/// A statement argument: its SQL cast and value.
#[derive(Debug)]
pub enum Param {
    Text(String),
    /// JSON text, passed as `$n::text::jsonb`.
    Json(String),
    Float(f64),
}

impl Param {
    pub fn cast(&self) -> &'static str {
        match self {
            Param::Text(_) => "::text",
            Param::Json(_) => "::text::jsonb",
            Param::Float(_) => "::float8",
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(s) | Param::Json(s) => s,
            Param::Float(f) => f,
        }
    }
}

pub struct Db {
    config: Config,
    client: Mutex<Option<Arc<Client>>>,
}

impl Db {
    pub fn new(config: Config) -> Self {
        Db {
            config,
            client: Mutex::new(None),
        }
    }

    /// The current connection, or a new one when there is none or it was lost.
    async fn client(&self) -> Result<Arc<Client>, ToolError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            if !client.is_closed() {
                return Ok(client.clone());
            }
            eprintln!("amba-mcp: the database connection was closed; reconnecting");
        }
        *slot = None;
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            let mut err = ToolError::new(
                "DATABASE_UNAVAILABLE",
                format!(
                    "could not connect to PostgreSQL ({}); check DATABASE_URL and that the \
                     server is running. The next call tries again.",
                    error_text(&e)
                ),
            );
            if let Some(db) = e.as_db_error() {
                err.sqlstate = Some(db.code().code().to_string());
            }
            err
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("amba-mcp: database connection ended: {}", error_text(&e));
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forget `client` if it is still the current connection (it failed or was closed).
    async fn discard(&self, client: &Arc<Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *slot = None;
        }
    }

    /// Connect now, to report a bad configuration early on stderr (never fatal).
    pub async fn warm_up(&self) {
        match self.client().await {
            Ok(client) => {
                if let Err(e) = client.simple_query("SELECT 1").await {
                    eprintln!("amba-mcp: database check failed: {}", error_text(&e));
                }
            }
            Err(e) => eprintln!("amba-mcp: {}", e.text()),
        }
    }

    /// Run `sql` (one row expected) with `params`. Statements that are safe to repeat
    /// (`retry_on_connection_loss`) are retried once on a fresh connection when the
    /// connection turns out to be lost; others report the loss and leave the reconnect
    /// to the next call.
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[Param],
        retry_on_connection_loss: bool,
    ) -> Result<Row, ToolError> {
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
        let mut attempts = if retry_on_connection_loss { 2 } else { 1 };
        loop {
            attempts -= 1;
            let client = self.client().await?;
            match client.query_one(sql, &values).await {
                Ok(row) => return Ok(row),
                Err(e) => {
                    let lost = e.is_closed()
                        || client.is_closed()
                        || is_connection_sqlstate(&e)
                        || is_io_error(&e);
                    if lost {
                        self.discard(&client).await;
                        if attempts > 0 {
                            eprintln!(
                                "amba-mcp: lost the database connection ({}); retrying once",
                                error_text(&e)
                            );
                            continue;
                        }
                    }
                    return Err(map_error(&e, lost));
                }
            }
        }
    }
}

fn is_io_error(e: &tokio_postgres::Error) -> bool {
    use std::error::Error;
    e.source().is_some_and(|s| s.is::<std::io::Error>())
}

fn is_connection_sqlstate(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        code.starts_with("08") || code.starts_with("57P")
    })
}

/// `Display` of a tokio-postgres error plus its source (which holds the useful part,
/// e.g. "Connection refused").
fn error_text(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

fn map_error(e: &tokio_postgres::Error, lost: bool) -> ToolError {
    match e.as_db_error() {
        Some(db) if !lost => {
            let message = db.message().to_string();
            let sqlstate = db.code().code().to_string();
            let code = match message_code(&message) {
                Some(code) => code.to_string(),
                None => "DATABASE_ERROR".to_string(),
            };
            let message = if message_code(&message).is_some() {
                message
            } else {
                format!("{code}: {message}")
            };
            let mut hint = db.hint().map(str::to_string);
            if sqlstate == "42883" && message.contains("amba_") && hint.is_none() {
                hint = Some(
                    "is the amba extension installed in this database (CREATE EXTENSION amba) \
                     and is its schema on the search_path of the DATABASE_URL user?"
                        .to_string(),
                );
            }
            ToolError {
                code,
                message,
                sqlstate: Some(sqlstate),
                detail: db.detail().map(str::to_string),
                hint,
            }
        }
        None if !lost => ToolError::new(
            "DATABASE_ERROR",
            format!("unexpected reply from PostgreSQL: {}", error_text(e)),
        ),
        _ => {
            let mut err = ToolError::new(
                "DATABASE_UNAVAILABLE",
                format!(
                    "lost the connection to PostgreSQL ({}); the statement's outcome is \
                     unknown if it was a change — check with amba_experiments_get. The next \
                     call reconnects.",
                    error_text(e)
                ),
            );
            if let Some(db) = e.as_db_error() {
                err.sqlstate = Some(db.code().code().to_string());
            }
            err
        }
    }
}

#[cfg(test)]
mod tests {
    use super::message_code;

    #[test]
    fn codes_are_read_from_messages() {
        assert_eq!(
            message_code("EXPERIMENT_NOT_FOUND: experiment \"x\" does not exist"),
            Some("EXPERIMENT_NOT_FOUND")
        );
        assert_eq!(
            message_code("INVALID_ARGUMENT: bad"),
            Some("INVALID_ARGUMENT")
        );
        assert_eq!(message_code("function amba_x() does not exist"), None);
        assert_eq!(message_code("permission denied: x"), None);
        assert_eq!(message_code("NO colon here"), None);
    }
}
