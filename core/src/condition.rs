//! Targeting conditions (SPEC §10): GrowthBook's condition language, compiled
//! once and evaluated many times.
//!
//! [`compile`] checks a condition and turns it into a [`Condition`]: operators are resolved,
//! regular expressions built (Rust's `regex` crate: linear time, size-limited), version
//! strings padded, lists case-folded. [`Condition::eval`] then tests attributes without
//! parsing anything again and cannot fail.
//!
//! # Semantics
//!
//! Those of GrowthBook's JavaScript SDK (`evalCondition` in `packages/sdk-js/src/mongrule.ts`,
//! spec 0.8.0), including JavaScript's coercions, so that a condition means in amba what it
//! means in GrowthBook:
//!
//! - A condition is an object. `$and`, `$or`, `$nor` take arrays of conditions (`$or: []`
//!   holds, so `$nor: []` does not), `$not` a condition; every other key, `$`-prefixed ones
//!   included, is a dotted path into the attributes (`"a.b"`, `"tags.0"`, `"tags.length"`);
//!   a path that leads nowhere gives `null`.
//! - The value tested at a path: an object whose keys all start with `$` is a set of
//!   operators, all of which must hold; a string, number or boolean is implicit equality
//!   with JavaScript's coercions (`value + "" === s`, `value * 1 === n`,
//!   `value !== null && !!value === b`); `null` matches a missing or null attribute; an
//!   array or any other object matches a structurally equal value (numbers compared as
//!   doubles).
//! - `$eq`/`$ne` are `===`/`!==` (an array or object is never `===`); `$lt $lte $gt $gte`
//!   are JavaScript's relational operators (strings compared by UTF-16 code units, anything
//!   else as numbers: `null` is 0, `"8"` is 8, a NaN compares false); `$in $nin` (arrays:
//!   any element), `$ini $nini` (strings lower-cased), `$all $alli`, `$size`, `$elemMatch`
//!   (skips falsy elements, as GrowthBook does), `$exists`, `$type`, `$not`; `$regex` and
//!   `$regexi` test `String(value)`; `$veq $vne $vlt $vlte $vgt $vgte` compare GrowthBook's
//!   padded version strings. A list operator whose operand is not an array never holds.
//!
//! Some consequences are surprising but are GrowthBook's: a missing attribute is `null`,
//! so `{"age": {"$lt": 10}}` and `{"age": 0}` hold for a user without `age`, and
//! `{"name": "null"}` holds too.
//!
//! # What amba rejects (errors name the JSON path, e.g. `targeting.country.$regex`)
//!
//! - a condition (or an element of `$and`/`$or`/`$nor`, a top-level `$not`, the operand
//!   of `$elemMatch`) that is not an object;
//! - an unknown operator (GrowthBook evaluates it to false), the saved-group operators
//!   `$inGroup`/`$notInGroup` included;
//! - a `$regex`/`$regexi` operand that is not a string or not a valid pattern of the
//!   `regex` crate (GrowthBook: false), or whose compiled form exceeds
//!   [`REGEX_SIZE_LIMIT`]; more than [`MAX_REGEXES`] regular expressions;
//! - a `$type` operand that is not one of GrowthBook's type names (GrowthBook: false);
//!
//! That is [`compile`], for conditions being written (an experiment's targeting, rejected
//! at create/update: CONTRACT 10). [`compile_for_eval`] (`amba_eval_condition`) answers as
//! GrowthBook does instead where GrowthBook has an answer: an unknown operator, an invalid
//! pattern and an unknown type name never hold. The saved-group operators stay rejected
//! (the contract has amba reject them as unknown), as do the size limits.
//! - a condition nested deeper than [`MAX_DEPTH`], with more than [`MAX_NODES`] JSON
//!   values, or longer than [`MAX_BYTES`] as compact JSON.
//!
//! Known differences from JavaScript, none of them reachable by GrowthBook's test cases:
//! regular expressions are the `regex` crate's (Unicode-aware `\d \w \s .`, no
//! backreferences or look-around); object keys are compared without regard to their order
//! (jsonb does not keep it); a path never reaches JavaScript's inherited properties
//! (`"a.constructor"` is `null`, not a function).

use crate::error::CoreError;
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;

/// Deepest nesting of arrays and objects in a condition (the condition object is level 1).
pub const MAX_DEPTH: usize = 32;
/// Most JSON values (objects, arrays and scalars, the condition itself included).
pub const MAX_NODES: usize = 10_000;
/// Longest condition, as compact JSON.
pub const MAX_BYTES: usize = 64 * 1024;
/// Most regular expressions (`$regex`, `$regexi`) in one condition.
pub const MAX_REGEXES: usize = 64;
/// Largest compiled regular expression (and lazy DFA cache) allowed, in bytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The type names `$type` accepts (GrowthBook's `VarType`).
const TYPE_NAMES: [&str; 7] = [
    "string",
    "number",
    "boolean",
    "object",
    "array",
    "null",
    "undefined",
];

/// A checked, compiled condition. Cheap to evaluate; `Send + Sync`, so it can be cached.
#[derive(Debug, Clone)]
pub struct Condition {
    clauses: Vec<Clause>,
}

#[derive(Debug, Clone)]
enum Clause {
    Or(Vec<Condition>),
    Nor(Vec<Condition>),
    And(Vec<Condition>),
    Not(Box<Condition>),
    Path(AttributePath, ValueTest),
}

/// A dotted path, split once, with each part's array index (if it is one) parsed.
#[derive(Debug, Clone)]
struct AttributePath {
    parts: Vec<(String, Option<usize>)>,
}

