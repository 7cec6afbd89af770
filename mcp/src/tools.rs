//! The tools, declared once in `SPECS`: each tool's SQL function, its arguments (with
//! their JSON Schema), the columns it returns, its documentation and annotations. The MCP
//! tool list (`tools()`), the argument checks and the SQL statements are all derived from it.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};

use crate::error::Code;

/// What kind of value an argument takes, and so how it is passed to SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A JSON string, passed as `text`.
    Text,
    /// Any JSON value, passed as `jsonb` (the SQL function validates it).
    Json,
    /// A JSON number, passed as `double precision`.
    Number,
    /// A JSON number without a fraction, passed as `integer`.
    Integer,
    /// A JSON number without a fraction, passed as `bigint`.
    BigInt,
    /// A JSON array of strings, passed as `text[]`.
    TextArray,
    /// A JSON string passed as `text`, for a parameter the SQL function has no default for:
    /// omitted (or null) passes NULL (e.g. a ratio's property: count the events).
    TextOrNull,
}

impl Kind {
    /// The JSON Schema `type` of the argument; `None` for `Json`, whose schema says it.
    fn json_type(self) -> Option<&'static str> {
        match self {
            Kind::Text | Kind::TextOrNull => Some("string"),
            Kind::Number => Some("number"),
            Kind::Integer | Kind::BigInt => Some("integer"),
            Kind::TextArray => Some("array"),
            Kind::Json => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Arg {
    /// The SQL function's parameter name (calls use named notation).
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// The argument's JSON Schema, with its description, without `type` (derived from
    /// `kind`) unless `kind` is `Json`.
    pub schema: fn() -> Value,
}

/// How the SQL function's answer becomes the tool result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `jsonb` object; NULL means EXPERIMENT_NOT_FOUND.
    Object,
    /// `boolean`; false means EXPERIMENT_NOT_FOUND.
    Deleted,
    /// `boolean`, returned as is.
    Bool,
    /// `SETOF jsonb`, aggregated into a JSON array.
    List,
    /// A table, aggregated into a JSON array of row objects (keys: the column names).
    Rows,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads only: safe to retry once on a fresh connection if the connection was lost.
    Read,
    Write {
        destructive: bool,
        idempotent: bool,
    },
}

/// Columns of a table result, documented together.
#[derive(Clone, Copy, Debug)]
pub struct Columns {
    pub names: &'static [&'static str],
    pub doc: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub tool: &'static str,
    /// The SQL function, called qualified with the extension's schema.
    pub function: &'static str,
    pub title: &'static str,
    pub args: &'static [Arg],
    pub shape: Shape,
    pub access: Access,
    /// Key of the object that wraps a non-object result for clients on MCP protocol
    /// versions before 2026-07-28, whose `structuredContent` must be an object.
    pub legacy_wrapper: &'static str,
    /// The description, up to the columns.
    pub doc: &'static str,
    /// For `Shape::Rows`: the SQL function's columns, in order.
    pub columns: &'static [Columns],
    /// The description after the columns.
    pub notes: &'static str,
}

impl Spec {
    pub fn read_only(&self) -> bool {
        self.access == Access::Read
    }

    /// The result's column names, in the SQL function's order (`Shape::Rows` only).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn column_names(&self) -> impl Iterator<Item = &'static str> {
        self.columns.iter().flat_map(|c| c.names.iter().copied())
    }

    pub fn description(&self) -> String {
        let mut text = self.doc.to_string();
        if !self.columns.is_empty() {
            text.push_str("\nRow fields, in this order:");
            for group in self.columns {
                text.push_str(&format!("\n- {}: {}", group.names.join(", "), group.doc));
            }
        }
        if !self.notes.is_empty() {
            text.push('\n');
            text.push_str(self.notes);
        }
        text
    }

    pub fn input_schema(&self) -> Arc<JsonObject> {
        let mut properties = JsonObject::new();
        for arg in self.args {
            let mut schema = match (arg.schema)() {
                Value::Object(map) => map,
                other => panic!("the schema of {}.{} is {other}", self.tool, arg.name),
            };
            if let Some(ty) = arg.kind.json_type() {
                schema.insert("type".into(), ty.into());
            }
            properties.insert(arg.name.into(), Value::Object(schema));
        }
        let required: Vec<&str> = self
            .args
            .iter()
            .filter(|a| a.required)
            .map(|a| a.name)
            .collect();
        let mut schema = JsonObject::new();
        schema.insert("type".into(), "object".into());
        schema.insert("properties".into(), Value::Object(properties));
        schema.insert("required".into(), json!(required));
        schema.insert("additionalProperties".into(), false.into());
        Arc::new(schema)
    }

    pub fn mcp_tool(&self) -> Tool {
        let annotations = match self.access {
            Access::Read => ToolAnnotations::new().read_only(true),
            Access::Write {
                destructive,
                idempotent,
            } => ToolAnnotations::new()
                .read_only(false)
                .destructive(destructive)
                .idempotent(idempotent),
        };
        Tool::new(self.tool, self.description(), self.input_schema())
            .with_title(self.title)
            .annotate(annotations.open_world(false))
    }
}

pub fn spec(tool: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.tool == tool)
}

pub fn tools() -> Vec<Tool> {
    SPECS.iter().map(Spec::mcp_tool).collect()
}

/// The server's instructions (MCP `initialize`).
pub fn instructions() -> String {
    let names =
        |tools: &[&Spec]| -> String { tools.iter().map(|s| s.tool).collect::<Vec<_>>().join(", ") };
    let writes: Vec<&Spec> = SPECS.iter().filter(|s| !s.read_only()).collect();
    let reads: Vec<&Spec> = SPECS.iter().filter(|s| s.read_only()).collect();
    let contract: Vec<&str> = Code::all()
        .filter(|c| matches!(c, Code::Contract(_)))
        .map(Code::as_str)
        .collect();
    format!(
        "\
Amba runs A/B experiments inside PostgreSQL. These tools change experiments and their \
overrides ({}) and read them and their statistics ({}). They call the database's amba_* SQL \
functions and return exactly the JSON those return.

An experiment has a key, an ordered list of weighted variants (the first is the control), \
a status: draft, active, paused or ended, and optionally a targeting condition on user \
attributes (GrowthBook's condition language), a coverage (the share of eligible users \
enrolled, 0 to 1), a layer with a layer_share (experiments of one layer are mutually \
exclusive: each owns a range of the layer's users, see amba_layers_list) and a holdout (an \
experiment whose control holds users out of every experiment that names it), guardrails \
(metrics it must not harm: amba_guardrails_check pauses it automatically when one trips), \
dimensions (user attributes stored at assignment, for amba_experiments_results_by) and bandit \
settings (amba_experiments_bandit_update moves its traffic toward the winner). Application \
code (not these tools) then runs, per end user: \
amba_assign(experiment_key, user_id [, attributes jsonb]) -> the user's sticky variant key \
(deterministic hash, persisted; only 'active' experiments assign new users), or null when \
the targeting, layer, coverage or holdout leaves the user out (nothing stored; show the \
default); \
amba_expose(experiment_key, user_id) when the user actually sees the variant; \
amba_track(user_id, event [, properties jsonb]) for conversions and metric values (e.g. \
{{\"amount\": 19.99}}). Over HTTP (PostgREST, schema amba_api) the same are POST /rpc/assign \
(with an optional \"attributes\" object), /rpc/expose, /rpc/track with the user's session \
token. Results count exposed users only; \
users with an override (QA, demos) are left out of them.

Errors come back as tool errors whose text starts with a code: {} (then the SQLSTATE), \
{} when PostgreSQL cannot be reached (the next call reconnects), or {} for anything else \
the database reports (e.g. permission denied).",
        names(&writes),
        names(&reads),
        contract.join(", "),
        Code::DatabaseUnavailable,
        Code::DatabaseError,
    )
}

// ---------------------------------------------------------------------------------------
// Arguments

const KEY: Arg = Arg {
    name: "experiment_key",
    kind: Kind::Text,
    required: true,
    schema: || {
        json!({
            "minLength": 1,
            "maxLength": 128,
            "pattern": "^[A-Za-z0-9_.:-]+$",
            "description": "The experiment's key: 1-128 characters of A-Z a-z 0-9 _ . : - \
                (e.g. \"checkout_button_color\"). Unique; the identifier the application \
                passes to amba_assign.",
        })
    },
};

