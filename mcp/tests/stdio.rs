//! End-to-end tests of the amba-mcp binary: spawn it, speak newline-delimited JSON-RPC
//! (MCP stdio transport) over its stdin/stdout, against a real PostgreSQL with the amba
//! extension installed (DATABASE_URL, default postgresql://postgres@localhost:28815/amba_test).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{channel, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use postgres::{Client, NoTls};
use serde_json::{json, Value};

const PROTOCOL_VERSION: &str = "2025-06-18";
const TIMEOUT: Duration = Duration::from_secs(60);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgresql://postgres@localhost:28815/amba_test".to_string())
}

/// A key unique to this test process and test.
fn key(name: &str) -> String {
    format!("mcp{}_{name}", std::process::id())
}

fn sql() -> Client {
    Client::connect(&database_url(), NoTls).expect("connect to DATABASE_URL")
}

struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Value>,
    next_id: u64,
}

impl Server {
    fn start() -> Server {
        Self::start_with_url(&database_url())
    }

    fn start_with_url(url: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_amba-mcp"))
            .env("DATABASE_URL", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn amba-mcp");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("server wrote a non-JSON line ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut server = Server {
            child,
            stdin,
            rx,
            next_id: 1,
        };
        let init = server.request(
            "initialize",
            json!({
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "amba-mcp-test", "version": "0"}
            }),
        );
        let result = &init["result"];
        assert_eq!(result["serverInfo"]["name"], "amba-mcp", "{init}");
        assert!(result["capabilities"]["tools"].is_object(), "{init}");
        assert!(result["instructions"]
            .as_str()
            .unwrap_or("")
            .contains("amba_assign"));
        server.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        server
    }

    fn send(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{message}").expect("write to amba-mcp");
        stdin.flush().unwrap();
    }

    /// Send a request and wait for the response with its id (the whole JSON-RPC message).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(msg) if msg["id"] == json!(id) => {
                    assert_eq!(msg["jsonrpc"], "2.0");
                    return msg;
                }
                Ok(_other) => continue, // a notification or a server request: ignore
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no answer to {method} within {TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "amba-mcp closed stdout while waiting for {method}: {:?}",
                        self.child.try_wait()
                    )
                }
            }
        }
    }

    /// tools/call; returns the CallToolResult.
    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let msg = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        assert!(
            msg.get("error").is_none(),
            "{tool} gave a protocol error: {msg}"
        );
        msg["result"].clone()
    }

    /// A call that must succeed; returns its structured content, after checking that the
    /// text content holds the same JSON.
    fn ok(&mut self, tool: &str, arguments: Value) -> Value {
        self.ok_text(tool, arguments).0
    }

    /// Like `ok`, also returning the text content (the SQL function's JSON verbatim, so
    /// with the columns in the function's order).
    fn ok_text(&mut self, tool: &str, arguments: Value) -> (Value, String) {
        let result = self.call(tool, arguments.clone());
        assert_eq!(
            result["isError"],
            json!(false),
            "{tool} {arguments} failed: {result}"
        );
        let text = result["content"][0]["text"].as_str().expect("text content");
        let from_text: Value = serde_json::from_str(text).expect("text content is JSON");
        let structured = result["structuredContent"].clone();
        assert!(
            structured.is_object(),
            "structuredContent is an object: {result}"
        );
        // Arrays (and the boolean of delete) come wrapped in an object for clients on
        // protocol versions before 2026-07-28; the text is always the bare SQL JSON.
        let unwrapped = match (&from_text, structured.as_object()) {
            (Value::Object(_), _) => structured.clone(),
            (_, Some(obj)) if obj.len() == 1 => obj.values().next().unwrap().clone(),
            _ => panic!("unexpected structuredContent {structured} for {text}"),
        };
        assert_eq!(unwrapped, from_text, "structured and text content differ");
        (from_text, text.to_string())
    }

    /// A call that must fail with `code`; returns the error text.
    fn err(&mut self, tool: &str, arguments: Value, code: &str) -> String {
        let result = self.call(tool, arguments.clone());
        assert_eq!(
            result["isError"],
            json!(true),
            "{tool} {arguments} should fail: {result}"
        );
        let text = result["content"][0]["text"]
            .as_str()
            .expect("text content")
            .to_string();
        assert!(
            text.starts_with(&format!("{code}: ")),
            "{tool} {arguments}: expected {code}, got: {text}"
        );
        assert_eq!(result["structuredContent"]["code"], json!(code), "{result}");
        text
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Server {
    /// Closing stdin ends the MCP session: the server exits, which closes its stdout and
    /// so ends the reader thread (the channel disconnects). Wait for exactly that, bounded
    /// only in case the server hangs, then reap the process.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    eprintln!("amba-mcp did not exit within 10 s of stdin closing; killing it");
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        let _ = self.child.wait();
    }
}

/// Deletes the experiments at the end of a test, even a failing one.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut db) = Client::connect(&database_url(), NoTls) {
            for k in &self.0 {
                let _ = db.execute("SELECT amba_delete_experiment($1::text)", &[k]);
            }
        }
    }
}

// The contract (SPEC §3, §3b-§3e): each table function's columns, in order.
// Written here once; the tests check the tool descriptions and the rows against them.
const RESULTS_COLUMNS: &[&str] = &[
    "variant",
    "is_control",
    "assigned_count",
    "exposed_count",
    "converted_count",
    "conversion_rate",
    "z_score",
    "p_value",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "chance_to_win",
    "p_value_holm",
    "sequential_p_value",
    "srm_p_value",
];
const METRIC_COLUMNS: &[&str] = &[
    "variant",
    "is_control",
    "exposed_count",
    "mean",
    "stddev",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_value_holm",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "cuped_theta",
];
const DAILY_COLUMNS: &[&str] = &[
    "day",
    "variant",
    "is_control",
    "exposed_count",
    "converted_count",
    "conversion_rate",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "p_value",
    "sequential_p_value",
    "lift_cs_low",
    "lift_cs_high",
];
const OVERRIDE_COLUMNS: &[&str] = &["user_id", "variant", "set_at"];
// SPEC §12-§14 (0.3.0).
const GUARDRAIL_COLUMNS: &[&str] = &[
    "experiment_key",
    "guardrail",
    "variant",
    "lift",
    "cs_low",
    "cs_high",
    "tripped",
    "paused",
];
const RATIO_COLUMNS: &[&str] = &[
    "variant",
    "is_control",
    "exposed_count",
    "numerator_sum",
    "denominator_sum",
    "ratio",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_value_holm",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
];
const QUANTILE_COLUMNS: &[&str] = &[
    "variant",
    "is_control",
    "exposed_count",
    "event_count",
    "quantile_value",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_value_holm",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
];
const RESULTS_BY_COLUMNS: &[&str] = &[
    "dimension_value",
    "variant",
    "is_control",
    "assigned_count",
    "exposed_count",
    "converted_count",
    "conversion_rate",
    "z_score",
    "p_value",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "chance_to_win",
    "p_value_holm",
    "sequential_p_value",
    "srm_p_value",
];
const BANDIT_COLUMNS: &[&str] = &[
    "variant",
    "is_control",
    "exposed_count",
    "mean",
    "ci_low",
    "ci_high",
    "best_arm_probability",
    "weight",
];
const LAYER_COLUMNS: &[&str] = &[
    "layer",
    "experiment_key",
    "status",
    "range_start",
    "range_end",
];

/// A tool of SPEC §7: (name, arguments in SQL order, required arguments,
/// columns of a table result).
type ToolContract = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const TOOLS: &[ToolContract] = &[
    (
        "amba_experiments_create",
        &[
            "experiment_key",
            "variants",
            "name",
            "description",
            "status",
            "targeting",
            "coverage",
            "layer",
            "layer_share",
            "holdout",
            "guardrails",
            "dimensions",
            "bandit",
        ],
        &["experiment_key", "variants"],
        &[],
    ),
    ("amba_experiments_list", &[], &[], &[]),
    (
        "amba_experiments_get",
        &["experiment_key"],
        &["experiment_key"],
        &[],
    ),
    (
        "amba_experiments_update",
        &[
            "experiment_key",
            "variants",
            "status",
            "name",
            "description",
            "targeting",
            "coverage",
            "holdout",
            "guardrails",
            "dimensions",
            "bandit",
        ],
        &["experiment_key"],
        &[],
    ),
    (
        "amba_experiments_delete",
        &["experiment_key"],
        &["experiment_key"],
        &[],
    ),
    ("amba_layers_list", &[], &[], LAYER_COLUMNS),
    (
        "amba_experiments_results",
        &["experiment_key", "conversion_event", "alpha"],
        &["experiment_key", "conversion_event"],
        RESULTS_COLUMNS,
    ),
    (
        "amba_experiments_metric_results",
        &[
            "experiment_key",
            "event",
            "value_property",
            "alpha",
            "cap",
            "cap_percentile",
            "cuped_days",
        ],
        &["experiment_key", "event"],
        METRIC_COLUMNS,
    ),
    (
        "amba_experiments_results_daily",
        &["experiment_key", "conversion_event", "alpha"],
        &["experiment_key", "conversion_event"],
        DAILY_COLUMNS,
    ),
    (
        "amba_experiments_ratio_results",
        &[
            "experiment_key",
            "numerator_event",
            "numerator_property",
            "denominator_event",
            "denominator_property",
            "alpha",
        ],
        &["experiment_key", "numerator_event", "denominator_event"],
        RATIO_COLUMNS,
    ),
    (
        "amba_experiments_quantile_results",
        &[
            "experiment_key",
            "event",
            "value_property",
            "quantile",
            "alpha",
        ],
        &["experiment_key", "event", "value_property", "quantile"],
        QUANTILE_COLUMNS,
    ),
    (
        "amba_experiments_results_by",
        &["experiment_key", "conversion_event", "dimension", "alpha"],
        &["experiment_key", "conversion_event", "dimension"],
        RESULTS_BY_COLUMNS,
    ),
    (
        "amba_guardrails_check",
        &["experiment_key"],
        &[],
        GUARDRAIL_COLUMNS,
    ),
    (
        "amba_experiments_bandit_update",
        &["experiment_key", "seed"],
        &["experiment_key"],
        &[],
    ),
    (
        "amba_experiments_bandit_results",
        &["experiment_key"],
        &["experiment_key"],
        BANDIT_COLUMNS,
    ),
    (
        "amba_overrides_set",
        &["experiment_key", "user_id", "variant"],
        &["experiment_key", "user_id", "variant"],
        &[],
    ),
    (
        "amba_overrides_clear",
        &["experiment_key", "user_id"],
        &["experiment_key", "user_id"],
        &[],
    ),
    (
        "amba_overrides_list",
        &["experiment_key"],
        &["experiment_key"],
        OVERRIDE_COLUMNS,
    ),
];