/// What the value at a path must satisfy (GrowthBook's `evalConditionValue`).
#[derive(Debug, Clone)]
enum ValueTest {
    /// `value + "" === s`; under `$alli`, lower-cased on both sides.
    Str { s: String, lower: String },
    /// `value * 1 === n`.
    Num(f64),
    /// `value !== null && !!value === b`.
    Bool(bool),
    /// `value === null` (a missing attribute is null).
    Null,
    /// `JSON.stringify(value) === JSON.stringify(expected)`, structurally.
    Json(Value),
    /// Every operator holds.
    Ops(Vec<Op>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Lt,
    Lte,
    Gt,
    Gte,
    Eq,
    Ne,
}

impl Relation {
    fn holds(self, ordering: Option<Ordering>) -> bool {
        match (self, ordering) {
            (_, None) => false,
            (Relation::Lt, Some(o)) => o == Ordering::Less,
            (Relation::Lte, Some(o)) => o != Ordering::Greater,
            (Relation::Gt, Some(o)) => o == Ordering::Greater,
            (Relation::Gte, Some(o)) => o != Ordering::Less,
            (Relation::Eq, Some(o)) => o == Ordering::Equal,
            (Relation::Ne, Some(o)) => o != Ordering::Equal,
        }
    }
}

#[derive(Debug, Clone)]
enum ElemMatch {
    /// The operand is an operator object: each element is tested as a value.
    Value(Box<ValueTest>),
    /// Otherwise each element is tested as the attributes of a condition.
    Condition(Box<Condition>),
}

#[derive(Debug, Clone)]
enum Op {
    /// `$veq` … `$vgte`: the padded version of the value against the operand's.
    Version(Relation, String),
    /// `$eq` (`===`).
    StrictEq(Value),
    /// `$ne` (`!==`).
    StrictNe(Value),
    /// `$lt $lte $gt $gte`.
    Compare(Relation, Value),
    /// `$exists`: the operand's truthiness.
    Exists(bool),
    /// `$in $nin $ini $nini`; `None`: the operand is not an array (never holds). For the
    /// case-insensitive ones the strings of the list are lower-cased already.
    In {
        list: Option<Vec<Value>>,
        negate: bool,
        insensitive: bool,
    },
    /// `$not` on a value.
    Not(Box<ValueTest>),
    /// `$size`: the test applied to the array's length.
    Size(Box<ValueTest>),
    ElemMatch(ElemMatch),
    /// `$all $alli`; `None`: the operand is not an array (never holds).
    All {
        tests: Option<Vec<ValueTest>>,
        insensitive: bool,
    },
    /// `$regex $regexi` (case-insensitivity is in the compiled regex).
    Regex(Regex),
    /// `$type`.
    Type(&'static str),
    /// An operator GrowthBook cannot make sense of and evaluates to false (an unknown
    /// operator, an invalid pattern, an unknown type name): [`compile_for_eval`] only.
    Never,
}

// ---------------------------------------------------------------------------------------
// Compiling

/// Checks `condition` and compiles it; errors name the path from `condition`
/// (`condition.country.$regex`). See [`compile_named`] to name the root otherwise.
pub fn compile(condition: &Value) -> Result<Condition, CoreError> {
    compile_named(condition, "condition")
}

/// [`compile`], with `root` as the first part of the paths in error messages (e.g.
/// `"targeting"` for an experiment's targeting: `targeting.country.$regex: ...`).
pub fn compile_named(condition: &Value, root: &str) -> Result<Condition, CoreError> {
    compile_with(condition, root, false)
}

/// [`compile`] for evaluating once (`amba_eval_condition`), answering as GrowthBook's
/// `evalCondition` does: an unknown operator, a pattern the `regex` crate rejects and an
/// unknown `$type` name never hold instead of being errors. The saved-group operators
/// (rejected as unknown: CONTRACT 10), conditions that are not objects and the size limits
/// are still errors.
pub fn compile_for_eval(condition: &Value) -> Result<Condition, CoreError> {
    compile_with(condition, "condition", true)
}

fn compile_with(condition: &Value, root: &str, lenient: bool) -> Result<Condition, CoreError> {
    let mut path = root.to_string();
    let mut nodes = 0usize;
    measure(condition, 1, &mut path, &mut nodes)?;
    let mut counter = ByteCounter(0);
    if serde_json::to_writer(&mut counter, condition).is_err() || counter.0 > MAX_BYTES {
        return Err(CoreError::invalid(format!(
            "{root}: condition too large ({} bytes as JSON; at most {MAX_BYTES})",
            counter.0
        )));
    }
    let mut compiler = Compiler {
        path,
        regexes: 0,
        lenient,
    };
    compiler.condition(condition)
}

/// Compiles `condition` as [`compile_for_eval`] does and evaluates it on `attributes`
/// (`amba_eval_condition`): for a single evaluation; compile once and keep the
/// [`Condition`] to evaluate many times.
pub fn eval_condition(condition: &Value, attributes: &Value) -> Result<bool, CoreError> {
    Ok(compile_for_eval(condition)?.eval(attributes))
}

/// The attributes rule of SPEC §10: a JSON object (SQL NULL is `{}`, the caller's
/// business); anything else is `INVALID_ARGUMENT`.
pub fn check_attributes(attributes: &Value) -> Result<(), CoreError> {
    if attributes.is_object() {
        Ok(())
    } else {
        Err(CoreError::invalid(format!(
            "attributes must be a JSON object, not {}",
            describe(attributes)
        )))
    }
}

/// Depth and node count, depth first with an early exit: the recursion never goes deeper
/// than `MAX_DEPTH + 1` whatever the input.
fn measure(v: &Value, depth: usize, path: &mut String, nodes: &mut usize) -> Result<(), CoreError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(CoreError::invalid(format!(
            "{path}: condition too large (more than {MAX_NODES} JSON values)"
        )));
    }
    let container = matches!(v, Value::Array(_) | Value::Object(_));
    if container && depth > MAX_DEPTH {
        return Err(CoreError::invalid(format!(
            "{path}: condition nested too deeply (more than {MAX_DEPTH} levels)"
        )));
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                push_index(path, i);
                measure(item, depth + 1, path, nodes)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                push_key(path, k);
                measure(item, depth + 1, path, nodes)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn push_key(path: &mut String, key: &str) {
    path.push('.');
    path.push_str(key);
}

fn push_index(path: &mut String, i: usize) {
    path.push('[');
    path.push_str(&i.to_string());
    path.push(']');
}

/// A JSON value's kind, for messages.
fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Compiler {
    /// The JSON path of the value being compiled.
    path: String,
    regexes: usize,
    /// [`compile_for_eval`]: what GrowthBook evaluates to false compiles to [`Op::Never`].
    lenient: bool,
}

impl Compiler {
    fn error(&self, problem: impl std::fmt::Display) -> CoreError {
        CoreError::invalid(format!("{}: {problem}", self.path))
    }

    fn at_key<T>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Self) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let len = self.path.len();
        push_key(&mut self.path, key);
        let result = f(self);
        self.path.truncate(len);
        result
    }