const VARIANTS_DOC: &str = "The variants, in order: a JSON array of at least two objects \
{\"key\": string, \"weight\": number}. The FIRST variant is the control that every other \
variant is compared against, and it must stay first. Keys: 1-64 characters of \
A-Z a-z 0-9 _ . : -, unique within the experiment. Weights are relative shares of new users: \
non-negative finite JSON numbers (not strings) with a sum > 0, e.g. 50/50 or 1/1/2; \
weight 0 switches a variant off for users not yet assigned. \
Example: [{\"key\":\"control\",\"weight\":50},{\"key\":\"treatment\",\"weight\":50}]";

fn variants_schema(doc: String) -> Value {
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

const STATUS_DOC: &str = "draft = prepared, assigns nobody; active = assigns new users; \
paused = users already assigned keep their variant, new users get EXPERIMENT_INACTIVE \
(the application should then show its default experience); ended = like paused, for a \
finished experiment. Any status can change to any other (an ended experiment can be \
re-activated).";

fn status_schema(doc: String) -> Value {
    json!({
        "enum": ["draft", "active", "paused", "ended"],
        "description": doc,
    })
}

const TARGETING_DOC: &str = "Who may be enrolled: a condition on the user attributes that the \
application passes to amba_assign(experiment_key, user_id, attributes) (over HTTP, the \
\"attributes\" object of POST /rpc/assign). GrowthBook's condition language: a JSON object \
whose keys are attribute paths (dotted for nested attributes, e.g. \"app.version\") with a \
value to equal or an object of operators: $eq $ne $lt $lte $gt $gte $in $nin $ini $nini $all \
$alli $elemMatch $size $exists $type $regex $regexi $not, version comparisons $veq $vne $vlt \
$vlte $vgt $vgte, and the logical keys $and $or $nor. Example: {\"country\": {\"$in\": \
[\"US\", \"CA\"]}, \"plan\": \"pro\", \"app.version\": {\"$vgte\": \"2.4.0\"}}. Users for whom it \
does not hold are not enrolled: amba_assign returns null (the application shows its default \
experience) and nothing is stored. Users already assigned keep their variant whatever their \
attributes are now. An unknown operator (also $inGroup / $notInGroup) or an invalid regular \
expression is INVALID_ARGUMENT.";

const COVERAGE_DOC: &str = "The share of eligible users (those the targeting lets in) who \
are enrolled, 0 to 1 (0.1 = 10%); the others get null from amba_assign. Which users are \
covered is a deterministic hash of (experiment_key, user_id), independent of the variant, so \
raising coverage later adds users and removes nobody. Changes affect only users not yet \
assigned.";

fn targeting_schema(doc: String) -> Value {
    json!({
        "type": "object",
        "description": doc,
    })
}

fn coverage_schema(doc: String) -> Value {
    json!({
        "minimum": 0,
        "maximum": 1,
        "description": doc,
    })
}

const LAYER_DOC: &str = "A layer makes experiments mutually exclusive: experiments in the same \
layer never share a user. Each owns a fixed range [start, start + layer_share) of the layer's \
unit interval; a user's position in the layer is a deterministic hash of (layer, user_id), and \
they can be enrolled only in the experiment whose range holds it (users elsewhere in the layer \
get null from amba_assign). amba places the experiment at create in the lowest free gap of \
the layer that fits; INVALID_ARGUMENT (\"layer full\") when none does. Ranges are held by the \
layer's experiments that are not ended: ending (or deleting) an experiment frees its range for \
later experiments (its users keep their variants), re-activating it places it again; draft \
and paused experiments keep theirs. The range is in the experiment JSON as \
\"layer\": {\"key\", \"start\", \"end\"}; amba_layers_list shows every layer's ranges and free \
gaps. layer and layer_share are chosen at create and cannot change.";

const HOLDOUT_DOC: &str = "A holdout is an ordinary experiment whose first variant (control) \
is the held-out group, e.g. variants [{\"key\": \"holdout\", \"weight\": 5}, {\"key\": \
\"general\", \"weight\": 95}]. An experiment that names it sends every user it would enrol \
(after its targeting, layer and coverage) through the holdout first: the user is assigned and \
exposed there (sticky), and gets null from this experiment when that gives the holdout's \
control. amba_experiments_results on the holdout then compares everyone held out with \
everyone released, across all the experiments that name it (the total effect of a set of \
launches). The named experiment must exist, must not name a holdout itself, and cannot be the \
experiment itself; a named holdout cannot be deleted (each INVALID_ARGUMENT).";

fn layer_schema(doc: String) -> Value {
    json!({
        "minLength": 1,
        "maxLength": 128,
        "pattern": "^[A-Za-z0-9_.:-]+$",
        "description": doc,
    })
}

fn holdout_schema(doc: String) -> Value {
    json!({
        "maxLength": 128,
        "description": doc,
    })
}

const GUARDRAILS_DOC: &str = "Guardrails: metrics the experiment must not harm, each judged \
for every non-control variant against the control by amba_guardrails_check, which pauses the \
experiment (status paused, audit action auto_pause) as soon as one trips. A JSON array of at \
most 10 objects {\"event\": string, \"kind\": \"conversion\" | \"mean\", \"value_property\": \
string or null, \"bad\": \"decrease\" | \"increase\", \"tolerance\": number >= 0 (default 0), \
\"alpha\": 0 < alpha < 1 (default 0.05)}. kind conversion: the share of exposed users with the \
event at or after their assignment; kind mean: per exposed user the number of events, or the \
sum of the numeric property value_property. bad is the harmful direction of the relative lift; \
tolerance the relative change accepted in that direction (0.02 = 2%). Each check uses an \
always-valid confidence interval of the relative lift at the guardrail's alpha, so checking \
every minute for months keeps false pauses at or below alpha: a guardrail trips when bad = \
decrease and the whole interval is below -tolerance, or bad = increase and it is above \
+tolerance. Example: [{\"event\": \"app_error\", \"kind\": \"conversion\", \"bad\": \"increase\"}, \
{\"event\": \"purchase\", \"kind\": \"mean\", \"value_property\": \"amount\", \"bad\": \
\"decrease\", \"tolerance\": 0.02}]. Invalid (unknown field or kind, more than 10, a negative \
tolerance, alpha outside (0, 1)) is INVALID_ARGUMENT, nothing written.";

fn guardrails_schema(doc: String) -> Value {
    json!({
        "type": "array",
        "maxItems": 10,
        "description": doc,
        "items": {
            "type": "object",
            "properties": {
                "event": {"type": "string", "description": "The event the metric is made of."},
                "kind": {"enum": ["conversion", "mean"], "description": "conversion: share of \
                    users with the event; mean: events (or value_property summed) per user."},
                "value_property": {"type": ["string", "null"], "description": "For kind mean: \
                    the numeric property to sum per user; null counts the events."},
                "bad": {"enum": ["decrease", "increase"], "description": "The harmful \
                    direction."},
                "tolerance": {"type": "number", "minimum": 0, "description": "Relative change \
                    tolerated in the bad direction (default 0)."},
                "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                          "description": "Significance level of the always-valid interval \
                              (default 0.05)."}
            },
            "required": ["event", "kind", "bad"]
        }
    })
}

const DIMENSIONS_DOC: &str = "Segments to break results down by (amba_experiments_results_by): \
up to 5 attribute paths, dotted for nested attributes as in targeting, e.g. [\"country\", \
\"device.type\"]. The values of these attributes that the application passes to a user's first \
amba_assign(experiment_key, user_id, attributes) are stored with the assignment (as text; a \
missing attribute is the null group) and never change; a change of dimensions applies to \
assignments made after it. Empty, duplicate or more than 5 paths are INVALID_ARGUMENT.";

fn dimensions_schema(doc: String) -> Value {
    json!({
        "maxItems": 5,
        "items": {"type": "string", "minLength": 1, "maxLength": 128},
        "description": doc,
    })
}

const BANDIT_DOC: &str = "Makes the experiment a multi-armed bandit, whose traffic follows the \
winner: {\"event\": string, \"kind\": \"conversion\" | \"mean\", \"value_property\": string or \
null, \"min_weight\": number (default 0.01), \"min_users\": whole number (default 100)}. A \
user's value: kind conversion, 1 if they have the event at or after their assignment, else 0; \
kind mean, the number of events or the sum of value_property. amba_experiments_bandit_update \
(run it on a schedule, e.g. pg_cron) sets new weights by top-two Thompson sampling once every \
variant has min_users exposed users; each variant keeps at least the floor min_weight (0 < \
min_weight < 1/k for k variants), so none is ever switched off, and nobody already assigned \
moves. Every variant needs a weight above 0. Invalid is INVALID_ARGUMENT.";

fn bandit_schema(doc: String) -> Value {
    json!({
        "type": "object",
        "properties": {
            "event": {"type": "string", "description": "The event that makes the value."},
            "kind": {"enum": ["conversion", "mean"], "description": "conversion: 1 if the user \
                has the event, else 0; mean: events (or value_property summed) per user."},
            "value_property": {"type": ["string", "null"], "description": "For kind mean: \
                the numeric property to sum; null counts the events."},
            "min_weight": {"type": "number", "exclusiveMinimum": 0, "description": "The \
                floor every variant's weight keeps, below 1/k (default 0.01)."},
            "min_users": {"type": "integer", "minimum": 1, "description": "Exposed users every \
                variant needs before the weights change (default 100)."}
        },
        "required": ["event", "kind"],
        "description": doc,
    })
}

const CREATE_ARGS: &[Arg] = &[
    KEY,
    Arg {
        name: "variants",
        kind: Kind::Json,
        required: true,
        schema: || variants_schema(VARIANTS_DOC.to_string()),
    },
    Arg {
        name: "name",
        kind: Kind::Text,
        required: false,
        schema: || json!({"description": "Optional human-readable name."}),
    },
    Arg {
        name: "description",
        kind: Kind::Text,
        required: false,
        schema: || json!({"description": "Optional description: the hypothesis, what each variant changes."}),
    },
    Arg {
        name: "status",
        kind: Kind::Text,
        required: false,
        schema: || status_schema(format!("Initial status, default 'active'. {STATUS_DOC}")),
    },
    Arg {
        name: "targeting",
        kind: Kind::Json,
        required: false,
        schema: || {
            targeting_schema(format!(
                "Optional; omitted = everyone (no condition). {TARGETING_DOC}"
            ))
        },
    },
    Arg {
        name: "coverage",
        kind: Kind::Number,
        required: false,
        schema: || {
            coverage_schema(format!(
                "Optional, default 1 (everyone eligible). {COVERAGE_DOC}"
            ))
        },
    },
    Arg {
        name: "layer",
        kind: Kind::Text,
        required: false,
        schema: || {
            layer_schema(format!(
                "Optional: the key of the layer to put the experiment in (1-128 characters of \
                 A-Z a-z 0-9 _ . : -, e.g. \"checkout\"); omitted = no layer. {LAYER_DOC}"
            ))
        },
    },
    Arg {
        name: "layer_share",
        kind: Kind::Number,
        required: false,
        schema: || {
            json!({
                "exclusiveMinimum": 0,
                "maximum": 1,
                "description": "Optional, only with layer: the width of the experiment's range \
                    in the layer, 0 < layer_share <= 1 (default 1, the whole layer), e.g. 0.3 \
                    for 30% of the layer's users. Placed in the lowest free gap that fits; \
                    INVALID_ARGUMENT when none does (the layer is full) or without a layer.",
            })
        },
    },
    Arg {
        name: "holdout",
        kind: Kind::Text,
        required: false,
        schema: || {
            holdout_schema(format!(
                "Optional: the key of a holdout experiment this experiment's users pass \
                 through first; omitted = none. {HOLDOUT_DOC}"
            ))
        },
    },
    Arg {
        name: "guardrails",
        kind: Kind::Json,
        required: false,
        schema: || guardrails_schema(format!("Optional; omitted = none. {GUARDRAILS_DOC}")),
    },
    Arg {
        name: "dimensions",
        kind: Kind::TextArray,
        required: false,
        schema: || dimensions_schema(format!("Optional; omitted = none. {DIMENSIONS_DOC}")),
    },
    Arg {
        name: "bandit",
        kind: Kind::Json,
        required: false,
        schema: || {
            bandit_schema(format!(
                "Optional; omitted = an ordinary experiment whose weights change only by \
                 amba_experiments_update. {BANDIT_DOC}"
            ))
        },
    },
];

const UPDATE_ARGS: &[Arg] = &[
    KEY,
    Arg {
        name: "variants",
        kind: Kind::Json,
        required: false,
        schema: || {
            variants_schema(format!(
                "Optional: the new complete variant list (re-weight, append variants). \
                 Existing assignments never move; a variant with assigned users (or an \
                 override) cannot be removed (weight 0 instead). {VARIANTS_DOC}"
            ))
        },
    },
    Arg {
        name: "status",
        kind: Kind::Text,
        required: false,
        schema: || status_schema(format!("Optional: the new status. {STATUS_DOC}")),
    },
    Arg {
        name: "name",
        kind: Kind::Text,
        required: false,
        schema: || json!({"description": "Optional: the new name."}),
    },
    Arg {
        name: "description",
        kind: Kind::Text,
        required: false,
        schema: || json!({"description": "Optional: the new description."}),
    },
    Arg {
        name: "targeting",
        kind: Kind::Json,
        required: false,
        schema: || {
            targeting_schema(format!(
                "Optional: the new condition, replacing the old one; {{}} removes it (everyone \
                 is eligible again); omitted or null keeps it. {TARGETING_DOC}"
            ))
        },
    },
    Arg {
        name: "coverage",
        kind: Kind::Number,
        required: false,
        schema: || {
            coverage_schema(format!(
                "Optional: the new coverage; omitted or null keeps it. {COVERAGE_DOC}"
            ))
        },
    },
    Arg {
        name: "holdout",
        kind: Kind::Text,
        required: false,
        schema: || {
            holdout_schema(format!(
                "Optional: the key of the holdout experiment to name instead of the current \
                 one; \"\" (empty string) removes the holdout; omitted or null keeps it. Users \
                 already assigned keep their variant; users the old holdout held out were \
                 never assigned here, so they may be enrolled afterwards. {HOLDOUT_DOC}"
            ))
        },
    },
    Arg {
        name: "guardrails",
        kind: Kind::Json,
        required: false,
        schema: || {
            guardrails_schema(format!(
                "Optional: the new complete list, replacing the old one; [] removes every \
                 guardrail; omitted or null keeps them. {GUARDRAILS_DOC}"
            ))
        },
    },
    Arg {
        name: "dimensions",
        kind: Kind::TextArray,
        required: false,
        schema: || {
            dimensions_schema(format!(
                "Optional: the new list, replacing the old one; [] removes them; omitted or \
                 null keeps them. Users already assigned keep the values stored for them. \
                 {DIMENSIONS_DOC}"
            ))
        },
    },
    Arg {
        name: "bandit",
        kind: Kind::Json,
        required: false,
        schema: || {
            bandit_schema(format!(
                "Optional: the new settings, replacing the old ones; {{}} makes it an ordinary \
                 experiment again; omitted or null keeps them. {BANDIT_DOC}"
            ))
        },
    },
];

const CONVERSION_EVENT: Arg = Arg {
    name: "conversion_event",
    kind: Kind::Text,
    required: true,
    schema: || {
        json!({
            "minLength": 1,
            "maxLength": 128,
            "description": "The event name that counts as a conversion, as the application \
                passes it to amba_track (e.g. \"purchase\").",
        })
    },
};

fn alpha_schema(effect: &str) -> Value {
    json!({
        "exclusiveMinimum": 0,
        "exclusiveMaximum": 1,
        "default": 0.05,
        "description": format!("Significance level, 0 < alpha < 1, default 0.05: {effect}"),
    })
}

const RESULTS_ARGS: &[Arg] = &[
    KEY,
    CONVERSION_EVENT,
    Arg {
        name: "alpha",
        kind: Kind::Number,
        required: false,
        schema: || {
            alpha_schema(
                "sets the (1 - alpha) interval of lift and tunes sequential_p_value. \
                 p_value, p_value_holm and chance_to_win do not depend on it.",
            )
        },
    },
];

const METRIC_ARGS: &[Arg] = &[
    KEY,
    Arg {
        name: "event",
        kind: Kind::Text,
        required: true,
        schema: || {
            json!({
                "minLength": 1,
                "maxLength": 128,
                "description": "The event the metric is made of, as the application passes \
                    it to amba_track (e.g. \"purchase\"): its occurrences are counted, or \
                    its value_property summed, per user.",
            })
        },
    },
    Arg {
        name: "value_property",
        kind: Kind::Text,
        required: false,
        schema: || {
            json!({
                "description": "Optional: the property of the event to sum per user, e.g. \
                    \"amount\" for amba_track(user_id, 'purchase', '{\"amount\": 19.99}'). \
                    Events where it is missing or not a JSON number add 0. Omitted: the \
                    metric is the number of events.",
            })
        },
    },
    Arg {
        name: "alpha",
        kind: Kind::Number,
        required: false,
        schema: || {
            alpha_schema(
                "sets the (1 - alpha) intervals of delta and lift. p_value and p_value_holm \
                 do not depend on it.",
            )
        },
    },
    Arg {
        name: "cap",
        kind: Kind::Number,
        required: false,
        schema: || {
            json!({
                "description": "Optional: an absolute upper cap on each user's value \
                    (value = least(value, cap)), so a few outliers cannot dominate the mean. \
                    At most one of cap and cap_percentile.",
            })
        },
    },
    Arg {
        name: "cap_percentile",
        kind: Kind::Number,
        required: false,
        schema: || {
            json!({
                "exclusiveMinimum": 0,
                "exclusiveMaximum": 1,
                "description": "Optional: cap each user's value at this percentile of the \
                    values of all exposed users (e.g. 0.99; 0 < q < 1). At most one of cap \
                    and cap_percentile.",
            })
        },
    },
    Arg {
        name: "cuped_days",
        kind: Kind::Integer,
        required: false,
        schema: || {
            json!({
                "minimum": 1,
                "maximum": 365,
                "description": "Optional: CUPED variance reduction, using each user's value \
                    of the same metric over this many days (1-365) before their assignment \
                    as covariate. Narrower intervals when behaviour before the experiment \
                    predicts behaviour during it; mean and stddev stay unadjusted.",
            })
        },
    },
];

const DAILY_ARGS: &[Arg] = &[
    KEY,
    CONVERSION_EVENT,
    Arg {
        name: "alpha",
        kind: Kind::Number,
        required: false,
        schema: || {
            alpha_schema(
                "sets the (1 - alpha) interval lift_ci and sequence lift_cs and tunes \
                 sequential_p_value. p_value does not depend on it.",
            )
        },
    },
];

const OPTIONAL_KEY: Arg = Arg {
    name: "experiment_key",
    kind: Kind::Text,
    required: false,
    schema: || {
        json!({
            "minLength": 1,
            "maxLength": 128,
            "pattern": "^[A-Za-z0-9_.:-]+$",
            "description": "Optional: the experiment to check (reported whatever its status; \
                paused only if active). Omitted: every active experiment that has guardrails.",
        })
    },
};

const GUARDRAILS_CHECK_ARGS: &[Arg] = &[OPTIONAL_KEY];

fn property_schema(doc: &str) -> Value {
    json!({
        "minLength": 1,
        "maxLength": 128,
        "description": doc,
    })
}

const RATIO_ARGS: &[Arg] = &[
    KEY,
    Arg {
        name: "numerator_event",
        kind: Kind::Text,
        required: true,
        schema: || {
            property_schema(
                "The event of the numerator, as the application passes it to amba_track \
                 (e.g. \"purchase\" for revenue per session).",
            )
        },
    },
    Arg {
        name: "numerator_property",
        kind: Kind::TextOrNull,
        required: false,
        schema: || {
            property_schema(
                "Optional: the numeric property of numerator_event to sum per user (e.g. \
                 \"amount\"); omitted or null: count the events.",
            )
        },
    },
    Arg {
        name: "denominator_event",
        kind: Kind::Text,
        required: true,
        schema: || {
            property_schema(
                "The event of the denominator (e.g. \"session_start\"); may be the same as \
                 numerator_event (e.g. average order value: amount summed over purchases \
                 counted).",
            )
        },
    },
    Arg {
        name: "denominator_property",
        kind: Kind::TextOrNull,
        required: false,
        schema: || {
            property_schema(
                "Optional: the numeric property of denominator_event to sum per user; \
                 omitted or null: count the events.",
            )
        },
    },
    Arg {
        name: "alpha",
        kind: Kind::Number,
        required: false,
        schema: || {
            alpha_schema(
                "sets the (1 - alpha) intervals of delta and lift. p_value and p_value_holm \
                 do not depend on it.",
            )
        },
    },
];

const QUANTILE_ARGS: &[Arg] = &[
    KEY,
    Arg {
        name: "event",
        kind: Kind::Text,
        required: true,
        schema: || {
            property_schema(
                "The event whose values are compared, as the application passes it to \
                 amba_track (e.g. \"page_load\").",
            )
        },
    },
    Arg {
        name: "value_property",
        kind: Kind::Text,
        required: true,
        schema: || {
            property_schema(
                "The numeric property of the event (e.g. \"ms\" or \"amount\"); events \
                 without it as a JSON number are left out.",
            )
        },
    },
    Arg {
        name: "quantile",
        kind: Kind::Number,
        required: true,
        schema: || {
            json!({
                "exclusiveMinimum": 0,
                "exclusiveMaximum": 1,
                "description": "Which quantile, 0 < quantile < 1: 0.5 the median, 0.9 the \
                    90th percentile (p90), 0.99 p99.",
            })
        },
    },
    Arg {
        name: "alpha",
        kind: Kind::Number,
        required: false,
        schema: || {
            alpha_schema(
                "sets the (1 - alpha) intervals of delta and lift. p_value and p_value_holm \
                 do not depend on it.",
            )
        },
    },
];

const RESULTS_BY_ARGS: &[Arg] = &[
    KEY,
    CONVERSION_EVENT,
    Arg {
        name: "dimension",
        kind: Kind::Text,
        required: true,
        schema: || {
            property_schema(
                "One of the experiment's dimensions (the attribute paths given as dimensions \
                 to amba_experiments_create or amba_experiments_update, e.g. \"country\"); \
                 any other is INVALID_ARGUMENT.",
            )
        },
    },
    Arg {
        name: "alpha",
        kind: Kind::Number,
        required: false,
        schema: || {
            alpha_schema(
                "sets the (1 - alpha) interval of lift and tunes sequential_p_value. \
                 p_value, p_value_holm and chance_to_win do not depend on it.",
            )
        },
    },
];

const BANDIT_UPDATE_ARGS: &[Arg] = &[
    KEY,
    Arg {
        name: "seed",
        kind: Kind::BigInt,
        required: false,
        schema: || {
            json!({
                "description": "Optional: a seed for reproducible sampling. The weights are \
                    computed exactly (no random draws), so today it changes nothing.",
            })
        },
    },
];

const USER_ID: Arg = Arg {
    name: "user_id",
    kind: Kind::Text,
    required: true,
    schema: || {
        json!({
            "minLength": 1,
            "maxLength": 512,
            "description": "The end user's id, exactly as the application passes it to \
                amba_assign (non-empty, at most 512 characters, not trimmed).",
        })
    },
};

const SET_OVERRIDE_ARGS: &[Arg] = &[
    KEY,
    USER_ID,
    Arg {
        name: "variant",
        kind: Kind::Text,
        required: true,
        schema: || {
            json!({
                "minLength": 1,
                "maxLength": 64,
                "pattern": "^[A-Za-z0-9_.:-]+$",
                "description": "The variant the user gets: one of the experiment's variant keys.",
            })
        },
    },
];

// ---------------------------------------------------------------------------------------
// Result columns: the names and order of the results functions' columns are
// `amba_core::columns` (RESULT_COLUMNS, METRIC_COLUMNS, DAILY_COLUMNS), which the
// extension's tests hold the SQL functions to; a test below holds these lists to them too.

const VARIANT: Columns = Columns {
    names: &["variant", "is_control"],
    doc: "the variant key; is_control is true on the first variant (the control) only.",
};

const HOLM: Columns = Columns {
    names: &["p_value_holm"],
    doc: "p_value adjusted (Holm) for comparing several variants with the control; with 3+ \
          variants use it instead of p_value. Null where p_value is null.",
};

const RESULTS_COLUMNS: &[Columns] = &[
    VARIANT,
    Columns {
        names: &["assigned_count"],
        doc: "users assigned to the variant.",
    },
    Columns {
        names: &["exposed_count"],
        doc: "assigned users who were exposed (amba_expose); every statistic below uses \
              exposed users only.",
    },
    Columns {
        names: &["converted_count"],
        doc: "exposed users with at least one event named conversion_event at or after their \
              assignment.",
    },
    Columns {
        names: &["conversion_rate"],
        doc: "converted_count / exposed_count; null when exposed_count = 0.",
    },
    Columns {
        names: &["z_score", "p_value"],
        doc: "pooled two-proportion z-test of this variant against the control; p_value is \
              two-sided. Null on the control row and when undefined (no exposed users on \
              either side, or zero variance, e.g. both sides at 0% or both at 100%).",
    },
    Columns {
        names: &["lift", "lift_ci_low", "lift_ci_high"],
        doc: "relative lift over the control, (rate - control_rate) / control_rate \
              (0.05 = +5%), and its two-sided (1 - alpha) confidence interval.",
    },
    Columns {
        names: &["chance_to_win"],
        doc: "Bayesian probability (flat prior) that the variant's rate beats the control's.",
    },
    HOLM,
    Columns {
        names: &["sequential_p_value"],
        doc: "always-valid p-value, safe to check repeatedly while data comes in and to stop \
              as soon as it is < alpha (the plain p_value is only valid for a sample size \
              fixed in advance).",
    },
    Columns {
        names: &["srm_p_value"],
        doc: "sample-ratio-mismatch test of the exposed counts against the weights, the same \
              on every row; null when nobody is exposed. Below 0.001 means exposures are \
              being lost or skewed in some variant: do not trust the results until the \
              assignment/exposure path is fixed.",
    },
];

const METRIC_COLUMNS: &[Columns] = &[
    VARIANT,
    Columns {
        names: &["exposed_count"],
        doc: "n, the exposed users of the variant (users with an override are left out); \
              each counts, with value 0 when they have no event.",
    },
    Columns {
        names: &["mean", "stddev"],
        doc: "mean and sample standard deviation of the per-user value (after capping, \
              never CUPED-adjusted); mean is null when n = 0, stddev when n < 2.",
    },
    Columns {
        names: &["delta", "delta_ci_low", "delta_ci_high"],
        doc: "absolute difference of means, mean - control mean (CUPED-adjusted with \
              cuped_days), and its two-sided (1 - alpha) Welch interval.",
    },
    Columns {
        names: &["p_value"],
        doc: "two-sided Welch t-test of delta.",
    },
    HOLM,
    Columns {
        names: &["lift", "lift_ci_low", "lift_ci_high"],
        doc: "relative difference, delta / control mean (0.05 = +5%), and its (1 - alpha) \
              interval.",
    },
    Columns {
        names: &["cuped_theta"],
        doc: "the CUPED coefficient used (0 when the pre-period carries no information); \
              null without cuped_days.",
    },
];

const DAILY_COLUMNS: &[Columns] = &[
    Columns {
        names: &["day"],
        doc: "the UTC date, \"YYYY-MM-DD\".",
    },
    VARIANT,
    Columns {
        names: &["exposed_count", "converted_count", "conversion_rate"],
        doc: "as in amba_experiments_results, counted up to the end of the day.",
    },
    Columns {
        names: &["lift", "lift_ci_low", "lift_ci_high"],
        doc: "relative lift over the control and its (1 - alpha) confidence interval, as in \
              amba_experiments_results on that day.",
    },
    Columns {
        names: &["p_value"],
        doc: "two-sided z-test p-value on that day.",
    },
    Columns {
        names: &["sequential_p_value"],
        doc: "always-valid p-value: unlike p_value it may be looked at every day.",
    },
    Columns {
        names: &["lift_cs_low", "lift_cs_high"],
        doc: "always-valid (1 - alpha) confidence sequence of the lift: the band to chart \
              over time; it holds simultaneously for all days, so it is wider than lift_ci.",
    },
];

const OVERRIDE_COLUMNS: &[Columns] = &[
    Columns {
        names: &["user_id"],
        doc: "the user.",
    },
    Columns {
        names: &["variant"],
        doc: "the variant the override gives them.",
    },
    Columns {
        names: &["set_at"],
        doc: "when the override was (last) set.",
    },
];

const LAYER_COLUMNS: &[Columns] = &[
    Columns {
        names: &["layer"],
        doc: "the layer's key; rows are ordered by layer, then range_start.",
    },
    Columns {
        names: &["experiment_key", "status"],
        doc: "the experiment that owns the range and its status (draft, active or paused: \
              ended experiments hold no range); both null on a free gap, where a new \
              experiment of the layer can go.",
    },
    Columns {
        names: &["range_start", "range_end"],
        doc: "the range [range_start, range_end) of the layer's unit interval: the users \
              whose layer bucket falls in it can be enrolled in that experiment only.",
    },
];

const GUARDRAIL_COLUMNS: &[Columns] = &[
    Columns {
        names: &["experiment_key"],
        doc: "the experiment checked; rows come per experiment, guardrail, then variant.",
    },
    Columns {
        names: &["guardrail"],
        doc: "the guardrail's index in the experiment's guardrails array, from 0.",
    },
    Columns {
        names: &["variant"],
        doc: "the non-control variant compared with the control.",
    },
    Columns {
        names: &["lift"],
        doc: "relative lift of the guardrail metric over the control (0.05 = +5%); null \
              with too little data.",
    },
    Columns {
        names: &["cs_low", "cs_high"],
        doc: "the always-valid (1 - alpha) confidence interval of the lift at the \
              guardrail's alpha: valid however often it is checked. Null with too little data \
              (a null interval never trips).",
    },
    Columns {
        names: &["tripped"],
        doc: "true when the interval lies entirely on the bad side: bad = decrease and \
              cs_high < -tolerance, or bad = increase and cs_low > tolerance.",
    },
    Columns {
        names: &["paused"],
        doc: "true on every row of an experiment that this call paused (it was active and a \
              guardrail tripped); false when it was already paused, ended or draft, or \
              nothing tripped.",
    },
];

const DELTA_COLUMNS: &[Columns] = &[
    Columns {
        names: &["delta", "delta_ci_low", "delta_ci_high"],
        doc: "absolute difference from the control (variant - control) and its two-sided \
              (1 - alpha) interval.",
    },
    Columns {
        names: &["p_value"],
        doc: "two-sided p-value of delta.",
    },
    HOLM,
    Columns {
        names: &["lift", "lift_ci_low", "lift_ci_high"],
        doc: "relative difference, delta / control value (0.05 = +5%), and its (1 - alpha) \
              interval.",
    },
];

const RATIO_COLUMNS: &[Columns] = &[
    VARIANT,
    Columns {
        names: &["exposed_count"],
        doc: "n, the exposed users of the variant (overridden users left out).",
    },
    Columns {
        names: &["numerator_sum", "denominator_sum"],
        doc: "the numerator and the denominator summed over the variant's exposed users \
              (events counted, or the property summed, at or after each user's assignment).",
    },
    Columns {
        names: &["ratio"],
        doc: "numerator_sum / denominator_sum; null when denominator_sum = 0.",
    },
    DELTA_COLUMNS[0],
    DELTA_COLUMNS[1],
    DELTA_COLUMNS[2],
    DELTA_COLUMNS[3],
];

const QUANTILE_COLUMNS: &[Columns] = &[
    VARIANT,
    Columns {
        names: &["exposed_count"],
        doc: "the exposed users of the variant, the clusters of the test (users without \
              such events count as empty clusters).",
    },
    Columns {
        names: &["event_count"],
        doc: "the variant's counted events carrying value_property as a JSON number.",
    },
    Columns {
        names: &["quantile_value"],
        doc: "the quantile of those values (PostgreSQL's percentile_disc); null without \
              events.",
    },
    DELTA_COLUMNS[0],
    DELTA_COLUMNS[1],
    DELTA_COLUMNS[2],
    DELTA_COLUMNS[3],
];

const BANDIT_COLUMNS: &[Columns] = &[
    VARIANT,
    Columns {
        names: &["exposed_count"],
        doc: "the exposed users of the arm (overridden users left out).",
    },
    Columns {
        names: &["mean"],
        doc: "the period-weighted estimate of the arm's value (a conversion rate for kind \
              conversion): each weight version's users weighted by that period's share of \
              all users, so changing weights cannot bias it (Simpson's paradox); it is the \
              posterior mean (Gaussian prior N(0, 10^4)); null before any data.",
    },
    Columns {
        names: &["ci_low", "ci_high"],
        doc: "the 95% posterior interval of mean.",
    },
    Columns {
        names: &["best_arm_probability"],
        doc: "the posterior probability that this arm is the best (computed exactly, no \
              draws).",
    },
    Columns {
        names: &["weight"],
        doc: "the arm's share of new users now (the weight version in force, normalised to \
              sum to 1).",
    },
];

const RESULTS_BY_COLUMNS: &[Columns] = &[
    Columns {
        names: &["dimension_value"],
        doc: "the segment: the value of the dimension's attribute stored at the user's first \
              assignment, as text; null for users without that attribute (that group comes \
              last; the others ascending).",
    },
    RESULTS_COLUMNS[0],
    RESULTS_COLUMNS[1],
    RESULTS_COLUMNS[2],
    RESULTS_COLUMNS[3],
    RESULTS_COLUMNS[4],
    RESULTS_COLUMNS[5],
    RESULTS_COLUMNS[6],
    RESULTS_COLUMNS[7],
    Columns {
        names: &["p_value_holm"],
        doc: "p_value adjusted (Holm) over every comparison of the call: all segments times \
              all non-control variants. Use it, not p_value, before calling any one segment \
              a winner: with many segments some p-values are small by chance.",
    },
    RESULTS_COLUMNS[9],
    Columns {
        names: &["srm_p_value"],
        doc: "the sample-ratio-mismatch test within the segment (the same on the segment's \
              rows); below 0.001 the segment's split is skewed.",
    },
];

// ---------------------------------------------------------------------------------------
// The tools

pub const SPECS: &[Spec] = &[
    Spec {
        tool: "amba_experiments_create",
        function: "amba_create_experiment",
        title: "Create an A/B experiment",
        args: CREATE_ARGS,
        shape: Shape::Object,
        access: Access::Write {
            destructive: false,
            idempotent: false,
        },
        legacy_wrapper: "experiment",
        doc: "\
Create an A/B experiment. Each end user the application assigns (SQL amba_assign) gets a \
sticky variant: picked by a deterministic hash of (experiment_key, user_id) with probability \
proportional to the weights, stored, and never changed afterwards. The first variant is the \
control. status defaults to 'active' (new users are assigned right away); use 'draft' to \
prepare an experiment without assigning anyone yet.
Who is enrolled: targeting (optional) is a condition in GrowthBook's condition language on \
the attributes the application passes to amba_assign(experiment_key, user_id, attributes), \
e.g. {\"country\": \"US\", \"plan\": {\"$in\": [\"pro\", \"team\"]}}; coverage (optional, 0 to 1, \
default 1) enrols only that share of the users the targeting lets in. A user who is not \
enrolled gets null from amba_assign (show the default experience), is not stored and is in \
no result. Both can be changed later with amba_experiments_update.
Mutually exclusive experiments: give them the same layer (optional) and each a layer_share \
(0 < share <= 1, default 1): experiments of one layer never share a user. amba places each \
in the lowest free gap of the layer that fits, as a range [start, start + layer_share); an \
ended (or deleted) experiment frees its range for later ones. layer and layer_share are set \
here only; amba_layers_list shows the ranges and free gaps.
Holdout: holdout (optional) names another experiment whose first variant (control) is a \
held-out group, e.g. [{\"key\": \"holdout\", \"weight\": 5}, {\"key\": \"general\", \"weight\": 95}]: \
users pass through it first and get null here when it holds them out; its results compare \
everyone held out with everyone released, over all the experiments that name it.
Returns the experiment as JSON: {key, name, description, status, variants: [{key, weight}], \
targeting (the condition, or null for everyone), coverage, layer ({key, start, end}: the \
range it was given, or null without a layer), holdout (the holdout's key or null), \
created_at, updated_at, ...}.
Errors: EXPERIMENT_EXISTS when the key is taken (change it with amba_experiments_update \
instead); INVALID_ARGUMENT for a bad key, fewer than two variants, duplicate or bad variant \
keys, negative/non-numeric/non-finite weights or a zero sum, an unknown status, a \
targeting that is not a JSON object or has an unknown operator or an invalid regular \
expression, a coverage outside 0..1, a bad layer key, a layer_share outside (0, 1] or \
without a layer, a full layer (no free gap of that width), or a holdout that does not \
exist, names a holdout itself or is the experiment itself.",
        columns: &[],
        notes: "",
    },
    Spec {
        tool: "amba_experiments_list",
        function: "amba_list_experiments",
        title: "List A/B experiments",
        args: &[],
        shape: Shape::List,
        access: Access::Read,
        legacy_wrapper: "experiments",
        doc: "\
List every experiment. Returns a JSON array of experiment objects, each \
{key, name, description, status, variants: [{key, weight}], targeting, coverage, layer \
({key, start, end} or null), holdout (key or null), created_at, updated_at, ...} \
(the same shape as amba_experiments_get); [] when there are none. Takes no arguments. For \
the layers' ranges and free gaps, see amba_layers_list.",
        columns: &[],
        notes: "",
    },
    Spec {
        tool: "amba_experiments_get",
        function: "amba_get_experiment",
        title: "Get an A/B experiment",
        args: &[KEY],
        shape: Shape::Object,
        access: Access::Read,
        legacy_wrapper: "experiment",
        doc: "\
Read one experiment by key. Returns {key, name, description, status, \
variants: [{key, weight}] (control first), targeting, coverage, layer, holdout, \
created_at, updated_at, ...}: targeting is the condition on user attributes that decides \
who may be enrolled \
(GrowthBook's condition language; null = everyone), coverage the share of those users \
enrolled (0 to 1; 1 = all).
layer is null, or {key, start, end}: the experiment's range [start, end) in its layer of \
mutually exclusive experiments (start and end are null while it is ended: its range is \
freed, and re-activating it places it again). holdout is the key of the holdout experiment \
its users pass through first, or null.
Errors: EXPERIMENT_NOT_FOUND when no experiment has this key.",
        columns: &[],
        notes: "",
    },
    Spec {
        tool: "amba_experiments_update",
        function: "amba_update_experiment",
        title: "Update an A/B experiment (re-weight, pause, retarget, hold out, rename)",
        args: UPDATE_ARGS,
        shape: Shape::Object,
        access: Access::Write {
            destructive: true,
            idempotent: true,
        },
        legacy_wrapper: "experiment",
        doc: "\
Change an experiment. Pass experiment_key plus only what should change; omitted (or null) \
arguments keep their current value.
variants replaces the whole list (send every variant, control first): re-weighting only \
affects users not yet assigned, existing assignments never move. New variants may be \
appended. A variant that already has assigned users (or an override) cannot be removed \
(INVALID_ARGUMENT): set its weight to 0 instead so it gets no new users. The control must \
stay first.
targeting replaces the condition on user attributes (GrowthBook's condition language); {} \
removes it so everyone is eligible. coverage (0 to 1) sets the share of eligible users \
enrolled; raising it adds users, removes nobody. Like weights, both apply only to users not \
yet assigned: assigned users keep their variant whatever their attributes.
holdout names the holdout experiment users pass through first (\"\" removes it). The layer \
and layer_share are chosen at create and cannot change here.
status: draft | active | paused | ended, any to any. Pausing (or ending) stops new \
assignments: users already assigned keep getting their variant, new users get \
EXPERIMENT_INACTIVE. Setting 'active' again resumes assigning. In a layer, ending frees the \
experiment's range for other experiments, and leaving 'ended' places it again in the lowest \
free gap (INVALID_ARGUMENT when the layer is full by then); draft and paused keep the range.
Returns the updated experiment {key, name, description, status, variants, targeting, \
coverage, layer, holdout, created_at, updated_at, ...}. Errors: EXPERIMENT_NOT_FOUND, \
INVALID_ARGUMENT (also for a targeting that is not a JSON object, has an unknown operator or \
an invalid regular expression, a coverage outside 0..1, a holdout that does not exist, names \
a holdout itself or is the experiment itself, naming a holdout for an experiment that other \
experiments use as their holdout, and re-activating in a full layer; nothing is changed \
then).",
        columns: &[],
        notes: "",
    },
    Spec {
        tool: "amba_experiments_delete",
        function: "amba_delete_experiment",
        title: "Delete an A/B experiment",
        args: &[KEY],
        shape: Shape::Deleted,
        access: Access::Write {
            destructive: true,
            idempotent: true,
        },
        legacy_wrapper: "deleted",
        doc: "\
Permanently delete an experiment together with all its assignments and exposures (tracked \
events are not tied to an experiment and stay; the audit trail stays readable in SQL with \
amba_experiment_history). To stop an experiment but keep its results, set status 'ended' \
with amba_experiments_update instead. Deleting an experiment of a layer frees its range.
Returns true. Errors: EXPERIMENT_NOT_FOUND when no experiment has this key; \
INVALID_ARGUMENT when other experiments name it as their holdout (remove it from them \
first: amba_experiments_update with holdout \"\").",
        columns: &[],
        notes: "",
    },
    Spec {
        tool: "amba_layers_list",
        function: "amba_list_layers",
        title: "List the layers of mutually exclusive experiments",
        args: &[],
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "layers",
        doc: "\
Every layer and how it is divided. Experiments in one layer never share a user: each owns a \
range [range_start, range_end) of the layer's unit interval (a user's place in it is a \
deterministic hash of (layer, user_id)), and a new experiment of the layer (\
amba_experiments_create with layer and layer_share) goes into the lowest free gap that fits \
(INVALID_ARGUMENT \"layer full\" when none does). Only experiments that are not ended hold a \
range; ending or deleting one frees it. Returns a JSON array of rows, one per range and one \
per free gap, ordered by layer then range_start; [] when no layer has an experiment that \
is not ended. Takes no arguments.",
        columns: LAYER_COLUMNS,
        notes: "\
Reading it: the free gaps (experiment_key null) are where the next experiments of a layer \
fit; a layer without a gap is full until one of its experiments ends. A layer with no \
experiment that is not ended has no rows.",
    },
    Spec {
        tool: "amba_experiments_results",
        function: "amba_results",
        title: "A/B experiment results for a conversion event",
        args: RESULTS_ARGS,
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "results",
        doc: "\
Statistics of an experiment for one conversion event: a JSON array with one row per variant, \
in variant order, the control first.",
        columns: RESULTS_COLUMNS,
        notes: "\
lift, lift_ci_low, lift_ci_high, chance_to_win and sequential_p_value are null on the \
control row and when either side has fewer than 2 exposed users, the control's \
conversion_rate is 0, or the variance is 0.
Reading it: a variant is significantly better than the control at level alpha when lift > 0 \
and p_value < alpha (p_value_holm with several variants; sequential_p_value if the results were \
looked at before the planned sample size); [lift_ci_low, lift_ci_high] is the plausible size \
of the effect. For revenue or other numbers per user use amba_experiments_metric_results; \
for the results day by day, amba_experiments_results_daily.
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT for a bad conversion_event or alpha.",
    },
    Spec {
        tool: "amba_experiments_metric_results",
        function: "amba_metric_results",
        title: "A/B experiment results for a numeric metric (revenue, counts)",
        args: METRIC_ARGS,
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "results",
        doc: "\
Statistics of an experiment for a number per user (revenue, orders, minutes) rather than a \
yes/no conversion. Each exposed user's value is, over their events named event at or after \
their assignment, the number of events (value_property omitted) or the sum of the numeric \
property value_property; users without such events count with 0. Optionally capped from \
above (cap or cap_percentile) and variance-reduced with CUPED (cuped_days). Each variant is \
compared with the control by a Welch t-test. Returns a JSON array with one row per variant, \
in variant order, the control first (every variant has a row, also with nobody exposed).",
        columns: METRIC_COLUMNS,
        notes: "\
delta, its interval, p_value, p_value_holm, lift, its interval and cuped_theta are null on \
the control row and when either side has fewer than 2 users or the variance is 0; the lift \
columns also when the control's mean is 0.
Reading it: the variant moves the metric when p_value < alpha (p_value_holm with several \
variants); [delta_ci_low, delta_ci_high] is the plausible size of the change in the metric's \
unit, [lift_ci_low, lift_ci_high] relative to the control.
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT for a bad event, alpha outside (0, 1), both \
cap and cap_percentile, cap_percentile outside (0, 1) or cuped_days outside 1..365.",
    },
    Spec {
        tool: "amba_experiments_results_daily",
        function: "amba_results_daily",
        title: "A/B experiment results day by day",
        args: DAILY_ARGS,
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "results",
        doc: "\
The results of an experiment for a conversion event over time: one row per (UTC day, \
variant), for every day from the first exposure to the latest exposure or conversion event \
(days without activity included), ordered by day, then variant (control first). Each day's \
rows are cumulative: what amba_experiments_results would have returned at the end of that \
day. [] when nobody is exposed.",
        columns: DAILY_COLUMNS,
        notes: "\
The statistics are null on the control rows and on days with too little data (as in \
amba_experiments_results). Use it to chart the lift over time with its always-valid band, \
and to see when an effect appeared or whether it faded.
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT for a bad conversion_event or alpha.",
    },
    Spec {
        tool: "amba_experiments_ratio_results",
        function: "amba_ratio_results",
        title: "A/B experiment results for a ratio metric (per session, per order)",
        args: RATIO_ARGS,
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "results",
        doc: "\
Statistics of a ratio metric, whose unit is not the user: revenue per session, clicks per \
page view, average order value (amount summed over purchases counted). Per exposed user M = \
the numerator (count of numerator_event at or after assignment, or the sum of \
numerator_property) and D likewise for the denominator; the variant's ratio is ΣM / ΣD. Each \
variant is compared with the control by the delta method (gbstats' RatioStatistic with its \
two-sided t-test), which accounts for one user contributing many units: treating sessions or \
orders as independent would make intervals too narrow. Returns a JSON array with one row per \
variant, in variant order, the control first.",
        columns: RATIO_COLUMNS,
        notes: "\
The comparison columns are null on the control row and where the test has no answer (a \
denominator_sum of 0, fewer than 2 users on a side, zero variance).
Reading it: the variant moves the ratio when p_value < alpha (p_value_holm with several \
variants); [lift_ci_low, lift_ci_high] is the plausible relative change.
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT for a bad event or property name or alpha.",
    },
    Spec {
        tool: "amba_experiments_quantile_results",
        function: "amba_quantile_results",
        title: "A/B experiment results for a quantile (p50, p90, p99)",
        args: QUANTILE_ARGS,
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "results",
        doc: "\
Compares a quantile of an event's values between each variant and the control: the median, \
p90 or p99 of page load time, of order value..., where a mean would hide what happens in the \
tail. Over the variant's counted events (exposed users, at or after their assignment) that \
carry value_property as a JSON number. The test is gbstats' clustered quantile test \
(QuantileClusteredStatistic with a two-sided t-test): an interval for the quantile from the \
order statistics, with the variance clustered by user because one user contributes many \
events. Returns a JSON array with one row per variant, in variant order, the control first.",
        columns: QUANTILE_COLUMNS,
        notes: "\
The comparison columns are null on the control row and where the test has no answer (too few \
events, zero variance with fewer than 1000 events).
Reading it: a negative delta of p90 load time is the tail getting faster; the variant differs \
when p_value < alpha (p_value_holm with several variants).
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT for a bad event or value_property, a quantile \
outside (0, 1) or alpha outside (0, 1).",
    },
    Spec {
        tool: "amba_experiments_results_by",
        function: "amba_results_by",
        title: "A/B experiment results by segment (country, device, plan)",
        args: RESULTS_BY_ARGS,
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "results",
        doc: "\
The results of amba_experiments_results for a conversion event, broken down by one of the \
experiment's dimensions (attributes stored at each user's first assignment; see dimensions \
on amba_experiments_create): one row per (segment value, variant), values ascending with the \
null group (users without the attribute) last, every variant under each value, control \
first. Holm over the call: p_value_holm is adjusted over every comparison of the call (all \
values times all non-control variants), because looking at many segments finds some small \
p-values by chance.",
        columns: RESULTS_BY_COLUMNS,
        notes: "\
Reading it: treat a segment that differs from the overall result as a hypothesis for a new \
experiment unless its p_value_holm < alpha. Users assigned before the dimension was added are \
in the null group.
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT for a dimension that is not one of the \
experiment's, a bad conversion_event or alpha.",
    },
    Spec {
        tool: "amba_guardrails_check",
        function: "amba_check_guardrails",
        title: "Check guardrails and pause harmful experiments",
        args: GUARDRAILS_CHECK_ARGS,
        shape: Shape::Rows,
        access: Access::Write {
            destructive: true,
            idempotent: true,
        },
        legacy_wrapper: "guardrails",
        doc: "\
Judge the guardrails (see guardrails on amba_experiments_create) of one experiment, or of \
every active experiment that has some, and auto pause any active experiment where one trips. \
For each guardrail and each non-control variant it computes the relative lift of the \
guardrail metric over the control and its always-valid confidence interval (a confidence \
sequence at the guardrail's alpha, valid however often it is looked at, so checking every \
minute for months keeps false pauses at or below alpha). A guardrail trips when the whole \
interval lies on the bad side beyond the tolerance. Auto pause: in the same transaction the \
experiment's status becomes paused (users already assigned keep their variant, new users get \
EXPERIMENT_INACTIVE), the audit trail gets an auto_pause row listing the tripping rows, and a \
NOTIFY on channel amba is sent per tripping row. Paused, ended and draft experiments are \
reported but left alone; a repeated call changes nothing more. Resume with \
amba_experiments_update status active. The database can run it every minute with pg_cron: \
SELECT amba_check_guardrails(). Returns a JSON array of rows, [] when there is nothing to \
check.",
        columns: GUARDRAIL_COLUMNS,
        notes: "\
Errors: EXPERIMENT_NOT_FOUND for an unknown experiment_key; INVALID_ARGUMENT for a malformed \
one. Needs the rights of amba_admin (it may pause experiments).",
    },
    Spec {
        tool: "amba_experiments_bandit_update",
        function: "amba_bandit_update",
        title: "Move a bandit experiment's traffic toward the winner",
        args: BANDIT_UPDATE_ARGS,
        shape: Shape::Object,
        access: Access::Write {
            destructive: true,
            idempotent: false,
        },
        legacy_wrapper: "bandit",
        doc: "\
Set new weights for a bandit experiment (one created with bandit settings) from the data so \
far. Each arm's value is estimated period by period (a period is a weight version), so \
earlier weight changes cannot bias it, with a Gaussian posterior. The new weights are \
top-two Thompson sampling computed exactly: w_i = (P(arm i is best) + P(arm i is second \
best)) / 2, then the floor: p_i = min_weight + (1 - k * min_weight) * w_i for k arms, so no \
arm ever gets 0 and the control stays first. Nothing changes until every arm has min_users \
exposed users: then it returns {\"updated\": false, \"reason\": \"...\"} (not an error). \
Otherwise it stores the weights as a new weight version (sticky: nobody already assigned \
moves; new users get the new split), writes an audit row (action bandit_update) and returns \
{\"updated\": true, \"weights\": [...], \"best_arm_probabilities\": [...]} in variant order. \
Run it on a schedule (e.g. pg_cron, every hour).",
        columns: &[],
        notes: "\
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT when the experiment is not a bandit.",
    },
    Spec {
        tool: "amba_experiments_bandit_results",
        function: "amba_bandit_results",
        title: "A bandit experiment's arms: estimates and weights",
        args: &[KEY],
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "results",
        doc: "\
The state of a bandit experiment: one row per arm (variant), in variant order, the control \
first, with the period-weighted estimate of its value, its 95% posterior interval, the \
probability that it is the best arm, and the weight it gets now.",
        columns: BANDIT_COLUMNS,
        notes: "\
Reading it: best_arm_probability near 1 for one arm means the bandit has found the winner; \
the weights then approach that arm's share with the floor min_weight left to the others. \
amba_experiments_results still works on a bandit, but its z-test pools users across weight \
versions (not period-weighted); use these estimates for the bandit's arms.
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT when the experiment is not a bandit.",
    },
    Spec {
        tool: "amba_overrides_set",
        function: "amba_set_override",
        title: "Force a user into a variant (QA override)",
        args: SET_OVERRIDE_ARGS,
        shape: Shape::Object,
        access: Access::Write {
            destructive: true,
            idempotent: true,
        },
        legacy_wrapper: "override",
        doc: "\
Force one user into a variant, for QA, demos or support: from now on amba_assign and \
amba_expose return this variant for the user whatever the experiment's status (a draft \
experiment can be tested), and nothing is recorded for them (no assignment, no exposure). \
The user is left out of every result while the override exists. Setting an override again \
replaces it; amba_overrides_clear removes it. Overrides are kept in the audit trail.
Returns the override as JSON (what SQL amba_set_override returns).
Errors: EXPERIMENT_NOT_FOUND; INVALID_ARGUMENT when the variant is not one of the \
experiment's or the user_id is empty or too long.",
        columns: &[],
        notes: "",
    },
    Spec {
        tool: "amba_overrides_clear",
        function: "amba_clear_override",
        title: "Remove a user's variant override",
        args: &[KEY, USER_ID],
        shape: Shape::Bool,
        access: Access::Write {
            destructive: true,
            idempotent: true,
        },
        legacy_wrapper: "cleared",
        doc: "\
Remove a user's override: the user gets their stored assignment back, if they have one (else \
a normal assignment on their next amba_assign), and counts in the results again.
Returns true if there was an override, false if there was none.
Errors: EXPERIMENT_NOT_FOUND.",
        columns: &[],
        notes: "",
    },
    Spec {
        tool: "amba_overrides_list",
        function: "amba_list_overrides",
        title: "List an experiment's variant overrides",
        args: &[KEY],
        shape: Shape::Rows,
        access: Access::Read,
        legacy_wrapper: "overrides",
        doc: "\
The users with an override in an experiment: a JSON array of rows, [] when there are none.",
        columns: OVERRIDE_COLUMNS,
        notes: "Errors: EXPERIMENT_NOT_FOUND.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_derived_from_the_specs() {
        let tools = tools();
        assert_eq!(tools.len(), SPECS.len());
        for (tool, spec) in tools.iter().zip(SPECS) {
            assert_eq!(tool.name, spec.tool);
            let schema = &tool.input_schema;
            assert_eq!(schema["type"], "object");
            assert_eq!(schema["additionalProperties"], false);
            let props = schema["properties"].as_object().unwrap();
            assert_eq!(props.len(), spec.args.len(), "{}", spec.tool);
            for arg in spec.args {
                let prop = &props[arg.name];
                assert!(
                    prop["description"].as_str().is_some_and(|d| d.len() > 10),
                    "{}.{} is documented",
                    spec.tool,
                    arg.name
                );
                match arg.kind {
                    Kind::Json => assert!(prop["type"].is_string()),
                    kind => assert_eq!(prop["type"], kind.json_type().unwrap()),
                }
            }
            assert_eq!(
                spec.shape == Shape::Rows,
                !spec.columns.is_empty(),
                "{}: table results list their columns",
                spec.tool
            );
            let description = tool.description.as_deref().unwrap();
            for column in spec.column_names() {
                assert!(description.contains(column), "{}: {column}", spec.tool);
            }
            let mut names: Vec<&str> = spec.column_names().collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), spec.column_names().count(), "{}", spec.tool);
        }
        let mut names: Vec<&str> = SPECS.iter().map(|s| s.tool).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SPECS.len());
    }

    /// The row fields documented for a results tool are its function's columns, in their
    /// order (`amba_core::columns`).
    #[test]
    fn result_columns_are_the_functions_columns() {
        let mut checked = 0;
        for spec in SPECS {
            if let Some(columns) = amba_core::columns::of(spec.function) {
                let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
                let documented: Vec<&str> = spec.column_names().collect();
                assert_eq!(documented, names, "{}", spec.tool);
                checked += 1;
            }
        }
        assert_eq!(checked, amba_core::columns::RESULTS_FUNCTIONS.len());
    }

    /// Words shaped like error codes (FOO_BAR) in the documentation are codes the server
    /// can report: the documentation cannot drift from the code table.
    #[test]
    fn documented_codes_exist() {
        let mut texts: Vec<String> = SPECS.iter().map(Spec::description).collect();
        texts.push(instructions());
        for spec in SPECS {
            for arg in spec.args {
                texts.push((arg.schema)().to_string());
            }
        }
        let mut seen = 0;
        for text in &texts {
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let code_like = word.contains('_')
                    && word.len() > 3
                    && word
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if code_like {
                    assert!(
                        Code::from_name(word).is_some(),
                        "unknown code {word} in: {text}"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 10);
        for code in Code::all() {
            assert!(instructions().contains(code.as_str()), "{code}");
        }
    }

    /// mcp/README.md documents every tool, argument and column.
    #[test]
    fn readme_documents_every_tool() {
        let readme = include_str!("../README.md");
        for spec in SPECS {
            assert!(
                readme.contains(&format!("`{}`", spec.tool)),
                "{}",
                spec.tool
            );
            assert!(
                readme.contains(&format!("`{}`", spec.function)),
                "{}",
                spec.function
            );
            for arg in spec.args {
                assert!(
                    readme.contains(&format!("`{}`", arg.name)),
                    "{}.{}",
                    spec.tool,
                    arg.name
                );
            }
            for column in spec.column_names() {
                assert!(
                    readme.contains(&format!("`{column}`")),
                    "{}: {column}",
                    spec.tool
                );
            }
        }
        for code in Code::all() {
            assert!(readme.contains(&format!("`{code}`")), "{code}");
        }
    }
}
