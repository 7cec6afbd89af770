//! The HTTP contract (SPEC §4 and §5), verified without PostgREST.
//!
//! There is no PostgREST binary on the test machine, so `request()` replays in SQL what
//! PostgREST 12 does for one HTTP request, read from its source and docs at v12.2.12 (the
//! version docker/docker-compose.yml runs; tag commit
//! cd3cf9ed978c8892e3ac460cb4d0b8c621d4c98f of github.com/PostgREST/postgrest):
//! src/PostgREST/Plan.hs `callReadPlan`/`findProc`/`negotiateContent`, Query.hs
//! `setPgLocals`/`runPreReq`, Query/QueryBuilder.hs `callPlanToQuery`, Error.hs
//! `pgErrorStatus` (and docs/references/errors.rst), MediaType.hs `toContentType`,
//! Response.hs `overrideStatusHeaders`; each rule below cites its source:
//!
//! 1. plan, before touching a transaction: route on the percent-decoded path
//!    (`/rpc/<fn>` or `/<view>`), find the function in the schema cache by name *and* by the
//!    set of argument names (body keys for POST, query parameters for GET); none matches →
//!    404 `PGRST202`. The transaction is READ ONLY for GET and for STABLE/IMMUTABLE functions;
//! 2. connected as `authenticator`: `BEGIN ISOLATION LEVEL READ COMMITTED [READ ONLY]`;
//! 3. `select set_config('search_path', '"amba_api", "public"', true), set_config('role',
//!    <jwt role or amba_anon>, true), set_config('request.jwt.claims', <claims + role>, true),
//!    set_config('request.method', ...), set_config('request.path', <raw path>, true),
//!    set_config('request.headers', <lower-cased names>, true), set_config('request.cookies',
//!    '{}', true)` (plus the function's hoisted settings, none here);
//! 4. `select "amba_api"."pre_request"()`;
//! 5. the call: `json_to_record($1) AS pgrst_body(<given args with their types>), LATERAL
//!    "amba_api"."fn"("arg" := pgrst_body."arg", ...)`, aggregated to the JSON body as
//!    PostgREST does (scalar → the value, SETOF scalar → array, TABLE → array of objects);
//! 6. COMMIT, or ROLLBACK on error; an error becomes PostgREST's status and JSON body
//!    (`RAISE SQLSTATE 'PGRST'` → the status in its detail, the body from its message;
//!    other SQLSTATEs by PostgREST's table, `sqlstate_status`); `exchange()` also gives the
//!    response headers: Content-Type from the negotiated media type (a media type
//!    handler's own type, e.g. `text/html` for the report), and what the function set in
//!    `response.headers` / `response.status`.
//!
//! The role comes from the JWT's `role` claim (PostgREST's default `jwt-role-claim-key`),
//! `amba_anon` without a JWT; the JWT itself is taken as already verified.
//!
//! Every test uses its own experiment keys, API key names and user ids, so it can run
//! concurrently with itself and with other test files against the same database.

use amba_integration_tests::{connect, connect_as};
use postgres::Client;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

use std::sync::{Once, OnceLock};

// ------------------------------------------------------------------------------------------
// Setup shared by the tests
// ------------------------------------------------------------------------------------------

/// PostgREST's connection role and anonymous role, as docker/init/01-amba.sql creates them.
const ROLES_SQL: &str = r#"
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amba_anon') THEN
        BEGIN CREATE ROLE amba_anon NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
        BEGIN CREATE ROLE authenticator LOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator'
                      AND rolcanlogin AND NOT rolinherit) THEN
        ALTER ROLE authenticator LOGIN NOINHERIT;
    END IF;
    IF NOT pg_has_role('authenticator', 'amba_admin', 'MEMBER')
       OR NOT pg_has_role('authenticator', 'amba_client', 'MEMBER')
       OR NOT pg_has_role('authenticator', 'amba_anon', 'MEMBER') THEN
        GRANT amba_admin, amba_client, amba_anon TO authenticator;
    END IF;
END
$roles$;
"#;

fn ensure_roles() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Roles are cluster-wide: another test binary may be creating them right now.
        amba_integration_tests::batch_with_retry(ROLES_SQL, "the PostgREST role setup");
    });
}

use amba_integration_tests::unique;

struct Keys {
    client: String,
    admin: String,
    admin_name: String,
}

/// One client and one admin API key for this test binary, created as a DB admin would.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        ensure_roles();
        let mut db = connect();
        let client_name = unique("http_client_key");
        let admin_name = unique("http_admin_key");
        let client: String = db
            .query_one("SELECT amba_create_api_key($1)", &[&client_name])
            .expect("amba_create_api_key(name)")
            .get(0);
        let admin: String = db
            .query_one("SELECT amba_create_api_key($1, 'admin')", &[&admin_name])
            .expect("amba_create_api_key(name, 'admin')")
            .get(0);
        Keys {
            client,
            admin,
            admin_name,
        }
    })
}

fn client_headers() -> Value {
    json!({ "X-Api-Key": keys().client, "Content-Type": "application/json" })
}

fn admin_headers() -> Value {
    json!({ "X-Api-Key": keys().admin, "Content-Type": "application/json" })
}

/// An end user's session token (already verified by PostgREST).
fn client_jwt(sub: &str) -> Option<Value> {
    Some(json!({ "sub": sub, "role": "amba_client", "exp": 4102444800u64 }))
}

fn admin_jwt() -> Option<Value> {
    Some(json!({ "sub": "ops@example.com", "role": "amba_admin" }))
}

// ------------------------------------------------------------------------------------------
// The replay harness
// ------------------------------------------------------------------------------------------

/// One function of the exposed schema, as PostgREST's schema cache describes it.
#[derive(Debug, Clone)]
struct Routine {
    /// Input parameters in order: (name, type, required).
    params: Vec<(String, String, bool)>,
    volatile: bool,
    returns_set: bool,
    returns_composite: bool,
    /// The return type (a media type handler is a domain named like `"text/html"`).
    returns_type: String,
    /// proconfig entries PostgREST hoists into the transaction (db-hoisted-tx-settings).
    hoisted: Vec<(String, String)>,
}

const SCHEMA: &str = "amba_api";
const HOISTED: [&str; 3] = [
    "statement_timeout",
    "plan_filter.statement_cost_limit",
    "default_transaction_isolation",
];

fn routines(db: &mut Client, name: &str) -> Vec<Routine> {
    let rows = db
        .query(
            "SELECT coalesce(p.proargnames, '{}'), coalesce(p.proargmodes::text[], '{}'),
                    p.pronargs::int, p.pronargdefaults::int,
                    ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t),
                    p.provolatile::text, p.proretset,
                    (t.typtype = 'c' OR p.prorettype = 'record'::regtype),
                    coalesce(p.proconfig, '{}'), format_type(p.prorettype, NULL)
               FROM pg_proc p JOIN pg_type t ON t.oid = p.prorettype
              WHERE p.pronamespace = $1::text::regnamespace AND p.proname = $2 AND p.prokind = 'f'",
            &[&SCHEMA, &name],
        )
        .expect("schema cache query");
    rows.iter()
        .map(|r| {
            let names: Vec<String> = r.get(0);
            let modes: Vec<String> = r.get(1);
            let nargs: i32 = r.get(2);
            let ndefaults: i32 = r.get(3);
            let types: Vec<String> = r.get(4);
            let input_names: Vec<String> = if modes.is_empty() {
                names.iter().take(nargs as usize).cloned().collect()
            } else {
                names
                    .iter()
                    .zip(&modes)
                    .filter(|(_, m)| matches!(m.as_str(), "i" | "b" | "v"))
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            let params = input_names
                .into_iter()
                .zip(types)
                .enumerate()
                .map(|(i, (n, t))| (n, t, (i as i32) < nargs - ndefaults))
                .collect();
            let config: Vec<String> = r.get(8);
            Routine {
                params,
                volatile: r.get::<_, String>(5) == "v",
                returns_set: r.get(6),
                returns_composite: r.get(7),
                returns_type: r.get(9),
                hoisted: config
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(k, _)| HOISTED.contains(k))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        })
        .collect()
}

/// PostgREST's `findProc`: the function whose parameters the given argument names fit.
fn find_routine(candidates: &[Routine], keys: &BTreeSet<String>) -> Option<Routine> {
    let fits = |r: &&Routine| {
        if r.params.is_empty() {
            return keys.is_empty();
        }
        let required: BTreeSet<String> = r
            .params
            .iter()
            .filter(|p| p.2)
            .map(|p| p.0.clone())
            .collect();
        let optional: BTreeSet<String> = r
            .params
            .iter()
            .filter(|p| !p.2)
            .map(|p| p.0.clone())
            .collect();
        keys.difference(&optional).cloned().collect::<BTreeSet<_>>() == required
    };
    let matching: Vec<&Routine> = candidates.iter().filter(fits).collect();
    match matching.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

// Where each rule of the replay comes from: PostgREST v12.2.12 (the image
// docker/docker-compose.yml runs), github.com/PostgREST/postgrest at tag v12.2.12 =
// commit cd3cf9ed978c8892e3ac460cb4d0b8c621d4c98f. Paths below are in that tree.

/// The HTTP status PostgREST gives a failed statement's SQLSTATE: the table "HTTP Status
/// Codes" of docs/references/errors.rst, as implemented by `pgErrorStatus` in
/// src/PostgREST/Error.hs (which adds the 21000 and 42883 special cases the table omits).
/// `authed`: whether the request carried a JWT.
fn sqlstate_status(code: &str, message: &str, authed: bool) -> u16 {
    match code {
        // errors.rst: 08* → 503 (pg connection err).
        c if c.starts_with("08") => 503,
        // 09* → 500 (triggered action exception).
        c if c.starts_with("09") => 500,
        // 0L* → 403 (invalid grantor); 0P* → 403 (invalid role specification).
        c if c.starts_with("0L") || c.starts_with("0P") => 403,
        // 23503 → 409 (foreign key violation); 23505 → 409 (uniqueness violation).
        "23503" | "23505" => 409,
        // 25006 → 405 (read only sql transaction): a writing function called with GET.
        "25006" => 405,
        // Error.hs only: 21000 → 400 when the message ends "requires a WHERE clause"
        // (pg-safeupdate), else 500.
        "21000" if message.ends_with("requires a WHERE clause") => 400,
        "21000" => 500,
        // 25* → 500, 2D* → 500, 38* → 500, 39* → 500 (transaction state/termination,
        // external routines).
        c if c.starts_with("25")
            || c.starts_with("2D")
            || c.starts_with("38")
            || c.starts_with("39") =>
        {
            500
        }
        // 28* → 403 (invalid auth specification).
        c if c.starts_with("28") => 403,
        // 3B* → 500 (savepoint exception); 40* → 500 (transaction rollback).
        c if c.starts_with("3B") || c.starts_with("40") => 500,
        // 53400 → 500 (config limit exceeded); 53* → 503 (insufficient resources).
        "53400" => 500,
        c if c.starts_with("53") => 503,
        // 54* → 500 (too complex); 55* → 500 (object not in prerequisite state).
        c if c.starts_with("54") || c.starts_with("55") => 500,
        // Error.hs only: 57P01 → 503 (terminating connection by administrator command);
        // errors.rst: 57* → 500, 58* → 500, F0* → 500, HV* → 500.
        "57P01" => 503,
        c if c.starts_with("57")
            || c.starts_with("58")
            || c.starts_with("F0")
            || c.starts_with("HV") =>
        {
            500
        }
        // P0001 → 400 (default code for "raise"); P0* → 500; XX* → 500.
        "P0001" => 400,
        c if c.starts_with("P0") || c.starts_with("XX") => 500,
        // 42883 → 404 (undefined function), Error.hs: 406 when the message begins
        // "function xmlagg(" (text/xml without a handler).
        "42883" if message.starts_with("function xmlagg(") => 406,
        "42883" => 404,
        // 42P01 → 404 (undefined table): also how v12 answers a relation that is not
        // there (test/spec/Feature/ConcurrentSpec.hs, GET /fakefake → 404 42P01).
        "42P01" => 404,
        // 42P17 → 500 (infinite recursion).
        "42P17" => 500,
        // 42501 → 403 if authenticated, else 401 (insufficient privileges).
        "42501" if authed => 403,
        "42501" => 401,
        // Error.hs: PTxyz → HTTP xyz ("RAISE sqlstate 'PT402'" in errors.rst).
        c if c.starts_with("PT") => c[2..].parse().unwrap_or(500),
        // other → 400. This includes 22023 whatever its message: in v12 a JWT role that
        // does not exist (`role "x" does not exist`) is a 400 (issue #3601); 401 only from
        // v14.0 on (commit 8390df0fa585067f3902b1d522bcc8fb6e749636, PR #4081).
        _ => 400,
    }
}

/// The body and status PostgREST sends for a failed statement (src/PostgREST/Error.hs:
/// `instance PgrstError PgError`, `instance JSON.ToJSON SQL.CommandError`).
fn error_response(err: &postgres::Error, authed: bool) -> (u16, Value) {
    let (status, body, _) = error_response_with_headers(err, authed);
    (status, body)
}

/// As `error_response`, with the response headers besides Content-Type (lower-case names).
fn error_response_with_headers(
    err: &postgres::Error,
    authed: bool,
) -> (u16, Value, Vec<(String, String)>) {
    let Some(db) = err.as_db_error() else {
        // A connection failure: PGRST000, 503 (errors.rst, "Group 0 - Connection").
        return (
            503,
            json!({ "code": "PGRST000", "message": err.to_string(), "details": null, "hint": null }),
            vec![],
        );
    };
    let code = db.code().code();
    if code == "PGRST" {
        // errors.rst "Add HTTP Headers with RAISE": the message is a JSON object with code,
        // message, details, hint; the detail one with status and headers (Error.hs
        // `parseRaisePGRST`; a message that does not parse would be 500 PGRST121 — amba
        // must never send one, so the harness fails instead).
        let msg: Value = serde_json::from_str(db.message()).unwrap_or_else(|e| {
            panic!(
                "RAISE SQLSTATE 'PGRST' message is not JSON ({e}): {}",
                db.message()
            )
        });
        let detail: Value =
            serde_json::from_str(db.detail().unwrap_or("null")).unwrap_or_else(|e| {
                panic!(
                    "RAISE SQLSTATE 'PGRST' detail is not JSON ({e}): {:?}",
                    db.detail()
                )
            });
        assert!(
            msg.get("code").is_some() && msg.get("message").is_some(),
            "PGRST message needs code and message: {msg}"
        );
        assert!(
            detail.get("status").is_some() && detail.get("headers").is_some(),
            "PGRST detail needs status and headers: {detail}"
        );
        let status = detail["status"].as_u64().expect("status is a number") as u16;
        let body = json!({
            "code": msg["code"], "message": msg["message"],
            "details": msg.get("details").cloned().unwrap_or(Value::Null),
            "hint": msg.get("hint").cloned().unwrap_or(Value::Null),
        });
        let headers = detail["headers"]
            .as_object()
            .expect("headers is an object")
            .iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    v.as_str().expect("header values are text").to_string(),
                )
            })
            .collect();
        return (status, body, headers);
    }
    let message = db.message();
    let status = sqlstate_status(code, message, authed);
    // Error.hs `headers err`: a 401 carries `WWW-Authenticate: Bearer`.
    let headers = if status == 401 {
        vec![("www-authenticate".to_string(), "Bearer".to_string())]
    } else {
        vec![]
    };
    (
        status,
        json!({ "code": code, "message": message, "details": db.detail(), "hint": db.hint() }),
        headers,
    )
}

/// `Content-Type` for a media type (src/PostgREST/MediaType.hs `toContentType`): the
/// builtin types get `; charset=utf-8`; a handler's own type (`MTOther`, e.g. a domain
/// named "text/html") and application/octet-stream are sent as they are
/// (test/spec/Feature/Query/CustomMediaSpec.hs: `Accept: text/html` on a function returning
/// the domain "text/html" → `Content-Type: text/html`).
fn content_type(media_type: &str) -> String {
    const BUILTIN: [&str; 7] = [
        "application/json",
        "application/geo+json",
        "text/csv",
        "text/plain",
        "text/xml",
        "application/openapi+json",
        "application/x-www-form-urlencoded",
    ];
    if BUILTIN.contains(&media_type) {
        format!("{media_type}; charset=utf-8")
    } else {
        media_type.to_string()
    }
}

