//! amba-mcp: a stdio MCP server exposing the Amba experiments SQL API to coding agents.
//!
//! It connects to PostgreSQL with `DATABASE_URL` and calls the extension's `amba_*` SQL
//! functions (found through the connection's search_path); it never reimplements them.

mod db;
mod tools;

use std::{process::ExitCode, sync::Arc, time::Duration};

use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
        Tool,
    },
    service::RequestContext,
    ErrorData as McpError, RoleServer, ServerHandler, ServiceExt,
};
use serde_json::Value;

use db::{Db, Param, ToolError};
use tools::{Kind, Shape, Spec};

const USAGE: &str = "\
amba-mcp: MCP server (stdio) for Amba experiments, A/B testing inside PostgreSQL.

Usage: DATABASE_URL=postgresql://user:password@host:5432/dbname amba-mcp

It speaks the Model Context Protocol on stdin/stdout (start it from an MCP client such as
Claude Desktop, Claude Code or Cursor) and logs to stderr. Tools: amba_experiments_create,
amba_experiments_list, amba_experiments_get, amba_experiments_update,
amba_experiments_delete, amba_experiments_results.

Environment:
  DATABASE_URL  PostgreSQL connection URL or key=value string (required). The database must
                have the amba extension installed (CREATE EXTENSION amba) in a schema on the
                user's search_path. application_name defaults to amba-mcp.

Options:
  -h, --help     print this help
  -V, --version  print the version";

#[derive(Clone)]
struct AmbaServer {
    db: Arc<Db>,
}