/// The keys of each object of a JSON array, in the order of the text.
fn ordered_keys(text: &str) -> Vec<Vec<String>> {
    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(k) = map.next_key::<String>()? {
                        map.next_value::<IgnoredAny>()?;
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Vec<Keys>>(text)
        .unwrap_or_else(|e| panic!("not an array of objects ({e}): {text}"))
        .into_iter()
        .map(|k| k.0)
        .collect()
}

/// Every row carries exactly the contract's columns, in the contract's order.
fn assert_columns(text: &str, columns: &[&str]) {
    for keys in ordered_keys(text) {
        assert_eq!(keys, columns, "columns of {text}");
    }
}

/// `SELECT json_agg(...) FROM call`, straight from SQL, to compare a tool's result with.
fn sql_rows(db: &mut Client, call: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Value {
    let text: String = db
        .query_one(
            &format!("SELECT coalesce(json_agg(r), '[]'::json)::text FROM {call} r"),
            params,
        )
        .unwrap_or_else(|e| panic!("{call}: {e}"))
        .get(0);
    serde_json::from_str(&text).unwrap()
}

#[test]
fn lists_every_tool_with_schemas() {
    let mut server = Server::start();
    let msg = server.request("tools/list", json!({}));
    let tools = msg["result"]["tools"].as_array().expect("tools").clone();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    let mut want: Vec<&str> = TOOLS.iter().map(|t| t.0).collect();
    want.sort();
    assert_eq!(names, want);
    for (name, props, required, columns) in TOOLS {
        let tool = tools.iter().find(|t| t["name"] == *name).unwrap();
        let schema = &tool["inputSchema"];
        assert_eq!(schema["type"], "object", "{name}");
        assert_eq!(schema["additionalProperties"], false, "{name}");
        let mut got: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = props.to_vec();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name} properties");
        let got_required: Vec<&str> = schema["required"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(got_required, required.to_vec(), "{name} required");
        for prop in schema["properties"].as_object().unwrap().values() {
            assert!(prop["description"].is_string(), "{name}: {prop}");
            assert!(prop["type"].is_string(), "{name}: {prop}");
        }
        let description = tool["description"].as_str().unwrap();
        assert!(description.len() > 100, "{name} has a real description");
        for column in *columns {
            assert!(
                description.contains(column),
                "{name}'s description explains {column}"
            );
        }
        assert!(tool["annotations"]["readOnlyHint"].is_boolean(), "{tool}");
    }
    let property = |tool: &str, arg: &str| -> Value {
        let tool = tools.iter().find(|t| t["name"] == tool).unwrap();
        tool["inputSchema"]["properties"][arg].clone()
    };
    let variants = property("amba_experiments_create", "variants");
    assert_eq!(variants["type"], "array");
    assert_eq!(variants["items"]["properties"]["weight"]["type"], "number");
    assert_eq!(variants["items"]["properties"]["weight"]["minimum"], 0);
    assert!(variants["description"]
        .as_str()
        .unwrap()
        .contains("control"));
    assert_eq!(
        property("amba_experiments_create", "status")["enum"],
        json!(["draft", "active", "paused", "ended"])
    );
    assert_eq!(
        property("amba_experiments_results", "alpha")["type"],
        "number"
    );
    for tool in ["amba_experiments_create", "amba_experiments_update"] {
        let targeting = property(tool, "targeting");
        assert_eq!(targeting["type"], "object", "{tool}");
        let text = targeting["description"].as_str().unwrap();
        assert!(
            text.contains("GrowthBook") && text.contains("amba_assign") && text.contains("$in"),
            "{tool}: {text}"
        );
        let coverage = property(tool, "coverage");
        assert_eq!(coverage["type"], "number", "{tool}");
        assert_eq!(
            (coverage["minimum"].clone(), coverage["maximum"].clone()),
            (json!(0), json!(1)),
            "{tool}"
        );
    }
    assert!(
        property("amba_experiments_update", "targeting")["description"]
            .as_str()
            .unwrap()
            .contains("{} removes it")
    );
    // Layers and holdouts (SPEC §11): layer and layer_share at create only, holdout both.
    let layer = property("amba_experiments_create", "layer");
    assert_eq!(layer["type"], "string");
    assert_eq!(layer["pattern"], "^[A-Za-z0-9_.:-]+$");
    let text = layer["description"].as_str().unwrap();
    assert!(
        text.contains("mutually exclusive")
            && text.contains("lowest free gap")
            && text.contains("ended")
            && text.contains("INVALID_ARGUMENT"),
        "{text}"
    );
    let share = property("amba_experiments_create", "layer_share");
    assert_eq!(share["type"], "number");
    assert_eq!(
        (share["exclusiveMinimum"].clone(), share["maximum"].clone()),
        (json!(0), json!(1))
    );
    for tool in ["amba_experiments_create", "amba_experiments_update"] {
        let holdout = property(tool, "holdout");
        assert_eq!(holdout["type"], "string", "{tool}");
        let text = holdout["description"].as_str().unwrap();
        assert!(
            text.contains("control") && text.contains("held out") && text.contains("deleted"),
            "{tool}: {text}"
        );
    }
    assert!(
        property("amba_experiments_update", "holdout")["description"]
            .as_str()
            .unwrap()
            .contains("removes the holdout")
    );
    assert!(property("amba_experiments_update", "layer").is_null());
    assert!(property("amba_experiments_update", "layer_share").is_null());
    assert_eq!(
        property("amba_experiments_metric_results", "cuped_days")["type"],
        "integer"
    );
    assert_eq!(
        property("amba_experiments_metric_results", "cap_percentile")["type"],
        "number"
    );
    let doc = |tool: &str| -> String {
        let tool = tools.iter().find(|t| t["name"] == tool).unwrap();
        tool["description"].as_str().unwrap().to_string()
    };
    let update = doc("amba_experiments_update");
    assert!(
        update.contains("EXPERIMENT_INACTIVE") && update.contains("never move"),
        "{update}"
    );
    assert!(doc("amba_experiments_results").contains("0.001"));
    for tool in [
        "amba_experiments_create",
        "amba_experiments_get",
        "amba_experiments_list",
        "amba_experiments_update",
    ] {
        let text = doc(tool);
        assert!(
            text.contains("targeting") && text.contains("coverage"),
            "{tool} tells about targeting and coverage: {text}"
        );
        assert!(
            text.contains("layer") && text.contains("holdout"),
            "{tool} tells about layers and holdouts: {text}"
        );
    }
    let layers = doc("amba_layers_list");
    assert!(
        layers.contains("never share a user")
            && layers.contains("lowest free gap")
            && layers.contains("ended")
            && layers.contains("experiment_key null"),
        "{layers}"
    );
    assert!(doc("amba_experiments_delete").contains("holdout"));
    // Guardrails, dimensions and bandits (SPEC §12-§14) on create and update.
    for tool in ["amba_experiments_create", "amba_experiments_update"] {
        let guardrails = property(tool, "guardrails");
        assert_eq!(guardrails["type"], "array", "{tool}");
        assert_eq!(guardrails["maxItems"], 10, "{tool}");
        assert_eq!(
            guardrails["items"]["properties"]["bad"]["enum"],
            json!(["decrease", "increase"]),
            "{tool}"
        );
        let text = guardrails["description"].as_str().unwrap();
        assert!(
            text.contains("always-valid")
                && text.contains("amba_guardrails_check")
                && text.contains("tolerance")
                && text.contains("paused"),
            "{tool}: {text}"
        );
        let dimensions = property(tool, "dimensions");
        assert_eq!(dimensions["type"], "array", "{tool}");
        assert_eq!(dimensions["items"]["type"], "string", "{tool}");
        assert_eq!(dimensions["maxItems"], 5, "{tool}");
        assert!(dimensions["description"]
            .as_str()
            .unwrap()
            .contains("amba_experiments_results_by"));
        let bandit = property(tool, "bandit");
        assert_eq!(bandit["type"], "object", "{tool}");
        let text = bandit["description"].as_str().unwrap();
        assert!(
            text.contains("top-two Thompson")
                && text.contains("min_weight")
                && text.contains("min_users"),
            "{tool}: {text}"
        );
    }
    assert!(
        property("amba_experiments_update", "guardrails")["description"]
            .as_str()
            .unwrap()
            .contains("[] removes")
    );
    assert!(property("amba_experiments_update", "bandit")["description"]
        .as_str()
        .unwrap()
        .contains("{} makes it an ordinary"));
    assert_eq!(
        property("amba_experiments_bandit_update", "seed")["type"],
        "integer"
    );
    assert_eq!(
        property("amba_experiments_quantile_results", "quantile")["type"],
        "number"
    );
    let guardrails = doc("amba_guardrails_check");
    assert!(
        guardrails.contains("always-valid")
            && guardrails.contains("auto pause")
            && guardrails.contains("auto_pause")
            && guardrails.contains("pg_cron"),
        "{guardrails}"
    );
    assert!(doc("amba_experiments_ratio_results").contains("delta method"));
    assert!(doc("amba_experiments_quantile_results").contains("quantile test"));
    assert!(doc("amba_experiments_results_by").contains("Holm over the call"));
    let bandit = doc("amba_experiments_bandit_update");
    assert!(
        bandit.contains("top-two Thompson")
            && bandit.contains("floor")
            && bandit.contains("min_users"),
        "{bandit}"
    );
    let annotations = |tool: &str| -> Value {
        tools.iter().find(|t| t["name"] == tool).unwrap()["annotations"].clone()
    };
    for tool in [
        "amba_experiments_ratio_results",
        "amba_experiments_quantile_results",
        "amba_experiments_results_by",
        "amba_experiments_bandit_results",
    ] {
        assert_eq!(annotations(tool)["readOnlyHint"], true, "{tool}");
    }
    // The check and the bandit update write (a pause, a weight version).
    for tool in ["amba_guardrails_check", "amba_experiments_bandit_update"] {
        assert_eq!(annotations(tool)["readOnlyHint"], false, "{tool}");
    }
    assert_eq!(
        tools
            .iter()
            .find(|t| t["name"] == "amba_layers_list")
            .unwrap()["annotations"]["readOnlyHint"],
        true
    );
    for tool in [
        "amba_overrides_set",
        "amba_overrides_clear",
        "amba_overrides_list",
        "amba_experiments_metric_results",
        "amba_experiments_results_daily",
        "amba_experiments_ratio_results",
        "amba_experiments_quantile_results",
        "amba_experiments_results_by",
        "amba_guardrails_check",
        "amba_experiments_bandit_update",
        "amba_experiments_bandit_results",
    ] {
        assert!(doc(tool).contains("EXPERIMENT_NOT_FOUND"), "{tool}");
    }
    assert!(server.alive());
}

#[test]
fn every_tool_end_to_end() {
    let k = key("lifecycle");
    let _cleanup = Cleanup(vec![k.clone()]);
    let event = format!("purchase_{}", std::process::id());
    let user = |i: usize| format!("mcp{}-user-{i}", std::process::id());
    let mut db = sql();
    let mut server = Server::start();

    // create
    let created = server.ok(
        "amba_experiments_create",
        json!({
            "experiment_key": k,
            "variants": [{"key": "control", "weight": 50}, {"key": "treatment", "weight": 50}],
            "name": "Checkout button",
            "description": "green vs blue"
        }),
    );
    assert_eq!(created["key"], json!(k));
    assert_eq!(created["name"], "Checkout button");
    assert_eq!(created["description"], "green vs blue");
    assert_eq!(created["status"], "active");
    assert_eq!(created["variants"][0]["key"], "control");
    assert_eq!(created["variants"][1]["key"], "treatment");
    assert_eq!(created["variants"][1]["weight"].as_f64(), Some(50.0));
    assert!(created.get("created_at").is_some() && created.get("updated_at").is_some());

    // get: exactly what the SQL function returns
    let got = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    let direct: String = db
        .query_one("SELECT amba_get_experiment($1::text)::text", &[&k])
        .unwrap()
        .get(0);
    assert_eq!(got, serde_json::from_str::<Value>(&direct).unwrap());
    assert_eq!(got, created);

    // list
    let listed = server.ok("amba_experiments_list", json!({}));
    let listed = listed.as_array().expect("list is an array");
    let mine: Vec<&Value> = listed.iter().filter(|e| e["key"] == json!(k)).collect();
    assert_eq!(mine.len(), 1, "the experiment is listed once");
    assert_eq!(*mine[0], got);

    // users assigned before re-weighting keep their variant
    let early: Vec<(String, String)> = (0..20)
        .map(|i| {
            let u = user(i);
            let v: String = db
                .query_one("SELECT amba_assign($1::text, $2::text)", &[&k, &u])
                .unwrap()
                .get(0);
            (u, v)
        })
        .collect();

    // update: re-weight (fractional weights pass through as JSON numbers)
    let reweighted = server.ok(
        "amba_experiments_update",
        json!({
            "experiment_key": k,
            "variants": [{"key": "control", "weight": 0.25}, {"key": "treatment", "weight": 0.75}]
        }),
    );
    assert_eq!(reweighted["variants"][0]["weight"].as_f64(), Some(0.25));
    assert_eq!(reweighted["variants"][1]["weight"].as_f64(), Some(0.75));
    assert_eq!(reweighted["status"], "active");
    assert_eq!(
        reweighted["name"], "Checkout button",
        "omitted arguments stay unchanged"
    );
    for (u, v) in &early {
        let now: String = db
            .query_one("SELECT amba_assign($1::text, $2::text)", &[&k, u])
            .unwrap()
            .get(0);
        assert_eq!(&now, v, "existing assignments never move");
    }

    // data: 200 users assigned and exposed, a quarter of them convert
    let mut tx = db.transaction().unwrap();
    for i in 0..200 {
        let u = user(i);
        tx.execute("SELECT amba_assign($1::text, $2::text)", &[&k, &u])
            .unwrap();
        tx.execute("SELECT amba_expose($1::text, $2::text)", &[&k, &u])
            .unwrap();
        if i % 4 == 0 || (i % 7 == 0) {
            tx.execute("SELECT amba_track($1::text, $2::text)", &[&u, &event])
                .unwrap();
        }
    }
    tx.commit().unwrap();

    // pause: assigned users keep their variant, new users get EXPERIMENT_INACTIVE
    let paused = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "status": "paused", "name": null}),
    );
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["name"], "Checkout button", "null means unchanged");
    let again: String = db
        .query_one("SELECT amba_assign($1::text, $2::text)", &[&k, &early[0].0])
        .unwrap()
        .get(0);
    assert_eq!(again, early[0].1);
    let new_user = db.query_one(
        "SELECT amba_assign($1::text, $2::text)",
        &[&k, &user(10_000)],
    );
    let e = new_user.expect_err("a new user on a paused experiment");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.starts_with("EXPERIMENT_INACTIVE:"), "{message}");

    // results: the same JSON as the SQL function
    let results = server.ok(
        "amba_experiments_results",
        json!({"experiment_key": k, "conversion_event": event}),
    );
    let direct: String = db
        .query_one(
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM amba_results($1::text, $2::text) r",
            &[&k, &event],
        )
        .unwrap()
        .get(0);
    assert_eq!(results, serde_json::from_str::<Value>(&direct).unwrap());
    let rows = results.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["variant"], "control");
    assert_eq!(rows[0]["is_control"], true);
    assert_eq!(rows[1]["variant"], "treatment");
    assert_eq!(rows[1]["is_control"], false);
    let (_, text) = server.ok_text(
        "amba_experiments_results",
        json!({"experiment_key": k, "conversion_event": event}),
    );
    assert_columns(&text, RESULTS_COLUMNS);
    let assigned: i64 = rows
        .iter()
        .map(|r| r["assigned_count"].as_i64().unwrap())
        .sum();
    let exposed: i64 = rows
        .iter()
        .map(|r| r["exposed_count"].as_i64().unwrap())
        .sum();
    let converted: i64 = rows
        .iter()
        .map(|r| r["converted_count"].as_i64().unwrap())
        .sum();
    assert_eq!((assigned, exposed), (200, 200));
    let expected_conversions = (0..200).filter(|i| i % 4 == 0 || i % 7 == 0).count() as i64;
    assert_eq!(converted, expected_conversions);
    for row in rows {
        let rate =
            row["converted_count"].as_f64().unwrap() / row["exposed_count"].as_f64().unwrap();
        assert!((row["conversion_rate"].as_f64().unwrap() - rate).abs() < 1e-12);
    }
    assert!(
        rows[0]["z_score"].is_null() && rows[0]["p_value"].is_null() && rows[0]["lift"].is_null()
    );
    assert!(rows[1]["p_value"].is_number(), "{}", rows[1]);
    assert!(rows[1]["srm_p_value"].is_number(), "{}", rows[1]);

    // alpha changes the interval, not the p-value
    let wide = server.ok(
        "amba_experiments_results",
        json!({"experiment_key": k, "conversion_event": event, "alpha": 0.01}),
    );
    assert_eq!(wide[1]["p_value"], rows[1]["p_value"]);
    if let (Some(lo), Some(lo99)) = (
        rows[1]["lift_ci_low"].as_f64(),
        wide[1]["lift_ci_low"].as_f64(),
    ) {
        assert!(lo99 < lo, "a 99% interval is wider than a 95% one");
    }

    // delete
    let deleted = server.ok("amba_experiments_delete", json!({"experiment_key": k}));
    assert_eq!(deleted, json!(true));
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": k}),
        "EXPERIMENT_NOT_FOUND",
    );
    let listed = server.ok("amba_experiments_list", json!({}));
    assert!(!listed
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["key"] == json!(k)));
    assert!(server.alive());
}

