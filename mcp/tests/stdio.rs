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
        from_text
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
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
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

#[test]
fn lists_six_tools_with_schemas() {
    let mut server = Server::start();
    let msg = server.request("tools/list", json!({}));
    let tools = msg["result"]["tools"].as_array().expect("tools").clone();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "amba_experiments_create",
            "amba_experiments_delete",
            "amba_experiments_get",
            "amba_experiments_list",
            "amba_experiments_results",
            "amba_experiments_update"
        ]
    );
    let expected: &[(&str, &[&str], &[&str])] = &[
        (
            "amba_experiments_create",
            &[
                "experiment_key",
                "variants",
                "name",
                "description",
                "status",
            ],
            &["experiment_key", "variants"],
        ),
        ("amba_experiments_list", &[], &[]),
        (
            "amba_experiments_get",
            &["experiment_key"],
            &["experiment_key"],
        ),
        (
            "amba_experiments_update",
            &[
                "experiment_key",
                "variants",
                "status",
                "name",
                "description",
            ],
            &["experiment_key"],
        ),
        (
            "amba_experiments_delete",
            &["experiment_key"],
            &["experiment_key"],
        ),
        (
            "amba_experiments_results",
            &["experiment_key", "conversion_event", "alpha"],
            &["experiment_key", "conversion_event"],
        ),
    ];
    for (name, props, required) in expected {
        let tool = tools.iter().find(|t| t["name"] == *name).unwrap();
        let schema = &tool["inputSchema"];
        assert_eq!(schema["type"], "object", "{name}");
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
        let description = tool["description"].as_str().unwrap();
        assert!(description.len() > 100, "{name} has a real description");
    }
    let create = tools
        .iter()
        .find(|t| t["name"] == "amba_experiments_create")
        .unwrap();
    let variants = &create["inputSchema"]["properties"]["variants"];
    assert_eq!(variants["type"], "array");
    assert_eq!(variants["items"]["properties"]["weight"]["type"], "number");
    assert_eq!(variants["items"]["properties"]["weight"]["minimum"], 0);
    assert!(variants["description"]
        .as_str()
        .unwrap()
        .contains("control"));
    let status = &create["inputSchema"]["properties"]["status"];
    assert_eq!(
        status["enum"],
        json!(["draft", "active", "paused", "ended"])
    );
    let update = tools
        .iter()
        .find(|t| t["name"] == "amba_experiments_update")
        .unwrap();
    let doc = update["description"].as_str().unwrap();
    assert!(
        doc.contains("EXPERIMENT_INACTIVE") && doc.contains("never move"),
        "{doc}"
    );
    let results = tools
        .iter()
        .find(|t| t["name"] == "amba_experiments_results")
        .unwrap();
    let doc = results["description"].as_str().unwrap();
    for column in [
        "conversion_rate",
        "z_score",
        "p_value",
        "lift_ci_low",
        "lift_ci_high",
        "chance_to_win",
        "p_value_holm",
        "sequential_p_value",
        "srm_p_value",
        "0.001",
    ] {
        assert!(
            doc.contains(column),
            "results description mentions {column}"
        );
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
    for column in [
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
    ] {
        assert!(
            rows[0].get(column).is_some(),
            "results carry {column}: {}",
            rows[0]
        );
    }
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

fn kill_backend(db: &mut Client, application_name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids = loop {
        let pids = backend_pids(db, application_name);
        if !pids.is_empty() || Instant::now() > deadline {
            break pids;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !pids.is_empty(),
        "the server's backend ({application_name}) is connected"
    );
    for pid in pids {
        let killed: bool = db
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(killed);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend_pids(db, application_name).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
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
