//! The six tools: names, argument specs, JSON Schemas and descriptions.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};

/// What kind of value an argument takes, and so how it is passed to SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A JSON string, passed as `text`.
    Text,
    /// Any JSON value, passed as `jsonb` (the SQL function validates it).
    Json,
    /// A JSON number, passed as `double precision`.
    Number,
}

#[derive(Clone, Copy, Debug)]
pub struct Arg {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

/// How the SQL function's answer becomes the tool result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `jsonb` experiment; NULL means EXPERIMENT_NOT_FOUND.
    Experiment,
    /// `boolean`; false means EXPERIMENT_NOT_FOUND.
    Deleted,
    /// `SETOF jsonb`, aggregated into a JSON array.
    List,
    /// A table, aggregated into a JSON array of row objects.
    Rows,
}

#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub tool: &'static str,
    pub function: &'static str,
    pub args: &'static [Arg],
    pub shape: Shape,
    /// Safe to retry once on a fresh connection if the connection was lost.
    pub read_only: bool,
    /// Key of the object that wraps an array result for clients on MCP protocol
    /// versions before 2026-07-28, whose `structuredContent` must be an object.
    pub legacy_wrapper: &'static str,
}

const KEY: Arg = Arg {
    name: "experiment_key",
    kind: Kind::Text,
    required: true,
};

pub const SPECS: &[Spec] = &[
    Spec {
        tool: "amba_experiments_create",
        function: "amba_create_experiment",
        args: &[
            KEY,
            Arg {
                name: "variants",
                kind: Kind::Json,
                required: true,
            },
            Arg {
                name: "name",
                kind: Kind::Text,
                required: false,
            },
            Arg {
                name: "description",
                kind: Kind::Text,
                required: false,
            },
            Arg {
                name: "status",
                kind: Kind::Text,
                required: false,
            },
        ],
        shape: Shape::Experiment,
        read_only: false,
        legacy_wrapper: "experiment",
    },
    Spec {
        tool: "amba_experiments_list",
        function: "amba_list_experiments",
        args: &[],
        shape: Shape::List,
        read_only: true,
        legacy_wrapper: "experiments",
    },
    Spec {
        tool: "amba_experiments_get",
        function: "amba_get_experiment",
        args: &[KEY],
        shape: Shape::Experiment,
        read_only: true,
        legacy_wrapper: "experiment",
    },
    Spec {
        tool: "amba_experiments_update",
        function: "amba_update_experiment",
        args: &[
            KEY,
            Arg {
                name: "variants",
                kind: Kind::Json,
                required: false,
            },
            Arg {
                name: "status",
                kind: Kind::Text,
                required: false,
            },
            Arg {
                name: "name",
                kind: Kind::Text,
                required: false,
            },
            Arg {
                name: "description",
                kind: Kind::Text,
                required: false,
            },
        ],
        shape: Shape::Experiment,
        read_only: false,
        legacy_wrapper: "experiment",
    },
    Spec {
        tool: "amba_experiments_delete",
        function: "amba_delete_experiment",
        args: &[KEY],
        shape: Shape::Deleted,
        read_only: false,
        legacy_wrapper: "deleted",
    },
    Spec {
        tool: "amba_experiments_results",
        function: "amba_results",
        args: &[
            KEY,
            Arg {
                name: "conversion_event",
                kind: Kind::Text,
                required: true,
            },
            Arg {
                name: "alpha",
                kind: Kind::Number,
                required: false,
            },
        ],
        shape: Shape::Rows,
        read_only: true,
        legacy_wrapper: "results",
    },
];

pub fn spec(tool: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.tool == tool)
}

pub const INSTRUCTIONS: &str = "\
Amba runs A/B experiments inside PostgreSQL. These tools manage experiments \
(amba_experiments_create, _list, _get, _update, _delete) and read their statistics \
(amba_experiments_results). They call the database's amba_* SQL functions and return \
exactly the JSON those return.