/// The Accept header as PostgREST reads it (src/PostgREST/ApiRequest.hs: `parseHttpAccept`,
/// i.e. ordered by quality, most preferred first; no header is `*/*`).
fn accepted(headers: &Value) -> Vec<String> {
    let Some(accept) = headers
        .as_object()
        .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case("accept")))
        .and_then(|(_, v)| v.as_str())
    else {
        return vec!["*/*".to_string()];
    };
    let mut types: Vec<(f64, String)> = accept
        .split(',')
        .filter_map(|part| {
            let mut fields = part.split(';').map(str::trim);
            let media = fields.next()?.to_ascii_lowercase();
            let q = fields
                .filter_map(|f| f.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            (!media.is_empty() && q > 0.0).then_some((q, media))
        })
        .collect();
    // A stable sort: equal qualities keep the order they were sent in.
    types.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    types.into_iter().map(|(_, m)| m).collect()
}

/// One HTTP response as PostgREST would send it.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Header names lower-cased; Content-Type is always there.
    headers: BTreeMap<String, String>,
    /// JSON responses parsed; a media type handler's body as a JSON string.
    body: Value,
}

impl Response {
    fn content_type(&self) -> &str {
        &self.headers["content-type"]
    }
}

/// An error response: JSON, `application/json; charset=utf-8` (Error.hs
/// `errorResponseFor`), plus the error's own headers.
fn error_exchange(status: u16, body: Value, extra: Vec<(String, String)>) -> Response {
    let mut headers = BTreeMap::new();
    headers.insert("content-type".to_string(), content_type("application/json"));
    // A RAISE's headers are added to PostgREST's own (and may replace Content-Type).
    headers.extend(extra);
    Response {
        status,
        headers,
        body,
    }
}

fn pgrst_error(status: u16, code: &str, message: &str, details: Value) -> Response {
    error_exchange(
        status,
        json!({ "code": code, "message": message, "details": details, "hint": null }),
        vec![],
    )
}

#[derive(Debug)]
struct Plan {
    sql: String,
    /// The body is the function's value as is (a media type handler matched Accept).
    raw: bool,
    /// The negotiated media type (its Content-Type by `content_type`).
    media_type: String,
    read_only: bool,
    hoisted: Vec<(String, String)>,
}

/// Replays one HTTP request the way PostgREST 12 runs it. `path` may carry a query string
/// (GET arguments); `body` is the JSON body of a POST (arguments by name).
fn request(
    method: &str,
    path: &str,
    headers: Value,
    jwt_claims: Option<Value>,
    body: Value,
) -> (u16, Value) {
    let r = exchange(method, path, headers, jwt_claims, body);
    (r.status, r.body)
}

/// `request` with the response's headers.
fn exchange(
    method: &str,
    path: &str,
    headers: Value,
    jwt_claims: Option<Value>,
    body: Value,
) -> Response {
    ensure_roles();
    let mut db = connect_as("authenticator");
    let authed = jwt_claims.is_some();

    // -- Planning (no transaction yet; errors here never reach the database) --
    let (raw_path, query) = path.split_once('?').unwrap_or((path, ""));
    let segments: Vec<String> = raw_path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let mut args = Map::new();
    match method {
        "GET" => {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.insert(
                    percent_decode(k),
                    Value::String(percent_decode(&v.replace('+', " "))),
                );
            }
        }
        "POST" => match &body {
            Value::Object(m) => args = m.clone(),
            Value::Null => {}
            other => panic!("this harness sends JSON objects only, not {other}"),
        },
        // Other verbs are refused below, once the path is resolved (ApiRequest.hs
        // resolves the resource first, then `getAction`).
        _ => {}
    }
    let accepts = accepted(&headers);
    let plan = match segments
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["rpc", name] => {
            // ApiRequest.hs `getAction`: a function takes GET and POST (HEAD and OPTIONS
            // too, not replayed here); any other verb is 405 PGRST101 (Error.hs
            // `InvalidRpcMethod`).
            match method {
                "GET" | "POST" => {}
                "HEAD" | "OPTIONS" => panic!("this harness does not replay {method}"),
                other => {
                    return pgrst_error(
                        405,
                        "PGRST101",
                        &format!("Cannot use the {other} method on RPC"),
                        Value::Null,
                    )
                }
            }
            let keys: BTreeSet<String> = args.keys().cloned().collect();
            let Some(r) = find_routine(&routines(&mut db, name), &keys) else {
                // Error.hs `toJSON (NoRpc ...)`: 404 PGRST202, before any SQL runs.
                let listed = keys.iter().cloned().collect::<Vec<_>>().join(", ");
                let shown = if keys.is_empty() {
                    " without parameters".to_string()
                } else {
                    format!("({listed})")
                };
                let searched = if keys.is_empty() {
                    " without parameters".to_string()
                } else {
                    let s = if keys.len() > 1 { "s" } else { "" };
                    format!(" with parameter{s} {listed}")
                };
                let json_body = if method == "POST" {
                    " or with a single unnamed json/jsonb parameter"
                } else {
                    ""
                };
                return pgrst_error(
                    404,
                    "PGRST202",
                    &format!("Could not find the function {SCHEMA}.{name}{shown} in the schema cache"),
                    json!(format!("Searched for the function {SCHEMA}.{name}{searched}{json_body}, but no matches were found in the schema cache.")),
                );
            };
            let given: Vec<&(String, String, bool)> = r
                .params
                .iter()
                .filter(|p| args.contains_key(&p.0))
                .collect();
            let target = format!("{}.{}", quote_ident(SCHEMA), quote_ident(name));
            let scalar = !r.returns_composite;
            let call_args = given
                .iter()
                .map(|p| format!("{} := pgrst_body.{}", quote_ident(&p.0), quote_ident(&p.0)))
                .collect::<Vec<_>>()
                .join(", ");
            let call = if scalar {
                format!("(SELECT {target}({call_args}) pgrst_scalar) pgrst_call")
            } else {
                format!("{target}({call_args}) pgrst_call")
            };
            let from = if given.is_empty() {
                format!("FROM {call}")
            } else {
                let cols = given
                    .iter()
                    .map(|p| format!("{} {}", quote_ident(&p.0), p.1))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("FROM json_to_record($1::text::json) AS pgrst_body({cols}), LATERAL {call}")
            };
            let select = if scalar {
                "pgrst_call.pgrst_scalar"
            } else {
                "pgrst_call.*"
            };
            // Media type handlers (src/PostgREST/Plan.hs `negotiateContent`): the first
            // accepted media type that has a handler wins. A function returning a domain
            // named after a media type (docs/references/api/media_type_handlers.rst,
            // "Handler Function") handles that type, its value sent as is; the builtin
            // JSON handler takes application/json and */*. None → 406 PGRST107 "None of
            // these media types are available: ..." (CustomMediaSpec.hs; errors.rst's
            // table says 415 for PGRST107, the code and its tests say 406).
            let domain = r
                .returns_type
                .strip_prefix(&format!("{SCHEMA}.\""))
                .and_then(|t| t.strip_suffix('"'))
                .map(str::to_string);
            let picked = accepts.iter().find_map(|m| {
                if scalar && domain.as_deref() == Some(m.as_str()) {
                    Some((true, m.clone()))
                } else if m == "application/json" || m == "*/*" {
                    Some((false, "application/json".to_string()))
                } else {
                    None
                }
            });
            let Some((raw, media_type)) = picked else {
                assert!(
                    !accepts.iter().any(|m| m == "text/csv"),
                    "this harness does not replay text/csv"
                );
                return pgrst_error(
                    406,
                    "PGRST107",
                    &format!(
                        "None of these media types are available: {}",
                        accepts.join(", ")
                    ),
                    Value::Null,
                );
            };
            let agg = match (scalar, r.returns_set) {
                _ if raw => "coalesce(string_agg(_postgrest_t.pgrst_scalar::text, ''), '')",
                (true, false) => "coalesce((json_agg(_postgrest_t.pgrst_scalar)->0)::text, 'null')",
                (true, true) => "coalesce(json_agg(_postgrest_t.pgrst_scalar), '[]')::text",
                (false, _) => "coalesce(json_agg(_postgrest_t), '[]')::text",
            };
            Plan {
                raw,
                media_type,
                sql: format!("SELECT {agg} FROM (SELECT {select} {from}) _postgrest_t"),
                // Plan.hs `callReadPlan`: GET, or a STABLE/IMMUTABLE function, is SQL.Read.
                read_only: method == "GET" || !r.volatile,
                hoisted: r.hoisted,
            }
        }
        [relation] => {
            // v12 does not look the relation up while planning: the query runs (after the
            // pre-request) and a missing relation is 42P01 → 404 (ConcurrentSpec.hs).
            // ApiRequest.hs `getAction`: a relation takes GET, HEAD, POST, PUT, PATCH,
            // DELETE and OPTIONS (only GET is replayed here); any other verb is 405
            // PGRST117 (Error.hs `UnsupportedMethod`; ErrorSpec.hs, CONNECT → 405).
            match method {
                "GET" => {}
                "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
                    panic!("this harness reads relations only, not {method}")
                }
                other => {
                    return pgrst_error(
                        405,
                        "PGRST117",
                        &format!("Unsupported HTTP method: {other}"),
                        Value::Null,
                    )
                }
            }
            assert!(args.is_empty(), "this harness applies no filters");
            if !accepts
                .iter()
                .any(|m| m == "application/json" || m == "*/*")
            {
                return pgrst_error(
                    406,
                    "PGRST107",
                    &format!(
                        "None of these media types are available: {}",
                        accepts.join(", ")
                    ),
                    Value::Null,
                );
            }
            let target = format!("{}.{}", quote_ident(SCHEMA), quote_ident(relation));
            Plan {
                raw: false,
                media_type: "application/json".to_string(),
                sql: format!("SELECT coalesce(json_agg(_postgrest_t), '[]')::text FROM (SELECT {target}.* FROM {target}) _postgrest_t"),
                read_only: true,
                hoisted: vec![],
            }
        }
        // src/PostgREST/ApiRequest.hs `getResource`: any other path is `NotFound`, 404 with
        // the body `{}` in v12 (Error.hs `toJSON NotFound = JSON.object []`; PGRST125 comes
        // with v13, commit fdc26d52fc468feda60a7fbe42b9b2c921601c76).
        _ => return error_exchange(404, json!({}), vec![]),
    };

    // -- The transaction --
    let role = jwt_claims
        .as_ref()
        .and_then(|c| c.get("role"))
        .map(|r| {
            r.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| r.to_string())
        })
        .unwrap_or_else(|| "amba_anon".to_string());
    let mut claims = match jwt_claims {
        Some(Value::Object(m)) => m,
        Some(other) => panic!("JWT claims must be an object, not {other}"),
        None => Map::new(),
    };
    claims.insert("role".into(), Value::String(role.clone()));
    let headers_lc: Map<String, Value> = headers
        .as_object()
        .expect("headers are a JSON object")
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let args_json = Value::Object(args).to_string();

    let begin = if plan.read_only {
        "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"
    } else {
        "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"
    };
    db.batch_execute(begin).unwrap();
    let outcome = (|| -> Result<(String, Option<String>, Option<String>), postgres::Error> {
        let mut set_sql =
            "SELECT set_config('search_path', $1, true), set_config('role', $2, true), \
             set_config('request.jwt.claims', $3, true), set_config('request.method', $4, true), \
             set_config('request.path', $5, true), set_config('request.headers', $6, true), \
             set_config('request.cookies', $7, true)"
                .to_string();
        let search_path = format!("{}, {}", quote_ident(SCHEMA), quote_ident("public"));
        let claims_s = Value::Object(claims).to_string();
        let headers_s = Value::Object(headers_lc).to_string();
        let cookies = "{}".to_string();
        let mut params: Vec<String> = vec![
            search_path,
            role.clone(),
            claims_s,
            method.to_string(),
            raw_path.to_string(),
            headers_s,
            cookies,
        ];
        for (k, v) in &plan.hoisted {
            params.push(k.clone());
            params.push(v.clone());
            set_sql.push_str(&format!(
                ", set_config(${}, ${}, true)",
                params.len() - 1,
                params.len()
            ));
        }
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        db.query(set_sql.as_str(), &refs)?;
        db.query("SELECT \"amba_api\".\"pre_request\"()", &[])?;
        let row = if plan.sql.contains("$1") {
            db.query_one(plan.sql.as_str(), &[&args_json])?
        } else {
            db.query_one(plan.sql.as_str(), &[])?
        };
        // src/PostgREST/Query/Statements.hs: the same statement reads
        // nullif(current_setting('response.headers', true), '') and 'response.status'.
        let gucs = db.query_one(
            "SELECT nullif(current_setting('response.headers', true), ''),
                    nullif(current_setting('response.status', true), '')",
            &[],
        )?;
        Ok((row.get::<_, String>(0), gucs.get(0), gucs.get(1)))
    })();
    match outcome {
        Ok((text, guc_headers, guc_status)) => match db.batch_execute("COMMIT") {
            Ok(()) => {
                let mut headers = BTreeMap::new();
                headers.insert("content-type".to_string(), content_type(&plan.media_type));
                // src/PostgREST/Response.hs `overrideStatusHeaders`: response.status
                // replaces the status; response.headers (a JSON array of one-key objects,
                // Response/GucHeader.hs) are kept, PostgREST's own only where the function
                // set none of that name (`addHeadersIfNotIncluded`).
                let mut status = 200;
                if let Some(s) = guc_status {
                    status = s.parse().expect("response.status is a status code");
                }
                if let Some(h) = guc_headers {
                    let list: Vec<Map<String, Value>> =
                        serde_json::from_str(&h).expect("response.headers is a JSON array");
                    for one in list {
                        let (k, v) = one.into_iter().next().expect("one key per object");
                        headers.insert(k.to_ascii_lowercase(), v.as_str().unwrap().to_string());
                    }
                }
                let body = if plan.raw {
                    Value::String(text)
                } else {
                    serde_json::from_str(&text).expect("the body is JSON")
                };
                Response {
                    status,
                    headers,
                    body,
                }
            }
            Err(e) => {
                let (status, body, extra) = error_response_with_headers(&e, authed);
                error_exchange(status, body, extra)
            }
        },
        Err(e) => {
            db.batch_execute("ROLLBACK").unwrap();
            let (status, body, extra) = error_response_with_headers(&e, authed);
            error_exchange(status, body, extra)
        }
    }
}

fn post(path: &str, headers: Value, jwt: Option<Value>, body: Value) -> (u16, Value) {
    request("POST", path, headers, jwt, body)
}

fn get(path: &str, headers: Value, jwt: Option<Value>) -> (u16, Value) {
    request("GET", path, headers, jwt, Value::Null)
}

/// Asserts an error response: status, contract code, and a message starting with the code.
#[track_caller]
fn assert_error(resp: &(u16, Value), status: u16, code: &str) {
    assert_eq!(
        resp.0, status,
        "expected HTTP {status} {code}, got {resp:?}"
    );
    assert_eq!(resp.1["code"], code, "expected code {code}: {resp:?}");
    let message = resp.1["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message is text: {resp:?}"));
    if !code.starts_with("PGRST") && code.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        assert!(
            message.starts_with(code),
            "message should begin with {code}: {resp:?}"
        );
    }
}

fn admin_create(key: &str, variants: Value, status: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "experiment_key": key, "variants": variants });
    if let Some(s) = status {
        body["status"] = json!(s);
    }
    post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        body,
    )
}

fn two_variants() -> Value {
    json!([{ "key": "control", "weight": 50 }, { "key": "treatment", "weight": 50 }])
}