    fn at_index<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Self) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let len = self.path.len();
        push_index(&mut self.path, i);
        let result = f(self);
        self.path.truncate(len);
        result
    }

    fn condition(&mut self, v: &Value) -> Result<Condition, CoreError> {
        let Value::Object(map) = v else {
            return Err(self.error(format_args!(
                "a condition must be a JSON object, not {}",
                describe(v)
            )));
        };
        let mut clauses = Vec::with_capacity(map.len());
        for (key, operand) in map {
            let clause = self.at_key(key, |c| match key.as_str() {
                "$or" => Ok(Clause::Or(c.condition_list(key, operand)?)),
                "$nor" => Ok(Clause::Nor(c.condition_list(key, operand)?)),
                "$and" => Ok(Clause::And(c.condition_list(key, operand)?)),
                "$not" => Ok(Clause::Not(Box::new(c.condition(operand)?))),
                _ => Ok(Clause::Path(AttributePath::parse(key), c.value(operand)?)),
            })?;
            clauses.push(clause);
        }
        Ok(Condition { clauses })
    }

    fn condition_list(&mut self, op: &str, v: &Value) -> Result<Vec<Condition>, CoreError> {
        let Value::Array(items) = v else {
            return Err(self.error(format_args!(
                "{op} takes an array of conditions, not {}",
                describe(v)
            )));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.at_index(i, |c| c.condition(item)))
            .collect()
    }

    fn value(&mut self, v: &Value) -> Result<ValueTest, CoreError> {
        Ok(match v {
            Value::String(s) => ValueTest::Str {
                s: s.clone(),
                lower: s.to_lowercase(),
            },
            Value::Number(n) => ValueTest::Num(number(n)),
            Value::Bool(b) => ValueTest::Bool(*b),
            Value::Null => ValueTest::Null,
            Value::Object(map) if is_operator_object(map) => {
                let mut ops = Vec::with_capacity(map.len());
                for (op, operand) in map {
                    ops.push(self.at_key(op, |c| c.operator(op, operand))?);
                }
                ValueTest::Ops(ops)
            }
            Value::Array(_) | Value::Object(_) => ValueTest::Json(v.clone()),
        })
    }

    fn operator(&mut self, op: &str, operand: &Value) -> Result<Op, CoreError> {
        let version = |relation| Op::Version(relation, padded_version(operand));
        let list = |insensitive: bool| {
            operand.as_array().map(|items| {
                items
                    .iter()
                    .map(|item| {
                        if insensitive {
                            case_fold(item)
                        } else {
                            item.clone()
                        }
                    })
                    .collect()
            })
        };
        Ok(match op {
            "$veq" => version(Relation::Eq),
            "$vne" => version(Relation::Ne),
            "$vgt" => version(Relation::Gt),
            "$vgte" => version(Relation::Gte),
            "$vlt" => version(Relation::Lt),
            "$vlte" => version(Relation::Lte),
            "$eq" => Op::StrictEq(operand.clone()),
            "$ne" => Op::StrictNe(operand.clone()),
            "$lt" => Op::Compare(Relation::Lt, operand.clone()),
            "$lte" => Op::Compare(Relation::Lte, operand.clone()),
            "$gt" => Op::Compare(Relation::Gt, operand.clone()),
            "$gte" => Op::Compare(Relation::Gte, operand.clone()),
            "$exists" => Op::Exists(truthy(operand)),
            "$in" | "$nin" | "$ini" | "$nini" => {
                let insensitive = op == "$ini" || op == "$nini";
                Op::In {
                    list: list(insensitive),
                    negate: op == "$nin" || op == "$nini",
                    insensitive,
                }
            }
            "$not" => Op::Not(Box::new(self.value(operand)?)),
            "$size" => Op::Size(Box::new(self.value(operand)?)),
            "$elemMatch" => match operand {
                Value::Object(map) if is_operator_object(map) => {
                    Op::ElemMatch(ElemMatch::Value(Box::new(self.value(operand)?)))
                }
                Value::Object(_) => {
                    Op::ElemMatch(ElemMatch::Condition(Box::new(self.condition(operand)?)))
                }
                _ => {
                    return Err(self.error(format_args!(
                        "$elemMatch takes a condition or an object of operators, not {}",
                        describe(operand)
                    )))
                }
            },
            "$all" | "$alli" => Op::All {
                tests: match operand {
                    Value::Array(items) => Some(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, item)| self.at_index(i, |c| c.value(item)))
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => None,
                },
                insensitive: op == "$alli",
            },
            "$regex" | "$regexi" => match self.regex(operand, op == "$regexi")? {
                Some(regex) => Op::Regex(regex),
                None => Op::Never,
            },
            "$type" => {
                let name = operand
                    .as_str()
                    .and_then(|s| TYPE_NAMES.iter().find(|t| **t == s));
                match name {
                    Some(name) => Op::Type(name),
                    None if self.lenient => Op::Never,
                    None => {
                        return Err(self.error(format_args!(
                            "$type takes one of {}, not {}",
                            TYPE_NAMES.join(", "),
                            short(operand)
                        )))
                    }
                }
            }
            "$inGroup" | "$notInGroup" => {
                return Err(self.error(format_args!(
                    "unknown operator \"{op}\" (saved groups are not supported)"
                )))
            }
            "$and" | "$or" | "$nor" if self.lenient => Op::Never,
            "$and" | "$or" | "$nor" => {
                return Err(self.error(format_args!(
                    "unknown operator \"{op}\" on a value ({op} combines conditions: put it \
                     beside the attribute names, not under one)"
                )))
            }
            _ if self.lenient => Op::Never,
            _ => return Err(self.error(format_args!("unknown operator \"{op}\""))),
        })
    }

    /// The compiled pattern; None for a pattern the `regex` crate rejects when lenient.
    fn regex(&mut self, operand: &Value, insensitive: bool) -> Result<Option<Regex>, CoreError> {
        let Value::String(pattern) = operand else {
            return Err(self.error(format_args!(
                "a regular expression must be a string, not {}",
                describe(operand)
            )));
        };
        self.regexes += 1;
        if self.regexes > MAX_REGEXES {
            return Err(self.error(format_args!(
                "too many regular expressions (at most {MAX_REGEXES} in a condition)"
            )));
        }
        let built = RegexBuilder::new(pattern)
            .case_insensitive(insensitive)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build();
        if self.lenient && matches!(built, Err(regex::Error::Syntax(_))) {
            return Ok(None);
        }
        built.map(Some).map_err(|e| {
            let reason = match &e {
                regex::Error::Syntax(text) => text
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("error: "))
                    .unwrap_or("syntax error")
                    .to_string(),
                regex::Error::CompiledTooBig(limit) => {
                    format!("its compiled form exceeds {limit} bytes")
                }
                other => other.to_string(),
            };
            self.error(format_args!(
                "invalid regular expression {}: {reason}",
                short(operand)
            ))
        })
    }
}

/// A JSON value for a message, cut at 80 characters.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= 80 {
        text
    } else {
        format!("{}…", text.chars().take(80).collect::<String>())
    }
}