An experiment has a key, an ordered list of weighted variants (the first is the control) \
and a status: draft, active, paused or ended. Application code (not these tools) then \
runs, per end user: amba_assign(experiment_key, user_id) -> the user's sticky variant key \
(deterministic hash, persisted; only 'active' experiments assign new users); \
amba_expose(experiment_key, user_id) when the user actually sees the variant; \
amba_track(user_id, event [, properties jsonb]) for conversions. Over HTTP (PostgREST, \
schema amba_api) the same are POST /rpc/assign, /rpc/expose, /rpc/track with the user's \
session token. Results count exposed users only.

Errors come back as tool errors whose text starts with a code: EXPERIMENT_NOT_FOUND, \
EXPERIMENT_EXISTS, EXPERIMENT_INACTIVE, ASSIGNMENT_REQUIRED, INVALID_ARGUMENT (then the \
SQLSTATE), or DATABASE_UNAVAILABLE when PostgreSQL cannot be reached (the next call \
reconnects).";

const KEY_DOC: &str = "The experiment's key: 1-128 characters of A-Z a-z 0-9 _ . : - \
(e.g. \"checkout_button_color\"). Unique; the identifier the application passes to amba_assign.";

const VARIANTS_DOC: &str = "The variants, in order: a JSON array of at least two objects \
{\"key\": string, \"weight\": number}. The FIRST variant is the control that every other \
variant is compared against, and it must stay first. Keys: 1-64 characters of \
A-Z a-z 0-9 _ . : -, unique within the experiment. Weights are relative shares of new users: \
non-negative finite JSON numbers (not strings) with a sum > 0, e.g. 50/50 or 1/1/2; \
weight 0 switches a variant off for users not yet assigned. \
Example: [{\"key\":\"control\",\"weight\":50},{\"key\":\"treatment\",\"weight\":50}]";

const STATUS_DOC: &str = "draft = prepared, assigns nobody; active = assigns new users; \
paused = users already assigned keep their variant, new users get EXPERIMENT_INACTIVE \
(the application should then show its default experience); ended = like paused, for a \
finished experiment. Any status can change to any other (an ended experiment can be \
re-activated).";

fn key_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "pattern": "^[A-Za-z0-9_.:-]+$",
        "description": KEY_DOC,
    })
}

fn variants_schema(doc: &str) -> Value {
    json!({
        "type": "array",
        "minItems": 2,
        "description": doc,
        "items": {
            "type": "object",
            "properties": {
                "key": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": "^[A-Za-z0-9_.:-]+$",
                    "description": "The variant's key, returned by amba_assign to the application."
                },
                "weight": {
                    "type": "number",
                    "minimum": 0,
                    "description": "Relative share of new users (>= 0; 0 = no new users)."
                }
            },
            "required": ["key", "weight"]
        }
    })
}

fn status_schema(doc: String) -> Value {
    json!({
        "type": "string",
        "enum": ["draft", "active", "paused", "ended"],
        "description": doc,
    })
}

fn object_schema(properties: Value, required: &[&str]) -> Arc<JsonObject> {
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    match schema {
        Value::Object(map) => Arc::new(map),
        _ => unreachable!(),
    }
}

const CREATE_DOC: &str = "\
Create an A/B experiment. Each end user the application assigns (SQL amba_assign) gets a \
sticky variant: picked by a deterministic hash of (experiment_key, user_id) with probability \
proportional to the weights, stored, and never changed afterwards. The first variant is the \
control. status defaults to 'active' (new users are assigned right away); use 'draft' to \
prepare an experiment without assigning anyone yet.
Returns the experiment as JSON: {key, name, description, status, variants: [{key, weight}], \
created_at, updated_at}.
Errors: EXPERIMENT_EXISTS when the key is taken (change it with amba_experiments_update \
instead); INVALID_ARGUMENT for a bad key, fewer than two variants, duplicate or bad variant \
keys, negative/non-numeric/non-finite weights or a zero sum, or an unknown status.";

