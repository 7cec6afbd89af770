//! amba-mcp: a stdio MCP server exposing the Amba experiments SQL API to coding agents.
//!
//! It connects to PostgreSQL with `DATABASE_URL` and calls the extension's `amba_*` SQL
//! functions (in the extension's schema, looked up on connecting); it never reimplements them.

mod db;
mod error;
mod tools;

use std::{io::Write, process::ExitCode, sync::Arc, time::Duration};

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

use db::{Db, Param};
use error::{Code, ToolError};
use tools::{Kind, Shape, Spec};

fn usage() -> String {
    let tools: Vec<&str> = tools::SPECS.iter().map(|s| s.tool).collect();
    format!(
        "\
amba-mcp: MCP server (stdio) for Amba experiments, A/B testing inside PostgreSQL.

Usage: DATABASE_URL=postgresql://user:password@host:5432/dbname amba-mcp

It speaks the Model Context Protocol on stdin/stdout (start it from an MCP client such as
Claude Desktop, Claude Code or Cursor) and logs to stderr.
Tools: {}.

Environment:
  DATABASE_URL  PostgreSQL connection URL or key=value string (required). The database must
                have the amba extension installed (CREATE EXTENSION amba); its functions are
                called in the extension's schema, whatever the user's search_path.
                application_name defaults to amba-mcp.

Options:
  -h, --help     print this help
  -V, --version  print the version",
        tools.join(", ")
    )
}

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
                // The SQL function has no default for it: NULL is passed by name.
                if arg.kind == Kind::TextOrNull {
                    bound.push((arg.name, Param::NullText));
                }
                continue;
            }
            Some(value) => value,
        };
        let param = match (arg.kind, value) {
            (Kind::Text | Kind::TextOrNull, Value::String(s)) => Param::Text(s.clone()),
            (Kind::Text | Kind::TextOrNull, other) => {
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
            (Kind::Integer, Value::Number(n)) => match integer(n) {
                Ok(i) => Param::Int(i),
                Err(why) => {
                    return Err(ToolError::invalid_argument(format!(
                        "argument \"{}\" {why}, not {n}",
                        arg.name
                    )))
                }
            },
            (Kind::BigInt, Value::Number(n)) => match big_integer(n) {
                Ok(i) => Param::BigInt(i),
                Err(why) => {
                    return Err(ToolError::invalid_argument(format!(
                        "argument \"{}\" {why}, not {n}",
                        arg.name
                    )))
                }
            },
            (Kind::Integer | Kind::BigInt, other) => {
                return Err(ToolError::invalid_argument(format!(
                    "argument \"{}\" must be a whole number, not {}",
                    arg.name,
                    type_name(other)
                )))
            }
            (Kind::TextArray, Value::Array(items)) => {
                let mut texts = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => texts.push(s.clone()),
                        other => {
                            return Err(ToolError::invalid_argument(format!(
                                "argument \"{}\" must be an array of strings; item {i} is {}",
                                arg.name,
                                type_name(other)
                            )))
                        }
                    }
                }
                Param::TextArray(texts)
            }
            (Kind::TextArray, other) => {
                return Err(ToolError::invalid_argument(format!(
                    "argument \"{}\" must be an array of strings, not {}",
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

/// A JSON number without a fraction that fits an `integer` (7 and 7.0 alike).
fn integer(n: &serde_json::Number) -> Result<i32, &'static str> {
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i as f64,
        (None, Some(f)) if f.fract() == 0.0 => f,
        _ => return Err("must be a whole number"),
    };
    if whole < i32::MIN as f64 || whole > i32::MAX as f64 {
        return Err("is out of range for an integer");
    }
    Ok(whole as i32)
}

/// A JSON number without a fraction that fits a `bigint`.
fn big_integer(n: &serde_json::Number) -> Result<i64, &'static str> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() != 0.0 => Err("must be a whole number"),
        // 2^63 itself does not fit; every f64 below it that is whole does.
        Some(f) if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) => {
            Ok(f as i64)
        }
        _ => Err("is out of range for a bigint"),
    }
}