#[test]
fn errors_carry_contract_codes() {
    let k = key("errors");
    let missing = key("never_created");
    let _cleanup = Cleanup(vec![k.clone()]);
    let mut server = Server::start();
    let two = json!([{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]);

    // unknown key
    let text = server.err(
        "amba_experiments_get",
        json!({"experiment_key": missing}),
        "EXPERIMENT_NOT_FOUND",
    );
    assert!(text.contains("P0002"), "{text}");
    for (tool, args) in [
        (
            "amba_experiments_update",
            json!({"experiment_key": missing, "status": "paused"}),
        ),
        (
            "amba_experiments_delete",
            json!({"experiment_key": missing}),
        ),
        (
            "amba_experiments_results",
            json!({"experiment_key": missing, "conversion_event": "x"}),
        ),
    ] {
        server.err(tool, args, "EXPERIMENT_NOT_FOUND");
    }

    // bad variants, from the SQL function (SQLSTATE 22023)
    for variants in [
        json!([{"key": "only", "weight": 1}]),
        json!([{"key": "a", "weight": "50"}, {"key": "b", "weight": 50}]),
        json!([{"key": "a", "weight": -1}, {"key": "b", "weight": 1}]),
        json!([{"key": "a", "weight": 0}, {"key": "b", "weight": 0}]),
        json!([{"key": "a", "weight": 1}, {"key": "a", "weight": 1}]),
        json!([{"key": "bad key!", "weight": 1}, {"key": "b", "weight": 1}]),
        json!({"key": "a", "weight": 1}),
        json!("[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]"),
    ] {
        let text = server.err(
            "amba_experiments_create",
            json!({"experiment_key": k, "variants": variants}),
            "INVALID_ARGUMENT",
        );
        assert!(text.contains("SQLSTATE 22023"), "{variants}: {text}");
    }
    server.err(
        "amba_experiments_create",
        json!({"experiment_key": "bad key", "variants": two}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": two, "status": "running"}),
        "INVALID_ARGUMENT",
    );
    // nothing was left behind by the failed creates
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": k}),
        "EXPERIMENT_NOT_FOUND",
    );

    // duplicate
    server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": two, "status": "draft"}),
    );
    let text = server.err(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": two}),
        "EXPERIMENT_EXISTS",
    );
    assert!(text.contains("23505"), "{text}");

    // update errors: bad weights, bad status, bad alpha
    server.err(
        "amba_experiments_update",
        json!({"experiment_key": k, "variants": [{"key": "a", "weight": 1}]}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_update",
        json!({"experiment_key": k, "status": "stopped"}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_results",
        json!({"experiment_key": k, "conversion_event": "x", "alpha": 1.5}),
        "INVALID_ARGUMENT",
    );

    // argument errors caught before SQL
    let text = server.err(
        "amba_experiments_create",
        json!({"experiment_key": k}),
        "INVALID_ARGUMENT",
    );
    assert!(text.contains("variants"), "{text}");
    server.err("amba_experiments_get", json!({}), "INVALID_ARGUMENT");
    let bare = server.request("tools/call", json!({"name": "amba_experiments_get"}));
    assert_eq!(bare["result"]["isError"], json!(true), "{bare}");
    server.err(
        "amba_experiments_results",
        json!({"experiment_key": k}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": 42}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_get",
        json!({"key": k}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_results",
        json!({"experiment_key": k, "conversion_event": "x", "alpha": "0.05"}),
        "INVALID_ARGUMENT",
    );

    // an unknown tool is a protocol error
    let msg = server.request("tools/call", json!({"name": "amba_nope", "arguments": {}}));
    assert!(msg["error"]["code"].is_i64(), "{msg}");

    // the experiment is intact and the server still serves
    let got = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    assert_eq!(got["status"], "draft");
    assert_eq!(got["variants"], two);
    assert!(server.alive());
}

/// SPEC §10 over MCP: create with targeting and coverage, get/list show them, the SQL
/// functions enrol by them, update changes coverage and removes the condition with {},
/// and invalid conditions or coverages are INVALID_ARGUMENT with nothing changed.
#[test]
fn targeting_and_coverage_round_trip() {
    let k = key("targeting");
    let bad = key("targeting_bad");
    let _cleanup = Cleanup(vec![k.clone(), bad.clone()]);
    let mut db = sql();
    let mut server = Server::start();
    let two = json!([{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}]);
    let condition = json!({"country": {"$in": ["US", "CA"]}, "plan": "pro"});

    // create: both stored and returned
    let created = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": two, "targeting": condition, "coverage": 0.5}),
    );
    assert_eq!(created["targeting"], condition, "{created}");
    assert_eq!(created["coverage"].as_f64(), Some(0.5), "{created}");

    // get and list: the same as SQL says
    let got = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    let direct: String = db
        .query_one("SELECT amba_get_experiment($1::text)::text", &[&k])
        .unwrap()
        .get(0);
    assert_eq!(got, serde_json::from_str::<Value>(&direct).unwrap());
    assert_eq!(got["targeting"], condition);
    assert_eq!(got["coverage"].as_f64(), Some(0.5));
    let listed = server.ok("amba_experiments_list", json!({}));
    let mine: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == json!(k))
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["targeting"], condition);
    assert_eq!(mine[0]["coverage"].as_f64(), Some(0.5));

    // the application's amba_peek follows them: half of the matching users, no others
    let user = |i: usize| format!("mcp{}-t-{i}", std::process::id());
    let peek = |db: &mut Client, u: &str, attributes: &Value| -> Option<String> {
        db.query_one(
            "SELECT amba_peek($1::text, $2::text, $3::text::jsonb)",
            &[&k, &u, &attributes.to_string()],
        )
        .unwrap()
        .get(0)
    };
    let matching = json!({"country": "CA", "plan": "pro"});
    let other = json!({"country": "DE", "plan": "pro"});
    let enrolled = (0..200)
        .filter(|&i| peek(&mut db, &user(i), &matching).is_some())
        .count();
    assert!(
        (50..150).contains(&enrolled),
        "coverage 0.5 enrolled {enrolled} of 200"
    );
    assert!((0..50).all(|i| peek(&mut db, &user(i), &other).is_none()));

    // update coverage only: the condition stays
    let full = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "coverage": 1}),
    );
    assert_eq!(full["coverage"].as_f64(), Some(1.0));
    assert_eq!(
        full["targeting"], condition,
        "omitted targeting is unchanged"
    );
    assert!((0..50).all(|i| peek(&mut db, &user(i), &matching).is_some()));
    assert!((0..50).all(|i| peek(&mut db, &user(i), &other).is_none()));

    // invalid conditions and coverages: INVALID_ARGUMENT from SQL (22023), nothing changed
    for (targeting, coverage) in [
        (json!({"country": {"$bogus": 1}}), None),
        (json!({"email": {"$regex": "("}}), None),
        (json!({"id": {"$inGroup": "beta"}}), None),
        (json!([{"country": "US"}]), None),
        (json!("{\"country\": \"US\"}"), None),
        (Value::Null, Some(json!(1.5))),
        (Value::Null, Some(json!(-0.1))),
    ] {
        let mut args = json!({"experiment_key": k});
        if !targeting.is_null() {
            args["targeting"] = targeting.clone();
        }
        if let Some(c) = &coverage {
            args["coverage"] = c.clone();
        }
        let text = server.err("amba_experiments_update", args.clone(), "INVALID_ARGUMENT");
        assert!(text.contains("SQLSTATE 22023"), "{args}: {text}");
        let mut create = args.clone();
        create["experiment_key"] = json!(bad);
        create["variants"] = two.clone();
        let text = server.err(
            "amba_experiments_create",
            create.clone(),
            "INVALID_ARGUMENT",
        );
        assert!(text.contains("SQLSTATE 22023"), "{create}: {text}");
    }
    // a coverage that is not a number is caught before SQL
    server.err(
        "amba_experiments_update",
        json!({"experiment_key": k, "coverage": "0.5"}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": bad}),
        "EXPERIMENT_NOT_FOUND",
    );
    let unchanged = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    assert_eq!(unchanged["targeting"], condition);
    assert_eq!(unchanged["coverage"].as_f64(), Some(1.0));
    assert_eq!(unchanged["updated_at"], full["updated_at"]);

    // {} removes the condition: everyone is eligible again
    let everyone = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "targeting": {}}),
    );
    assert!(everyone["targeting"].is_null(), "{everyone}");
    assert_eq!(everyone["coverage"].as_f64(), Some(1.0));
    let got = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    assert!(got["targeting"].is_null(), "{got}");
    assert!((0..50).all(|i| peek(&mut db, &user(i), &other).is_some()));

    // create without them: no condition, full coverage
    let plain = key("targeting_plain");
    let _cleanup_plain = Cleanup(vec![plain.clone()]);
    let created = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": plain, "variants": two, "targeting": null}),
    );
    assert!(created["targeting"].is_null(), "{created}");
    assert_eq!(created["coverage"].as_f64(), Some(1.0));
    assert!(server.alive());
}