/// Clients that negotiated an MCP protocol version before 2026-07-28 only accept an
/// object as `structuredContent`.
fn legacy_peer(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_none_or(|v| v.as_str() < "2026-07-28")
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Check the call's arguments against the tool's argument list; returns the arguments
/// the caller supplied (null counts as not supplied, so the SQL default applies).
fn bind(spec: &Spec, args: Option<&JsonObject>) -> Result<Vec<(&'static str, Param)>, ToolError> {
    let empty = JsonObject::new();
    let args = args.unwrap_or(&empty);
    let allowed = || {
        if spec.args.is_empty() {
            "it takes no arguments".to_string()
        } else {
            let names: Vec<&str> = spec.args.iter().map(|a| a.name).collect();
            format!("allowed: {}", names.join(", "))
        }
    };
    if let Some(unknown) = args
        .keys()
        .find(|k| !spec.args.iter().any(|a| a.name == k.as_str()))
    {
        return Err(ToolError::invalid_argument(format!(
            "unknown argument \"{unknown}\" for {} ({})",
            spec.tool,
            allowed()
        )));
    }
    let mut bound = Vec::new();
    for arg in spec.args {
        let value = match args.get(arg.name) {
            None | Some(Value::Null) => {
                if arg.required {
                    return Err(ToolError::invalid_argument(format!(
                        "missing required argument \"{}\" for {}",
                        arg.name, spec.tool
                    )));
                }
                continue;
            }
            Some(value) => value,
        };
        let param = match (arg.kind, value) {
            (Kind::Text, Value::String(s)) => Param::Text(s.clone()),
            (Kind::Text, other) => {
                return Err(ToolError::invalid_argument(format!(
                    "argument \"{}\" must be a string, not {}",
                    arg.name,
                    type_name(other)
                )))
            }
            (Kind::Number, Value::Number(n)) => match n.as_f64() {
                Some(f) => Param::Float(f),
                None => {
                    return Err(ToolError::invalid_argument(format!(
                        "argument \"{}\" is not a representable number",
                        arg.name
                    )))
                }
            },
            (Kind::Number, other) => {
                return Err(ToolError::invalid_argument(format!(
                    "argument \"{}\" must be a number, not {}",
                    arg.name,
                    type_name(other)
                )))
            }
            // Passed through as jsonb: the SQL function validates it.
            (Kind::Json, value) => Param::Json(value.to_string()),
        };
        bound.push((arg.name, param));
    }
    Ok(bound)
}

/// The statement for `spec` with the supplied arguments in named notation.
fn statement(spec: &Spec, bound: &[(&'static str, Param)]) -> String {
    let call_args: Vec<String> = bound
        .iter()
        .enumerate()
        .map(|(i, (name, param))| format!("{name} => ${}{}", i + 1, param.cast()))
        .collect();
    let call = format!("{}({})", spec.function, call_args.join(", "));
    match spec.shape {
        Shape::Experiment => format!("SELECT {call}::text"),
        Shape::Deleted => format!("SELECT {call}"),
        Shape::List => format!("SELECT coalesce(json_agg(e), '[]'::json)::text FROM {call} AS e"),
        Shape::Rows => format!("SELECT coalesce(json_agg(r), '[]'::json)::text FROM {call} AS r"),
    }
}

fn not_found(key: &str) -> ToolError {
    ToolError::new(
        "EXPERIMENT_NOT_FOUND",
        format!("experiment \"{key}\" does not exist"),
    )
    .with_sqlstate("P0002")
}

/// Run the tool: the SQL JSON as text, and the same JSON parsed.
async fn run(
    db: &Db,
    spec: &Spec,
    args: Option<&JsonObject>,
) -> Result<(String, Value), ToolError> {
    let bound = bind(spec, args)?;
    let key = bound
        .iter()
        .find_map(|(name, p)| match (name, p) {
            (&"experiment_key", Param::Text(k)) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let sql = statement(spec, &bound);
    let params: Vec<Param> = bound.into_iter().map(|(_, p)| p).collect();
    let row = db.query_one(&sql, &params, spec.read_only).await?;
    let bad_reply = |e: &dyn std::fmt::Display| {
        ToolError::new(
            "DATABASE_ERROR",
            format!("unexpected reply from {}: {e}", spec.function),
        )
    };
    let text = match spec.shape {
        Shape::Deleted => match row
            .try_get::<_, Option<bool>>(0)
            .map_err(|e| bad_reply(&e))?
        {
            Some(true) => "true".to_string(),
            _ => return Err(not_found(&key)),
        },
        _ => match row
            .try_get::<_, Option<String>>(0)
            .map_err(|e| bad_reply(&e))?
        {
            Some(text) => text,
            None if spec.shape == Shape::Experiment => return Err(not_found(&key)),
            None => "[]".to_string(),
        },
    };
    // json_agg puts a line break between elements; a line break never occurs inside a
    // JSON string (it is escaped there), so dropping them leaves the same JSON on one line.
    let text = match spec.shape {
        Shape::List | Shape::Rows => text.replace('\n', ""),
        _ => text,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| bad_reply(&e))?;
    Ok((text, value))
}

impl ServerHandler for AmbaServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("amba-mcp", env!("CARGO_PKG_VERSION"))
                    .with_title("Amba experiments"),
            )
            .with_instructions(tools::INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(spec) = tools::spec(&request.name) else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool \"{}\"; the tools are: {}",
                    request.name,
                    tools::SPECS
                        .iter()
                        .map(|s| s.tool)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            ));
        };
        let result = match run(&self.db, spec, request.arguments.as_ref()).await {
            Ok((text, value)) => {
                let structured = if legacy_peer(&context) && !value.is_object() {
                    let mut wrapper = JsonObject::new();
                    wrapper.insert(spec.legacy_wrapper.to_string(), value);
                    Value::Object(wrapper)
                } else {
                    value
                };
                let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                result.structured_content = Some(structured);
                result
            }
            Err(err) => {
                let mut result = CallToolResult::error(vec![ContentBlock::text(err.text())]);
                result.structured_content = Some(err.to_json());
                result
            }
        };
        Ok(result.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("amba-mcp {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("amba-mcp: unknown argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }

    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            eprintln!(
                "amba-mcp: DATABASE_URL is not set. Set it to the PostgreSQL database that has \
                 the amba extension, e.g. DATABASE_URL=postgresql://user:password@localhost:5432/mydb \
                 (in an MCP client config: \"env\": {{\"DATABASE_URL\": \"...\"}})."
            );
            return ExitCode::from(2);
        }
    };
    let mut config: tokio_postgres::Config = match url.parse() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("amba-mcp: DATABASE_URL is not a valid PostgreSQL connection string: {e}");
            return ExitCode::from(2);
        }
    };
    if config.get_application_name().is_none() {
        config.application_name("amba-mcp");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }

    let db = Arc::new(Db::new(config));
    // Connect in the background, so a bad URL or a missing server shows on stderr at once;
    // tool calls (re)connect on demand either way.
    tokio::spawn({
        let db = db.clone();
        async move { db.warm_up().await }
    });

    let server = AmbaServer { db };
    let service = match server.serve(rmcp::transport::stdio()).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("amba-mcp: MCP session failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = service.waiting().await {
        eprintln!("amba-mcp: MCP session ended with an error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> JsonObject {
        match v {
            Value::Object(m) => m,
            _ => panic!(),
        }
    }

    #[test]
    fn statements_use_named_notation_and_only_supplied_arguments() {
        let spec = tools::spec("amba_experiments_update").unwrap();
        let a = args(serde_json::json!({"experiment_key": "k", "status": "paused", "name": null}));
        let bound = bind(spec, Some(&a)).unwrap();
        assert_eq!(
            statement(spec, &bound),
            "SELECT amba_update_experiment(experiment_key => $1::text, status => $2::text)::text"
        );
        let spec = tools::spec("amba_experiments_results").unwrap();
        let a = args(
            serde_json::json!({"experiment_key": "k", "conversion_event": "buy", "alpha": 0.1}),
        );
        let bound = bind(spec, Some(&a)).unwrap();
        assert_eq!(
            statement(spec, &bound),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM amba_results(experiment_key => $1::text, \
             conversion_event => $2::text, alpha => $3::float8) AS r"
        );
        let spec = tools::spec("amba_experiments_list").unwrap();
        assert_eq!(
            statement(spec, &bind(spec, None).unwrap()),
            "SELECT coalesce(json_agg(e), '[]'::json)::text FROM amba_list_experiments() AS e"
        );
    }

    #[test]
    fn bad_arguments_are_invalid_argument() {
        let spec = tools::spec("amba_experiments_create").unwrap();
        let err = bind(spec, Some(&args(serde_json::json!({"variants": []})))).unwrap_err();
        assert_eq!(err.code, "INVALID_ARGUMENT");
        assert!(err.message.contains("experiment_key"), "{}", err.message);
        let err = bind(
            spec,
            Some(&args(
                serde_json::json!({"experiment_key": 5, "variants": []}),
            )),
        )
        .unwrap_err();
        assert!(err.message.contains("must be a string"), "{}", err.message);
        let err = bind(
            spec,
            Some(&args(
                serde_json::json!({"experiment_key": "k", "variants": [], "key": "x"}),
            )),
        )
        .unwrap_err();
        assert!(
            err.message.contains("unknown argument \"key\""),
            "{}",
            err.message
        );
    }
}