const LIST_DOC: &str = "\
List every experiment. Returns a JSON array of experiment objects, each \
{key, name, description, status, variants: [{key, weight}], created_at, updated_at} \
(the same shape as amba_experiments_get); [] when there are none. Takes no arguments.";

const GET_DOC: &str = "\
Read one experiment by key. Returns {key, name, description, status, \
variants: [{key, weight}] (control first), created_at, updated_at}.
Errors: EXPERIMENT_NOT_FOUND when no experiment has this key.";

const UPDATE_DOC: &str = "\
Change an experiment. Pass experiment_key plus only what should change; omitted (or null) \
arguments keep their current value.
variants replaces the whole list (send every variant, control first): re-weighting only \
affects users not yet assigned, existing assignments never move. New variants may be \
appended. A variant that already has assigned users cannot be removed (INVALID_ARGUMENT): \
set its weight to 0 instead so it gets no new users. The control must stay first.
status: draft | active | paused | ended, any to any. Pausing (or ending) stops new \
assignments: users already assigned keep getting their variant, new users get \
EXPERIMENT_INACTIVE. Setting 'active' again resumes assigning.
Returns the updated experiment {key, name, description, status, variants, created_at, \
updated_at}. Errors: EXPERIMENT_NOT_FOUND, INVALID_ARGUMENT.";

const DELETE_DOC: &str = "\
Permanently delete an experiment together with all its assignments and exposures (tracked \
events are not tied to an experiment and stay; the audit trail stays readable in SQL with \
amba_experiment_history). To stop an experiment but keep its results, set status 'ended' \
with amba_experiments_update instead.
Returns true. Errors: EXPERIMENT_NOT_FOUND when no experiment has this key.";

const RESULTS_DOC: &str = "\
Statistics of an experiment for one conversion event: a JSON array with one row per variant, \
in variant order, the control first. Row fields:
- variant: the variant key. is_control: true on the first variant only.
- assigned_count: users assigned to the variant. exposed_count: assigned users who were \
exposed (amba_expose); every statistic below uses exposed users only. converted_count: \
exposed users with at least one event named conversion_event at or after their assignment.
- conversion_rate: converted_count / exposed_count; null when exposed_count = 0.
- z_score, p_value: pooled two-proportion z-test of this variant against the control; \
p_value is two-sided. Null on the control row and when undefined (no exposed users on either \
side, or zero variance, e.g. both sides at 0% or both at 100%).
- lift: relative lift over the control, (rate - control_rate) / control_rate (0.05 = +5%). \
lift_ci_low, lift_ci_high: its two-sided (1 - alpha) confidence interval.
- chance_to_win: Bayesian probability (flat prior) that the variant's rate beats the control's.
- p_value_holm: p_value adjusted (Holm) for comparing several variants with the control; \
with 3+ variants use it instead of p_value. Null where p_value is null.
- sequential_p_value: always-valid p-value, safe to check repeatedly while data comes in \
and to stop as soon as it is < alpha (the plain p_value is only valid for a sample size \
fixed in advance).
- lift, lift_ci_low, lift_ci_high, chance_to_win and sequential_p_value are null on the \
control row and when either side has fewer than 2 exposed users, the control's \
conversion_rate is 0, or the variance is 0.
- srm_p_value: sample-ratio-mismatch test of the exposed counts against the weights, the same \
on every row; null when nobody is exposed. Below 0.001 means exposures are being lost or \
skewed in some variant: do not trust the results until the assignment/exposure path is fixed.
Reading it: a variant is significantly better than the control at level alpha when lift > 0 \
and p_value < alpha (p_value_holm with several variants; sequential_p_value if the results were \
looked at before the planned sample size); [lift_ci_low, lift_ci_high] is the plausible size \
of the effect.
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT for a bad conversion_event or alpha.";