/// `value` is a JSON number within 1e-9 of `x`.
fn near(value: &Value, x: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - x).abs() < 1e-9)
}

/// The rows of amba_layers_list (a tool's result) for one layer, as
/// (experiment_key, status, range_start, range_end).
fn layer_rows(rows: &Value, layer: &str) -> Vec<(Value, Value, f64, f64)> {
    rows.as_array()
        .expect("an array of rows")
        .iter()
        .filter(|r| r["layer"] == json!(layer))
        .map(|r| {
            (
                r["experiment_key"].clone(),
                r["status"].clone(),
                r["range_start"].as_f64().expect("range_start"),
                r["range_end"].as_f64().expect("range_end"),
            )
        })
        .collect()
}

#[track_caller]
fn assert_ranges(got: &[(Value, Value, f64, f64)], want: &[(Option<&str>, f64, f64)]) {
    let shown = format!("{got:?} vs {want:?}");
    assert_eq!(got.len(), want.len(), "{shown}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, json!(w.0), "{shown}");
        assert_eq!(g.1.is_null(), w.0.is_none(), "gaps have no status: {shown}");
        assert!(
            (g.2 - w.1).abs() < 1e-9 && (g.3 - w.2).abs() < 1e-9,
            "{shown}"
        );
    }
}

/// SPEC §11 over MCP: two experiments in a layer get disjoint ranges in the lowest free gaps
/// (get, list and amba_layers_list show them, and the free gap), a full layer is
/// INVALID_ARGUMENT, ending frees a range for a later experiment; a holdout named at create
/// holds users out (amba_peek), cannot be deleted while named, and "" removes it.
#[test]
fn layers_and_holdouts_round_trip() {
    let holdout = key("holdout");
    let a = key("layer_a");
    let b = key("layer_b");
    let c = key("layer_c");
    let d = key("layer_d");
    let layer = key("layer");
    // The holdout last: it cannot be deleted while the others name it.
    let _cleanup = Cleanup(vec![
        a.clone(),
        b.clone(),
        c.clone(),
        d.clone(),
        holdout.clone(),
    ]);
    let mut db = sql();
    let mut server = Server::start();
    let two = json!([{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}]);

    // The holdout: an ordinary experiment whose control is the held-out group.
    let h = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": holdout,
               "variants": [{"key": "holdout", "weight": 50}, {"key": "general", "weight": 50}]}),
    );
    assert!(h["layer"].is_null() && h["holdout"].is_null(), "{h}");

    // Two experiments in one layer: [0, 0.3) and [0.3, 0.8), the first held out.
    let created_a = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": a, "variants": two, "layer": layer, "layer_share": 0.3,
               "holdout": holdout}),
    );
    assert_eq!(created_a["layer"]["key"], json!(layer), "{created_a}");
    assert!(
        near(&created_a["layer"]["start"], 0.0) && near(&created_a["layer"]["end"], 0.3),
        "{created_a}"
    );
    assert_eq!(created_a["holdout"], json!(holdout));
    let created_b = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": b, "variants": two, "layer": layer, "layer_share": 0.5,
               "holdout": null}),
    );
    assert!(
        near(&created_b["layer"]["start"], 0.3) && near(&created_b["layer"]["end"], 0.8),
        "{created_b}"
    );
    assert!(created_b["holdout"].is_null(), "{created_b}");

    // get and list show the range and the holdout, as SQL does.
    for (k, created) in [(&a, &created_a), (&b, &created_b)] {
        let got = server.ok("amba_experiments_get", json!({"experiment_key": k}));
        let direct: String = db
            .query_one("SELECT amba_get_experiment($1::text)::text", &[k])
            .unwrap()
            .get(0);
        assert_eq!(got, serde_json::from_str::<Value>(&direct).unwrap());
        assert_eq!(&got, created);
    }
    let listed = server.ok("amba_experiments_list", json!({}));
    for (k, created) in [(&a, &created_a), (&b, &created_b)] {
        let mine: Vec<&Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["key"] == json!(k))
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0]["layer"], created["layer"]);
        assert_eq!(mine[0]["holdout"], created["holdout"]);
    }

    // amba_layers_list: both ranges and the free gap, in the function's columns and order.
    let (layers, text) = server.ok_text("amba_layers_list", json!({}));
    assert_columns(&text, LAYER_COLUMNS);
    assert_eq!(layers, sql_rows(&mut db, "amba_list_layers()", &[]));
    assert_ranges(
        &layer_rows(&layers, &layer),
        &[
            (Some(a.as_str()), 0.0, 0.3),
            (Some(b.as_str()), 0.3, 0.8),
            (None, 0.8, 1.0),
        ],
    );
    assert!(layer_rows(&layers, &layer)[0].1 == json!("active"));

    // Users: only the experiment whose range holds their layer bucket can enrol them, and
    // the holdout's control keeps them out of the experiment that names it.
    let mut held_out = 0;
    let mut released = 0;
    for i in 0..300 {
        let u = format!("mcp{}-l-{i}", std::process::id());
        let row = db
            .query_one(
                "SELECT amba_layer_bucket($1::text, $2::text), amba_peek($3::text, $2::text),
                        amba_peek($4::text, $2::text), amba_peek($5::text, $2::text)",
                &[&layer, &u, &a, &b, &holdout],
            )
            .unwrap();
        let bucket: f64 = row.get(0);
        let (in_a, in_b, in_h): (Option<String>, Option<String>, Option<String>) =
            (row.get(1), row.get(2), row.get(3));
        assert_eq!(
            in_b.is_some(),
            (0.3..0.8).contains(&bucket),
            "{u}: bucket {bucket}"
        );
        if bucket < 0.3 {
            let general = in_h.as_deref() == Some("general");
            assert_eq!(in_a.is_some(), general, "{u}: holdout says {in_h:?}");
            if general {
                released += 1;
            } else {
                held_out += 1;
            }
        } else {
            assert!(
                in_a.is_none(),
                "{u}: bucket {bucket} is outside {a}'s range"
            );
        }
    }
    assert!(
        held_out > 5 && released > 5,
        "{held_out} held out, {released} released"
    );

    // A full layer: no gap of 0.5 is left.
    let text = server.err(
        "amba_experiments_create",
        json!({"experiment_key": c, "variants": two, "layer": layer, "layer_share": 0.5}),
        "INVALID_ARGUMENT",
    );
    assert!(
        text.contains("full") && text.contains("SQLSTATE 22023"),
        "{text}"
    );
    // Bad layers and shares, from SQL.
    for args in [
        json!({"layer": layer, "layer_share": 0}),
        json!({"layer": layer, "layer_share": 1.5}),
        json!({"layer_share": 0.1}),
        json!({"layer": "no spaces"}),
        json!({"holdout": key("no_such_holdout")}),
        json!({"holdout": c}),
    ] {
        let mut create = args.clone();
        create["experiment_key"] = json!(c);
        create["variants"] = two.clone();
        let text = server.err("amba_experiments_create", create, "INVALID_ARGUMENT");
        assert!(text.contains("SQLSTATE 22023"), "{args}: {text}");
    }
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": c}),
        "EXPERIMENT_NOT_FOUND",
    );
    // The layer is chosen at create: the update tool does not take it.
    let text = server.err(
        "amba_experiments_update",
        json!({"experiment_key": a, "layer": layer}),
        "INVALID_ARGUMENT",
    );
    assert!(text.contains("unknown argument \"layer\""), "{text}");

    // Holdout rules: not itself, not a holdout that is itself held out.
    for (k, named) in [(&a, &a), (&holdout, &holdout), (&holdout, &b)] {
        let text = server.err(
            "amba_experiments_update",
            json!({"experiment_key": k, "holdout": named}),
            "INVALID_ARGUMENT",
        );
        assert!(text.contains("SQLSTATE 22023"), "{k} {named}: {text}");
    }
    // A named holdout cannot be deleted.
    let text = server.err(
        "amba_experiments_delete",
        json!({"experiment_key": holdout}),
        "INVALID_ARGUMENT",
    );
    assert!(text.contains(&a), "the message names who uses it: {text}");
    let still = server.ok("amba_experiments_get", json!({"experiment_key": holdout}));
    assert_eq!(still["key"], json!(holdout));

    // Ending frees the range; a later experiment takes the lowest free gap; re-activating
    // the ended one finds the layer full and changes nothing.
    let ended = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": a, "status": "ended"}),
    );
    assert_eq!(ended["layer"]["key"], json!(layer), "{ended}");
    assert!(
        ended["layer"]["start"].is_null() && ended["layer"]["end"].is_null(),
        "{ended}"
    );
    assert_eq!(ended["holdout"], json!(holdout));
    let layers = server.ok("amba_layers_list", json!({}));
    assert_ranges(
        &layer_rows(&layers, &layer),
        &[
            (None, 0.0, 0.3),
            (Some(b.as_str()), 0.3, 0.8),
            (None, 0.8, 1.0),
        ],
    );
    let created_d = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": d, "variants": two, "layer": layer, "layer_share": 0.25,
               "status": "draft"}),
    );
    assert!(
        near(&created_d["layer"]["start"], 0.0) && near(&created_d["layer"]["end"], 0.25),
        "{created_d}"
    );
    let text = server.err(
        "amba_experiments_update",
        json!({"experiment_key": a, "status": "active"}),
        "INVALID_ARGUMENT",
    );
    assert!(text.contains("full"), "{text}");
    let layers = server.ok("amba_layers_list", json!({}));
    assert_ranges(
        &layer_rows(&layers, &layer),
        &[
            (Some(d.as_str()), 0.0, 0.25),
            (None, 0.25, 0.3),
            (Some(b.as_str()), 0.3, 0.8),
            (None, 0.8, 1.0),
        ],
    );
    assert_eq!(layer_rows(&layers, &layer)[0].1, json!("draft"));
    let got = server.ok("amba_experiments_get", json!({"experiment_key": a}));
    assert_eq!(got["status"], "ended");
    assert_eq!(got["updated_at"], ended["updated_at"], "nothing changed");

    // "" removes the holdout; then nobody names it and it can be deleted.
    let released_a = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": a, "holdout": ""}),
    );
    assert!(released_a["holdout"].is_null(), "{released_a}");
    assert_eq!(
        server.ok(
            "amba_experiments_delete",
            json!({"experiment_key": holdout})
        ),
        json!(true)
    );
    assert!(server.alive());
}

fn backend_pids(db: &mut Client, application_name: &str) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        &[&application_name],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Terminates the server's backend. The caller has just had a call succeed, so the
/// backend exists; pg_terminate_backend with a timeout returns once it is gone (its
/// pg_stat_activity row with it), so no polling is needed.
fn kill_backend(db: &mut Client, application_name: &str) {
    let pids = backend_pids(db, application_name);
    assert_eq!(
        pids.len(),
        1,
        "the server's backend ({application_name}) is connected"
    );
    for pid in pids {
        let gone: bool = db
            .query_one(
                "SELECT pg_terminate_backend($1::integer, 30000::bigint)",
                &[&pid],
            )
            .unwrap()
            .get(0);
        assert!(gone, "backend {pid} terminated within 30 s");
    }
    assert!(backend_pids(db, application_name).is_empty());
}

