//! The PostgreSQL side: one lazily (re)connected `tokio_postgres::Client`, the schema the
//! amba extension is installed in (every call is qualified with it, so the connecting
//! user's search_path does not matter), and the mapping of database errors to codes.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{types::ToSql, Client, Config, NoTls, Row};

use crate::error::{Code, ToolError};

/// A statement argument: its value, and the SQL type it is passed as.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    /// JSON text, passed as `$n::text::jsonb`.
    Json(String),
    Float(f64),
    Int(i32),
    BigInt(i64),
    /// A JSON array of strings, passed as `text[]`.
    TextArray(Vec<String>),
    /// SQL NULL as `text`: for a parameter without a SQL default whose NULL means
    /// something (a ratio's property: count the events).
    NullText,
}

/// The value of `Param::NullText`.
static NULL_TEXT: Option<&str> = None;

impl Param {
    /// The cast after the placeholder: the SQL function's exact argument type.
    pub fn cast(&self) -> &'static str {
        match self {
            Param::Text(_) => "::text",
            Param::Json(_) => "::text::jsonb",
            Param::Float(_) => "::double precision",
            Param::Int(_) => "::integer",
            Param::BigInt(_) => "::bigint",
            Param::TextArray(_) => "::text[]",
            Param::NullText => "::text",
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(s) | Param::Json(s) => s,
            Param::Float(f) => f,
            Param::Int(i) => i,
            Param::BigInt(i) => i,
            Param::TextArray(items) => items,
            Param::NullText => &NULL_TEXT,
        }
    }
}

/// The extension's schema, as a quoted identifier ready to prefix a function name.
const EXTENSION_SCHEMA: &str = "SELECT pg_catalog.quote_ident(n.nspname) \
     FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
     WHERE e.extname = 'amba'";

struct Conn {
    client: Arc<Client>,
    /// Found on the first use of the connection; looked up again when it was missing or
    /// a call could not find a function (the extension was re-created elsewhere).
    schema: Option<String>,
}

pub struct Db {
    config: Config,
    conn: Mutex<Option<Conn>>,
}

impl Db {
    pub fn new(config: Config) -> Self {
        Db {
            config,
            conn: Mutex::new(None),
        }
    }

    /// The current connection (a new one when there is none or it was lost) and the
    /// extension's schema.
    async fn client(&self) -> Result<(Arc<Client>, String), ToolError> {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
            eprintln!("amba-mcp: the database connection was closed; reconnecting");
            *slot = None;
        }
        if slot.is_none() {
            let client = self.connect().await?;
            *slot = Some(Conn {
                client,
                schema: None,
            });
        }
        let conn = slot.as_mut().expect("connected above");
        if let Some(schema) = &conn.schema {
            return Ok((conn.client.clone(), schema.clone()));
        }
        match conn.client.query_opt(EXTENSION_SCHEMA, &[]).await {
            Ok(Some(row)) => {
                let schema: String = row.get(0);
                conn.schema = Some(schema.clone());
                Ok((conn.client.clone(), schema))
            }
            Ok(None) => {
                let mut err = ToolError::new(
                    Code::DatabaseError,
                    "the amba extension is not installed in this database",
                );
                err.hint = Some(
                    "run CREATE EXTENSION amba in the database DATABASE_URL names (or point \
                     DATABASE_URL at the database that has it)"
                        .to_string(),
                );
                Err(err)
            }
            Err(e) => {
                let lost = is_lost(&e, &conn.client);
                if lost {
                    *slot = None;
                }
                Err(map_error(&e, lost))
            }
        }
    }

    async fn connect(&self) -> Result<Arc<Client>, ToolError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            let mut err = ToolError::new(
                Code::DatabaseUnavailable,
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
        Ok(Arc::new(client))
    }

    /// Forget `client` if it is still the current connection (it failed or was closed).
    async fn discard(&self, client: &Arc<Client>) {
        let mut slot = self.conn.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.client, client))
        {
            *slot = None;
        }
    }

    /// Look the extension's schema up again on the next call over `client`.
    async fn forget_schema(&self, client: &Arc<Client>) {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_mut().filter(|c| Arc::ptr_eq(&c.client, client)) {
            conn.schema = None;
        }
    }

    /// Connect now, to report a bad configuration early on stderr (never fatal).
    pub async fn warm_up(&self) {
        if let Err(e) = self.client().await {
            eprintln!("amba-mcp: {}", e.text());
        }
    }

    /// Run the statement `sql(schema)` (one row expected) with `params`, where `schema`
    /// is the extension's schema as a quoted identifier. Statements that are safe to
    /// repeat (`retry_on_connection_loss`) are retried once on a fresh connection when
    /// the connection turns out to be lost; others report the loss and leave the
    /// reconnect to the next call.
    pub async fn query_one(
        &self,
        sql: impl Fn(&str) -> String,
        params: &[Param],
        retry_on_connection_loss: bool,
    ) -> Result<Row, ToolError> {
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
        let mut attempts = if retry_on_connection_loss { 2 } else { 1 };
        loop {
            attempts -= 1;
            let (client, schema) = self.client().await?;
            match client.query_one(&sql(&schema), &values).await {
                Ok(row) => return Ok(row),
                Err(e) => {
                    let lost = is_lost(&e, &client);
                    if lost {
                        self.discard(&client).await;
                        if attempts > 0 {
                            eprintln!(
                                "amba-mcp: lost the database connection ({}); retrying once",
                                error_text(&e)
                            );
                            continue;
                        }
                    } else if e
                        .as_db_error()
                        .is_some_and(|db| matches!(db.code().code(), "42883" | "3F000"))
                    {
                        // undefined function / schema: maybe the extension moved.
                        self.forget_schema(&client).await;
                    }
                    return Err(map_error(&e, lost));
                }
            }
        }
    }
}

fn is_lost(e: &tokio_postgres::Error, client: &Client) -> bool {
    e.is_closed() || client.is_closed() || is_connection_sqlstate(e) || is_io_error(e)
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
            let (code, message) = match Code::from_message(&message) {
                Some(code) => (code, message),
                None => (
                    Code::DatabaseError,
                    format!("{}: {message}", Code::DatabaseError),
                ),
            };
            let mut hint = db.hint().map(str::to_string);
            if sqlstate == "42883" && message.contains("amba_") && hint.is_none() {
                hint = Some(
                    "is the amba extension in this database up to date? targeting, \
                     coverage, layers, holdouts, guardrails, dimensions and bandits (and \
                     amba_layers_list, amba_guardrails_check, the ratio, quantile, by-segment \
                     and bandit tools) need amba 0.3.0, the other tools amba 0.2.0: ALTER \
                     EXTENSION amba UPDATE"
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
            Code::DatabaseError,
            format!("unexpected reply from PostgreSQL: {}", error_text(e)),
        ),
        _ => {
            let mut err = ToolError::new(
                Code::DatabaseUnavailable,
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