fn url(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Endpoints: success
// ------------------------------------------------------------------------------------------

#[test]
fn client_endpoints_assign_expose_track_my_assignments() {
    let exp = unique("http_client_ok");
    assert_eq!(admin_create(&exp, two_variants(), None).0, 200);
    let user = unique("user");

    let (status, body) = post(
        "/rpc/assign",
        client_headers(),
        client_jwt(&user),
        json!({ "experiment_key": exp }),
    );
    assert_eq!(status, 200, "{body}");
    let variant = body["variant"].as_str().expect("variant").to_string();
    assert_eq!(body, json!({ "experiment_key": exp, "variant": variant }));
    assert!(variant == "control" || variant == "treatment");
    // Sticky, and the same as the SQL API says for that user.
    let again = post(
        "/rpc/assign",
        client_headers(),
        client_jwt(&user),
        json!({ "experiment_key": exp }),
    );
    assert_eq!(again, (200, body.clone()));
    let stored: String = connect()
        .query_one("SELECT amba_assign($1, $2)", &[&exp, &user])
        .unwrap()
        .get(0);
    assert_eq!(stored, variant);

    // Not exposed yet.
    let (status, rows) = get("/my_assignments", client_headers(), client_jwt(&user));
    assert_eq!(status, 200);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["experiment_key"] == exp.as_str())
        .expect("own row")
        .clone();
    assert_eq!(row["variant"], variant.as_str());
    assert!(row["assigned_at"].is_string());
    assert!(
        row["exposed_at"].is_null(),
        "exposed_at is null until exposed: {row}"
    );
    let mut keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["assigned_at", "experiment_key", "exposed_at", "variant"]
    );

    let (status, body) = post(
        "/rpc/expose",
        client_headers(),
        client_jwt(&user),
        json!({ "experiment_key": exp }),
    );
    assert_eq!(
        (status, body),
        (200, json!({ "experiment_key": exp, "variant": variant }))
    );
    let (_, rows) = get("/my_assignments", client_headers(), client_jwt(&user));
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["experiment_key"] == exp.as_str())
        .unwrap()
        .clone();
    assert!(
        row["exposed_at"].is_string(),
        "exposed_at set after expose: {row}"
    );
    // The first exposure time is kept.
    post(
        "/rpc/expose",
        client_headers(),
        client_jwt(&user),
        json!({ "experiment_key": exp }),
    );
    let (_, rows2) = get("/my_assignments", client_headers(), client_jwt(&user));
    let row2 = rows2
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["experiment_key"] == exp.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["exposed_at"], row2["exposed_at"]);

    let event = unique("purchase");
    let (status, body) = post(
        "/rpc/track",
        client_headers(),
        client_jwt(&user),
        json!({ "event": event, "properties": { "amount": 12.5 } }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"], event.as_str());
    assert!(body["occurred_at"].is_string(), "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2);
    // Stored for the token's user, with the properties; `properties` is optional.
    let n: i64 = connect()
        .query_one(
            "SELECT count(*) FROM amba.events WHERE user_id = $1 AND event = $2 AND properties = '{\"amount\": 12.5}'",
            &[&user, &event],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let (status, _) = post(
        "/rpc/track",
        client_headers(),
        client_jwt(&user),
        json!({ "event": event }),
    );
    assert_eq!(status, 200);

    // The conversion shows in the results (admin).
    let (status, results) = get(
        &format!(
            "/rpc/experiments_results?experiment_key={}&conversion_event={}",
            url(&exp),
            url(&event)
        ),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(status, 200, "{results}");
    let mine = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["variant"] == variant.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (
            mine["assigned_count"].clone(),
            mine["exposed_count"].clone(),
            mine["converted_count"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );
}

#[test]
fn admin_endpoints_create_list_get_update_results_delete() {
    let exp = unique("http_admin_ok");
    let (status, created) = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": exp, "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 3}],
                "name": "Checkout button", "description": "colour test" }),
    );
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["key"], exp.as_str());
    assert_eq!(created["name"], "Checkout button");
    assert_eq!(created["description"], "colour test");
    assert_eq!(created["status"], "active");
    assert_eq!(
        created["variants"],
        json!([{"key": "a", "weight": 1}, {"key": "b", "weight": 3}])
    );
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());

    let (status, list) = get("/rpc/experiments_list", admin_headers(), admin_jwt());
    assert_eq!(status, 200);
    let listed = list
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|e| e["key"] == exp.as_str())
        .expect("listed");
    assert_eq!(listed, &created);

    let (status, got) = get(
        &format!("/rpc/experiments_get?experiment_key={}", url(&exp)),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!((status, &got), (200, &created));

    let (status, updated) = post(
        "/rpc/experiments_update",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": exp, "status": "paused",
                "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}, {"key": "c", "weight": 2}] }),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "paused");
    assert_eq!(updated["name"], "Checkout button");
    assert_eq!(updated["variants"].as_array().unwrap().len(), 3);

    let (status, results) = get(
        &format!(
            "/rpc/experiments_results?experiment_key={}&conversion_event=buy",
            url(&exp)
        ),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(status, 200, "{results}");
    let rows = results.as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["variant"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(rows[0]["is_control"], true);
    let columns: BTreeSet<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for c in [
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
        assert!(columns.contains(c), "results have {c}: {columns:?}");
    }
    // alpha is the optional third argument, also by query string; POST works too.
    let (status, _) = get(
        &format!(
            "/rpc/experiments_results?experiment_key={}&conversion_event=buy&alpha=0.1",
            url(&exp)
        ),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(status, 200);
    let (status, _) = post(
        "/rpc/experiments_results",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": exp, "conversion_event": "buy" }),
    );
    assert_eq!(status, 200);

    let (status, deleted) = post(
        "/rpc/experiments_delete",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": exp }),
    );
    assert_eq!((status, deleted), (200, json!(true)));
    let resp = get(
        &format!("/rpc/experiments_get?experiment_key={}", url(&exp)),
        admin_headers(),
        admin_jwt(),
    );
    assert_error(&resp, 404, "EXPERIMENT_NOT_FOUND");
}

// ------------------------------------------------------------------------------------------
// The HTTP error table
// ------------------------------------------------------------------------------------------

#[test]
fn error_409_experiment_inactive_and_exists() {
    let exp = unique("http_paused");
    assert_eq!(admin_create(&exp, two_variants(), Some("paused")).0, 200);
    let resp = post(
        "/rpc/assign",
        client_headers(),
        client_jwt(&unique("u")),
        json!({ "experiment_key": exp }),
    );
    assert_error(&resp, 409, "EXPERIMENT_INACTIVE");
    for status in ["draft", "ended"] {
        let e = unique("http_inactive");
        assert_eq!(admin_create(&e, two_variants(), Some(status)).0, 200);
        let resp = post(
            "/rpc/assign",
            client_headers(),
            client_jwt(&unique("u")),
            json!({ "experiment_key": e }),
        );
        assert_error(&resp, 409, "EXPERIMENT_INACTIVE");
    }

    let resp = admin_create(&exp, two_variants(), None);
    assert_error(&resp, 409, "EXPERIMENT_EXISTS");
}

#[test]
fn error_404_assignment_required_and_experiment_not_found() {
    let exp = unique("http_404");
    assert_eq!(admin_create(&exp, two_variants(), None).0, 200);
    let user = unique("u");
    let resp = post(
        "/rpc/expose",
        client_headers(),
        client_jwt(&user),
        json!({ "experiment_key": exp }),
    );
    assert_error(&resp, 404, "ASSIGNMENT_REQUIRED");

    let missing = unique("http_missing");
    let q = url(&missing);
    assert_error(
        &get(
            &format!("/rpc/experiments_get?experiment_key={q}"),
            admin_headers(),
            admin_jwt(),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    assert_error(
        &post(
            "/rpc/experiments_update",
            admin_headers(),
            admin_jwt(),
            json!({ "experiment_key": missing, "status": "paused" }),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    assert_error(
        &post(
            "/rpc/experiments_delete",
            admin_headers(),
            admin_jwt(),
            json!({ "experiment_key": missing }),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    assert_error(
        &get(
            &format!("/rpc/experiments_results?experiment_key={q}&conversion_event=buy"),
            admin_headers(),
            admin_jwt(),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    assert_error(
        &post(
            "/rpc/assign",
            client_headers(),
            client_jwt(&user),
            json!({ "experiment_key": missing }),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    assert_error(
        &post(
            "/rpc/expose",
            client_headers(),
            client_jwt(&user),
            json!({ "experiment_key": missing }),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
}

#[test]
fn error_400_invalid_argument() {
    let exp = unique("http_400");
    assert_error(
        &admin_create(&exp, json!([{ "key": "only", "weight": 1 }]), None),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &admin_create(
            &exp,
            json!([{ "key": "a", "weight": "1" }, { "key": "b", "weight": 1 }]),
            None,
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &admin_create("bad key!", two_variants(), None),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &admin_create(&exp, two_variants(), Some("running")),
        400,
        "INVALID_ARGUMENT",
    );
    // Nothing was left behind by the failed creates.
    assert_eq!(admin_create(&exp, two_variants(), None).0, 200);
    assert_error(
        &post(
            "/rpc/experiments_update",
            admin_headers(),
            admin_jwt(),
            json!({ "experiment_key": exp, "status": "bogus" }),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &get(
            &format!(
                "/rpc/experiments_results?experiment_key={}&conversion_event=buy&alpha=2",
                url(&exp)
            ),
            admin_headers(),
            admin_jwt(),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &post(
            "/rpc/assign",
            client_headers(),
            client_jwt("u1"),
            json!({ "experiment_key": "" }),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    let user = unique("u");
    assert_error(
        &post(
            "/rpc/track",
            client_headers(),
            client_jwt(&user),
            json!({ "event": "buy", "properties": [1, 2] }),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &post(
            "/rpc/track",
            client_headers(),
            client_jwt(&user),
            json!({ "event": "" }),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    // A too long user id in the token is bad input as well.
    assert_error(
        &post(
            "/rpc/assign",
            client_headers(),
            client_jwt(&"x".repeat(513)),
            json!({ "experiment_key": exp }),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    let n: i64 = connect()
        .query_one(
            "SELECT count(*) FROM amba.events WHERE user_id = $1",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[test]
fn error_401_missing_unknown_and_revoked_api_keys() {
    let exp = unique("http_401");
    assert_eq!(admin_create(&exp, two_variants(), None).0, 200);
    let body = json!({ "experiment_key": exp });
    let user = unique("u");

    // Missing (or empty) key, on client and admin endpoints alike.
    assert_error(
        &post("/rpc/assign", json!({}), client_jwt(&user), body.clone()),
        401,
        "API_KEY_REQUIRED",
    );
    assert_error(
        &post(
            "/rpc/assign",
            json!({ "X-Api-Key": "" }),
            client_jwt(&user),
            body.clone(),
        ),
        401,
        "API_KEY_REQUIRED",
    );
    assert_error(
        &get("/my_assignments", json!({}), client_jwt(&user)),
        401,
        "API_KEY_REQUIRED",
    );
    assert_error(
        &get("/rpc/experiments_list", json!({}), admin_jwt()),
        401,
        "API_KEY_REQUIRED",
    );
    assert_error(
        &get("/my_assignments", json!({}), None),
        401,
        "API_KEY_REQUIRED",
    );

    // Unknown key.
    let bogus = json!({ "X-Api-Key": format!("amba_{}", "A".repeat(43)) });
    assert_error(
        &post(
            "/rpc/assign",
            bogus.clone(),
            client_jwt(&user),
            body.clone(),
        ),
        401,
        "API_KEY_INVALID",
    );
    assert_error(
        &get("/rpc/experiments_list", bogus, admin_jwt()),
        401,
        "API_KEY_INVALID",
    );
    // Header names are case-insensitive.
    assert_eq!(
        post(
            "/rpc/assign",
            json!({ "x-api-key": keys().client }),
            client_jwt(&user),
            body.clone()
        )
        .0,
        200
    );

    // Revoked keys, client and admin.
    let mut db = connect();
    let name = unique("http_revoked");
    let plaintext: String = db
        .query_one("SELECT amba_create_api_key($1)", &[&name])
        .unwrap()
        .get(0);
    let admin_name = unique("http_revoked_admin");
    let admin_plain: String = db
        .query_one("SELECT amba_create_api_key($1, 'admin')", &[&admin_name])
        .unwrap()
        .get(0);
    let hdr = json!({ "X-Api-Key": plaintext });
    let admin_hdr = json!({ "X-Api-Key": admin_plain });
    assert_eq!(
        post("/rpc/assign", hdr.clone(), client_jwt(&user), body.clone()).0,
        200
    );
    assert_eq!(
        get("/rpc/experiments_list", admin_hdr.clone(), admin_jwt()).0,
        200
    );
    let revoked: bool = db
        .query_one("SELECT amba_revoke_api_key($1)", &[&name])
        .unwrap()
        .get(0);
    assert!(revoked);
    assert!(db
        .query_one("SELECT amba_revoke_api_key($1)", &[&admin_name])
        .unwrap()
        .get::<_, bool>(0));
    assert!(
        !db.query_one("SELECT amba_revoke_api_key($1)", &[&name])
            .unwrap()
            .get::<_, bool>(0),
        "already revoked"
    );
    assert_error(
        &post("/rpc/assign", hdr, client_jwt(&user), body),
        401,
        "API_KEY_INVALID",
    );
    assert_error(
        &get("/rpc/experiments_list", admin_hdr, admin_jwt()),
        401,
        "API_KEY_INVALID",
    );
}

#[test]
fn error_403_forbidden_for_client_keys_and_roles_on_admin_endpoints() {
    let exp = unique("http_403");
    assert_eq!(admin_create(&exp, two_variants(), None).0, 200);
    let create = json!({ "experiment_key": unique("http_403_new"), "variants": two_variants() });
    let q = format!("?experiment_key={}", url(&exp));

    // A client key, even with an admin token.
    assert_error(
        &post(
            "/rpc/experiments_create",
            client_headers(),
            admin_jwt(),
            create.clone(),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &get("/rpc/experiments_list", client_headers(), admin_jwt()),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &get(
            &format!("/rpc/experiments_get{q}"),
            client_headers(),
            admin_jwt(),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &post(
            "/rpc/experiments_delete",
            client_headers(),
            admin_jwt(),
            json!({ "experiment_key": exp }),
        ),
        403,
        "FORBIDDEN",
    );
    // The amba_client role, even with an admin key.
    let user = unique("u");
    assert_error(
        &post(
            "/rpc/experiments_create",
            admin_headers(),
            client_jwt(&user),
            create.clone(),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &get("/rpc/experiments_list", admin_headers(), client_jwt(&user)),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &post(
            "/rpc/experiments_update",
            admin_headers(),
            client_jwt(&user),
            json!({ "experiment_key": exp, "status": "ended" }),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &get(
            &format!("/rpc/experiments_results{q}&conversion_event=buy"),
            client_headers(),
            client_jwt(&user),
        ),
        403,
        "FORBIDDEN",
    );
    // No token at all (amba_anon).
    assert_error(
        &get("/rpc/experiments_list", admin_headers(), None),
        403,
        "FORBIDDEN",
    );
    // PostgREST routes on the decoded path but sets request.path to the raw one.
    assert_error(
        &post(
            "/rpc/experiments%5Fcreate",
            client_headers(),
            admin_jwt(),
            create.clone(),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &get(
            "/rpc/%65xperiments_list",
            admin_headers(),
            client_jwt(&user),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &post(
            "/rpc/%61ssign",
            client_headers(),
            None,
            json!({ "experiment_key": exp }),
        ),
        403,
        "FORBIDDEN",
    );

    // Nothing happened.
    let mut db = connect();
    let e: i64 = db
        .query_one(
            "SELECT count(*) FROM amba.experiments WHERE key = $1",
            &[&create["experiment_key"].as_str()],
        )
        .unwrap()
        .get(0);
    assert_eq!(e, 0);
    let s: String = db
        .query_one(
            "SELECT status FROM amba.experiments WHERE key = $1",
            &[&exp],
        )
        .unwrap()
        .get(0);
    assert_eq!(s, "active");

    // Client endpoints need the client role and a sub.
    assert_error(
        &post(
            "/rpc/assign",
            client_headers(),
            None,
            json!({ "experiment_key": exp }),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &get("/my_assignments", client_headers(), None),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &post(
            "/rpc/assign",
            admin_headers(),
            admin_jwt(),
            json!({ "experiment_key": exp }),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &post(
            "/rpc/assign",
            client_headers(),
            Some(json!({ "role": "amba_client" })),
            json!({ "experiment_key": exp }),
        ),
        403,
        "FORBIDDEN",
    );
    assert_error(
        &post(
            "/rpc/track",
            client_headers(),
            Some(json!({ "role": "amba_client", "sub": "" })),
            json!({ "event": "buy" }),
        ),
        403,
        "FORBIDDEN",
    );
    // A role PostgREST may not switch to is refused by the database itself.
    let resp = post(
        "/rpc/assign",
        client_headers(),
        Some(json!({ "role": "postgres", "sub": user })),
        json!({ "experiment_key": exp }),
    );
    assert_eq!(resp.0, 403, "{resp:?}");
    assert_eq!(resp.1["code"], "42501");
    // A role that does not exist: set_config('role') fails with 22023, which PostgREST
    // v12.2.12 maps to 400 (Error.hs `pgErrorStatus`: no 22023 case, "other → 400";
    // PostgREST issue #3601). From v14.0 it is 401 (commit 8390df0f, PR #4081).
    let resp = post(
        "/rpc/assign",
        client_headers(),
        Some(json!({ "role": unique("no_such_role") })),
        json!({ "experiment_key": exp }),
    );
    assert_eq!(resp.0, 400, "{resp:?}");
    assert_eq!(resp.1["code"], "22023", "{resp:?}");
    assert!(
        resp.1["message"].as_str().unwrap().starts_with("role "),
        "{resp:?}"
    );
}

#[test]
fn api_keys_are_hashed_long_unique_and_names_stay_taken() {
    let mut db = connect();
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let name = unique("http_keystore");
        let kind = if i % 2 == 0 { "client" } else { "admin" };
        let plaintext: String = db
            .query_one("SELECT amba_create_api_key($1, $2)", &[&name, &kind])
            .unwrap()
            .get(0);
        assert!(
            plaintext.chars().count() >= 32,
            "{plaintext:?} is shorter than 32 characters"
        );
        assert!(
            plaintext.chars().all(|c| c.is_ascii_graphic()),
            "{plaintext:?} is header-safe"
        );
        assert!(seen.insert(plaintext.clone()), "keys are unique");
        let (row_text, found, kind_stored): (String, i64, String) = {
            let r = db
                .query_one(
                    "SELECT k::text,
                            (SELECT count(*) FROM amba.api_keys x
                              WHERE position($2 IN x::text) > 0
                                 OR position(convert_to($2, 'UTF8') IN x.key_hash) > 0
                                 OR position(convert_to($2, 'UTF8') IN convert_to(x::text, 'UTF8')) > 0),
                            k.kind
                       FROM amba.api_keys k WHERE k.name = $1",
                    &[&name, &plaintext],
                )
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        assert_eq!(
            found, 0,
            "the plaintext is stored nowhere in amba.api_keys: {row_text}"
        );
        assert_eq!(kind_stored, kind);
        // The plaintext base64 payload (without a prefix) is not stored either.
        let tail = &plaintext[plaintext.len() - 32..];
        assert!(!row_text.contains(tail));
    }
    // No column of the table is the plaintext under another name.
    let columns: Vec<String> = db
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'amba.api_keys'::regclass AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !columns
            .iter()
            .any(|c| c.contains("plain") || c == "key" || c == "secret"),
        "{columns:?}"
    );

    // 409 API_KEY_EXISTS for a taken name, also once revoked (SQLSTATE 23505).
    let name = unique("http_taken");
    db.query_one("SELECT amba_create_api_key($1)", &[&name])
        .unwrap();
    let err = db
        .query_one("SELECT amba_create_api_key($1, 'admin')", &[&name])
        .unwrap_err();
    let dbe = err.as_db_error().expect("a database error");
    assert_eq!(dbe.code().code(), "23505");
    assert!(
        dbe.message().starts_with("API_KEY_EXISTS"),
        "{}",
        dbe.message()
    );
    assert!(db
        .query_one("SELECT amba_revoke_api_key($1)", &[&name])
        .unwrap()
        .get::<_, bool>(0));
    let err = db
        .query_one("SELECT amba_create_api_key($1)", &[&name])
        .unwrap_err();
    let dbe = err.as_db_error().unwrap();
    assert_eq!(dbe.code().code(), "23505");
    assert!(dbe.message().starts_with("API_KEY_EXISTS"));
    // Over HTTP (only for completeness: keys are created in SQL) it is a 409: PostgREST maps
    // 23505 to 409 by itself, and the amba_api error wrapper gives it the contract code.
    assert_eq!(error_response(&err, true).0, 409);
    let mut admin = connect();
    let mut tx = admin.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE amba_admin").unwrap();
    let err = tx
        .query_one(
            "SELECT amba._http_rethrow($1, $2)",
            &[&dbe.code().code(), &dbe.message()],
        )
        .unwrap_err();
    let resp = error_response(&err, true);
    assert_error(&resp, 409, "API_KEY_EXISTS");
    drop(tx);

    // Key creation is not reachable over HTTP.
    let resp = post(
        "/rpc/amba_create_api_key",
        admin_headers(),
        admin_jwt(),
        json!({ "name": unique("http_k") }),
    );
    assert_error(&resp, 404, "PGRST202");
    // Nor can an admin (or anyone but a DB admin with amba_admin) create one from a client role.
    let mut c = connect();
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE amba_client").unwrap();
    let err = tx
        .query_one("SELECT amba_create_api_key('x')", &[])
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
}

// ------------------------------------------------------------------------------------------
// A client cannot act for another user
// ------------------------------------------------------------------------------------------

#[test]
fn clients_act_only_for_the_token_user() {
    let exp = unique("http_other_user");
    assert_eq!(admin_create(&exp, two_variants(), None).0, 200);
    let a = unique("user_a");
    let b = unique("user_b");

    // A user_id in the body is not a parameter of any endpoint: 404 PGRST202.
    for (path, body) in [
        (
            "/rpc/assign",
            json!({ "experiment_key": exp, "user_id": b }),
        ),
        (
            "/rpc/expose",
            json!({ "experiment_key": exp, "user_id": b }),
        ),
        ("/rpc/track", json!({ "event": "buy", "user_id": b })),
        (
            "/rpc/track",
            json!({ "event": "buy", "properties": null, "user_id": b }),
        ),
    ] {
        let resp = post(path, client_headers(), client_jwt(&a), body);
        assert_error(&resp, 404, "PGRST202");
    }
    let resp = get(
        &format!(
            "/rpc/assign?experiment_key={}&user_id={}",
            url(&exp),
            url(&b)
        ),
        client_headers(),
        client_jwt(&a),
    );
    assert_error(&resp, 404, "PGRST202");
    let mut db = connect();
    for user in [&a, &b] {
        let n: i64 = db
            .query_one(
                "SELECT (SELECT count(*) FROM amba.assignments WHERE user_id = $1)
                      + (SELECT count(*) FROM amba.events WHERE user_id = $1)",
                &[user],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "nothing stored for {user}");
    }
    // No client endpoint has a user parameter at all.
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'amba_api'::regnamespace
                AND proname IN ('assign', 'expose', 'track') AND 'user_id' = ANY (coalesce(proargnames, '{}'))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // Assign A; B sees nothing of it; A sees only A's rows.
    let (status, body) = post(
        "/rpc/assign",
        client_headers(),
        client_jwt(&a),
        json!({ "experiment_key": exp }),
    );
    assert_eq!(status, 200, "{body}");
    let (status, rows_b) = get("/my_assignments", client_headers(), client_jwt(&b));
    assert_eq!((status, rows_b), (200, json!([])));
    let (_, rows_a) = get("/my_assignments", client_headers(), client_jwt(&a));
    let rows_a = rows_a.as_array().unwrap();
    assert_eq!(rows_a.len(), 1, "{rows_a:?}");
    assert_eq!(rows_a[0]["experiment_key"], exp.as_str());
    // B cannot expose A's assignment.
    assert_error(
        &post(
            "/rpc/expose",
            client_headers(),
            client_jwt(&b),
            json!({ "experiment_key": exp }),
        ),
        404,
        "ASSIGNMENT_REQUIRED",
    );
    let stored: Vec<String> = db
        .query("SELECT a.user_id FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1", &[&exp])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, vec![a.clone()]);
    // B's tracking is stored under B, never under anyone else.
    let event = unique("evt");
    assert_eq!(
        post(
            "/rpc/track",
            client_headers(),
            client_jwt(&b),
            json!({ "event": event })
        )
        .0,
        200
    );
    let owners: Vec<String> = db
        .query(
            "SELECT user_id FROM amba.events WHERE event = $1",
            &[&event],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec![b.clone()]);
    // Without a sub, my_assignments shows nobody's rows.
    let resp = get(
        "/my_assignments",
        client_headers(),
        Some(json!({ "role": "amba_client" })),
    );
    assert!(resp == (200, json!([])) || resp.0 == 403, "{resp:?}");
}

// ------------------------------------------------------------------------------------------
// Audit trail attribution
// ------------------------------------------------------------------------------------------

#[test]
fn http_changes_are_attributed_to_the_api_key_and_jwt_sub() {
    let exp = unique("http_audit");
    let sub = unique("ops");
    let jwt = Some(json!({ "role": "amba_admin", "sub": sub }));
    assert_eq!(
        post(
            "/rpc/experiments_create",
            admin_headers(),
            jwt.clone(),
            json!({ "experiment_key": exp, "variants": two_variants() })
        )
        .0,
        200
    );
    assert_eq!(
        post(
            "/rpc/experiments_update",
            admin_headers(),
            jwt.clone(),
            json!({ "experiment_key": exp, "status": "ended" })
        )
        .0,
        200
    );
    assert_eq!(
        post(
            "/rpc/experiments_delete",
            admin_headers(),
            jwt.clone(),
            json!({ "experiment_key": exp })
        )
        .0,
        200
    );

    let mut db = connect();
    let rows = db
        .query("SELECT action, changed_by, api_key_name, before, after FROM amba_experiment_history($1)", &[&exp])
        .unwrap();
    let actions: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(actions, ["create", "update", "delete"]);
    for r in &rows {
        let changed_by: String = r.get(1);
        let key_name: Option<String> = r.get(2);
        assert_eq!(key_name.as_deref(), Some(keys().admin_name.as_str()));
        assert!(changed_by.contains("authenticator"), "{changed_by}");
        assert!(changed_by.contains("amba_admin"), "{changed_by}");
        assert!(
            changed_by.contains(&sub),
            "the JWT sub is part of who: {changed_by}"
        );
    }
    let subs: Vec<Option<String>> = db
        .query("SELECT jwt_sub FROM amba.experiment_history WHERE experiment_key = $1 ORDER BY history_id", &[&exp])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(subs, vec![Some(sub.clone()); 3]);

    // Outside HTTP there is no key name.
    let sql_exp = unique("http_audit_sql");
    db.query_one(
        "SELECT amba_create_experiment($1, $2::text::jsonb)",
        &[&sql_exp, &two_variants().to_string()],
    )
    .unwrap();
    let key_name: Option<String> = db
        .query_one(
            "SELECT api_key_name FROM amba_experiment_history($1)",
            &[&sql_exp],
        )
        .unwrap()
        .get(0);
    assert_eq!(key_name, None);
    // And the key name of one request does not leak into the next transaction on the same
    // connection (set_config(..., true) is transaction-local).
    let mut conn = connect_as("authenticator");
    conn.batch_execute("BEGIN").unwrap();
    conn.query("SELECT set_config('role', 'amba_admin', true), set_config('request.path', '/rpc/experiments_list', true), set_config('request.headers', $1, true)", &[&json!({ "x-api-key": keys().admin }).to_string()]).unwrap();
    conn.query("SELECT amba_api.pre_request()", &[]).unwrap();
    let inside: String = conn
        .query_one("SELECT current_setting('amba.api_key_name', true)", &[])
        .unwrap()
        .get(0);
    assert_eq!(inside, keys().admin_name);
    conn.batch_execute("COMMIT").unwrap();
    let after: Option<String> = conn
        .query_one(
            "SELECT nullif(current_setting('amba.api_key_name', true), '')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(after, None);
}

// ------------------------------------------------------------------------------------------
// Transactions: GET endpoints are read-only, POST ones write
// ------------------------------------------------------------------------------------------

#[test]
fn get_endpoints_are_stable_and_post_endpoints_volatile() {
    let mut db = connect();
    let vol = |db: &mut Client, name: &str| -> String {
        db.query_one(
            "SELECT provolatile::text FROM pg_proc WHERE pronamespace = 'amba_api'::regnamespace AND proname = $1",
            &[&name],
        )
        .unwrap()
        .get(0)
    };
    for f in [
        "experiments_list",
        "experiments_get",
        "experiments_results",
        "experiments_list_layers",
    ] {
        assert_eq!(
            vol(&mut db, f),
            "s",
            "GET /rpc/{f} runs in a READ ONLY transaction: STABLE"
        );
    }
    for f in [
        "assign",
        "expose",
        "track",
        "experiments_create",
        "experiments_update",
        "experiments_delete",
    ] {
        assert_eq!(vol(&mut db, f), "v", "POST /rpc/{f} writes: VOLATILE");
    }
    // The pre-request hook runs in every transaction, read-only ones included.
    assert_ne!(vol(&mut db, "pre_request"), "v");

    // The GETs really work READ ONLY (the harness opens GET transactions READ ONLY) ...
    let exp = unique("http_ro");
    assert_eq!(admin_create(&exp, two_variants(), None).0, 200);
    let q = url(&exp);
    assert_eq!(
        get("/rpc/experiments_list", admin_headers(), admin_jwt()).0,
        200
    );
    assert_eq!(
        get(
            &format!("/rpc/experiments_get?experiment_key={q}"),
            admin_headers(),
            admin_jwt()
        )
        .0,
        200
    );
    assert_eq!(
        get(
            &format!("/rpc/experiments_results?experiment_key={q}&conversion_event=x"),
            admin_headers(),
            admin_jwt()
        )
        .0,
        200
    );
    let user = unique("u");
    assert_eq!(
        post(
            "/rpc/assign",
            client_headers(),
            client_jwt(&user),
            json!({ "experiment_key": exp })
        )
        .0,
        200
    );
    assert_eq!(
        get("/my_assignments", client_headers(), client_jwt(&user)).0,
        200
    );
    // ... so a write through GET fails the way PostgREST reports it: 405.
    let resp = get(
        &format!("/rpc/experiments_update?experiment_key={q}&status=paused"),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(resp.0, 405, "{resp:?}");
    assert_eq!(resp.1["code"], "25006");
    let resp = get(
        &format!("/rpc/assign?experiment_key={q}"),
        client_headers(),
        client_jwt(&unique("u")),
    );
    assert_eq!(resp.0, 405, "{resp:?}");
    let status: String = db
        .query_one(
            "SELECT status FROM amba.experiments WHERE key = $1",
            &[&exp],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
}

// ------------------------------------------------------------------------------------------
// The harness itself behaves like PostgREST on a few known cases
// ------------------------------------------------------------------------------------------

#[test]
fn harness_matches_postgrest_routing() {
    // Unknown function: 404 PGRST202, decided before any SQL runs (so even without a key).
    assert_error(
        &post("/rpc/nope", json!({}), None, json!({})),
        404,
        "PGRST202",
    );
    // Missing required argument.
    assert_error(
        &post("/rpc/assign", client_headers(), client_jwt("u"), json!({})),
        404,
        "PGRST202",
    );
    assert_error(
        &get(
            "/rpc/experiments_results?experiment_key=x",
            admin_headers(),
            admin_jwt(),
        ),
        404,
        "PGRST202",
    );
    // Unknown relation: v12 runs the query, 42P01 → 404 (ConcurrentSpec.hs).
    assert_error(
        &get("/assignments", client_headers(), client_jwt("u")),
        404,
        "42P01",
    );
    // A path that is neither /<relation> nor /rpc/<function>: 404 with an empty object
    // (ApiRequest.hs `getResource` → NotFound; ErrorSpec.hs "gives 404 on a single nested
    // route").
    assert_eq!(
        get("/rpc/assign/more", client_headers(), client_jwt("u")),
        (404, json!({}))
    );
    // Content types (MediaType.hs `toContentType`, Error.hs `errorResponseFor`): JSON
    // bodies and every error are `application/json; charset=utf-8`.
    let listed = exchange(
        "GET",
        "/rpc/experiments_list",
        admin_headers(),
        admin_jwt(),
        Value::Null,
    );
    assert_eq!(
        (listed.status, listed.content_type()),
        (200, "application/json; charset=utf-8")
    );
    let refused = exchange("GET", "/rpc/experiments_list", json!({}), None, Value::Null);
    assert_eq!(
        (refused.status, refused.content_type()),
        (401, "application/json; charset=utf-8")
    );
    // A RAISE SQLSTATE 'PGRST' (amba's own errors) carries only the headers it names; a
    // 401 from an SQLSTATE (42501 without a JWT) adds `WWW-Authenticate: Bearer`.
    assert_eq!(refused.headers.get("www-authenticate"), None);
    assert_eq!(
        error_response_with_headers(
            &{
                let mut c = connect();
                let mut tx = c.transaction().unwrap();
                tx.batch_execute("SET LOCAL ROLE amba_anon").unwrap();
                tx.query("SELECT * FROM amba.experiments", &[]).unwrap_err()
            },
            false
        )
        .2,
        [("www-authenticate".to_string(), "Bearer".to_string())]
    );
    // Accept: the first acceptable type wins; nothing acceptable is 406 PGRST107.
    let mut xml = admin_headers();
    xml["Accept"] = json!("text/xml");
    let resp = exchange(
        "GET",
        "/rpc/experiments_list",
        xml,
        admin_jwt(),
        Value::Null,
    );
    assert_eq!((resp.status, &resp.body["code"]), (406, &json!("PGRST107")));
    let mut prefers_json = admin_headers();
    prefers_json["Accept"] = json!("text/xml;q=0.5, application/json");
    let resp = exchange(
        "GET",
        "/rpc/experiments_list",
        prefers_json,
        admin_jwt(),
        Value::Null,
    );
    assert_eq!(resp.status, 200);
    // Verbs: a function takes GET and POST only (405 PGRST101); a verb PostgREST does not
    // know is 405 PGRST117.
    let resp = exchange(
        "PUT",
        "/rpc/assign",
        client_headers(),
        client_jwt("u"),
        Value::Null,
    );
    assert_eq!((resp.status, &resp.body["code"]), (405, &json!("PGRST101")));
    let resp = exchange(
        "CONNECT",
        "/my_assignments",
        client_headers(),
        client_jwt("u"),
        Value::Null,
    );
    assert_eq!((resp.status, &resp.body["code"]), (405, &json!("PGRST117")));
    // PTxyz SQLSTATEs are status xyz (errors.rst "RAISE errors with HTTP Status Codes").
    assert_eq!(sqlstate_status("PT402", "", true), 402);
    assert_eq!(
        sqlstate_status("22023", "role \"x\" does not exist", true),
        400
    );
    // PGRST error bodies carry exactly PostgREST's four keys.
    let resp = get("/my_assignments", json!({}), None);
    let mut k: Vec<&str> = resp
        .1
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    assert_eq!(k, ["code", "details", "hint", "message"]);
    // The 42501 mapping depends on whether a JWT was sent.
    let err = {
        let mut c = connect();
        let mut tx = c.transaction().unwrap();
        tx.batch_execute("SET LOCAL ROLE amba_anon").unwrap();
        tx.query("SELECT * FROM amba.experiments", &[]).unwrap_err()
    };
    assert_eq!(error_response(&err, false).0, 401);
    assert_eq!(error_response(&err, true).0, 403);
}

// ------------------------------------------------------------------------------------------
// 0.2.0 endpoints (SPEC §5b)
// ------------------------------------------------------------------------------------------

#[test]
fn client_peek_tells_the_session_users_variant_and_writes_nothing() {
    let key = unique("http_peek");
    assert_eq!(admin_create(&key, two_variants(), None).0, 200);
    let user = unique("peeker");
    let peeked = get(
        &format!("/rpc/peek?experiment_key={}", url(&key)),
        client_headers(),
        client_jwt(&user),
    );
    assert_eq!(peeked.0, 200, "{peeked:?}");
    assert_eq!(peeked.1["experiment_key"], key.as_str());
    let variant = peeked.1["variant"].as_str().expect("a variant").to_string();
    let mine = get("/my_assignments", client_headers(), client_jwt(&user));
    assert!(
        mine.1
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["experiment_key"] != key.as_str()),
        "peek enrolled the user"
    );
    let assigned = post(
        "/rpc/assign",
        client_headers(),
        client_jwt(&user),
        json!({"experiment_key": key}),
    );
    assert_eq!(assigned.1["variant"], variant.as_str());
    // Paused: a new user peeks null, not 409.
    let paused = post(
        "/rpc/experiments_update",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "status": "paused"}),
    );
    assert_eq!(paused.0, 200);
    let none = get(
        &format!("/rpc/peek?experiment_key={}", url(&key)),
        client_headers(),
        client_jwt(&unique("late")),
    );
    assert_eq!(none, (200, json!({"experiment_key": key, "variant": null})));
    assert_error(
        &get(
            "/rpc/peek?experiment_key=no-such-exp",
            client_headers(),
            client_jwt(&user),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    // A user id in the query is not a parameter of peek.
    let forged = get(
        &format!("/rpc/peek?experiment_key={}&user_id=other", url(&key)),
        client_headers(),
        client_jwt(&user),
    );
    assert_eq!(forged.0, 404, "{forged:?}");
    assert_error(
        &get(
            &format!("/rpc/peek?experiment_key={}", url(&key)),
            admin_headers(),
            admin_jwt(),
        ),
        403,
        "FORBIDDEN",
    );
}

#[test]
fn admin_overrides_and_alias_endpoints() {
    let key = unique("http_ovr");
    assert_eq!(admin_create(&key, two_variants(), Some("draft")).0, 200);
    let qa = unique("qa");
    let set = post(
        "/rpc/overrides_set",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "user_id": qa, "variant": "treatment"}),
    );
    assert_eq!(set.0, 200, "{set:?}");
    assert_eq!(
        (set.1["user_id"].as_str(), set.1["variant"].as_str()),
        (Some(qa.as_str()), Some("treatment"))
    );
    // The QA user sees the forced variant on a draft experiment through the client API.
    let assigned = post(
        "/rpc/assign",
        client_headers(),
        client_jwt(&qa),
        json!({"experiment_key": key}),
    );
    assert_eq!(
        assigned,
        (200, json!({"experiment_key": key, "variant": "treatment"}))
    );
    let listed = get(
        &format!("/rpc/overrides_list?experiment_key={}", url(&key)),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(listed.0, 200);
    assert_eq!(listed.1.as_array().unwrap().len(), 1);
    assert_eq!(listed.1[0]["user_id"], qa.as_str());
    assert_error(
        &post(
            "/rpc/overrides_set",
            admin_headers(),
            admin_jwt(),
            json!({"experiment_key": key, "user_id": qa, "variant": "nope"}),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    let cleared = post(
        "/rpc/overrides_clear",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "user_id": qa}),
    );
    assert_eq!(cleared, (200, json!(true)));
    for (method, path, body) in [
        (
            "POST",
            "/rpc/overrides_set",
            json!({"experiment_key": "no-such-exp", "user_id": "u", "variant": "control"}),
        ),
        (
            "POST",
            "/rpc/overrides_clear",
            json!({"experiment_key": "no-such-exp", "user_id": "u"}),
        ),
        (
            "GET",
            "/rpc/overrides_list?experiment_key=no-such-exp",
            Value::Null,
        ),
    ] {
        assert_error(
            &request(method, path, admin_headers(), admin_jwt(), body),
            404,
            "EXPERIMENT_NOT_FOUND",
        );
    }
    let (anon, member) = (unique("anon"), unique("member"));
    let aliased = post(
        "/rpc/users_alias",
        admin_headers(),
        admin_jwt(),
        json!({"anonymous_id": anon, "user_id": member}),
    );
    assert_eq!(
        aliased,
        (
            200,
            json!({"user_id": member, "moved": 0, "conflicts": 0, "events": 0})
        )
    );
    assert_error(
        &post(
            "/rpc/users_alias",
            admin_headers(),
            admin_jwt(),
            json!({"anonymous_id": member, "user_id": member}),
        ),
        400,
        "INVALID_ARGUMENT",
    );
}

#[test]
fn admin_metric_daily_and_report_endpoints() {
    let key = unique("http_metrics");
    assert_eq!(admin_create(&key, two_variants(), None).0, 200);
    for i in 0..8 {
        let user = format!("{key}-u{i}");
        post(
            "/rpc/assign",
            client_headers(),
            client_jwt(&user),
            json!({"experiment_key": key}),
        );
        post(
            "/rpc/expose",
            client_headers(),
            client_jwt(&user),
            json!({"experiment_key": key}),
        );
        post(
            "/rpc/track",
            client_headers(),
            client_jwt(&user),
            json!({"event": "purchase", "properties": {"amount": i * 3}}),
        );
    }
    let metric = get(
        &format!("/rpc/experiments_metric_results?experiment_key={}&event=purchase&value_property=amount&cap_percentile=0.9", url(&key)),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(metric.0, 200, "{metric:?}");
    let rows = metric.1.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["variant"], "control");
    assert_eq!(
        rows.iter()
            .map(|r| r["exposed_count"].as_i64().unwrap())
            .sum::<i64>(),
        8
    );
    let daily = get(
        &format!(
            "/rpc/experiments_results_daily?experiment_key={}&conversion_event=purchase",
            url(&key)
        ),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(daily.0, 200, "{daily:?}");
    assert_eq!(
        daily.1.as_array().unwrap().len(),
        2,
        "one day, two variants"
    );
    let mut html_headers = admin_headers();
    html_headers["Accept"] = json!("text/html");
    let report_path = format!(
        "/rpc/experiments_report?experiment_key={}&conversion_event=purchase",
        url(&key)
    );
    let report = exchange(
        "GET",
        &report_path,
        html_headers.clone(),
        admin_jwt(),
        Value::Null,
    );
    assert_eq!(report.status, 200);
    // The function returns the domain amba_api."text/html" (sql/report.sql): PostgREST's
    // handler for that media type sends the value as is, `Content-Type: text/html` without
    // a charset (MediaType.hs `toContentType`, MTOther), and the function sets no
    // response.headers that would replace it.
    assert_eq!(report.content_type(), "text/html");
    let page = report.body.as_str().expect("an HTML body, not JSON");
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains(&key),
        "{}",
        &page[..page.len().min(200)]
    );
    // What a browser sends when the URL is opened: text/html is its first choice.
    let mut browser = admin_headers();
    browser["Accept"] = json!(
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
    );
    // (The page says when it was generated: bodies are compared by their start.)
    let is_page = |body: &Value| {
        body.as_str()
            .is_some_and(|p| p.starts_with("<!DOCTYPE html>") && p.contains(&key))
    };
    let opened = exchange("GET", &report_path, browser, admin_jwt(), Value::Null);
    assert_eq!((opened.status, opened.content_type()), (200, "text/html"));
    assert!(is_page(&opened.body), "{opened:?}");
    // Without Accept (*/*) the builtin JSON handler answers: the page as a JSON string.
    let as_json = exchange(
        "GET",
        &report_path,
        admin_headers(),
        admin_jwt(),
        Value::Null,
    );
    assert_eq!(
        (as_json.status, as_json.content_type()),
        (200, "application/json; charset=utf-8")
    );
    assert!(is_page(&as_json.body), "{as_json:?}");
    // The JSON endpoints never answer text/html: 406 PGRST107.
    let refused = exchange(
        "GET",
        &format!(
            "/rpc/experiments_results_daily?experiment_key={}&conversion_event=purchase",
            url(&key)
        ),
        html_headers.clone(),
        admin_jwt(),
        Value::Null,
    );
    assert_eq!(refused.status, 406, "{refused:?}");
    assert_eq!(refused.body["code"], "PGRST107");
    assert_eq!(refused.content_type(), "application/json; charset=utf-8");
    for path in [
        "/rpc/experiments_metric_results?experiment_key=no-such-exp&event=purchase",
        "/rpc/experiments_results_daily?experiment_key=no-such-exp&conversion_event=purchase",
        "/rpc/experiments_report?experiment_key=no-such-exp&conversion_event=purchase",
    ] {
        assert_error(
            &get(path, admin_headers(), admin_jwt()),
            404,
            "EXPERIMENT_NOT_FOUND",
        );
    }
    assert_error(
        &get(&format!("/rpc/experiments_metric_results?experiment_key={}&event=purchase&cap=5&cap_percentile=0.5", url(&key)), admin_headers(), admin_jwt()),
        400,
        "INVALID_ARGUMENT",
    );
}

#[test]
fn client_keys_and_roles_get_403_on_every_0_2_0_admin_endpoint() {
    let key = unique("http_403");
    assert_eq!(admin_create(&key, two_variants(), None).0, 200);
    let k = url(&key);
    let endpoints: Vec<(&str, String, Value)> = vec![
        (
            "GET",
            format!("/rpc/experiments_metric_results?experiment_key={k}&event=e"),
            Value::Null,
        ),
        (
            "GET",
            format!("/rpc/experiments_results_daily?experiment_key={k}&conversion_event=e"),
            Value::Null,
        ),
        (
            "GET",
            format!("/rpc/experiments_report?experiment_key={k}&conversion_event=e"),
            Value::Null,
        ),
        (
            "POST",
            "/rpc/overrides_set".into(),
            json!({"experiment_key": key, "user_id": "u", "variant": "control"}),
        ),
        (
            "POST",
            "/rpc/overrides_clear".into(),
            json!({"experiment_key": key, "user_id": "u"}),
        ),
        (
            "GET",
            format!("/rpc/overrides_list?experiment_key={k}"),
            Value::Null,
        ),
        (
            "POST",
            "/rpc/users_alias".into(),
            json!({"anonymous_id": "a1", "user_id": "u1"}),
        ),
    ];
    for (method, path, body) in &endpoints {
        // A client key with a client token; a client key with an admin token.
        assert_error(
            &request(
                method,
                path,
                client_headers(),
                client_jwt("u1"),
                body.clone(),
            ),
            403,
            "FORBIDDEN",
        );
        assert_error(
            &request(method, path, client_headers(), admin_jwt(), body.clone()),
            403,
            "FORBIDDEN",
        );
    }
    let overrides: i64 = connect()
        .query_one("SELECT count(*) FROM amba.overrides o JOIN amba.experiments e ON e.id = o.experiment_id WHERE e.key = $1", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(overrides, 0);
}

// ------------------------------------------------------------------------------------------
// Targeting and coverage (SPEC §10)
// ------------------------------------------------------------------------------------------

/// Rows amba.assignments holds for (experiment key, user).
fn stored_assignments(key: &str, user: &str) -> i64 {
    connect()
        .query_one(
            "SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
              WHERE e.key = $1 AND a.user_id = $2",
            &[&key, &user],
        )
        .unwrap()
        .get(0)
}

/// `GET /rpc/peek` with the attributes as a query parameter (URL-encoded JSON text).
fn peek_with(key: &str, user: &str, attributes: Option<&Value>) -> (u16, Value) {
    let mut path = format!("/rpc/peek?experiment_key={}", url(key));
    if let Some(a) = attributes {
        path.push_str(&format!("&attributes={}", url(&a.to_string())));
    }
    get(&path, client_headers(), client_jwt(user))
}

/// `POST /rpc/peek` with the attributes as a JSON object in the body.
fn peek_post(key: &str, user: &str, attributes: Option<&Value>) -> (u16, Value) {
    let mut body = json!({ "experiment_key": key });
    if let Some(a) = attributes {
        body["attributes"] = a.clone();
    }
    post("/rpc/peek", client_headers(), client_jwt(user), body)
}

fn assign_with(key: &str, user: &str, attributes: Option<&Value>) -> (u16, Value) {
    let mut body = json!({ "experiment_key": key });
    if let Some(a) = attributes {
        body["attributes"] = a.clone();
    }
    post("/rpc/assign", client_headers(), client_jwt(user), body)
}

#[test]
fn client_assign_and_peek_follow_targeting_and_coverage() {
    let key = unique("http_target");
    let condition = json!({ "plan": "pro", "country": { "$in": ["US", "CA"] } });
    let (status, created) = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": key, "variants": two_variants(), "targeting": condition }),
    );
    assert_eq!(status, 200, "{created}");
    let matching = json!({ "plan": "pro", "country": "CA", "app": { "version": "3.1.0" } });
    let other = json!({ "plan": "free", "country": "CA" });
    let not_enrolled = json!({ "experiment_key": key, "variant": null });

    // POST /rpc/assign: the variant when the condition holds, stored for the token's user.
    let pro = unique("pro");
    let (status, body) = assign_with(&key, &pro, Some(&matching));
    assert_eq!(status, 200, "{body}");
    let variant = body["variant"].as_str().expect("a variant").to_string();
    assert_eq!(body, json!({ "experiment_key": key, "variant": variant }));
    assert_eq!(stored_assignments(&key, &pro), 1);
    // Sticky: later attributes do not matter any more.
    assert_eq!(assign_with(&key, &pro, Some(&other)), (200, body.clone()));
    assert_eq!(assign_with(&key, &pro, None), (200, body.clone()));

    // Not matching (or no attributes: {}): 200 with "variant": null, nothing stored.
    let free = unique("free");
    assert_eq!(
        assign_with(&key, &free, Some(&other)),
        (200, not_enrolled.clone())
    );
    assert_eq!(assign_with(&key, &free, None), (200, not_enrolled.clone()));
    assert_eq!(
        assign_with(&key, &free, Some(&Value::Null)),
        (200, not_enrolled.clone())
    );
    assert_eq!(
        stored_assignments(&key, &free),
        0,
        "a user left out is not stored"
    );
    let (status, mine) = get("/my_assignments", client_headers(), client_jwt(&free));
    assert_eq!(status, 200);
    assert!(mine
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["experiment_key"] != key.as_str()));
    // Not enrolled, so nothing to expose.
    assert_error(
        &post(
            "/rpc/expose",
            client_headers(),
            client_jwt(&free),
            json!({ "experiment_key": key }),
        ),
        404,
        "ASSIGNMENT_REQUIRED",
    );
    // The attributes describe the caller only: naming another user in them changes nothing,
    // and a user_id beside them is still no parameter.
    assert_eq!(
        assign_with(&key, &free, Some(&json!({ "id": pro, "user_id": pro }))),
        (200, not_enrolled.clone())
    );
    assert_eq!(
        post(
            "/rpc/assign",
            client_headers(),
            client_jwt(&free),
            json!({ "experiment_key": key, "attributes": matching, "user_id": pro }),
        )
        .0,
        404
    );
    assert_eq!(stored_assignments(&key, &free), 0);

    // /rpc/peek with attributes: the same answers, and nothing stored. (POST here: peek is
    // STABLE, so PostgREST runs it read-only either way; GET is
    // client_peek_by_get_takes_attributes_in_the_query_string.)
    let peeker = unique("peeker");
    let (status, peeked) = peek_post(&key, &peeker, Some(&matching));
    assert_eq!(status, 200, "{peeked}");
    let would = peeked["variant"].as_str().expect("a variant").to_string();
    assert_eq!(
        peek_post(&key, &peeker, Some(&other)),
        (200, not_enrolled.clone())
    );
    assert_eq!(peek_post(&key, &peeker, None), (200, not_enrolled.clone()));
    assert_eq!(stored_assignments(&key, &peeker), 0, "peek writes nothing");
    // The peeked variant is the one assign then gives; the stored one wins over attributes.
    assert_eq!(
        assign_with(&key, &peeker, Some(&matching)).1["variant"],
        would.as_str()
    );
    assert_eq!(
        peek_post(&key, &peeker, Some(&other)).1["variant"],
        would.as_str()
    );

    // Attributes that are not a JSON object: 400 INVALID_ARGUMENT, nothing stored.
    let bad = unique("bad_attrs");
    for attributes in [json!([1, 2]), json!("plan=pro"), json!(42), json!(true)] {
        assert_error(
            &assign_with(&key, &bad, Some(&attributes)),
            400,
            "INVALID_ARGUMENT",
        );
        assert_error(
            &peek_post(&key, &bad, Some(&attributes)),
            400,
            "INVALID_ARGUMENT",
        );
    }
    assert_eq!(stored_assignments(&key, &bad), 0);

    // Coverage 0: nobody new is enrolled; the assigned keep their variants.
    let (status, updated) = post(
        "/rpc/experiments_update",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": key, "coverage": 0 }),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["coverage"].as_f64(), Some(0.0));
    assert_eq!(updated["targeting"], condition);
    let late = unique("late");
    assert_eq!(
        peek_post(&key, &late, Some(&matching)),
        (200, not_enrolled.clone())
    );
    assert_eq!(
        assign_with(&key, &late, Some(&matching)),
        (200, not_enrolled.clone())
    );
    assert_eq!(stored_assignments(&key, &late), 0);
    assert_eq!(
        assign_with(&key, &pro, Some(&matching)),
        (200, body.clone())
    );

    // Full coverage, condition removed: everyone is enrolled, attributes or not.
    let (status, updated) = post(
        "/rpc/experiments_update",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": key, "coverage": 1, "targeting": {} }),
    );
    assert_eq!(status, 200, "{updated}");
    assert!(updated["targeting"].is_null(), "{updated}");
    let (status, body) = assign_with(&key, &late, Some(&other));
    assert_eq!(status, 200);
    assert!(body["variant"].is_string(), "{body}");
    assert_eq!(stored_assignments(&key, &late), 1);
    let (status, body) = peek_post(&key, &unique("anyone"), None);
    assert_eq!(status, 200);
    assert!(body["variant"].is_string(), "{body}");

    // Still not a JSON object once the experiment has no condition left.
    assert_error(
        &assign_with(&key, &unique("bad_attrs"), Some(&json!([1, 2]))),
        400,
        "INVALID_ARGUMENT",
    );
}

/// `GET /rpc/peek?experiment_key=..&attributes=<URL-encoded JSON object>`. PostgREST
/// (v12.2.12 src/PostgREST/Plan/CallPlan.hs `jsonRpcParams`) turns every query parameter
/// into a JSON *string* before `json_to_record`, so the function receives the attributes as
/// a jsonb string holding the object's JSON text; SPEC §10 says GET /rpc/peek takes the
/// attributes object all the same.
#[test]
fn client_peek_by_get_takes_attributes_in_the_query_string() {
    let key = unique("http_target_get");
    let (status, created) = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": key, "variants": two_variants(),
                "targeting": { "plan": "pro", "age": { "$gte": 18 } } }),
    );
    assert_eq!(status, 200, "{created}");
    let not_enrolled = json!({ "experiment_key": key, "variant": null });
    let user = unique("get_peeker");
    let matching = json!({ "plan": "pro", "age": 30 });
    let (status, peeked) = peek_with(&key, &user, Some(&matching));
    assert_eq!(status, 200, "{peeked}");
    assert!(peeked["variant"].is_string(), "{peeked}");
    assert_eq!(
        peek_post(&key, &user, Some(&matching)),
        (200, peeked.clone())
    );
    assert_eq!(
        peek_with(&key, &user, Some(&json!({ "plan": "pro", "age": 17 }))),
        (200, not_enrolled.clone())
    );
    assert_eq!(peek_with(&key, &user, None), (200, not_enrolled.clone()));
    assert_error(
        &peek_with(&key, &user, Some(&json!([1, 2]))),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &get(
            &format!(
                "/rpc/peek?experiment_key={}&attributes=plan%3Dpro",
                url(&key)
            ),
            client_headers(),
            client_jwt(&user),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(stored_assignments(&key, &user), 0, "peek writes nothing");
}

#[test]
fn admin_create_update_get_list_carry_targeting_and_coverage() {
    let key = unique("http_target_admin");
    let condition =
        json!({ "$or": [{ "country": "US" }, { "email": { "$regex": "@example\\.com$" } }] });
    let (status, created) = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({ "experiment_key": key, "variants": two_variants(), "targeting": condition,
                "coverage": 0.25 }),
    );
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["targeting"], condition);
    assert_eq!(created["coverage"].as_f64(), Some(0.25));
    let (status, got) = get(
        &format!("/rpc/experiments_get?experiment_key={}", url(&key)),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!((status, &got), (200, &created));
    let (_, list) = get("/rpc/experiments_list", admin_headers(), admin_jwt());
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key.as_str())
        .expect("listed")
        .clone();
    assert_eq!(listed, created);

    // Without them: no condition (null), coverage 1.
    let plain = unique("http_target_plain");
    let (status, body) = admin_create(&plain, two_variants(), None);
    assert_eq!(status, 200, "{body}");
    assert!(body["targeting"].is_null(), "{body}");
    assert_eq!(body["coverage"].as_f64(), Some(1.0));

    // Update one, the other stays; {} removes the condition.
    let update = |body: Value| {
        post(
            "/rpc/experiments_update",
            admin_headers(),
            admin_jwt(),
            body,
        )
    };
    let (status, updated) = update(json!({ "experiment_key": key, "coverage": 0.75 }));
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["coverage"].as_f64(), Some(0.75));
    assert_eq!(updated["targeting"], condition);
    let narrower = json!({ "country": "US" });
    let (status, updated) = update(json!({ "experiment_key": key, "targeting": narrower }));
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["targeting"], narrower);
    assert_eq!(updated["coverage"].as_f64(), Some(0.75));
    let (status, updated) = update(json!({ "experiment_key": key, "targeting": {} }));
    assert_eq!(status, 200, "{updated}");
    assert!(updated["targeting"].is_null(), "{updated}");
    assert_eq!(updated["coverage"].as_f64(), Some(0.75));
    let (status, updated) =
        update(json!({ "experiment_key": key, "targeting": narrower, "status": "paused" }));
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["targeting"].clone(), updated["status"].clone()),
        (narrower.clone(), json!("paused"))
    );

    // Invalid conditions and coverages: 400 INVALID_ARGUMENT, nothing created or changed.
    let invalid_targeting = [
        json!({ "country": { "$bogus": 1 } }),
        json!({ "email": { "$regex": "(" } }),
        json!({ "id": { "$inGroup": "beta" } }),
        json!([{ "country": "US" }]),
        json!("country=US"),
    ];
    let never = unique("http_target_never");
    for targeting in &invalid_targeting {
        assert_error(
            &post(
                "/rpc/experiments_create",
                admin_headers(),
                admin_jwt(),
                json!({ "experiment_key": never, "variants": two_variants(), "targeting": targeting }),
            ),
            400,
            "INVALID_ARGUMENT",
        );
        assert_error(
            &update(json!({ "experiment_key": key, "targeting": targeting })),
            400,
            "INVALID_ARGUMENT",
        );
    }
    for coverage in [json!(-0.5), json!(1.5)] {
        assert_error(
            &post(
                "/rpc/experiments_create",
                admin_headers(),
                admin_jwt(),
                json!({ "experiment_key": never, "variants": two_variants(), "coverage": coverage }),
            ),
            400,
            "INVALID_ARGUMENT",
        );
        assert_error(
            &update(json!({ "experiment_key": key, "coverage": coverage })),
            400,
            "INVALID_ARGUMENT",
        );
    }
    assert_error(
        &get(
            &format!("/rpc/experiments_get?experiment_key={}", url(&never)),
            admin_headers(),
            admin_jwt(),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    let (_, after) = get(
        &format!("/rpc/experiments_get?experiment_key={}", url(&key)),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(after, updated, "failed updates changed nothing");

    // Clients may not set them.
    assert_error(
        &post(
            "/rpc/experiments_update",
            client_headers(),
            client_jwt("u1"),
            json!({ "experiment_key": key, "targeting": {} }),
        ),
        403,
        "FORBIDDEN",
    );
    for k in [&key, &plain] {
        let (status, _) = post(
            "/rpc/experiments_delete",
            admin_headers(),
            admin_jwt(),
            json!({ "experiment_key": k }),
        );
        assert_eq!(status, 200);
    }
}

// ------------------------------------------------------------------------------------------
// Layers and holdouts (SPEC §11)
// ------------------------------------------------------------------------------------------

/// A fresh user id whose layer bucket in `layer` and variant in the holdout `holdout` (as
/// amba_peek tells it, without writing) satisfy `pick`.
fn user_where(layer: &str, holdout: &str, pick: impl Fn(f64, &str) -> bool) -> String {
    let mut db = connect();
    for _ in 0..5000 {
        let user = unique("lu");
        let row = db
            .query_one(
                "SELECT amba_layer_bucket($1::text, $2::text), amba_peek($3::text, $2::text)",
                &[&layer, &user, &holdout],
            )
            .unwrap();
        let bucket: f64 = row.get(0);
        let variant: String = row.get(1);
        if pick(bucket, &variant) {
            return user;
        }
    }
    panic!("no user fits in 5000 tries");
}

/// The (variant, exposed) of `user`'s stored assignment in experiment `key`, if any.
fn stored_variant(key: &str, user: &str) -> Option<(String, bool)> {
    connect()
        .query_opt(
            "SELECT a.variant, EXISTS (SELECT 1 FROM amba.exposures x
                                        WHERE x.experiment_id = a.experiment_id AND x.user_id = a.user_id)
               FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
              WHERE e.key = $1 AND a.user_id = $2",
            &[&key, &user],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// GET /rpc/experiments_list_layers, the rows of one layer as
/// (experiment_key, status, range_start, range_end).
fn listed_layer(layer: &str) -> Vec<(Value, Value, f64, f64)> {
    let (status, rows) = get("/rpc/experiments_list_layers", admin_headers(), admin_jwt());
    assert_eq!(status, 200, "{rows}");
    rows.as_array()
        .unwrap_or_else(|| panic!("an array of rows: {rows}"))
        .iter()
        .filter(|r| r["layer"] == layer)
        .map(|r| {
            let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "experiment_key",
                    "layer",
                    "range_end",
                    "range_start",
                    "status"
                ],
                "{r}"
            );
            (
                r["experiment_key"].clone(),
                r["status"].clone(),
                r["range_start"].as_f64().unwrap(),
                r["range_end"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[track_caller]
fn assert_layer(got: &[(Value, Value, f64, f64)], want: &[(Option<&str>, Option<&str>, f64, f64)]) {
    let shown = format!("{got:?} vs {want:?}");
    assert_eq!(got.len(), want.len(), "{shown}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((&g.0, &g.1), (&json!(w.0), &json!(w.1)), "{shown}");
        assert!(
            (g.2 - w.2).abs() < 1e-9 && (g.3 - w.3).abs() < 1e-9,
            "{shown}"
        );
    }
}

#[track_caller]
fn assert_range(experiment: &Value, layer: &str, start: f64, end: f64) {
    let range = &experiment["layer"];
    assert_eq!(range["key"], layer, "{experiment}");
    assert!(
        (range["start"].as_f64().unwrap_or(f64::NAN) - start).abs() < 1e-9
            && (range["end"].as_f64().unwrap_or(f64::NAN) - end).abs() < 1e-9,
        "expected [{start}, {end}): {experiment}"
    );
}

#[test]
fn admin_layers_and_holdouts_and_client_assign_of_a_held_out_user() {
    let holdout = unique("http_holdout");
    let a = unique("http_layer_a");
    let b = unique("http_layer_b");
    let c = unique("http_layer_c");
    let layer = unique("http_layer");
    let create = |body: Value| {
        post(
            "/rpc/experiments_create",
            admin_headers(),
            admin_jwt(),
            body,
        )
    };
    let update = |body: Value| {
        post(
            "/rpc/experiments_update",
            admin_headers(),
            admin_jwt(),
            body,
        )
    };
    let get_experiment = |key: &str| {
        get(
            &format!("/rpc/experiments_get?experiment_key={}", url(key)),
            admin_headers(),
            admin_jwt(),
        )
    };

    // The holdout: an ordinary experiment, control = held out.
    let (status, h) = create(json!({ "experiment_key": holdout, "variants": [
        { "key": "holdout", "weight": 50 }, { "key": "general", "weight": 50 }] }));
    assert_eq!(status, 200, "{h}");
    assert!(h["layer"].is_null() && h["holdout"].is_null(), "{h}");

    // Two experiments of one layer: [0, 0.3) held out by the holdout, then [0.3, 0.8).
    let (status, created_a) = create(json!({ "experiment_key": a, "variants": two_variants(),
        "layer": layer, "layer_share": 0.3, "holdout": holdout }));
    assert_eq!(status, 200, "{created_a}");
    assert_range(&created_a, &layer, 0.0, 0.3);
    assert_eq!(created_a["holdout"], holdout.as_str());
    let (status, created_b) = create(json!({ "experiment_key": b, "variants": two_variants(),
        "layer": layer, "layer_share": 0.5 }));
    assert_eq!(status, 200, "{created_b}");
    assert_range(&created_b, &layer, 0.3, 0.8);
    assert!(created_b["holdout"].is_null(), "{created_b}");

    // get and list show the range and the holdout.
    assert_eq!(get_experiment(&a), (200, created_a.clone()));
    assert_eq!(get_experiment(&b), (200, created_b.clone()));
    let (_, list) = get("/rpc/experiments_list", admin_headers(), admin_jwt());
    for created in [&created_a, &created_b] {
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == created["key"])
            .expect("listed");
        assert_eq!(listed, created);
    }

    // GET /rpc/experiments_list_layers: both ranges and the free gap, as amba_list_layers.
    assert_layer(
        &listed_layer(&layer),
        &[
            (Some(&a), Some("active"), 0.0, 0.3),
            (Some(&b), Some("active"), 0.3, 0.8),
            (None, None, 0.8, 1.0),
        ],
    );
    let (_, rows) = get("/rpc/experiments_list_layers", admin_headers(), admin_jwt());
    let direct: String = connect()
        .query_one(
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM amba_list_layers() r",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, serde_json::from_str::<Value>(&direct).unwrap());
    // POST answers the same (a STABLE function, read-only either way).
    let (status, posted) = post(
        "/rpc/experiments_list_layers",
        admin_headers(),
        admin_jwt(),
        json!({}),
    );
    assert_eq!((status, &posted), (200, &rows));

    // The layer is full for a share of 0.5: 400, nothing created.
    let full = create(json!({ "experiment_key": c, "variants": two_variants(),
        "layer": layer, "layer_share": 0.5 }));
    assert_error(&full, 400, "INVALID_ARGUMENT");
    assert!(
        full.1["message"].as_str().unwrap().contains("full"),
        "{full:?}"
    );
    assert_error(&get_experiment(&c), 404, "EXPERIMENT_NOT_FOUND");
    // Bad layers, shares and holdouts: 400.
    for body in [
        json!({ "layer": layer, "layer_share": 0 }),
        json!({ "layer_share": 0.1 }),
        json!({ "layer": "not a key" }),
        json!({ "holdout": unique("http_no_such_holdout") }),
    ] {
        let mut body = body;
        body["experiment_key"] = json!(c);
        body["variants"] = two_variants();
        assert_error(&create(body), 400, "INVALID_ARGUMENT");
    }
    // The layer and the share are chosen at create.
    assert_error(
        &update(json!({ "experiment_key": a, "layer_share": 0.4 })),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &update(json!({ "experiment_key": a, "layer": unique("http_other_layer") })),
        400,
        "INVALID_ARGUMENT",
    );
    // Holdout rules: not itself; a holdout is not held out.
    assert_error(
        &update(json!({ "experiment_key": a, "holdout": a })),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &update(json!({ "experiment_key": holdout, "holdout": b })),
        400,
        "INVALID_ARGUMENT",
    );
    // A named holdout cannot be deleted.
    assert_error(
        &post(
            "/rpc/experiments_delete",
            admin_headers(),
            admin_jwt(),
            json!({ "experiment_key": holdout }),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(get_experiment(&holdout).0, 200);
    assert_eq!(
        get_experiment(&a),
        (200, created_a.clone()),
        "nothing changed"
    );

    // Client assign. A user in a's range whom the holdout holds out: "variant": null, and
    // they are assigned and exposed in the holdout (its control), not in a.
    let held = user_where(&layer, &holdout, |bucket, v| bucket < 0.3 && v == "holdout");
    let not_enrolled = json!({ "experiment_key": a, "variant": null });
    assert_eq!(assign_with(&a, &held, None), (200, not_enrolled.clone()));
    assert_eq!(stored_assignments(&a, &held), 0);
    assert_eq!(
        stored_variant(&holdout, &held),
        Some(("holdout".to_string(), true))
    );
    assert_eq!(
        assign_with(&a, &held, None),
        (200, not_enrolled.clone()),
        "sticky"
    );
    assert_eq!(peek_with(&a, &held, None), (200, not_enrolled.clone()));
    assert_error(
        &post(
            "/rpc/expose",
            client_headers(),
            client_jwt(&held),
            json!({ "experiment_key": a }),
        ),
        404,
        "ASSIGNMENT_REQUIRED",
    );
    // A user in a's range whom the holdout releases: a variant of a.
    let released = user_where(&layer, &holdout, |bucket, v| bucket < 0.3 && v == "general");
    let (status, body) = assign_with(&a, &released, None);
    assert_eq!(status, 200, "{body}");
    let variant = body["variant"].as_str().expect("a variant").to_string();
    assert_eq!(stored_variant(&a, &released).map(|v| v.0), Some(variant));
    assert_eq!(
        stored_variant(&holdout, &released),
        Some(("general".to_string(), true))
    );
    // A user in b's range: null from a (never reaches the holdout), a variant from b.
    let in_b = user_where(&layer, &holdout, |bucket, _| (0.3..0.8).contains(&bucket));
    assert_eq!(assign_with(&a, &in_b, None), (200, not_enrolled.clone()));
    assert_eq!(stored_variant(&holdout, &in_b), None);
    let (status, body) = assign_with(&b, &in_b, None);
    assert_eq!(status, 200, "{body}");
    assert!(body["variant"].is_string(), "{body}");
    assert_eq!(
        assign_with(&b, &held, None),
        (200, json!({ "experiment_key": b, "variant": null })),
        "exclusive: a's user is not b's"
    );

    // Ending b frees its range; c takes the lowest free gap; re-activating b finds the
    // layer full (400, b stays ended).
    let (status, ended) = update(json!({ "experiment_key": b, "status": "ended" }));
    assert_eq!(status, 200, "{ended}");
    assert!(
        ended["layer"]["start"].is_null() && ended["layer"]["end"].is_null(),
        "{ended}"
    );
    assert_layer(
        &listed_layer(&layer),
        &[(Some(&a), Some("active"), 0.0, 0.3), (None, None, 0.3, 1.0)],
    );
    let (status, created_c) = create(json!({ "experiment_key": c, "variants": two_variants(),
        "layer": layer, "layer_share": 0.5, "status": "draft" }));
    assert_eq!(status, 200, "{created_c}");
    assert_range(&created_c, &layer, 0.3, 0.8);
    assert_error(
        &update(json!({ "experiment_key": b, "status": "active" })),
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(get_experiment(&b).1["status"], "ended");
    assert_layer(
        &listed_layer(&layer),
        &[
            (Some(&a), Some("active"), 0.0, 0.3),
            (Some(&c), Some("draft"), 0.3, 0.8),
            (None, None, 0.8, 1.0),
        ],
    );

    // Clients may neither list layers nor set a holdout.
    for (headers, jwt) in [
        (client_headers(), admin_jwt()),
        (admin_headers(), client_jwt("u1")),
        (client_headers(), client_jwt("u1")),
    ] {
        assert_error(
            &get("/rpc/experiments_list_layers", headers.clone(), jwt.clone()),
            403,
            "FORBIDDEN",
        );
        assert_error(
            &post(
                "/rpc/experiments_update",
                headers,
                jwt,
                json!({ "experiment_key": a, "holdout": "" }),
            ),
            403,
            "FORBIDDEN",
        );
    }

    // "" removes the holdout: the user it held out (never assigned in a) can be enrolled
    // now, and the holdout, named by nobody, can be deleted.
    let (status, updated) = update(json!({ "experiment_key": a, "holdout": "" }));
    assert_eq!(status, 200, "{updated}");
    assert!(updated["holdout"].is_null(), "{updated}");
    assert_range(&updated, &layer, 0.0, 0.3);
    let (status, body) = assign_with(&a, &held, None);
    assert_eq!(status, 200);
    assert!(body["variant"].is_string(), "{body}");
    for k in [&a, &b, &c, &holdout] {
        let resp = post(
            "/rpc/experiments_delete",
            admin_headers(),
            admin_jwt(),
            json!({ "experiment_key": k }),
        );
        assert_eq!(resp, (200, json!(true)), "{k}");
    }
    assert!(listed_layer(&layer).is_empty());
}

// ------------------------------------------------------------------------------------------
// 0.3.0 admin endpoints (SPEC §12 guardrails, §13 ratio/quantile/segments, §14 bandits)
// ------------------------------------------------------------------------------------------

/// A SQL function's rows as PostgREST's JSON body would carry them (json_agg of the rows).
fn sql_rows(query: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Value {
    let text: String = connect()
        .query_one(
            format!("SELECT coalesce(json_agg(t), '[]')::text FROM ({query}) t").as_str(),
            params,
        )
        .expect(query)
        .get(0);
    serde_json::from_str(&text).unwrap()
}

fn sql_value(query: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Value {
    let text: Option<String> = connect()
        .query_one(format!("SELECT ({query})::text").as_str(), params)
        .expect(query)
        .get(0);
    text.map_or(Value::Null, |t| serde_json::from_str(&t).unwrap())
}

/// Loads `n` exposed users per variant of `key` straight into the tables (as a bulk import
/// would), each with a `purchase` (amount) at `conv[variant]`‰ and a `refund` at
/// `refund[variant]`‰, an hour after assignment. Users are `<key>-<variant>-<i>`.
fn load_users(key: &str, n: i32, conv: [i32; 2], refund: [i32; 2]) {
    connect()
        .execute(
            "WITH e AS (SELECT id, variant_keys FROM amba.experiments WHERE key = $1),
                  a AS (INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
                        SELECT e.id, $1 || '-' || e.variant_keys[v] || '-' || g, e.variant_keys[v], 1,
                               now() - interval '2 days'
                          FROM e, generate_series(1, 2) v, generate_series(1, $2::int) g
                        RETURNING experiment_id, user_id, variant, assigned_at),
                  x AS (INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
                        SELECT experiment_id, user_id, assigned_at + interval '1 minute' FROM a
                        RETURNING user_id),
                  p AS (INSERT INTO amba.events (user_id, event, occurred_at, properties)
                        SELECT a.user_id, 'purchase', a.assigned_at + interval '1 hour',
                               jsonb_build_object('amount', 10 + (hashtext(a.user_id) & 63))
                          FROM a, e WHERE (hashtext(a.user_id || 'p') & 1023)
                                < (CASE WHEN a.variant = e.variant_keys[1] THEN $3::int ELSE $4::int END)
                        RETURNING 1)
             INSERT INTO amba.events (user_id, event, occurred_at, properties)
             SELECT a.user_id, 'refund', a.assigned_at + interval '2 hours', NULL
               FROM a, e WHERE (hashtext(a.user_id || 'r') & 1023)
                     < (CASE WHEN a.variant = e.variant_keys[1] THEN $5::int ELSE $6::int END)",
            &[&key, &n, &conv[0], &conv[1], &refund[0], &refund[1]],
        )
        .expect("loading users");
}

fn status_of(key: &str) -> String {
    connect()
        .query_one(
            "SELECT status FROM amba.experiments WHERE key = $1",
            &[&key],
        )
        .unwrap()
        .get(0)
}

#[test]
fn admin_create_and_update_carry_guardrails_dimensions_and_bandit() {
    let key = unique("http_030_create");
    let guardrails = json!([{"event": "refund", "kind": "conversion", "bad": "increase"}]);
    let created = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "variants": two_variants(), "guardrails": guardrails,
               "dimensions": ["country", "app.version"]}),
    );
    assert_eq!(created.0, 200, "{created:?}");
    // The body is the experiment's jsonb, as the SQL API stores and returns it.
    let stored = sql_value("amba._get_experiment($1)", &[&key]);
    assert_eq!(created.1, stored);
    assert_eq!(
        stored["guardrails"],
        json!([{"event": "refund", "value_property": null, "kind": "conversion", "bad": "increase",
                "tolerance": 0.0, "alpha": 0.05}]),
        "defaults written out"
    );
    assert_eq!(stored["dimensions"], json!(["country", "app.version"]));
    assert_eq!(stored["bandit"], Value::Null);

    // Update: new guardrails and dimensions; the GET answers the same.
    let updated = post(
        "/rpc/experiments_update",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key,
               "guardrails": [{"event": "purchase", "kind": "mean", "value_property": "amount",
                               "bad": "decrease", "tolerance": 0.1, "alpha": 0.1}],
               "dimensions": ["plan"]}),
    );
    assert_eq!(updated.0, 200, "{updated:?}");
    let got = get(
        &format!("/rpc/experiments_get?experiment_key={}", url(&key)),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(got, (200, sql_value("amba._get_experiment($1)", &[&key])));
    assert_eq!(updated.1, got.1);
    assert_eq!(got.1["guardrails"][0]["kind"], "mean");
    assert_eq!(got.1["dimensions"], json!(["plan"]));

    // A bandit, at create and at update.
    let bkey = unique("http_030_bandit_create");
    let created = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": bkey, "variants": two_variants(),
               "bandit": {"event": "purchase", "kind": "conversion", "min_users": 5}}),
    );
    assert_eq!(created.0, 200, "{created:?}");
    assert_eq!(created.1, sql_value("amba._get_experiment($1)", &[&bkey]));
    assert_eq!(created.1["bandit"]["event"], "purchase");
    assert_eq!(created.1["bandit"]["min_users"], 5);
    let updated = post(
        "/rpc/experiments_update",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": bkey, "bandit": {"event": "purchase", "kind": "conversion",
                                                  "min_users": 7, "min_weight": 0.1}}),
    );
    assert_eq!(updated.0, 200, "{updated:?}");
    assert_eq!(updated.1, sql_value("amba._get_experiment($1)", &[&bkey]));
    assert_eq!(updated.1["bandit"]["min_users"], 7);

    // Invalid values: 400 INVALID_ARGUMENT, nothing written.
    let bad: Vec<(&str, Value)> = vec![
        (
            "guardrails",
            json!([{"event": "refund", "kind": "median", "bad": "increase"}]),
        ),
        (
            "guardrails",
            json!([{"event": "refund", "kind": "conversion", "bad": "sideways"}]),
        ),
        (
            "guardrails",
            json!([{"event": "refund", "kind": "conversion", "bad": "increase", "alpha": 1.5}]),
        ),
        ("guardrails", json!({"event": "refund"})),
        ("dimensions", json!(["a", "b", "c", "d", "e", "f"])),
        ("dimensions", json!([""])),
        (
            "bandit",
            json!({"event": "purchase", "kind": "conversion", "min_weight": 0.6}),
        ),
        (
            "bandit",
            json!({"event": "purchase", "kind": "conversion", "min_users": 0}),
        ),
        ("bandit", json!({"kind": "conversion"})),
    ];
    for (field, value) in &bad {
        let k = unique("http_030_bad");
        let mut body = json!({"experiment_key": k, "variants": two_variants()});
        body[*field] = value.clone();
        let resp = post(
            "/rpc/experiments_create",
            admin_headers(),
            admin_jwt(),
            body,
        );
        assert_error(&resp, 400, "INVALID_ARGUMENT");
        assert_eq!(
            sql_value("amba._get_experiment($1)", &[&k]),
            Value::Null,
            "{field} {value}: nothing written"
        );
        let before = sql_value("amba._get_experiment($1)", &[&key]);
        let resp = post(
            "/rpc/experiments_update",
            admin_headers(),
            admin_jwt(),
            json!({"experiment_key": key, *field: value}),
        );
        assert_error(&resp, 400, "INVALID_ARGUMENT");
        assert_eq!(
            sql_value("amba._get_experiment($1)", &[&key]),
            before,
            "{field} {value}: update wrote nothing"
        );
    }
    let resp = post(
        "/rpc/experiments_update",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": unique("http_030_nope"), "dimensions": ["plan"]}),
    );
    assert_error(&resp, 404, "EXPERIMENT_NOT_FOUND");
}

#[test]
fn admin_check_guardrails_endpoint_pauses_as_the_sql_function_does() {
    let key = unique("http_030_guard");
    let created = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "variants": two_variants(),
               "guardrails": [{"event": "refund", "kind": "conversion", "bad": "increase"},
                              {"event": "purchase", "kind": "mean", "value_property": "amount",
                               "bad": "decrease", "tolerance": 0.5}]}),
    );
    assert_eq!(created.0, 200, "{created:?}");
    load_users(&key, 1500, [150, 150], [30, 300]);
    // What the check will find, computed without pausing (amba._guardrail_status).
    let expected = sql_rows("SELECT * FROM amba._guardrail_status($1)", &[&key]);
    let rows = expected.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{expected}");
    assert_eq!(
        rows[0]["tripped"], true,
        "the refund guardrail trips: {expected}"
    );
    assert_eq!(rows[1]["tripped"], false, "{expected}");
    assert_eq!(
        status_of(&key),
        "active",
        "computing the status paused nothing"
    );

    let resp = post(
        "/rpc/experiments_check_guardrails",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key}),
    );
    assert_eq!(resp.0, 200, "{resp:?}");
    // The same rows, with paused = true: this call paused it.
    let mut want = expected.clone();
    for r in want.as_array_mut().unwrap() {
        r["paused"] = json!(true);
    }
    assert_eq!(resp.1, want);
    assert_eq!(status_of(&key), "paused");
    let history = sql_rows(
        "SELECT action, api_key_name, jwt_sub, after->'tripped' AS tripped
           FROM amba.experiment_history WHERE experiment_key = $1 AND action = 'auto_pause'",
        &[&key],
    );
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history[0]["api_key_name"], json!(keys().admin_name));
    assert_eq!(history[0]["jwt_sub"], "ops@example.com");
    assert_eq!(history[0]["tripped"][0]["guardrail"], 0);
    assert_eq!(history[0]["tripped"][0]["variant"], "treatment");

    // Again: reported, nothing more paused.
    let again = post(
        "/rpc/experiments_check_guardrails",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key}),
    );
    assert_eq!(again, (200, expected.clone()));
    assert_eq!(
        sql_rows(
            "SELECT 1 FROM amba.experiment_history WHERE experiment_key = $1 AND action = 'auto_pause'",
            &[&key]
        )
        .as_array()
        .unwrap()
        .len(),
        1
    );

    // An experiment without guardrails: no rows.
    let plain = unique("http_030_guard_none");
    assert_eq!(admin_create(&plain, two_variants(), None).0, 200);
    assert_eq!(
        post(
            "/rpc/experiments_check_guardrails",
            admin_headers(),
            admin_jwt(),
            json!({"experiment_key": plain}),
        ),
        (200, json!([]))
    );
    // Errors in the contract's form: unknown → 404, a malformed key → 400.
    assert_error(
        &post(
            "/rpc/experiments_check_guardrails",
            admin_headers(),
            admin_jwt(),
            json!({"experiment_key": unique("http_030_guard_nope")}),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    assert_error(
        &post(
            "/rpc/experiments_check_guardrails",
            admin_headers(),
            admin_jwt(),
            json!({"experiment_key": "not a key!"}),
        ),
        400,
        "INVALID_ARGUMENT",
    );
}

#[test]
fn admin_ratio_quantile_and_results_by_endpoints_answer_as_the_sql_functions() {
    let key = unique("http_030_metrics");
    let created = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "variants": two_variants(), "dimensions": ["country"]}),
    );
    assert_eq!(created.0, 200, "{created:?}");
    // Users through the client API, with attributes (the dimension's values are stored at
    // the first assign); one value is hostile, some users have none.
    let countries = [
        json!("DE"),
        json!("US"),
        json!("<script>x</script>"),
        Value::Null,
    ];
    for i in 0..24 {
        let user = format!("{key}-u{i}");
        let attributes = match &countries[i % 4] {
            Value::Null => json!({"plan": "free"}),
            c => json!({"country": c}),
        };
        let a = post(
            "/rpc/assign",
            client_headers(),
            client_jwt(&user),
            json!({"experiment_key": key, "attributes": attributes}),
        );
        assert_eq!(a.0, 200, "{a:?}");
        post(
            "/rpc/expose",
            client_headers(),
            client_jwt(&user),
            json!({"experiment_key": key}),
        );
        for j in 0..(i % 3) {
            let t = post(
                "/rpc/track",
                client_headers(),
                client_jwt(&user),
                json!({"event": "purchase", "properties": {"amount": 5 + 7 * j + i}}),
            );
            assert_eq!(t.0, 200, "{t:?}");
        }
        post(
            "/rpc/track",
            client_headers(),
            client_jwt(&user),
            json!({"event": "visit", "properties": {"pages": 1 + i % 4}}),
        );
    }
    let k = url(&key);

    // Results by segment: the body is amba._results_by's rows.
    let by = get(
        &format!("/rpc/experiments_results_by?experiment_key={k}&conversion_event=purchase&dimension=country"),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(by.0, 200, "{by:?}");
    let want = sql_rows(
        "SELECT * FROM amba._results_by($1, 'purchase', 'country', 0.05)",
        &[&key],
    );
    assert_eq!(by.1, want);
    let values: Vec<Value> =
        by.1.as_array()
            .unwrap()
            .iter()
            .map(|r| r["dimension_value"].clone())
            .collect();
    assert_eq!(values.len(), 8, "4 values x 2 variants: {values:?}");
    assert!(values.contains(&json!("<script>x</script>")), "{values:?}");
    assert_eq!(values.last(), Some(&Value::Null), "the NULL group last");
    assert_eq!(
        by.1.as_array()
            .unwrap()
            .iter()
            .map(|r| r["exposed_count"].as_i64().unwrap())
            .sum::<i64>(),
        24
    );
    // POST takes the same arguments, alpha too.
    let posted = post(
        "/rpc/experiments_results_by",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "conversion_event": "purchase", "dimension": "country", "alpha": 0.1}),
    );
    assert_eq!(
        posted,
        (
            200,
            sql_rows(
                "SELECT * FROM amba._results_by($1, 'purchase', 'country', 0.1)",
                &[&key]
            )
        )
    );
    assert_error(
        &get(
            &format!("/rpc/experiments_results_by?experiment_key={k}&conversion_event=purchase&dimension=plan"),
            admin_headers(),
            admin_jwt(),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &get(
            "/rpc/experiments_results_by?experiment_key=no-such-exp&conversion_event=purchase&dimension=country",
            admin_headers(),
            admin_jwt(),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    // An experiment without dimensions: every dimension is unknown.
    let plain = unique("http_030_nodims");
    assert_eq!(admin_create(&plain, two_variants(), None).0, 200);
    assert_error(
        &get(
            &format!("/rpc/experiments_results_by?experiment_key={}&conversion_event=purchase&dimension=country", url(&plain)),
            admin_headers(),
            admin_jwt(),
        ),
        400,
        "INVALID_ARGUMENT",
    );

    // Ratio: purchase amount per page visited.
    let ratio = get(
        &format!("/rpc/experiments_ratio_results?experiment_key={k}&numerator_event=purchase&numerator_property=amount&denominator_event=visit&denominator_property=pages"),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(ratio.0, 200, "{ratio:?}");
    assert_eq!(
        ratio.1,
        sql_rows(
            "SELECT * FROM amba._ratio_results($1, 'purchase', 'amount', 'visit', 'pages', 0.05)",
            &[&key]
        )
    );
    assert_eq!(ratio.1.as_array().unwrap().len(), 2);
    assert_eq!(ratio.1[0]["is_control"], true);
    // Counts (no properties), by POST.
    let counts = post(
        "/rpc/experiments_ratio_results",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "numerator_event": "purchase", "denominator_event": "visit"}),
    );
    assert_eq!(
        counts,
        (
            200,
            sql_rows(
                "SELECT * FROM amba._ratio_results($1, 'purchase', NULL, 'visit', NULL, 0.05)",
                &[&key]
            )
        )
    );
    assert_error(
        &get(
            &format!("/rpc/experiments_ratio_results?experiment_key={k}&numerator_event=purchase&denominator_event=visit&alpha=1.5"),
            admin_headers(),
            admin_jwt(),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &get(
            "/rpc/experiments_ratio_results?experiment_key=no-such-exp&numerator_event=purchase&denominator_event=visit",
            admin_headers(),
            admin_jwt(),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );

    // Quantile: p90 of the purchase amount.
    let q = get(
        &format!("/rpc/experiments_quantile_results?experiment_key={k}&event=purchase&value_property=amount&quantile=0.9"),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(q.0, 200, "{q:?}");
    assert_eq!(
        q.1,
        sql_rows(
            "SELECT * FROM amba._quantile_results($1, 'purchase', 'amount', 0.9, 0.05)",
            &[&key]
        )
    );
    assert_eq!(q.1.as_array().unwrap().len(), 2);
    for bad_q in ["1.5", "0", "1"] {
        assert_error(
            &get(
                &format!("/rpc/experiments_quantile_results?experiment_key={k}&event=purchase&value_property=amount&quantile={bad_q}"),
                admin_headers(),
                admin_jwt(),
            ),
            400,
            "INVALID_ARGUMENT",
        );
    }
    assert_error(
        &get(
            "/rpc/experiments_quantile_results?experiment_key=no-such-exp&event=purchase&value_property=amount&quantile=0.5",
            admin_headers(),
            admin_jwt(),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
}

#[test]
fn admin_bandit_update_and_results_endpoints() {
    let key = unique("http_030_bandit");
    let created = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "variants": two_variants(),
               "bandit": {"event": "purchase", "kind": "conversion", "min_users": 40}}),
    );
    assert_eq!(created.0, 200, "{created:?}");
    let k = url(&key);
    let versions = |key: &str| -> i64 {
        connect()
            .query_one(
                "SELECT count(*) FROM amba.weight_versions w JOIN amba.experiments e ON e.id = w.experiment_id WHERE e.key = $1",
                &[&key],
            )
            .unwrap()
            .get(0)
    };
    // Too few users: updated false with a reason, nothing written.
    let early = post(
        "/rpc/experiments_bandit_update",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key}),
    );
    assert_eq!(early.0, 200, "{early:?}");
    assert_eq!(early.1["updated"], false, "{early:?}");
    assert!(early.1["reason"].is_string(), "{early:?}");
    assert_eq!(versions(&key), 1);

    load_users(&key, 60, [100, 400], [0, 0]);
    let results = get(
        &format!("/rpc/experiments_bandit_results?experiment_key={k}"),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(results.0, 200, "{results:?}");
    assert_eq!(
        results.1,
        sql_rows("SELECT * FROM amba._bandit_results($1)", &[&key])
    );
    assert_eq!(results.1.as_array().unwrap().len(), 2);
    assert_eq!(results.1[0]["exposed_count"], 60);

    let updated = post(
        "/rpc/experiments_bandit_update",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "seed": 7}),
    );
    assert_eq!(updated.0, 200, "{updated:?}");
    assert_eq!(updated.1["updated"], true, "{updated:?}");
    let weights: Vec<f64> = updated.1["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert_eq!(weights.len(), 2);
    // Top-two Thompson weights are ½(P(best) + P(second)): with two arms every arm is best or
    // second, so both stay at one half (SPEC §14) however clear the winner — which the
    // best-arm probabilities show.
    assert!(
        weights.iter().all(|w| (w - 0.5).abs() < 1e-12),
        "two arms keep one half each: {weights:?}"
    );
    let best = updated.1["best_arm_probabilities"][1].as_f64().unwrap();
    assert!(
        best > 0.5,
        "the better arm is the more likely best: {updated:?}"
    );
    // Written as a new weight version, audited with the body's numbers, attributed.
    assert_eq!(versions(&key), 2);
    let stored: Vec<f64> = connect()
        .query_one(
            "SELECT weights FROM amba.experiments WHERE key = $1",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, weights);
    let audit = sql_rows(
        "SELECT api_key_name, after->'bandit_update' AS result FROM amba.experiment_history
          WHERE experiment_key = $1 AND action = 'bandit_update'",
        &[&key],
    );
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["api_key_name"], json!(keys().admin_name));
    assert_eq!(audit[0]["result"]["weights"], updated.1["weights"]);
    // The results now show the weight in force.
    let after = get(
        &format!("/rpc/experiments_bandit_results?experiment_key={k}"),
        admin_headers(),
        admin_jwt(),
    );
    assert_eq!(
        after,
        (
            200,
            sql_rows("SELECT * FROM amba._bandit_results($1)", &[&key])
        )
    );

    // Errors: unknown → 404; not a bandit → 400.
    let plain = unique("http_030_not_bandit");
    assert_eq!(admin_create(&plain, two_variants(), None).0, 200);
    for path in ["/rpc/experiments_bandit_results?experiment_key=no-such-exp".to_string()] {
        assert_error(
            &get(&path, admin_headers(), admin_jwt()),
            404,
            "EXPERIMENT_NOT_FOUND",
        );
    }
    assert_error(
        &post(
            "/rpc/experiments_bandit_update",
            admin_headers(),
            admin_jwt(),
            json!({"experiment_key": unique("http_030_nope")}),
        ),
        404,
        "EXPERIMENT_NOT_FOUND",
    );
    assert_error(
        &get(
            &format!(
                "/rpc/experiments_bandit_results?experiment_key={}",
                url(&plain)
            ),
            admin_headers(),
            admin_jwt(),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &post(
            "/rpc/experiments_bandit_update",
            admin_headers(),
            admin_jwt(),
            json!({"experiment_key": plain}),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(versions(&plain), 1);
}

#[test]
fn client_keys_and_roles_get_403_on_every_0_3_0_admin_endpoint() {
    let key = unique("http_030_403");
    let created = post(
        "/rpc/experiments_create",
        admin_headers(),
        admin_jwt(),
        json!({"experiment_key": key, "variants": two_variants(), "dimensions": ["country"],
               "guardrails": [{"event": "refund", "kind": "conversion", "bad": "increase"}],
               "bandit": {"event": "purchase", "kind": "conversion", "min_users": 5}}),
    );
    assert_eq!(created.0, 200, "{created:?}");
    // Data on which the check would pause and the bandit would move: a refused call does neither.
    load_users(&key, 600, [100, 400], [20, 400]);
    let before = sql_value("amba._get_experiment($1)", &[&key]);
    let k = url(&key);
    let endpoints: Vec<(&str, String, Value)> = vec![
        ("POST", "/rpc/experiments_check_guardrails".into(), json!({"experiment_key": key})),
        ("POST", "/rpc/experiments_bandit_update".into(), json!({"experiment_key": key})),
        ("GET", format!("/rpc/experiments_bandit_results?experiment_key={k}"), Value::Null),
        (
            "GET",
            format!("/rpc/experiments_results_by?experiment_key={k}&conversion_event=purchase&dimension=country"),
            Value::Null,
        ),
        (
            "GET",
            format!("/rpc/experiments_ratio_results?experiment_key={k}&numerator_event=purchase&denominator_event=refund"),
            Value::Null,
        ),
        (
            "GET",
            format!("/rpc/experiments_quantile_results?experiment_key={k}&event=purchase&value_property=amount&quantile=0.5"),
            Value::Null,
        ),
        (
            "POST",
            "/rpc/experiments_create".into(),
            json!({"experiment_key": unique("http_030_403_new"), "variants": two_variants(),
                   "guardrails": [{"event": "refund", "kind": "conversion", "bad": "increase"}]}),
        ),
        (
            "POST",
            "/rpc/experiments_update".into(),
            json!({"experiment_key": key, "dimensions": ["plan"], "bandit": {"event": "x", "kind": "conversion"}}),
        ),
    ];
    for (method, path, body) in &endpoints {
        // A client key with a client token; a client key with an admin token; an admin key
        // with a client token.
        for (headers, jwt) in [
            (client_headers(), client_jwt("u1")),
            (client_headers(), admin_jwt()),
            (admin_headers(), client_jwt("u1")),
        ] {
            assert_error(
                &request(method, path, headers, jwt, body.clone()),
                403,
                "FORBIDDEN",
            );
        }
    }
    assert_eq!(
        sql_value("amba._get_experiment($1)", &[&key]),
        before,
        "nothing changed"
    );
    assert_eq!(status_of(&key), "active");
    // The client role itself has no right to the functions either (should the pre-request
    // check ever be bypassed): permission denied.
    let mut db = connect_as("authenticator");
    db.batch_execute("SET ROLE amba_client").unwrap();
    for sql in [
        "SELECT * FROM amba_api.experiments_check_guardrails('x')",
        "SELECT amba_api.experiments_bandit_update('x')",
        "SELECT * FROM amba_api.experiments_bandit_results('x')",
        "SELECT * FROM amba_api.experiments_results_by('x', 'e', 'd')",
        "SELECT * FROM amba_api.experiments_ratio_results('x', 'e')",
        "SELECT * FROM amba_api.experiments_quantile_results('x', 'e', 'p', 0.5)",
        "SELECT * FROM amba._guardrail_status('x')",
    ] {
        let err = db.query(sql, &[]).expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err}"
        );
    }
}