/// After a lost connection a call either reports DATABASE_UNAVAILABLE or succeeds on a new
/// connection; the call after it succeeds; the process never exits.
#[test]
fn survives_a_killed_connection() {
    let k = key("reconnect");
    let _cleanup = Cleanup(vec![k.clone()]);
    let app = format!("amba-mcp-test-{}", std::process::id());
    let url = database_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut server = Server::start_with_url(&format!("{url}{sep}application_name={app}"));
    let mut db = sql();
    let two = json!([{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]);
    server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": two}),
    );

    // a read after the kill
    kill_backend(&mut db, &app);
    let first = server.call("amba_experiments_get", json!({"experiment_key": k}));
    if first["isError"] == json!(true) {
        let text = first["content"][0]["text"].as_str().unwrap();
        assert!(text.starts_with("DATABASE_UNAVAILABLE: "), "{first}");
    } else {
        assert_eq!(first["structuredContent"]["key"], json!(k), "{first}");
    }
    assert!(server.alive(), "amba-mcp survived the lost connection");
    let again = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    assert_eq!(again["key"], json!(k));
    assert_eq!(
        backend_pids(&mut db, &app).len(),
        1,
        "reconnected with its application_name"
    );

    // a write after the kill (never retried blindly)
    kill_backend(&mut db, &app);
    let first = server.call(
        "amba_experiments_update",
        json!({"experiment_key": k, "status": "paused"}),
    );
    if first["isError"] == json!(true) {
        let text = first["content"][0]["text"].as_str().unwrap();
        assert!(text.starts_with("DATABASE_UNAVAILABLE: "), "{first}");
    }
    assert!(server.alive());
    let paused = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "status": "paused"}),
    );
    assert_eq!(paused["status"], "paused");
    assert!(server.alive());
}

/// A loopback TCP proxy to PostgreSQL that can drop a connection at the moment the next
/// statement is sent, so the statement fails in flight (not merely on a connection that is
/// already known to be closed).
struct Proxy {
    port: u16,
    sabotage: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start() -> (Proxy, postgres::Config) {
        use std::{
            net::{Shutdown, TcpListener, TcpStream},
            sync::{
                atomic::{AtomicBool, Ordering},
                Arc,
            },
        };
        let config: postgres::Config = database_url().parse().expect("DATABASE_URL parses");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_port = listener.local_addr().unwrap().port();
        let sabotage = Arc::new(AtomicBool::new(false));
        let flag = sabotage.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect((host.as_str(), port)) else {
                    continue;
                };
                let (mut c_read, mut c_write) = (client.try_clone().unwrap(), client);
                let (mut s_read, mut s_write) = (server.try_clone().unwrap(), server);
                let flag = flag.clone();
                let (c2, s2) = (c_write.try_clone().unwrap(), s_write.try_clone().unwrap());
                thread::spawn(move || {
                    use std::io::Read;
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if flag.swap(false, Ordering::SeqCst) {
                            let _ = c2.shutdown(Shutdown::Both);
                            let _ = s2.shutdown(Shutdown::Both);
                            break;
                        }
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s2.shutdown(Shutdown::Both);
                });
                thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(Shutdown::Both);
                });
            }
        });
        (
            Proxy {
                port: proxy_port,
                sabotage,
            },
            config,
        )
    }

    /// A key=value connection string for the server, through the proxy.
    fn conninfo(&self, config: &postgres::Config) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut parts = vec![format!("host=127.0.0.1 port={}", self.port)];
        if let Some(user) = config.get_user() {
            parts.push(format!("user={}", quote(user)));
        }
        if let Some(password) = config.get_password() {
            parts.push(format!(
                "password={}",
                quote(&String::from_utf8_lossy(password))
            ));
        }
        if let Some(dbname) = config.get_dbname() {
            parts.push(format!("dbname={}", quote(dbname)));
        }
        parts.join(" ")
    }

    fn drop_next_statement(&self) {
        self.sabotage
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A connection lost while a change is in flight is reported (not retried, not a crash);
/// the next call reconnects. A read is retried once on a new connection.
#[test]
fn connection_lost_in_flight() {
    let k = key("inflight");
    let _cleanup = Cleanup(vec![k.clone()]);
    let (proxy, config) = Proxy::start();
    let mut server = Server::start_with_url(&proxy.conninfo(&config));
    let two = json!([{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]);
    server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": two}),
    );

    proxy.drop_next_statement();
    let text = server.err(
        "amba_experiments_update",
        json!({"experiment_key": k, "status": "paused"}),
        "DATABASE_UNAVAILABLE",
    );
    assert!(text.contains("next call reconnects"), "{text}");
    assert!(server.alive());
    let got = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    assert_eq!(
        got["status"], "active",
        "the dropped statement never reached the database"
    );

    proxy.drop_next_statement();
    let got = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    assert_eq!(
        got["key"],
        json!(k),
        "a read is retried on a new connection"
    );
    let paused = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "status": "paused"}),
    );
    assert_eq!(paused["status"], "paused");
    assert!(server.alive());
}

#[test]
fn unreachable_database_is_an_error_result_not_an_exit() {
    // Nothing listens on port 1: every call fails, the process stays up.
    let mut server =
        Server::start_with_url("postgresql://postgres@127.0.0.1:1/amba_test?connect_timeout=5");
    for _ in 0..2 {
        let text = server.err("amba_experiments_list", json!({}), "DATABASE_UNAVAILABLE");
        assert!(text.contains("could not connect"), "{text}");
        assert!(server.alive());
    }
}

#[test]
fn missing_database_url_is_reported_on_stderr() {
    let output = Command::new(env!("CARGO_BIN_EXE_amba-mcp"))
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run amba-mcp");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL is not set"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout (the MCP channel)"
    );
}

/// A key=value connection string for `dbname` on the server of DATABASE_URL.
fn conninfo_for_database(dbname: &str) -> String {
    let config: postgres::Config = database_url().parse().expect("DATABASE_URL parses");
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => parts.push(format!("host={}", quote(h))),
        Some(postgres::config::Host::Unix(p)) => {
            parts.push(format!("host={}", quote(&p.to_string_lossy())))
        }
        None => {}
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    parts.push(format!("dbname={}", quote(dbname)));
    parts.join(" ")
}

/// Creates an experiment (50/50 control/treatment) and `n` users assigned and exposed to it;
/// returns each user with their variant.
fn exposed_users(db: &mut Client, k: &str, n: usize) -> Vec<(String, String)> {
    db.execute(
        "SELECT amba_create_experiment($1::text, $2::text::jsonb)",
        &[
            &k,
            &r#"[{"key":"control","weight":50},{"key":"treatment","weight":50}]"#,
        ],
    )
    .unwrap();
    let mut tx = db.transaction().unwrap();
    let users = (0..n)
        .map(|i| {
            let u = format!("{k}-user-{i}");
            let v: String = tx
                .query_one("SELECT amba_assign($1::text, $2::text)", &[&k, &u])
                .unwrap()
                .get(0);
            tx.execute("SELECT amba_expose($1::text, $2::text)", &[&k, &u])
                .unwrap();
            (u, v)
        })
        .collect();
    tx.commit().unwrap();
    users
}

/// amba_overrides_set / _clear / _list (SPEC §3d): a round trip, the same JSON as SQL,
/// and the contract's error codes.
#[test]
fn overrides_round_trip() {
    let k = key("overrides");
    let missing = key("overrides_never_created");
    let _cleanup = Cleanup(vec![k.clone()]);
    let mut db = sql();
    let mut server = Server::start();
    // A draft experiment: an override works whatever the status.
    server.ok(
        "amba_experiments_create",
        json!({
            "experiment_key": k,
            "variants": [{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}],
            "status": "draft"
        }),
    );
    let (u1, u2) = (format!("{k}-qa-1"), format!("{k}-qa-2"));
    let list = |server: &mut Server, db: &mut Client| -> Value {
        let (rows, text) = server.ok_text("amba_overrides_list", json!({"experiment_key": k}));
        assert_columns(&text, OVERRIDE_COLUMNS);
        assert_eq!(
            rows,
            sql_rows(db, "amba_list_overrides($1::text)", &[&k]),
            "the same JSON as SQL"
        );
        rows
    };
    assert_eq!(list(&mut server, &mut db), json!([]));

    let set = server.ok(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": u1, "variant": "treatment"}),
    );
    assert!(set.is_object(), "amba_set_override returns jsonb: {set}");
    let rows = list(&mut server, &mut db);
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["user_id"], json!(u1));
    assert_eq!(rows[0]["variant"], "treatment");
    assert!(rows[0]["set_at"].is_string(), "{rows}");
    // The overridden user gets the variant, even on a draft experiment.
    let assigned: String = db
        .query_one("SELECT amba_assign($1::text, $2::text)", &[&k, &u1])
        .unwrap()
        .get(0);
    assert_eq!(assigned, "treatment");

    // Setting again replaces; a second user adds a row.
    server.ok(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": u1, "variant": "control"}),
    );
    server.ok(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": u2, "variant": "treatment"}),
    );
    let rows = list(&mut server, &mut db);
    let mut got: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap().to_string(),
                r["variant"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (u1.clone(), "control".to_string()),
            (u2.clone(), "treatment".to_string())
        ]
    );

    // Clear: true when there was one, then false.
    let cleared = server.ok(
        "amba_overrides_clear",
        json!({"experiment_key": k, "user_id": u1}),
    );
    assert_eq!(cleared, json!(true));
    let cleared = server.ok(
        "amba_overrides_clear",
        json!({"experiment_key": k, "user_id": u1}),
    );
    assert_eq!(cleared, json!(false), "no override left to clear");
    let rows = list(&mut server, &mut db);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["user_id"], json!(u2));
    assert_eq!(
        server.ok(
            "amba_overrides_clear",
            json!({"experiment_key": k, "user_id": u2})
        ),
        json!(true)
    );
    assert_eq!(list(&mut server, &mut db), json!([]));

    // Errors: unknown experiment for set, clear and list alike; unknown variant; bad
    // user_id; arguments caught by the server.
    for (tool, args) in [
        (
            "amba_overrides_set",
            json!({"experiment_key": missing, "user_id": u1, "variant": "control"}),
        ),
        (
            "amba_overrides_clear",
            json!({"experiment_key": missing, "user_id": u1}),
        ),
        ("amba_overrides_list", json!({"experiment_key": missing})),
    ] {
        server.err(tool, args, "EXPERIMENT_NOT_FOUND");
    }
    let text = server.err(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": u1, "variant": "nope"}),
        "INVALID_ARGUMENT",
    );
    assert!(text.contains("22023"), "{text}");
    server.err(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": "", "variant": "control"}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": "x".repeat(513), "variant": "control"}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": u1}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_overrides_clear",
        json!({"experiment_key": k, "user_id": 7}),
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        list(&mut server, &mut db),
        json!([]),
        "failed calls left nothing"
    );
    assert!(server.alive());
}