/// GrowthBook's `isOperatorObject`: at least one key, and every key starts with `$`.
fn is_operator_object(map: &Map<String, Value>) -> bool {
    !map.is_empty() && map.keys().all(|k| k.starts_with('$'))
}

impl AttributePath {
    fn parse(path: &str) -> AttributePath {
        AttributePath {
            parts: path
                .split('.')
                .map(|p| (p.to_string(), array_index(p)))
                .collect(),
        }
    }

    /// GrowthBook's `getPath`: `null` where the path leads nowhere. On an array a part is
    /// an index (`"0"`, `"12"`: JavaScript's canonical form) or `length`.
    fn get<'a>(&self, root: &'a Value) -> Cow<'a, Value> {
        const NULL: Value = Value::Null;
        let mut current = root;
        let last = self.parts.len() - 1;
        for (i, (part, index)) in self.parts.iter().enumerate() {
            current = match current {
                Value::Object(map) => match map.get(part) {
                    Some(v) => v,
                    None => return Cow::Borrowed(&NULL),
                },
                Value::Array(items) => {
                    if let Some(v) = index.and_then(|i| items.get(i)) {
                        v
                    } else if part == "length" {
                        // A number: any further part leads nowhere.
                        if i == last {
                            return Cow::Owned(Value::Number(Number::from(items.len())));
                        }
                        return Cow::Borrowed(&NULL);
                    } else {
                        return Cow::Borrowed(&NULL);
                    }
                }
                _ => return Cow::Borrowed(&NULL),
            };
        }
        Cow::Borrowed(current)
    }
}

/// The value at a dotted `path` of `attributes` as conditions read it (GrowthBook's
/// `getPath`: array indexes and `length` included; `null` where the path leads nowhere).
/// Segments' dimensions (SPEC §13) are read this way.
pub fn value_at_path<'a>(attributes: &'a Value, path: &str) -> Cow<'a, Value> {
    AttributePath::parse(path).get(attributes)
}

/// A canonical array index: `0` or digits without a leading zero.
fn array_index(part: &str) -> Option<usize> {
    let canonical = !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'));
    if canonical {
        part.parse().ok()
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Evaluating

impl Condition {
    /// Whether `attributes` satisfy the condition (GrowthBook's `evalCondition`). The
    /// attributes are normally a JSON object ([`check_attributes`]); anything else is read
    /// as JavaScript would (every path gives `null`).
    pub fn eval(&self, attributes: &Value) -> bool {
        self.clauses.iter().all(|clause| clause.eval(attributes))
    }

    /// True for the empty condition `{}`, which every user satisfies.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }
}

/// GrowthBook's `evalOr`: an empty list holds.
fn any_holds(conditions: &[Condition], obj: &Value) -> bool {
    conditions.is_empty() || conditions.iter().any(|c| c.eval(obj))
}

impl Clause {
    fn eval(&self, obj: &Value) -> bool {
        match self {
            Clause::Or(list) => any_holds(list, obj),
            Clause::Nor(list) => !any_holds(list, obj),
            Clause::And(list) => list.iter().all(|c| c.eval(obj)),
            Clause::Not(c) => !c.eval(obj),
            Clause::Path(path, test) => test.eval(&path.get(obj), false),
        }
    }
}

impl ValueTest {
    fn eval(&self, value: &Value, insensitive: bool) -> bool {
        match self {
            ValueTest::Str { s, lower } => {
                if insensitive {
                    to_js_string(value).to_lowercase() == *lower
                } else {
                    match value {
                        Value::String(v) => v == s,
                        _ => to_js_string(value) == s.as_str(),
                    }
                }
            }
            ValueTest::Num(n) => to_js_number(value) == *n,
            ValueTest::Bool(b) => !value.is_null() && truthy(value) == *b,
            ValueTest::Null => value.is_null(),
            ValueTest::Json(expected) => json_equal(value, expected),
            ValueTest::Ops(ops) => ops.iter().all(|op| op.eval(value)),
        }
    }
}

impl Op {
    fn eval(&self, actual: &Value) -> bool {
        match self {
            Op::Version(relation, expected) => {
                relation.holds(Some(utf16_cmp(&padded_version(actual), expected)))
            }
            Op::StrictEq(expected) => strict_equal(actual, expected),
            Op::StrictNe(expected) => !strict_equal(actual, expected),
            Op::Compare(relation, expected) => relation.holds(js_compare(actual, expected)),
            Op::Exists(expected) => actual.is_null() != *expected,
            Op::In {
                list,
                negate,
                insensitive,
            } => match list {
                None => false,
                Some(list) => is_in(actual, list, *insensitive) != *negate,
            },
            Op::Not(test) => !test.eval(actual, false),
            Op::Size(test) => match actual {
                Value::Array(items) => test.eval(&Value::Number(Number::from(items.len())), false),
                _ => false,
            },
            Op::ElemMatch(check) => match actual {
                Value::Array(items) => items.iter().any(|item| {
                    truthy(item)
                        && match check {
                            ElemMatch::Value(test) => test.eval(item, false),
                            ElemMatch::Condition(condition) => condition.eval(item),
                        }
                }),
                _ => false,
            },
            Op::All { tests, insensitive } => match (tests, actual) {
                (Some(tests), Value::Array(items)) => tests
                    .iter()
                    .all(|test| items.iter().any(|item| test.eval(item, *insensitive))),
                _ => false,
            },
            Op::Regex(regex) => regex.is_match(&to_js_string(actual)),
            Op::Type(name) => type_name(actual) == *name,
            Op::Never => false,
        }
    }
}

/// GrowthBook's `isIn`: an array attribute holds when any element is in the list.
/// Elements are compared with `===` (so an array or object element never matches); with
/// `insensitive`, strings lower-cased (the list is lower-cased already).
fn is_in(actual: &Value, list: &[Value], insensitive: bool) -> bool {
    let contains = |v: &Value| {
        // An attribute array against a long list: let a cancel through.
        crate::interrupt::check();
        if insensitive {
            let folded = case_fold(v);
            list.iter().any(|e| strict_equal(&folded, e))
        } else {
            list.iter().any(|e| strict_equal(v, e))
        }
    };
    match actual {
        Value::Array(items) => items.iter().any(contains),
        _ => contains(actual),
    }
}

fn case_fold(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.to_lowercase()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// JavaScript's values and coercions

fn number(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// JavaScript's truthiness.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => {
            let x = number(n);
            x != 0.0 && !x.is_nan()
        }
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// GrowthBook's `getType`.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `===` on JSON values: arrays and objects are never identical.
fn strict_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => number(x) == number(y),
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// `JSON.stringify(a) === JSON.stringify(b)`, structurally: numbers as doubles, object
/// keys in any order. Recurses only as deep as both values go (the condition's side is at
/// most [`MAX_DEPTH`] deep).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_equal(p, q)))
        }
        _ => strict_equal(a, b),
    }
}