pub fn tools() -> Vec<Tool> {
    let create = Tool::new(
        "amba_experiments_create",
        CREATE_DOC,
        object_schema(
            json!({
                "experiment_key": key_schema(),
                "variants": variants_schema(VARIANTS_DOC),
                "name": {"type": "string", "description": "Optional human-readable name."},
                "description": {"type": "string", "description": "Optional description: the hypothesis, what each variant changes."},
                "status": status_schema(format!("Initial status, default 'active'. {STATUS_DOC}")),
            }),
            &["experiment_key", "variants"],
        ),
    )
    .with_title("Create an A/B experiment")
    .annotate(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(false)
            .open_world(false),
    );

    let list = Tool::new(
        "amba_experiments_list",
        LIST_DOC,
        object_schema(json!({}), &[]),
    )
    .with_title("List A/B experiments")
    .annotate(ToolAnnotations::new().read_only(true).open_world(false));

    let get = Tool::new(
        "amba_experiments_get",
        GET_DOC,
        object_schema(
            json!({ "experiment_key": key_schema() }),
            &["experiment_key"],
        ),
    )
    .with_title("Get an A/B experiment")
    .annotate(ToolAnnotations::new().read_only(true).open_world(false));

    let update = Tool::new(
        "amba_experiments_update",
        UPDATE_DOC,
        object_schema(
            json!({
                "experiment_key": key_schema(),
                "variants": variants_schema(&format!(
                    "Optional: the new complete variant list (re-weight, append variants). \
                     Existing assignments never move; a variant with assigned users cannot be \
                     removed (weight 0 instead). {VARIANTS_DOC}"
                )),
                "status": status_schema(format!("Optional: the new status. {STATUS_DOC}")),
                "name": {"type": "string", "description": "Optional: the new name."},
                "description": {"type": "string", "description": "Optional: the new description."},
            }),
            &["experiment_key"],
        ),
    )
    .with_title("Update an A/B experiment (re-weight, pause, rename)")
    .annotate(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(true)
            .idempotent(true)
            .open_world(false),
    );

    let delete = Tool::new(
        "amba_experiments_delete",
        DELETE_DOC,
        object_schema(
            json!({ "experiment_key": key_schema() }),
            &["experiment_key"],
        ),
    )
    .with_title("Delete an A/B experiment")
    .annotate(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(true)
            .idempotent(true)
            .open_world(false),
    );

    let results = Tool::new(
        "amba_experiments_results",
        RESULTS_DOC,
        object_schema(
            json!({
                "experiment_key": key_schema(),
                "conversion_event": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 128,
                    "description": "The event name that counts as a conversion, as the application passes it to amba_track (e.g. \"purchase\")."
                },
                "alpha": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "exclusiveMaximum": 1,
                    "default": 0.05,
                    "description": "Significance level, 0 < alpha < 1, default 0.05: sets the (1 - alpha) interval of lift and tunes sequential_p_value. p_value, p_value_holm and chance_to_win do not depend on it."
                },
            }),
            &["experiment_key", "conversion_event"],
        ),
    )
    .with_title("A/B experiment results for a conversion event")
    .annotate(ToolAnnotations::new().read_only(true).open_world(false));

    vec![create, list, get, update, delete, results]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_spec_and_matching_arguments() {
        let tools = tools();
        assert_eq!(tools.len(), SPECS.len());
        for tool in &tools {
            let spec = spec(&tool.name).expect("spec");
            let props = tool.input_schema["properties"].as_object().unwrap();
            let names: Vec<&str> = spec.args.iter().map(|a| a.name).collect();
            let mut listed: Vec<&str> = props.keys().map(String::as_str).collect();
            let mut expected = names.clone();
            listed.sort();
            expected.sort();
            assert_eq!(listed, expected, "{}", tool.name);
            let required: Vec<&str> = tool.input_schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let spec_required: Vec<&str> = spec
                .args
                .iter()
                .filter(|a| a.required)
                .map(|a| a.name)
                .collect();
            assert_eq!(required, spec_required, "{}", tool.name);
        }
    }
}