/// amba_experiments_metric_results (SPEC §3c) on a small experiment with revenue events:
/// the contract's columns in order, one row per variant with the control first, the means
/// of the data, and exactly the JSON of SQL amba_metric_results with every argument.
#[test]
fn metric_results_shape() {
    let k = key("metric");
    let _cleanup = Cleanup(vec![k.clone()]);
    let event = format!("revenue_{}", std::process::id());
    let mut db = sql();
    let users = exposed_users(&mut db, &k, 40);
    // Expected per variant: (users, sum of amounts, number of events).
    let mut expected = std::collections::BTreeMap::<String, (f64, f64, f64)>::new();
    let mut tx = db.transaction().unwrap();
    for (i, (u, v)) in users.iter().enumerate() {
        let e = expected.entry(v.clone()).or_default();
        e.0 += 1.0;
        if i % 3 == 0 {
            continue; // no purchase: counts with 0
        }
        let purchases: &[String] = if i % 5 == 0 {
            &[
                format!(r#"{{"amount": {}.5}}"#, i),
                r#"{"amount": 2}"#.to_string(),
            ]
        } else {
            &[format!(r#"{{"amount": {}.25}}"#, i)]
        };
        for p in purchases {
            tx.execute(
                "SELECT amba_track($1::text, $2::text, $3::text::jsonb)",
                &[u, &event, p],
            )
            .unwrap();
            let amount: f64 = serde_json::from_str::<Value>(p).unwrap()["amount"]
                .as_f64()
                .unwrap();
            e.1 += amount;
            e.2 += 1.0;
        }
        if i % 7 == 0 {
            // not a JSON number: adds 0 to the sum, 1 to the count
            tx.execute(
                "SELECT amba_track($1::text, $2::text, $3::text::jsonb)",
                &[u, &event, &r#"{"amount": "lots"}"#],
            )
            .unwrap();
            e.2 += 1.0;
        }
    }
    tx.commit().unwrap();
    let mut server = Server::start();

    // Revenue: the sum of "amount" per user.
    let (rows, text) = server.ok_text(
        "amba_experiments_metric_results",
        json!({"experiment_key": k, "event": event, "value_property": "amount"}),
    );
    assert_columns(&text, METRIC_COLUMNS);
    assert_eq!(
        rows,
        sql_rows(
            &mut db,
            "amba_metric_results($1::text, $2::text, $3::text)",
            &[&k, &event, &"amount"]
        )
    );
    let rows = rows.as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "one row per variant");
    assert_eq!(rows[0]["variant"], "control");
    assert_eq!(rows[0]["is_control"], true);
    assert_eq!(rows[1]["variant"], "treatment");
    assert_eq!(rows[1]["is_control"], false);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    for row in &rows {
        let (n, sum, _) = expected[row["variant"].as_str().unwrap()];
        assert_eq!(row["exposed_count"].as_f64(), Some(n), "{row}");
        let mean = row["mean"].as_f64().unwrap();
        assert!(close(mean, sum / n), "{row}: mean {mean} != {}", sum / n);
        assert!(row["stddev"].is_number(), "{row}");
    }
    for column in ["delta", "p_value", "lift", "cuped_theta"] {
        assert!(
            rows[0][column].is_null(),
            "{column} is null on the control row"
        );
    }
    assert!(rows[1]["p_value"].is_number(), "{}", rows[1]);
    assert!(
        rows[1]["delta_ci_low"].as_f64().unwrap() < rows[1]["delta_ci_high"].as_f64().unwrap(),
        "{}",
        rows[1]
    );
    assert!(
        rows[1]["cuped_theta"].is_null(),
        "no CUPED without cuped_days"
    );

    // Counting: value_property omitted.
    let counts = server.ok(
        "amba_experiments_metric_results",
        json!({"experiment_key": k, "event": event}),
    );
    for row in counts.as_array().unwrap() {
        let (n, _, count) = expected[row["variant"].as_str().unwrap()];
        assert!(close(row["mean"].as_f64().unwrap(), count / n), "{row}");
    }
    assert_eq!(
        counts,
        sql_rows(
            &mut db,
            "amba_metric_results($1::text, $2::text)",
            &[&k, &event]
        )
    );

    // Every optional argument, passed with its SQL type.
    let all = server.ok(
        "amba_experiments_metric_results",
        json!({"experiment_key": k, "event": event, "value_property": "amount",
               "alpha": 0.1, "cap": 20, "cuped_days": 7}),
    );
    assert_eq!(
        all,
        sql_rows(
            &mut db,
            "amba_metric_results(experiment_key => $1::text, event => $2::text, \
             value_property => $3::text, alpha => $4::double precision, \
             cap => $5::double precision, cuped_days => $6::integer)",
            &[&k, &event, &"amount", &0.1f64, &20f64, &7i32]
        )
    );
    assert!(
        all[1]["cuped_theta"].is_number(),
        "CUPED reports its theta: {}",
        all[1]
    );
    let pct = server.ok(
        "amba_experiments_metric_results",
        json!({"experiment_key": k, "event": event, "value_property": "amount",
               "cap_percentile": 0.9}),
    );
    assert_eq!(
        pct,
        sql_rows(
            &mut db,
            "amba_metric_results(experiment_key => $1::text, event => $2::text, \
             value_property => $3::text, cap_percentile => $4::double precision)",
            &[&k, &event, &"amount", &0.9f64]
        )
    );

    // Overridden users are left out while the override exists.
    let (u0, _) = &users[0];
    server.ok(
        "amba_overrides_set",
        json!({"experiment_key": k, "user_id": u0, "variant": "treatment"}),
    );
    let without = server.ok(
        "amba_experiments_metric_results",
        json!({"experiment_key": k, "event": event}),
    );
    let total = |rows: &Value| -> i64 {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["exposed_count"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(total(&without), 39);
    assert_eq!(total(&counts), 40);
    server.ok(
        "amba_overrides_clear",
        json!({"experiment_key": k, "user_id": u0}),
    );
    let back = server.ok(
        "amba_experiments_metric_results",
        json!({"experiment_key": k, "event": event}),
    );
    assert_eq!(
        back, counts,
        "the user counts again once the override is cleared"
    );

    // Errors.
    server.err(
        "amba_experiments_metric_results",
        json!({"experiment_key": key("metric_never_created"), "event": event}),
        "EXPERIMENT_NOT_FOUND",
    );
    for bad in [
        json!({"cap": 10, "cap_percentile": 0.9}),
        json!({"cap_percentile": 1.5}),
        json!({"alpha": 0}),
        json!({"cuped_days": 0}),
        json!({"cuped_days": 366}),
        json!({"cuped_days": 1.5}),
        json!({"cuped_days": "7"}),
        json!({"cap": "10"}),
        json!({"value_property": 1}),
    ] {
        let mut args = json!({"experiment_key": k, "event": event});
        for (name, value) in bad.as_object().unwrap() {
            args[name] = value.clone();
        }
        server.err("amba_experiments_metric_results", args, "INVALID_ARGUMENT");
    }
    server.err(
        "amba_experiments_metric_results",
        json!({"experiment_key": k}),
        "INVALID_ARGUMENT",
    );
    assert!(server.alive());
}

/// amba_experiments_results_daily (SPEC §3e): the contract's columns in order, one row
/// per (day, variant) for consecutive UTC days in day then variant order, cumulative,
/// ending with what amba_results returns; exactly the JSON of SQL amba_results_daily.
#[test]
fn results_daily_shape() {
    let k = key("daily");
    let quiet = key("daily_quiet");
    let _cleanup = Cleanup(vec![k.clone(), quiet.clone()]);
    let event = format!("signup_{}", std::process::id());
    let mut db = sql();
    let users = exposed_users(&mut db, &k, 30);
    // Conversions now and two days from now: at least three days of rows, the middle one
    // without activity.
    let mut last_event_day = String::new();
    for (i, (u, _)) in users.iter().enumerate() {
        if i % 3 == 0 {
            db.execute("SELECT amba_track($1::text, $2::text)", &[u, &event])
                .unwrap();
        } else if i % 3 == 1 {
            last_event_day = db
                .query_one(
                    "SELECT (amba_track($1::text, $2::text, NULL::jsonb, now() + interval '2 days') \
                     AT TIME ZONE 'UTC')::date::text",
                    &[u, &event],
                )
                .unwrap()
                .get(0);
        }
    }
    let mut server = Server::start();

    let (rows, text) = server.ok_text(
        "amba_experiments_results_daily",
        json!({"experiment_key": k, "conversion_event": event}),
    );
    assert_columns(&text, DAILY_COLUMNS);
    assert_eq!(
        rows,
        sql_rows(
            &mut db,
            "amba_results_daily($1::text, $2::text)",
            &[&k, &event]
        ),
        "the same JSON as SQL"
    );
    let rows = rows.as_array().unwrap().clone();
    assert!(
        rows.len() >= 6 && rows.len() % 2 == 0,
        "{} rows",
        rows.len()
    );
    let days: Vec<String> = rows
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair[0]["day"], pair[1]["day"], "{pair:?}");
            assert_eq!(pair[0]["variant"], "control");
            assert_eq!(pair[0]["is_control"], true);
            assert_eq!(pair[1]["variant"], "treatment");
            assert_eq!(pair[1]["is_control"], false);
            pair[0]["day"].as_str().unwrap().to_string()
        })
        .collect();
    let consecutive: Vec<String> = db
        .query_one(
            "SELECT array_agg(d::date::text ORDER BY d) \
             FROM generate_series($1::text::timestamp, $2::text::timestamp, interval '1 day') d",
            &[&days[0], &days[days.len() - 1]],
        )
        .unwrap()
        .get(0);
    assert_eq!(days, consecutive, "every day, in order, once");
    assert_eq!(days.last(), Some(&last_event_day));
    // Cumulative, ending where amba_results is.
    for variant in 0..2 {
        let series: Vec<&Value> = rows.iter().skip(variant).step_by(2).collect();
        for w in series.windows(2) {
            for c in ["exposed_count", "converted_count"] {
                assert!(w[0][c].as_i64() <= w[1][c].as_i64(), "{c}: {w:?}");
            }
        }
    }
    let results = sql_rows(&mut db, "amba_results($1::text, $2::text)", &[&k, &event]);
    for (last, total) in rows[rows.len() - 2..]
        .iter()
        .zip(results.as_array().unwrap())
    {
        assert_eq!(last["variant"], total["variant"]);
        for c in ["exposed_count", "converted_count", "conversion_rate"] {
            assert_eq!(last[c], total[c], "{c} on the last day");
        }
    }

    // alpha, with its SQL type.
    let wide = server.ok(
        "amba_experiments_results_daily",
        json!({"experiment_key": k, "conversion_event": event, "alpha": 0.1}),
    );
    assert_eq!(
        wide,
        sql_rows(
            &mut db,
            "amba_results_daily(experiment_key => $1::text, conversion_event => $2::text, \
             alpha => $3::double precision)",
            &[&k, &event, &0.1f64]
        )
    );

    // Nobody exposed: no rows.
    server.ok(
        "amba_experiments_create",
        json!({"experiment_key": quiet,
               "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]}),
    );
    assert_eq!(
        server.ok(
            "amba_experiments_results_daily",
            json!({"experiment_key": quiet, "conversion_event": event}),
        ),
        json!([])
    );

    // Errors.
    server.err(
        "amba_experiments_results_daily",
        json!({"experiment_key": key("daily_never_created"), "conversion_event": event}),
        "EXPERIMENT_NOT_FOUND",
    );
    server.err(
        "amba_experiments_results_daily",
        json!({"experiment_key": k, "conversion_event": event, "alpha": 1}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_results_daily",
        json!({"experiment_key": k, "conversion_event": event, "alpha": "0.1"}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_results_daily",
        json!({"experiment_key": k}),
        "INVALID_ARGUMENT",
    );
    assert!(server.alive());
}

/// The functions are called in the extension's schema, whatever the search_path: here a
/// schema whose name needs quoting and is not on the search_path (SPEC §8). Without the
/// extension, calls say so; once it is created, the next call finds it.
#[test]
fn works_with_the_extension_in_a_schema_that_needs_quoting() {
    let dbname = format!("amba_mcp_{}", std::process::id());
    let mut admin = sql();
    // Separately: CREATE DATABASE cannot run in the implicit transaction of a
    // multi-statement query.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {dbname}"))
        .unwrap();
    struct DropDatabase(String);
    impl Drop for DropDatabase {
        fn drop(&mut self) {
            if let Ok(mut db) = Client::connect(&database_url(), NoTls) {
                let _ =
                    db.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
            }
        }
    }
    let _drop = DropDatabase(dbname.clone());
    let url = conninfo_for_database(&dbname);
    let mut server = Server::start_with_url(&url);

    let text = server.err("amba_experiments_list", json!({}), "DATABASE_ERROR");
    assert!(
        text.contains("not installed") && text.contains("CREATE EXTENSION amba"),
        "{text}"
    );

    let mut db = Client::connect(&url, NoTls).unwrap();
    db.batch_execute("CREATE SCHEMA \"App-1\"; CREATE EXTENSION amba SCHEMA \"App-1\";")
        .unwrap();
    let search_path: String = db.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert!(!search_path.contains("App-1"), "{search_path}");

    assert_eq!(server.ok("amba_experiments_list", json!({})), json!([]));
    let k = "quoted-schema";
    let created = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k,
               "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]}),
    );
    assert_eq!(created["key"], k);
    assert_eq!(
        server.ok("amba_experiments_get", json!({"experiment_key": k})),
        created
    );
    let rows = server.ok(
        "amba_experiments_results",
        json!({"experiment_key": k, "conversion_event": "x"}),
    );
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": "nope"}),
        "EXPERIMENT_NOT_FOUND",
    );
    assert_eq!(
        server.ok("amba_experiments_delete", json!({"experiment_key": k})),
        json!(true)
    );
    drop(server);
    drop(db);
}

// ---------------------------------------------------------------------------------------
// 0.3.0: guardrails (SPEC §12), ratio / quantile / by-segment results (§13), bandits (§14)

/// Assigns (with `attributes(i)`), exposes and tracks `n` users of `k` in one transaction:
/// `events(i, variant)` gives each user's events as (name, properties). Returns each user
/// with their variant.
fn seed_users(
    db: &mut Client,
    k: &str,
    n: usize,
    attributes: impl Fn(usize) -> Value,
    events: impl Fn(usize, &str) -> Vec<(String, Value)>,
) -> Vec<(String, String)> {
    let mut tx = db.transaction().unwrap();
    let users = (0..n)
        .map(|i| {
            let u = format!("{k}-user-{i}");
            let attrs = attributes(i).to_string();
            let v: String = tx
                .query_one(
                    "SELECT amba_assign($1::text, $2::text, $3::text::jsonb)",
                    &[&k, &u, &attrs],
                )
                .unwrap()
                .get(0);
            tx.execute("SELECT amba_expose($1::text, $2::text)", &[&k, &u])
                .unwrap();
            for (event, properties) in events(i, &v) {
                let properties = properties.to_string();
                tx.execute(
                    "SELECT amba_track($1::text, $2::text, $3::text::jsonb)",
                    &[&u, &event, &properties],
                )
                .unwrap();
            }
            (u, v)
        })
        .collect();
    tx.commit().unwrap();
    users
}

/// The experiment's audit rows with `action`, oldest first (their `after` jsonb).
fn history(db: &mut Client, k: &str, action: &str) -> Vec<Value> {
    db.query(
        "SELECT after::text FROM amba_experiment_history($1::text) WHERE action = $2",
        &[&k, &action],
    )
    .unwrap()
    .iter()
    .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
    .collect()
}

fn get_experiment_sql(db: &mut Client, k: &str) -> Value {
    let text: String = db
        .query_one("SELECT amba_get_experiment($1::text)::text", &[&k])
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

/// SPEC §12 over MCP: create and update carry guardrails; amba_guardrails_check reports a
/// row per guardrail and non-control variant, pauses an active experiment once when one
/// trips (auto_pause audit row listing the tripping rows), and a second check changes
/// nothing (its rows equal SQL amba_check_guardrails').
#[test]
fn guardrails_check_pauses_once() {
    let k = key("guardrails");
    let bad = key("guardrails_bad");
    let missing = key("guardrails_never_created");
    let _cleanup = Cleanup(vec![k.clone(), bad.clone()]);
    let errors = format!("app_error_{}", std::process::id());
    let purchase = format!("purchase_{}", std::process::id());
    let mut db = sql();
    let mut server = Server::start();
    let two = json!([{"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}]);

    let guardrails = json!([
        {"event": errors, "kind": "conversion", "bad": "increase"},
        {"event": purchase, "kind": "mean", "value_property": "amount", "bad": "decrease",
         "tolerance": 0.5, "alpha": 0.1}
    ]);
    let created = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": two, "guardrails": guardrails}),
    );
    // Stored with the defaults written out, as SQL returns it.
    assert_eq!(created, get_experiment_sql(&mut db, &k));
    let stored = created["guardrails"]
        .as_array()
        .expect("guardrails")
        .clone();
    assert_eq!(stored.len(), 2, "{created}");
    assert_eq!(stored[0]["event"], json!(errors));
    assert!(
        near(&stored[0]["alpha"], 0.05) && near(&stored[0]["tolerance"], 0.0),
        "{created}"
    );
    assert!(
        near(&stored[1]["alpha"], 0.1) && near(&stored[1]["tolerance"], 0.5),
        "{created}"
    );

    // Invalid guardrails: INVALID_ARGUMENT from SQL, nothing created.
    let eleven: Vec<Value> = (0..11)
        .map(|_| json!({"event": "e", "kind": "conversion", "bad": "increase"}))
        .collect();
    for invalid in [
        json!([{"event": "e", "kind": "ratio", "bad": "increase"}]),
        json!([{"event": "e", "kind": "conversion", "bad": "sideways"}]),
        json!([{"event": "e", "kind": "conversion", "bad": "increase", "tolerance": -1}]),
        json!([{"event": "e", "kind": "conversion", "bad": "increase", "alpha": 1}]),
        json!({"event": "e", "kind": "conversion", "bad": "increase"}),
        json!(eleven),
    ] {
        let text = server.err(
            "amba_experiments_create",
            json!({"experiment_key": bad, "variants": two, "guardrails": invalid}),
            "INVALID_ARGUMENT",
        );
        assert!(text.contains("SQLSTATE 22023"), "{invalid}: {text}");
    }
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": bad}),
        "EXPERIMENT_NOT_FOUND",
    );

    // Before any data: a row per guardrail and variant, nothing defined, nothing tripped;
    // the same rows as SQL (nothing to pause, so the SQL call changes nothing either).
    let (rows, text) = server.ok_text("amba_guardrails_check", json!({"experiment_key": k}));
    assert_columns(&text, GUARDRAIL_COLUMNS);
    assert_eq!(
        rows,
        sql_rows(&mut db, "amba_check_guardrails($1::text)", &[&k])
    );
    let rows = rows.as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["experiment_key"], json!(k));
        assert_eq!(row["guardrail"], json!(i));
        assert_eq!(row["variant"], "treatment");
        assert_eq!(
            (row["tripped"].clone(), row["paused"].clone()),
            (json!(false), json!(false))
        );
    }

    // Data: the treatment raises errors from 20% to (nearly) everyone; purchases are alike.
    let users = seed_users(
        &mut db,
        &k,
        600,
        |_| json!({}),
        |i, v| {
            let mut events = vec![(purchase.clone(), json!({"amount": 10 + i % 7}))];
            if v == "treatment" || i % 5 == 0 {
                events.push((errors.clone(), json!({})));
            }
            events
        },
    );
    assert!(users.iter().any(|(_, v)| v == "treatment"));

    // The check pauses the experiment: guardrail 0 tripped, every row says paused.
    let rows = server.ok("amba_guardrails_check", json!({"experiment_key": k}));
    let rows = rows.as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["tripped"], true, "{rows:?}");
    assert!(
        rows[0]["cs_low"].as_f64().unwrap() > 0.0,
        "the interval lies above 0: {rows:?}"
    );
    assert_eq!(rows[1]["tripped"], false, "{rows:?}");
    assert!(rows.iter().all(|r| r["paused"] == true), "{rows:?}");
    let now = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    assert_eq!(now["status"], "paused");
    let paused = history(&mut db, &k, "auto_pause");
    assert_eq!(paused.len(), 1, "{paused:?}");
    assert_eq!(paused[0]["status"], "paused");
    assert_eq!(
        paused[0]["tripped"],
        json!([{"guardrail": 0, "variant": "treatment", "lift": rows[0]["lift"],
                "cs_low": rows[0]["cs_low"], "cs_high": rows[0]["cs_high"]}]),
        "the audit row lists the tripping rows"
    );
    // New users are turned away now.
    let e = db
        .query_one(
            "SELECT amba_assign($1::text, $2::text)",
            &[&k, &format!("{k}-late-user")],
        )
        .expect_err("paused");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().starts_with("EXPERIMENT_INACTIVE")),
        "{e}"
    );

    // Again: the same numbers, paused false (already paused), no second audit row; the
    // tool's rows equal the SQL function's.
    let again = server.ok("amba_guardrails_check", json!({"experiment_key": k}));
    let again_rows = again.as_array().unwrap();
    for (a, b) in again_rows.iter().zip(&rows) {
        for column in [
            "guardrail",
            "variant",
            "lift",
            "cs_low",
            "cs_high",
            "tripped",
        ] {
            assert_eq!(a[column], b[column], "{column}");
        }
        assert_eq!(a["paused"], false);
    }
    assert_eq!(
        again,
        sql_rows(&mut db, "amba_check_guardrails($1::text)", &[&k])
    );
    assert_eq!(history(&mut db, &k, "auto_pause").len(), 1);

    // Resume and remove the guardrails ([]): nothing left to check for it.
    let updated = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "status": "active", "guardrails": []}),
    );
    assert!(updated["guardrails"].is_null(), "{updated}");
    assert_eq!(updated["status"], "active");
    assert_eq!(
        server.ok("amba_guardrails_check", json!({"experiment_key": k})),
        json!([])
    );
    // Omitted keeps them; a new list replaces them.
    let one = json!([{"event": errors, "kind": "conversion", "bad": "increase",
                      "tolerance": 100}]);
    let updated = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "guardrails": one}),
    );
    assert_eq!(updated["guardrails"].as_array().map(Vec::len), Some(1));
    let updated = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "name": "renamed"}),
    );
    assert_eq!(updated["guardrails"].as_array().map(Vec::len), Some(1));
    // A tolerance of 100 (+10000%) is not exceeded: reported, not tripped, still active.
    let rows = server.ok("amba_guardrails_check", json!({"experiment_key": k}));
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["tripped"], false, "{rows}");
    assert_eq!(
        server.ok("amba_experiments_get", json!({"experiment_key": k}))["status"],
        "active"
    );

    server.err(
        "amba_guardrails_check",
        json!({"experiment_key": missing}),
        "EXPERIMENT_NOT_FOUND",
    );
    server.err(
        "amba_guardrails_check",
        json!({"experiment_key": "bad key"}),
        "INVALID_ARGUMENT",
    );
    assert!(server.alive());
}