/// JavaScript's `String(v)`: arrays are joined with commas (nested ones flattened, null
/// elements empty), objects are `[object Object]`. Iterative: any depth is safe.
fn to_js_string(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed("null"),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::Number(n) => Cow::Owned(js_number_to_string(number(n))),
        Value::Object(_) => Cow::Borrowed("[object Object]"),
        Value::Array(items) => {
            // A comma between siblings at every level: nested arrays flatten into the list.
            let mut out = String::new();
            let mut stack = vec![(items.iter(), true)];
            while let Some((iter, first)) = stack.last_mut() {
                let Some(item) = iter.next() else {
                    stack.pop();
                    continue;
                };
                if !*first {
                    out.push(',');
                }
                *first = false;
                match item {
                    Value::Null => {}
                    Value::Array(inner) => stack.push((inner.iter(), true)),
                    other => out.push_str(&to_js_string(other)),
                }
            }
            Cow::Owned(out)
        }
    }
}

/// JavaScript's `Number(v)` (`v * 1`): null 0, booleans 0/1, strings parsed (NaN when not a
/// number), arrays through their string, objects NaN.
fn to_js_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => number(n),
        Value::String(s) => string_to_number(s),
        Value::Array(_) => string_to_number(&to_js_string(v)),
        Value::Object(_) => f64::NAN,
    }
}

/// JavaScript's white space and line terminators (what `Number(" 8 ")` trims).
fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\u{9}' | '\u{a}' | '\u{b}' | '\u{c}' | '\u{d}' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// JavaScript's StringToNumber: trimmed; empty is 0; `Infinity` with a sign; `0x`, `0o`,
/// `0b` integers; decimal literals (`.5`, `5.`, `1e3`); anything else NaN.
fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_space);
    if t.is_empty() {
        return 0.0;
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    let bytes = t.as_bytes();
    if bytes.len() > 2 && bytes[0] == b'0' {
        let radix = match bytes[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => 0,
        };
        if radix != 0 {
            let digits = &t[2..];
            if !digits.chars().all(|c| c.is_digit(radix)) {
                return f64::NAN;
            }
            return match u128::from_str_radix(digits, radix) {
                Ok(n) => n as f64,
                // Beyond 128 bits: accumulate (within an ulp or so, far past any attribute).
                Err(_) => digits.chars().fold(0.0, |acc, c| {
                    acc * f64::from(radix) + f64::from(c.to_digit(radix).unwrap_or(0))
                }),
            };
        }
    }
    if is_decimal_literal(bytes) {
        t.parse().unwrap_or(f64::NAN)
    } else {
        f64::NAN
    }
}

/// `[+-]? (digits (. digits?)? | . digits) ([eE] [+-]? digits)?`
fn is_decimal_literal(b: &[u8]) -> bool {
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut mantissa_digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        mantissa_digits += i - frac_start;
    }
    if mantissa_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// JavaScript's `Number.prototype.toString()`: the shortest digits that round-trip, in
/// plain notation from 1e-7 < |x| < 1e21, else as `1.5e+21` / `1e-7`.
pub(crate) fn js_number_to_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x == 0.0 {
        return "0".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if x < 0.0 {
        return format!("-{}", js_number_to_string(-x));
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-7".
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always has an exponent");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exponent + 1; // x = 0.digits × 10^n
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e >= 0 { '+' } else { '-' };
        if k == 1 {
            format!("{digits}e{sign}{}", e.abs())
        } else {
            format!("{}.{}e{sign}{}", &digits[..1], &digits[1..], e.abs())
        }
    }
}

/// A value after JavaScript's ToPrimitive (arrays and objects become strings).
enum Primitive<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
}

fn to_primitive(v: &Value) -> Primitive<'_> {
    match v {
        Value::Null => Primitive::Null,
        Value::Bool(b) => Primitive::Bool(*b),
        Value::Number(n) => Primitive::Num(number(n)),
        Value::String(s) => Primitive::Str(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => Primitive::Str(to_js_string(v)),
    }
}

impl Primitive<'_> {
    fn to_number(&self) -> f64 {
        match self {
            Primitive::Null => 0.0,
            Primitive::Bool(b) => f64::from(u8::from(*b)),
            Primitive::Num(x) => *x,
            Primitive::Str(s) => string_to_number(s),
        }
    }
}

/// JavaScript's abstract relational comparison behind `< <= > >=`: two strings compare
/// by UTF-16 code units, anything else as numbers; `None` when a NaN is involved (every
/// comparison is then false).
fn js_compare(a: &Value, b: &Value) -> Option<Ordering> {
    let (pa, pb) = (to_primitive(a), to_primitive(b));
    if let (Primitive::Str(x), Primitive::Str(y)) = (&pa, &pb) {
        return Some(utf16_cmp(x, y));
    }
    pa.to_number().partial_cmp(&pb.to_number())
}