/// The statement for `spec` with the supplied arguments in named notation, each cast to
/// the function's argument type, the function qualified with `schema` (the extension's
/// schema, already quoted).
fn statement(spec: &Spec, schema: &str, bound: &[(&'static str, Param)]) -> String {
    let call_args: Vec<String> = bound
        .iter()
        .enumerate()
        .map(|(i, (name, param))| format!("{name} => ${}{}", i + 1, param.cast()))
        .collect();
    let call = format!("{schema}.{}({})", spec.function, call_args.join(", "));
    match spec.shape {
        Shape::Object => format!("SELECT {call}::text"),
        Shape::Deleted | Shape::Bool => format!("SELECT {call}"),
        Shape::List => format!("SELECT coalesce(json_agg(e), '[]'::json)::text FROM {call} AS e"),
        Shape::Rows => format!("SELECT coalesce(json_agg(r), '[]'::json)::text FROM {call} AS r"),
    }
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
    let params: Vec<Param> = bound.iter().map(|(_, p)| p.clone()).collect();
    let row = db
        .query_one(
            |schema| statement(spec, schema, &bound),
            &params,
            spec.read_only(),
        )
        .await?;
    let bad_reply = |e: &dyn std::fmt::Display| {
        ToolError::new(
            Code::DatabaseError,
            format!("unexpected reply from {}: {e}", spec.function),
        )
    };
    let text = match spec.shape {
        Shape::Deleted | Shape::Bool => match row
            .try_get::<_, Option<bool>>(0)
            .map_err(|e| bad_reply(&e))?
        {
            Some(true) => "true".to_string(),
            Some(false) if spec.shape == Shape::Bool => "false".to_string(),
            _ => return Err(ToolError::experiment_not_found(&key)),
        },
        _ => match row
            .try_get::<_, Option<String>>(0)
            .map_err(|e| bad_reply(&e))?
        {
            Some(text) => text,
            None if spec.shape == Shape::Object => {
                return Err(ToolError::experiment_not_found(&key))
            }
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
            .with_instructions(tools::instructions())
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
                // (a closed pipe, as in `amba-mcp --help | head`, is not an error)
                let _ = writeln!(std::io::stdout(), "{}", usage());
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                let _ = writeln!(std::io::stdout(), "amba-mcp {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("amba-mcp: unknown argument {other:?}\n\n{}", usage());
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
    use serde_json::json;

    fn args(v: Value) -> JsonObject {
        match v {
            Value::Object(m) => m,
            _ => panic!(),
        }
    }

    fn sql(tool: &str, a: Value) -> String {
        let spec = tools::spec(tool).unwrap();
        statement(spec, "\"App-1\"", &bind(spec, Some(&args(a))).unwrap())
    }

    #[test]
    fn statements_use_named_notation_typed_parameters_and_the_extension_schema() {
        assert_eq!(
            sql(
                "amba_experiments_update",
                json!({"experiment_key": "k", "status": "paused", "name": null})
            ),
            "SELECT \"App-1\".amba_update_experiment(experiment_key => $1::text, \
             status => $2::text)::text"
        );
        assert_eq!(
            sql(
                "amba_experiments_create",
                json!({"experiment_key": "k", "variants": []})
            ),
            "SELECT \"App-1\".amba_create_experiment(experiment_key => $1::text, \
             variants => $2::text::jsonb)::text"
        );
        assert_eq!(
            sql(
                "amba_experiments_results",
                json!({"experiment_key": "k", "conversion_event": "buy", "alpha": 0.1})
            ),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_results(\
             experiment_key => $1::text, conversion_event => $2::text, \
             alpha => $3::double precision) AS r"
        );
        assert_eq!(
            sql("amba_experiments_list", json!({})),
            "SELECT coalesce(json_agg(e), '[]'::json)::text FROM \"App-1\".amba_list_experiments() AS e"
        );
        assert_eq!(
            sql(
                "amba_experiments_metric_results",
                json!({"experiment_key": "k", "event": "buy", "value_property": "amount",
                       "cap_percentile": 0.99, "cuped_days": 14})
            ),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_metric_results(\
             experiment_key => $1::text, event => $2::text, value_property => $3::text, \
             cap_percentile => $4::double precision, cuped_days => $5::integer) AS r"
        );
        assert_eq!(
            sql(
                "amba_experiments_results_daily",
                json!({"experiment_key": "k", "conversion_event": "buy", "alpha": 0.1})
            ),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_results_daily(\
             experiment_key => $1::text, conversion_event => $2::text, \
             alpha => $3::double precision) AS r"
        );
        assert_eq!(
            sql(
                "amba_overrides_set",
                json!({"experiment_key": "k", "user_id": "u", "variant": "b"})
            ),
            "SELECT \"App-1\".amba_set_override(experiment_key => $1::text, \
             user_id => $2::text, variant => $3::text)::text"
        );
        assert_eq!(
            sql(
                "amba_overrides_clear",
                json!({"experiment_key": "k", "user_id": "u"})
            ),
            "SELECT \"App-1\".amba_clear_override(experiment_key => $1::text, user_id => $2::text)"
        );
        assert_eq!(
            sql(
                "amba_experiments_create",
                json!({"experiment_key": "k", "variants": [], "layer": "checkout",
                       "layer_share": 0.3, "holdout": "q4"})
            ),
            "SELECT \"App-1\".amba_create_experiment(experiment_key => $1::text, \
             variants => $2::text::jsonb, layer => $3::text, \
             layer_share => $4::double precision, holdout => $5::text)::text"
        );
        assert_eq!(
            sql(
                "amba_experiments_update",
                json!({"experiment_key": "k", "holdout": ""})
            ),
            "SELECT \"App-1\".amba_update_experiment(experiment_key => $1::text, \
             holdout => $2::text)::text"
        );
        assert_eq!(
            sql("amba_layers_list", json!({})),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_list_layers() AS r"
        );
        assert_eq!(
            sql(
                "amba_experiments_create",
                json!({"experiment_key": "k", "variants": [], "guardrails": [],
                       "dimensions": ["country", "device.type"], "bandit": {}})
            ),
            "SELECT \"App-1\".amba_create_experiment(experiment_key => $1::text, \
             variants => $2::text::jsonb, guardrails => $3::text::jsonb, \
             dimensions => $4::text[], bandit => $5::text::jsonb)::text"
        );
        assert_eq!(
            sql(
                "amba_experiments_update",
                json!({"experiment_key": "k", "dimensions": [], "guardrails": null})
            ),
            "SELECT \"App-1\".amba_update_experiment(experiment_key => $1::text, \
             dimensions => $2::text[])::text"
        );
        assert_eq!(
            sql("amba_guardrails_check", json!({})),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_check_guardrails() AS r"
        );
        assert_eq!(
            sql("amba_guardrails_check", json!({"experiment_key": "k"})),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_check_guardrails(\
             experiment_key => $1::text) AS r"
        );
        // The properties have no SQL default: omitted, they are passed as NULL.
        assert_eq!(
            sql(
                "amba_experiments_ratio_results",
                json!({"experiment_key": "k", "numerator_event": "buy",
                       "numerator_property": "amount", "denominator_event": "visit"})
            ),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_ratio_results(\
             experiment_key => $1::text, numerator_event => $2::text, \
             numerator_property => $3::text, denominator_event => $4::text, \
             denominator_property => $5::text) AS r"
        );
        assert_eq!(
            sql(
                "amba_experiments_quantile_results",
                json!({"experiment_key": "k", "event": "load", "value_property": "ms",
                       "quantile": 0.9, "alpha": 0.1})
            ),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_quantile_results(\
             experiment_key => $1::text, event => $2::text, value_property => $3::text, \
             quantile => $4::double precision, alpha => $5::double precision) AS r"
        );
        assert_eq!(
            sql(
                "amba_experiments_results_by",
                json!({"experiment_key": "k", "conversion_event": "buy", "dimension": "country"})
            ),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_results_by(\
             experiment_key => $1::text, conversion_event => $2::text, dimension => $3::text) AS r"
        );
        assert_eq!(
            sql(
                "amba_experiments_bandit_update",
                json!({"experiment_key": "k", "seed": 42})
            ),
            "SELECT \"App-1\".amba_bandit_update(experiment_key => $1::text, seed => $2::bigint)::text"
        );
        assert_eq!(
            sql(
                "amba_experiments_bandit_results",
                json!({"experiment_key": "k"})
            ),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_bandit_results(\
             experiment_key => $1::text) AS r"
        );
        assert_eq!(
            sql("amba_overrides_list", json!({"experiment_key": "k"})),
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM \"App-1\".amba_list_overrides(\
             experiment_key => $1::text) AS r"
        );
    }

    #[test]
    fn parameters_carry_the_values() {
        let spec = tools::spec("amba_experiments_metric_results").unwrap();
        let bound = bind(
            spec,
            Some(&args(
                json!({"experiment_key": "k", "event": "e", "cap": 100,
                              "cuped_days": 7.0, "alpha": 0.1}),
            )),
        )
        .unwrap();
        let params: Vec<&Param> = bound.iter().map(|(_, p)| p).collect();
        assert_eq!(
            params,
            [
                &Param::Text("k".into()),
                &Param::Text("e".into()),
                &Param::Float(0.1),
                &Param::Float(100.0),
                &Param::Int(7)
            ]
        );
    }

    #[test]
    fn new_kinds_carry_their_values() {
        let params = |tool: &str, a: Value| -> Vec<Param> {
            let spec = tools::spec(tool).unwrap();
            bind(spec, Some(&args(a)))
                .unwrap()
                .into_iter()
                .map(|(_, p)| p)
                .collect()
        };
        assert_eq!(
            params(
                "amba_experiments_ratio_results",
                json!({"experiment_key": "k", "numerator_event": "buy",
                       "denominator_event": "visit", "denominator_property": null})
            ),
            [
                Param::Text("k".into()),
                Param::Text("buy".into()),
                Param::NullText,
                Param::Text("visit".into()),
                Param::NullText
            ]
        );
        assert_eq!(
            params(
                "amba_experiments_create",
                json!({"experiment_key": "k", "variants": [], "dimensions": ["a", "b.c"],
                       "bandit": {"event": "buy", "kind": "conversion"}})
            ),
            [
                Param::Text("k".into()),
                Param::Json("[]".into()),
                Param::TextArray(vec!["a".into(), "b.c".into()]),
                Param::Json(r#"{"event":"buy","kind":"conversion"}"#.into())
            ]
        );
        for (seed, want) in [
            (json!(7), 7_i64),
            (json!(-7.0), -7),
            (json!(9_007_199_254_740_993_i64), 9_007_199_254_740_993),
            (json!(i64::MIN), i64::MIN),
        ] {
            assert_eq!(
                params(
                    "amba_experiments_bandit_update",
                    json!({"experiment_key": "k", "seed": seed})
                ),
                [Param::Text("k".into()), Param::BigInt(want)]
            );
        }
    }

    #[test]
    fn bad_arguments_are_invalid_argument() {
        let err_of = |tool: &str, a: Value| {
            let spec = tools::spec(tool).unwrap();
            let err = bind(spec, Some(&args(a))).unwrap_err();
            assert_eq!(err.code, Code::INVALID_ARGUMENT);
            assert!(
                err.text().starts_with("INVALID_ARGUMENT: "),
                "{}",
                err.text()
            );
            err.message
        };
        let m = err_of("amba_experiments_create", json!({"variants": []}));
        assert!(m.contains("experiment_key"), "{m}");
        let m = err_of(
            "amba_experiments_create",
            json!({"experiment_key": 5, "variants": []}),
        );
        assert!(m.contains("must be a string"), "{m}");
        let m = err_of(
            "amba_experiments_create",
            json!({"experiment_key": "k", "variants": [], "key": "x"}),
        );
        assert!(m.contains("unknown argument \"key\""), "{m}");
        for (days, why) in [
            (json!(1.5), "must be a whole number, not 1.5"),
            (json!(1e12), "is out of range for an integer"),
            (json!(-3_000_000_000_i64), "is out of range for an integer"),
        ] {
            let m = err_of(
                "amba_experiments_metric_results",
                json!({"experiment_key": "k", "event": "e", "cuped_days": days}),
            );
            assert!(m.contains(why), "{m}");
        }
        let m = err_of(
            "amba_experiments_metric_results",
            json!({"experiment_key": "k", "event": "e", "cuped_days": "7"}),
        );
        assert!(m.contains("must be a whole number, not a string"), "{m}");
        let m = err_of(
            "amba_experiments_metric_results",
            json!({"experiment_key": "k", "event": "e", "cap": "100"}),
        );
        assert!(m.contains("must be a number"), "{m}");
        // layer and layer_share are chosen at create: update does not take them.
        let m = err_of(
            "amba_experiments_update",
            json!({"experiment_key": "k", "layer": "checkout"}),
        );
        assert!(m.contains("unknown argument \"layer\""), "{m}");
        let m = err_of(
            "amba_experiments_create",
            json!({"experiment_key": "k", "variants": [], "layer_share": "0.3"}),
        );
        assert!(m.contains("must be a number"), "{m}");
        for (dimensions, why) in [
            (
                json!("country"),
                "must be an array of strings, not a string",
            ),
            (json!(["country", 3]), "item 1 is a number"),
            (json!([null]), "item 0 is null"),
        ] {
            let m = err_of(
                "amba_experiments_update",
                json!({"experiment_key": "k", "dimensions": dimensions}),
            );
            assert!(m.contains(why), "{m}");
        }
        for (seed, why) in [
            (json!(1.5), "must be a whole number, not 1.5"),
            (json!(1e19), "is out of range for a bigint"),
            (json!(u64::MAX), "is out of range for a bigint"),
            (json!("42"), "must be a whole number, not a string"),
        ] {
            let m = err_of(
                "amba_experiments_bandit_update",
                json!({"experiment_key": "k", "seed": seed}),
            );
            assert!(m.contains(why), "{m}");
        }
        let m = err_of(
            "amba_experiments_ratio_results",
            json!({"experiment_key": "k", "numerator_event": "a", "denominator_event": "b",
                   "numerator_property": 5}),
        );
        assert!(m.contains("must be a string, not a number"), "{m}");
        let m = err_of(
            "amba_experiments_ratio_results",
            json!({"experiment_key": "k", "numerator_event": "a"}),
        );
        assert!(
            m.contains("missing required argument \"denominator_event\""),
            "{m}"
        );
        let m = err_of(
            "amba_experiments_quantile_results",
            json!({"experiment_key": "k", "event": "a", "value_property": "v"}),
        );
        assert!(m.contains("missing required argument \"quantile\""), "{m}");
        let m = err_of(
            "amba_overrides_set",
            json!({"experiment_key": "k", "user_id": "u"}),
        );
        assert!(m.contains("missing required argument \"variant\""), "{m}");
    }
}