/// SPEC §13 over MCP: ratio, quantile and by-segment results equal the SQL functions' rows
/// (columns in order); create and update carry dimensions; bad input is INVALID_ARGUMENT.
#[test]
fn ratio_quantile_and_segment_results() {
    let k = key("segments");
    let bad = key("segments_bad");
    let missing = key("segments_never_created");
    let _cleanup = Cleanup(vec![k.clone(), bad.clone()]);
    let pid = std::process::id();
    let (visit, buy, load) = (
        format!("visit_{pid}"),
        format!("buy_{pid}"),
        format!("load_{pid}"),
    );
    let mut db = sql();
    let mut server = Server::start();
    let three = json!([{"key": "control", "weight": 1}, {"key": "fast", "weight": 1},
                       {"key": "faster", "weight": 1}]);

    let created = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": three,
               "dimensions": ["country", "device.type"]}),
    );
    assert_eq!(created["dimensions"], json!(["country", "device.type"]));
    assert_eq!(created, get_experiment_sql(&mut db, &k));
    for invalid in [
        json!(["a", "b", "c", "d", "e", "f"]),
        json!(["country", "country"]),
        json!([""]),
    ] {
        server.err(
            "amba_experiments_create",
            json!({"experiment_key": bad, "variants": three, "dimensions": invalid}),
            "INVALID_ARGUMENT",
        );
    }
    let text = server.err(
        "amba_experiments_create",
        json!({"experiment_key": bad, "variants": three, "dimensions": ["country", 1]}),
        "INVALID_ARGUMENT",
    );
    assert!(text.contains("array of strings"), "{text}");
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": bad}),
        "EXPERIMENT_NOT_FOUND",
    );

    // 450 users: three countries (one group without the attribute), two devices; visits,
    // purchases with an amount, page loads with a time in ms.
    seed_users(
        &mut db,
        &k,
        450,
        |i| match i % 3 {
            0 => json!({"country": "US", "device": {"type": "ios"}}),
            1 => json!({"country": "DE", "device": {"type": "web"}}),
            _ => json!({"device": {"type": "ios"}}),
        },
        |i, v| {
            let mut events = vec![(visit.clone(), json!({}))];
            if i % 2 == 0 {
                events.push((visit.clone(), json!({})));
            }
            let buys = match v {
                "control" => i % 4 == 0,
                "fast" => i % 3 == 0,
                _ => i % 2 == 0,
            };
            if buys {
                events.push((buy.clone(), json!({"amount": 5 + (i * 7) % 40})));
            }
            let base = match v {
                "control" => 900,
                "fast" => 800,
                _ => 700,
            };
            for j in 0..(1 + i % 3) {
                events.push((load.clone(), json!({"ms": base + (i * 37 + j * 101) % 500})));
            }
            events
        },
    );

    // Ratio: revenue per visit, and (properties omitted: NULL) purchases per visit.
    let (rows, text) = server.ok_text(
        "amba_experiments_ratio_results",
        json!({"experiment_key": k, "numerator_event": buy, "numerator_property": "amount",
               "denominator_event": visit}),
    );
    assert_columns(&text, RATIO_COLUMNS);
    assert_eq!(
        rows,
        sql_rows(
            &mut db,
            "amba_ratio_results($1::text, $2::text, 'amount', $3::text, NULL)",
            &[&k, &buy, &visit]
        )
    );
    let rows = rows.as_array().unwrap().clone();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["is_control"], true);
    assert!(
        rows[0]["delta"].is_null() && rows[1]["p_value"].is_number(),
        "{rows:?}"
    );
    let counted = server.ok(
        "amba_experiments_ratio_results",
        json!({"experiment_key": k, "numerator_event": buy, "denominator_event": visit,
               "numerator_property": null, "alpha": 0.1}),
    );
    assert_eq!(
        counted,
        sql_rows(
            &mut db,
            "amba_ratio_results($1::text, $2::text, NULL, $3::text, NULL, 0.1)",
            &[&k, &buy, &visit]
        )
    );

    // Quantile: p90 of the load time; the alpha changes the interval, not the p-value.
    let (rows, text) = server.ok_text(
        "amba_experiments_quantile_results",
        json!({"experiment_key": k, "event": load, "value_property": "ms", "quantile": 0.9}),
    );
    assert_columns(&text, QUANTILE_COLUMNS);
    assert_eq!(
        rows,
        sql_rows(
            &mut db,
            "amba_quantile_results($1::text, $2::text, 'ms', 0.9)",
            &[&k, &load]
        )
    );
    assert!(rows[1]["delta"].as_f64().unwrap() < 0.0, "{rows}");
    let wide = server.ok(
        "amba_experiments_quantile_results",
        json!({"experiment_key": k, "event": load, "value_property": "ms", "quantile": 0.9,
               "alpha": 0.01}),
    );
    assert_eq!(wide[1]["p_value"], rows[1]["p_value"]);
    assert_eq!(
        wide,
        sql_rows(
            &mut db,
            "amba_quantile_results($1::text, $2::text, 'ms', 0.9, 0.01)",
            &[&k, &load]
        )
    );

    // By segment: each dimension, rows per (value, variant), values ascending, NULL last.
    for (dimension, values) in [
        ("country", vec![json!("DE"), json!("US"), Value::Null]),
        ("device.type", vec![json!("ios"), json!("web")]),
    ] {
        let (rows, text) = server.ok_text(
            "amba_experiments_results_by",
            json!({"experiment_key": k, "conversion_event": buy, "dimension": dimension}),
        );
        assert_columns(&text, RESULTS_BY_COLUMNS);
        assert_eq!(
            rows,
            sql_rows(
                &mut db,
                "amba_results_by($1::text, $2::text, $3::text)",
                &[&k, &buy, &dimension]
            ),
            "{dimension}"
        );
        let got: Vec<(Value, Value)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["dimension_value"].clone(), r["variant"].clone()))
            .collect();
        let want: Vec<(Value, Value)> = values
            .iter()
            .flat_map(|v| {
                ["control", "fast", "faster"]
                    .iter()
                    .map(move |variant| (v.clone(), json!(variant)))
            })
            .collect();
        assert_eq!(got, want, "{dimension}");
    }
    let by = server.ok(
        "amba_experiments_results_by",
        json!({"experiment_key": k, "conversion_event": buy, "dimension": "country",
               "alpha": 0.2}),
    );
    assert_eq!(
        by,
        sql_rows(
            &mut db,
            "amba_results_by($1::text, $2::text, 'country', 0.2)",
            &[&k, &buy]
        )
    );
    let text = server.err(
        "amba_experiments_results_by",
        json!({"experiment_key": k, "conversion_event": buy, "dimension": "plan"}),
        "INVALID_ARGUMENT",
    );
    assert!(text.contains("plan"), "{text}");

    // Update: a new list replaces the old one, [] removes them.
    let updated = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "dimensions": ["plan"]}),
    );
    assert_eq!(updated["dimensions"], json!(["plan"]));
    server.err(
        "amba_experiments_results_by",
        json!({"experiment_key": k, "conversion_event": buy, "dimension": "country"}),
        "INVALID_ARGUMENT",
    );
    let updated = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "dimensions": []}),
    );
    assert!(updated["dimensions"].is_null(), "{updated}");

    // Errors.
    server.err(
        "amba_experiments_quantile_results",
        json!({"experiment_key": k, "event": load, "value_property": "ms", "quantile": 1.5}),
        "INVALID_ARGUMENT",
    );
    server.err(
        "amba_experiments_ratio_results",
        json!({"experiment_key": k, "numerator_event": buy, "denominator_event": visit,
               "alpha": 2}),
        "INVALID_ARGUMENT",
    );
    for (tool, args) in [
        (
            "amba_experiments_ratio_results",
            json!({"experiment_key": missing, "numerator_event": buy,
                   "denominator_event": visit}),
        ),
        (
            "amba_experiments_quantile_results",
            json!({"experiment_key": missing, "event": load, "value_property": "ms",
                   "quantile": 0.5}),
        ),
        (
            "amba_experiments_results_by",
            json!({"experiment_key": missing, "conversion_event": buy,
                   "dimension": "country"}),
        ),
    ] {
        server.err(tool, args, "EXPERIMENT_NOT_FOUND");
    }
    assert!(server.alive());
}