/// Order of JavaScript strings: by UTF-16 code units (differs from Rust's by code point
/// only between U+E000..U+FFFF and astral characters).
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// GrowthBook's `paddedVersionString`: numbers as their string, anything else that is not a
/// non-empty string is "0"; a leading `v` and `+build` dropped; split on `-` and `.`;
/// `~` appended to a plain `x.y.z` (so it sorts after its pre-releases); numeric parts
/// left-padded with spaces to 5; joined with `-`.
fn padded_version(v: &Value) -> String {
    let text: Cow<'_, str> = match v {
        Value::Number(n) => Cow::Owned(js_number_to_string(number(n))),
        Value::String(s) if !s.is_empty() => Cow::Borrowed(s),
        _ => Cow::Borrowed("0"),
    };
    // `replace(/(^v|\+.*$)/g, "")`: `.` stops at line terminators, so the build part is
    // cut at the first `+` after the last line terminator.
    let mut s: &str = &text;
    if let Some(rest) = s.strip_prefix('v') {
        s = rest;
    }
    let tail_start = s
        .rfind(['\n', '\r', '\u{2028}', '\u{2029}'])
        .map_or(0, |i| i + 1);
    if let Some(plus) = s[tail_start..].find('+') {
        s = &s[..tail_start + plus];
    }
    let mut parts: Vec<&str> = s.split(['-', '.']).collect();
    if parts.len() == 3 {
        parts.push("~");
    }
    let mut out = String::with_capacity(s.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && part.len() < 5 {
            out.push_str(&"     "[part.len()..]);
        }
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_like_javascript() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-8.0, "-8"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.25e-7, "1.25e-7"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.000123, "0.000123"),
            (100.0, "100"),
        ];
        for (x, want) in cases {
            assert_eq!(js_number_to_string(x), want, "{x:e}");
        }
    }

    #[test]
    fn strings_become_numbers_like_javascript() {
        let nan = f64::NAN;
        let cases = [
            ("8", 8.0),
            (" 8\n", 8.0),
            ("", 0.0),
            ("   ", 0.0),
            ("1e3", 1000.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("+5", 5.0),
            ("-5.5", -5.5),
            ("0x1F", 31.0),
            ("0b101", 5.0),
            ("0o17", 15.0),
            ("Infinity", f64::INFINITY),
            ("-Infinity", f64::NEG_INFINITY),
            ("\u{feff}7\u{a0}", 7.0),
            ("inf", nan),
            ("NaN", nan),
            ("1_000", nan),
            ("-0x1F", nan),
            ("1e", nan),
            ("e5", nan),
            (".", nan),
            ("12px", nan),
            ("\u{85}1", nan),
        ];
        for (s, want) in cases {
            let got = string_to_number(s);
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{s:?}: {got}, want {want}"
            );
        }
        assert_eq!(to_js_number(&json!([5])), 5.0);
        assert_eq!(to_js_number(&json!([])), 0.0);
        assert!(to_js_number(&json!([1, 2])).is_nan());
        assert!(to_js_number(&json!({})).is_nan());
        assert_eq!(to_js_number(&json!(null)), 0.0);
        assert_eq!(to_js_number(&json!(true)), 1.0);
    }

    #[test]
    fn values_become_strings_like_javascript() {
        let cases = [
            (json!(null), "null"),
            (json!(true), "true"),
            (json!(1.5), "1.5"),
            (json!({"a": 1}), "[object Object]"),
            (json!([]), ""),
            (json!([1, "a", null, true]), "1,a,,true"),
            (json!([[1, 2], [3]]), "1,2,3"),
            (json!([[], [1]]), ",1"),
            (json!([[1], []]), "1,"),
            (json!([[], []]), ","),
            (json!([[[]]]), ""),
            (json!([1, [], 2]), "1,,2"),
            (json!([{"a": 1}, [null, [2]]]), "[object Object],,2"),
        ];
        for (v, want) in cases {
            assert_eq!(to_js_string(&v), want, "{v}");
        }
        // Deep arrays are no danger: no recursion.
        let mut deep = json!([1]);
        for _ in 0..2000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(to_js_string(&deep), "1");
    }

    #[test]
    fn padded_versions_match_growthbook() {
        assert_eq!(padded_version(&json!("1.2.3")), "    1-    2-    3-~");
        assert_eq!(
            padded_version(&json!("v1.2.3+build.7")),
            "    1-    2-    3-~"
        );
        assert_eq!(
            padded_version(&json!("1.0.0-rc.1")),
            "    1-    0-    0-rc-    1"
        );
        assert_eq!(padded_version(&json!("123456.1.2")), "123456-    1-    2-~");
        assert_eq!(padded_version(&json!(2)), "    2");
        assert_eq!(padded_version(&json!(1.5)), "    1-    5");
        assert_eq!(padded_version(&json!("")), "    0");
        assert_eq!(padded_version(&json!(null)), "    0");
        assert_eq!(padded_version(&json!(["1.2.3"])), "    0");
        // `.*$` does not cross a line terminator: a `+` before one is kept.
        assert_eq!(padded_version(&json!("1+a\n2+b")), "1+a\n2");
    }

    #[test]
    fn utf16_order_is_javascripts() {
        // By code point (Rust) U+1F600 is above U+FF61; in UTF-16 its high surrogate 0xD83D
        // is below 0xFF61.
        assert_eq!("\u{1F600}".cmp("\u{FF61}"), Ordering::Greater);
        assert_eq!(utf16_cmp("\u{1F600}", "\u{FF61}"), Ordering::Less);
        assert_eq!(utf16_cmp("abc", "abd"), Ordering::Less);
    }

    #[test]
    fn paths_reach_into_arrays_like_javascript() {
        let attrs = json!({"tags": ["a", "b"], "n": {"0": "zero"}});
        let get = |p: &str| AttributePath::parse(p).get(&attrs).into_owned();
        assert_eq!(get("tags.0"), json!("a"));
        assert_eq!(get("tags.1"), json!("b"));
        assert_eq!(get("tags.2"), json!(null));
        assert_eq!(get("tags.01"), json!(null));
        assert_eq!(get("tags.length"), json!(2));
        assert_eq!(get("tags.length.x"), json!(null));
        assert_eq!(get("n.0"), json!("zero"));
        assert_eq!(get("tags.0.length"), json!(null)); // a string is not an object
        assert_eq!(get("missing.x"), json!(null));
    }

    fn error_of(condition: Value) -> String {
        compile_named(&condition, "targeting")
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn errors_name_the_path() {
        let cases = [
            (
                json!({"country": {"$regex": "("}}),
                "INVALID_ARGUMENT: targeting.country.$regex: invalid regular expression \"(\"",
            ),
            (
                json!({"country": {"$foo": 1}}),
                "INVALID_ARGUMENT: targeting.country.$foo: unknown operator \"$foo\"",
            ),
            (
                json!({"$or": [{"a": 1}, {"b": {"$in": [1], "$inGroup": "g"}}]}),
                "INVALID_ARGUMENT: targeting.$or[1].b.$inGroup: unknown operator \"$inGroup\"",
            ),
            (
                json!({"id": {"$notInGroup": "g"}}),
                "INVALID_ARGUMENT: targeting.id.$notInGroup: unknown operator",
            ),
            (
                json!("country"),
                "INVALID_ARGUMENT: targeting: a condition must be a JSON object, not a string",
            ),
            (
                json!([]),
                "INVALID_ARGUMENT: targeting: a condition must be a JSON object, not an array",
            ),
            (
                json!({"$and": {"a": 1}}),
                "INVALID_ARGUMENT: targeting.$and: $and takes an array of conditions",
            ),
            (
                json!({"$nor": [{"a": 1}, 3]}),
                "INVALID_ARGUMENT: targeting.$nor[1]: a condition must be a JSON object, not a number",
            ),
            (
                json!({"$not": null}),
                "INVALID_ARGUMENT: targeting.$not: a condition must be a JSON object, not null",
            ),
            (
                json!({"tags": {"$elemMatch": "a"}}),
                "INVALID_ARGUMENT: targeting.tags.$elemMatch: $elemMatch takes a condition",
            ),
            (
                json!({"tags": {"$elemMatch": {"x": {"$regexi": 5}}}}),
                "INVALID_ARGUMENT: targeting.tags.$elemMatch.x.$regexi: a regular expression must be a string",
            ),
            (
                json!({"a": {"$all": [1, {"$bad": 1}]}}),
                "INVALID_ARGUMENT: targeting.a.$all[1].$bad: unknown operator",
            ),
            (
                json!({"a": {"$not": {"$size": {"$gtx": 1}}}}),
                "INVALID_ARGUMENT: targeting.a.$not.$size.$gtx: unknown operator",
            ),
            (
                json!({"a": {"$type": "integer"}}),
                "INVALID_ARGUMENT: targeting.a.$type: $type takes one of string, number",
            ),
            (
                json!({"a": {"$or": [{"b": 1}]}}),
                "INVALID_ARGUMENT: targeting.a.$or: unknown operator \"$or\" on a value",
            ),
            (
                json!({"a": {"$regex": "\\1"}}),
                "INVALID_ARGUMENT: targeting.a.$regex: invalid regular expression \"\\\\1\": backreferences are not supported",
            ),
        ];
        for (condition, want) in cases {
            let got = error_of(condition.clone());
            assert!(
                got.starts_with(want),
                "{condition}: {got}\n  wanted: {want}…"
            );
        }
        // The default root name.
        let e = compile(&json!({"a": {"$foo": 1}})).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
        assert!(e.detail.starts_with("condition.a.$foo: "), "{e}");
        // `$`-keys beside the combinators are attribute paths, as in GrowthBook.
        assert!(compile(&json!({"$groups": {"$elemMatch": {"$eq": "a"}}})).is_ok());
        // Mixed objects are values to compare, not operators.
        assert!(compile(&json!({"a": {"$foo": 1, "b": 2}})).is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        // {"$not": {"$not": … {"a": 1} …}}: each $not one level.
        let nested = |levels: usize| {
            let mut c = json!({"a": 1});
            for _ in 1..levels {
                c = json!({ "$not": c });
            }
            c
        };
        assert!(compile(&nested(MAX_DEPTH)).is_ok());
        let got = error_of(nested(MAX_DEPTH + 1));
        assert!(
            got.contains("nested too deeply (more than 32 levels)"),
            "{got}"
        );
        assert!(
            got.starts_with("INVALID_ARGUMENT: targeting.$not.$not."),
            "{got}"
        );
        // Far deeper input is refused just as quickly: the check stops at the bound. (A
        // thread with a large stack: building and dropping such a value recurses.)
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| {
                let mut deep = json!(1);
                for _ in 0..20_000 {
                    let mut map = Map::new();
                    map.insert("a".to_string(), deep);
                    deep = Value::Object(map);
                }
                assert!(error_of(deep).contains("nested too deeply"));
            })
            .unwrap()
            .join()
            .unwrap();
        // Depth inside operands counts too.
        let mut list = json!([1]);
        for _ in 0..MAX_DEPTH {
            list = json!([list]);
        }
        assert!(error_of(json!({"a": {"$in": list}})).contains("nested too deeply"));
    }

    #[test]
    fn size_is_bounded() {
        // Many values, few bytes.
        let zeros = vec![json!(0); MAX_NODES];
        let got = error_of(json!({"id": {"$in": zeros}}));
        assert!(got.contains("more than 10000 JSON values"), "{got}");
        assert!(
            got.starts_with("INVALID_ARGUMENT: targeting.id.$in["),
            "{got}"
        );
        // Few values, many bytes.
        let ids: Vec<Value> = (0..2000).map(|i| json!(format!("user-{i:030}"))).collect();
        let got = error_of(json!({"id": {"$in": ids}}));
        assert!(
            got.starts_with("INVALID_ARGUMENT: targeting: condition too large (")
                && got.contains("at most 65536)"),
            "{got}"
        );
        let got = error_of(json!({"note": "x".repeat(MAX_BYTES)}));
        assert!(got.contains("condition too large"), "{got}");
        // A list of 1000 ids is fine.
        let ids: Vec<Value> = (0..1000).map(|i| json!(format!("user-{i}"))).collect();
        let c = compile(&json!({"id": {"$in": ids}})).unwrap();
        assert!(c.eval(&json!({"id": "user-999"})));
        assert!(!c.eval(&json!({"id": "user-1000"})));
    }

    #[test]
    fn regexes_are_bounded() {
        let many: Vec<Value> = (0..=MAX_REGEXES)
            .map(|i| json!({ format!("a{i}"): {"$regex": "x"} }))
            .collect();
        let got = error_of(json!({ "$or": many }));
        assert!(got.contains("too many regular expressions"), "{got}");
        assert!(
            got.starts_with("INVALID_ARGUMENT: targeting.$or[64].a64.$regex"),
            "{got}"
        );
        // Small to write, huge once compiled (Unicode \w repeated).
        let got = error_of(json!({"a": {"$regex": "\\w{1000}\\w{1000}"}}));
        assert!(got.contains("compiled form exceeds"), "{got}");
    }

    #[test]
    fn pathological_regex_is_linear() {
        let c =
            compile(&json!({"s": {"$regex": "(a+)+$"}, "t": {"$regexi": "^(a|aa)+b$"}})).unwrap();
        let long = format!("{}!", "a".repeat(200_000));
        let start = std::time::Instant::now();
        assert!(!c.eval(&json!({"s": long.clone() + "x", "t": long.clone()})));
        assert!(!c.eval(&json!({"s": "b", "t": long})));
        let elapsed = start.elapsed();
        // A backtracking engine would not finish; the regex crate takes milliseconds.
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
        // Unanchored, so every position is tried: still one linear pass.
        let scan = compile(&json!({"s": {"$regex": "(a+)+b"}})).unwrap();
        let start = std::time::Instant::now();
        assert!(!scan.eval(&json!({ "s": "a".repeat(200_000) })));
        let elapsed = start.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
        let ok = compile(&json!({"s": {"$regex": "(a+)+$"}})).unwrap();
        assert!(ok.eval(&json!({"s": "baaa"})));
    }

    #[test]
    fn javascript_semantics_beyond_the_growthbook_cases() {
        let holds = |c: Value, a: Value| compile(&c).unwrap().eval(&a);
        // Missing attributes are null, and null coerces like JavaScript's.
        assert!(holds(json!({"age": {"$lt": 10}}), json!({})));
        assert!(holds(json!({"age": 0}), json!({})));
        assert!(holds(json!({"name": "null"}), json!({})));
        assert!(!holds(json!({"age": false}), json!({})));
        // Implicit equality coerces; $eq does not.
        assert!(holds(json!({"n": 8}), json!({"n": "8"})));
        assert!(holds(json!({"n": "8"}), json!({"n": 8})));
        assert!(holds(json!({"flag": 1}), json!({"flag": true})));
        assert!(!holds(json!({"n": {"$eq": 8}}), json!({"n": "8"})));
        assert!(holds(json!({"n": {"$eq": 8}}), json!({"n": 8.0})));
        assert!(!holds(json!({"t": {"$eq": [1]}}), json!({"t": [1]})));
        assert!(holds(json!({"t": {"$ne": [1]}}), json!({"t": [1]})));
        // Structural equality: numbers as doubles, keys in any order.
        assert!(holds(
            json!({"t": [1, {"b": 2, "a": 1}]}),
            json!({"t": [1.0, {"a": 1, "b": 2.0}]})
        ));
        assert!(holds(json!({"t": {}}), json!({"t": {}})));
        assert!(!holds(json!({"t": {}}), json!({})));
        // $nor of nothing fails ($or of nothing holds).
        assert!(!holds(json!({"$nor": []}), json!({})));
        // $elemMatch skips falsy elements.
        assert!(!holds(
            json!({"n": {"$elemMatch": {"$eq": 0}}}),
            json!({"n": [0, 1]})
        ));
        assert!(holds(
            json!({"n": {"$elemMatch": {"$eq": 1}}}),
            json!({"n": [0, 1]})
        ));
        // Paths into arrays.
        assert!(holds(
            json!({"tags.0": "a", "tags.length": 2}),
            json!({"tags": ["a", "b"]})
        ));
        // Relational operators on strings compare UTF-16 code units.
        assert!(holds(
            json!({"s": {"$lt": "\u{ff61}"}}),
            json!({"s": "\u{1f600}"})
        ));
        // $in never matches arrays or objects by value; it intersects an array attribute.
        assert!(!holds(json!({"t": {"$in": [[1]]}}), json!({"t": [1]})));
        assert!(holds(json!({"t": {"$in": [1]}}), json!({"t": [3, 1]})));
        assert!(holds(json!({"t": {"$nini": ["X"]}}), json!({"t": ["y"]})));
        // $exists takes truthiness.
        assert!(holds(json!({"a": {"$exists": 1}}), json!({"a": 0})));
        assert!(holds(json!({"a": {"$exists": ""}}), json!({})));
        // $size takes any value test.
        assert!(holds(json!({"t": {"$size": "2"}}), json!({"t": [5, 6]})));
        // $regex tests String(value).
        assert!(holds(
            json!({"n": {"$regex": "^12\\.5$"}}),
            json!({"n": 12.5})
        ));
        assert!(holds(
            json!({"t": {"$regex": "^a,b$"}}),
            json!({"t": ["a", "b"]})
        ));
        // Versions from numbers.
        assert!(holds(json!({"v": {"$vgt": 2}}), json!({"v": "2.0.1"})));
        // $alli folds only strings of its direct values.
        assert!(holds(
            json!({"t": {"$alli": ["A", 1]}}),
            json!({"t": ["a", 1]})
        ));
        // Attributes that are not an object: every path is null.
        assert!(holds(json!({"a": null}), json!("x")));
        assert!(!holds(json!({"a": 1}), json!([1])));
    }

    #[test]
    fn api_helpers() {
        assert!(compile(&json!({})).unwrap().is_empty());
        assert!(!compile(&json!({"a": 1})).unwrap().is_empty());
        assert_eq!(eval_condition(&json!({"a": 1}), &json!({"a": 1})), Ok(true));
        assert_eq!(
            eval_condition(&json!({"a": {"$x": 1}}), &json!({})),
            Ok(false)
        );
    }

    #[test]
    fn value_at_path_reads_as_conditions_do() {
        let a = json!({"tags": ["x", "y"], "geo": {"country": "DE"}, "n": 3});
        assert_eq!(value_at_path(&a, "tags.0").as_ref(), &json!("x"));
        assert_eq!(value_at_path(&a, "tags.length").as_ref(), &json!(2));
        assert_eq!(value_at_path(&a, "geo.country").as_ref(), &json!("DE"));
        assert_eq!(value_at_path(&a, "geo.city").as_ref(), &Value::Null);
        assert_eq!(value_at_path(&a, "n.x").as_ref(), &Value::Null);
        assert_eq!(value_at_path(&a, "tags.01").as_ref(), &Value::Null);
    }

    /// Written conditions are rejected where GrowthBook would evaluate to false; evaluated
    /// once, they answer as GrowthBook does (false, so true under a negation).
    #[test]
    fn evaluation_answers_what_writing_rejects() {
        let never = [
            json!({"a": {"$x": 1}}),
            json!({"a": {"$regex": "("}}),
            json!({"a": {"$regexi": "(?=a)b"}}),
            json!({"a": {"$type": "date"}}),
            json!({"a": {"$or": [{"b": 1}]}}),
            json!({"a": {"$elemMatch": {"$qux": 1}}}),
        ];
        for condition in never {
            assert!(
                compile(&condition).is_err(),
                "{condition} must be rejected when written"
            );
            let for_eval = compile_for_eval(&condition).unwrap();
            for attributes in [json!({}), json!({"a": "("}), json!({"a": [1, "x"]})] {
                assert!(!for_eval.eval(&attributes), "{condition} on {attributes}");
            }
            let negated = json!({"$not": condition});
            assert!(
                compile_for_eval(&negated).unwrap().eval(&json!({"a": 1})),
                "{negated}"
            );
        }
        // Still errors when evaluated: the saved groups, non-conditions, a non-string
        // pattern, the size limits.
        for condition in [
            json!({"id": {"$inGroup": "g"}}),
            json!({"id": {"$notInGroup": "g"}}),
            json!([{"a": 1}]),
            json!({"$or": {"a": 1}}),
            json!({"a": {"$regex": 5}}),
        ] {
            assert!(
                eval_condition(&condition, &json!({})).is_err(),
                "{condition}"
            );
        }
        assert!(check_attributes(&json!({})).is_ok());
        let e = check_attributes(&json!([1])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "INVALID_ARGUMENT: attributes must be a JSON object, not an array"
        );
        fn cacheable<T: Send + Sync + Clone + 'static>() {}
        cacheable::<Condition>();
    }
}