/// SPEC §14 over MCP: create and update carry bandit settings; nothing changes before every
/// arm has min_users exposed users; then an update writes new weights (floor respected,
/// the winner favoured) as a new weight version with a bandit_update audit row, and
/// amba_experiments_bandit_results equals the SQL function's rows before and after.
#[test]
fn bandit_update_and_results() {
    let k = key("bandit");
    let plain = key("bandit_plain");
    let bad = key("bandit_bad");
    let missing = key("bandit_never_created");
    let _cleanup = Cleanup(vec![k.clone(), plain.clone(), bad.clone()]);
    let buy = format!("bandit_buy_{}", std::process::id());
    let mut db = sql();
    let mut server = Server::start();
    let three = json!([{"key": "control", "weight": 1}, {"key": "b", "weight": 1},
                       {"key": "c", "weight": 1}]);

    let created = server.ok(
        "amba_experiments_create",
        json!({"experiment_key": k, "variants": three,
               "bandit": {"event": buy, "kind": "conversion", "min_users": 40,
                          "min_weight": 0.05}}),
    );
    assert_eq!(created, get_experiment_sql(&mut db, &k));
    assert_eq!(created["bandit"]["event"], json!(buy), "{created}");
    assert_eq!(created["bandit"]["min_users"], 40, "{created}");
    assert!(near(&created["bandit"]["min_weight"], 0.05), "{created}");
    for invalid in [
        json!({"event": buy, "kind": "conversion", "min_weight": 0.5}),
        json!({"event": buy, "kind": "median"}),
        json!({"event": buy, "kind": "conversion", "min_users": 0}),
        json!({"event": buy, "kind": "conversion", "colour": "red"}),
        json!([buy]),
    ] {
        server.err(
            "amba_experiments_create",
            json!({"experiment_key": bad, "variants": three, "bandit": invalid}),
            "INVALID_ARGUMENT",
        );
    }
    server.err(
        "amba_experiments_get",
        json!({"experiment_key": bad}),
        "EXPERIMENT_NOT_FOUND",
    );

    // Before data: equal weights, as SQL says.
    let (rows, text) = server.ok_text(
        "amba_experiments_bandit_results",
        json!({"experiment_key": k}),
    );
    assert_columns(&text, BANDIT_COLUMNS);
    assert_eq!(
        rows,
        sql_rows(&mut db, "amba_bandit_results($1::text)", &[&k])
    );
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| near(&r["weight"], 1.0 / 3.0)),
        "{rows}"
    );
    let versions = |db: &mut Client| -> i64 {
        db.query_one(
            "SELECT count(*) FROM amba.weight_versions w JOIN amba.experiments e \
             ON e.id = w.experiment_id WHERE e.key = $1",
            &[&k],
        )
        .unwrap()
        .get(0)
    };
    let before = versions(&mut db);

    // Too few users: nothing changes, no error.
    seed_users(&mut db, &k, 30, |_| json!({}), |_, _| vec![]);
    let not_yet = server.ok(
        "amba_experiments_bandit_update",
        json!({"experiment_key": k}),
    );
    assert_eq!(not_yet["updated"], false, "{not_yet}");
    assert!(
        not_yet["reason"].as_str().is_some_and(|r| r.contains("40")),
        "{not_yet}"
    );
    assert_eq!(versions(&mut db), before);
    assert!(history(&mut db, &k, "bandit_update").is_empty());

    // Enough users (the first 30 are those above): c converts far more often.
    seed_users(
        &mut db,
        &k,
        300,
        |_| json!({}),
        |i, v| {
            let converts = match v {
                "c" => i % 2 == 0,
                _ => i % 10 == 0,
            };
            if converts {
                vec![(buy.clone(), json!({}))]
            } else {
                vec![]
            }
        },
    );
    let arms = server.ok(
        "amba_experiments_bandit_results",
        json!({"experiment_key": k}),
    );
    assert_eq!(
        arms,
        sql_rows(&mut db, "amba_bandit_results($1::text)", &[&k])
    );
    let updated = server.ok(
        "amba_experiments_bandit_update",
        json!({"experiment_key": k, "seed": 7}),
    );
    assert_eq!(updated["updated"], true, "{updated}");
    let weights: Vec<f64> = updated["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    let best: Vec<f64> = updated["best_arm_probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert_eq!((weights.len(), best.len()), (3, 3), "{updated}");
    assert!(
        (weights.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{weights:?}"
    );
    assert!(
        weights.iter().all(|&w| w >= 0.05 - 1e-12),
        "the floor: {weights:?}"
    );
    assert!(
        weights[2] > weights[0] && weights[2] > weights[1],
        "{weights:?}"
    );
    // The probabilities are those amba_bandit_results showed on the same data.
    for (p, arm) in best.iter().zip(arms.as_array().unwrap()) {
        assert!(
            (p - arm["best_arm_probability"].as_f64().unwrap()).abs() < 1e-9,
            "{updated} vs {arms}"
        );
    }
    assert_eq!(versions(&mut db), before + 1);
    assert_eq!(history(&mut db, &k, "bandit_update").len(), 1);
    // The weights in force now: in the experiment and in the arms' rows.
    let now = server.ok("amba_experiments_get", json!({"experiment_key": k}));
    let arms = server.ok(
        "amba_experiments_bandit_results",
        json!({"experiment_key": k}),
    );
    assert_eq!(
        arms,
        sql_rows(&mut db, "amba_bandit_results($1::text)", &[&k])
    );
    let total: f64 = now["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["weight"].as_f64().unwrap())
        .sum();
    for (i, w) in weights.iter().enumerate() {
        let share = now["variants"][i]["weight"].as_f64().unwrap() / total;
        assert!((share - w).abs() < 1e-9, "{now}");
        assert!(near(&arms[i]["weight"], *w), "{arms}");
    }
    assert_eq!(
        now["variants"][0]["key"], "control",
        "the control stays first"
    );

    // {} makes it an ordinary experiment: the bandit tools refuse it then.
    let ordinary = server.ok(
        "amba_experiments_update",
        json!({"experiment_key": k, "bandit": {}}),
    );
    assert!(ordinary["bandit"].is_null(), "{ordinary}");
    server.ok(
        "amba_experiments_create",
        json!({"experiment_key": plain, "variants": three}),
    );
    for key in [&k, &plain] {
        server.err(
            "amba_experiments_bandit_update",
            json!({"experiment_key": key}),
            "INVALID_ARGUMENT",
        );
        server.err(
            "amba_experiments_bandit_results",
            json!({"experiment_key": key}),
            "INVALID_ARGUMENT",
        );
    }
    for tool in [
        "amba_experiments_bandit_update",
        "amba_experiments_bandit_results",
    ] {
        server.err(
            tool,
            json!({"experiment_key": missing}),
            "EXPERIMENT_NOT_FOUND",
        );
    }
    server.err(
        "amba_experiments_bandit_update",
        json!({"experiment_key": plain, "seed": 1.5}),
        "INVALID_ARGUMENT",
    );
    assert!(server.alive());
}
