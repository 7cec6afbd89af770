//! Input rules of the contract. Each check returns a `CoreError` with the
//! `INVALID_ARGUMENT` code and a sentence that names the bad value.

use crate::error::CoreError;
use serde_json::Value;

pub const EXPERIMENT_KEY_MAX: usize = 128;
pub const VARIANT_KEY_MAX: usize = 64;
pub const USER_ID_MAX: usize = 512;
pub const EVENT_MAX: usize = 128;
pub const PROPERTIES_MAX_BYTES: usize = 64 * 1024;
pub const STATUSES: [&str; 4] = ["draft", "active", "paused", "ended"];

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// A short, printable rendering of user input for error messages.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let cut = if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    };
    format!("{cut:?}")
}

fn check_key(what: &str, key: Option<&str>, max: usize) -> Result<(), CoreError> {
    let key = key.ok_or_else(|| CoreError::invalid(format!("{what} must not be NULL")))?;
    let len = key.chars().count();
    if len == 0 {
        return Err(CoreError::invalid(format!("{what} must not be empty")));
    }
    if len > max {
        return Err(CoreError::invalid(format!(
            "{what} {} is {len} characters long; at most {max} are allowed",
            shown(key)
        )));
    }
    if let Some(bad) = key.chars().find(|c| !is_key_char(*c)) {
        return Err(CoreError::invalid(format!(
            "{what} {} contains {bad:?}; only A-Z, a-z, 0-9 and _ . : - are allowed",
            shown(key)
        )));
    }
    Ok(())
}

pub fn experiment_key(key: Option<&str>) -> Result<(), CoreError> {
    check_key("experiment_key", key, EXPERIMENT_KEY_MAX)
}

pub fn variant_key(key: Option<&str>) -> Result<(), CoreError> {
    check_key("variant key", key, VARIANT_KEY_MAX)
}

pub fn user_id(user_id: Option<&str>) -> Result<(), CoreError> {
    let user_id = user_id.ok_or_else(|| CoreError::invalid("user_id must not be NULL"))?;
    if user_id.is_empty() {
        return Err(CoreError::invalid("user_id must not be empty"));
    }
    // Cheap first: a string of at most 512 bytes has at most 512 characters.
    if user_id.len() > USER_ID_MAX {
        let len = user_id.chars().count();
        if len > USER_ID_MAX {
            return Err(CoreError::invalid(format!(
                "user_id is {len} characters long; at most {USER_ID_MAX} are allowed"
            )));
        }
    }
    Ok(())
}

pub fn event(event: Option<&str>) -> Result<(), CoreError> {
    let event = event.ok_or_else(|| CoreError::invalid("event must not be NULL"))?;
    let len = event.chars().count();
    if len == 0 {
        return Err(CoreError::invalid("event must not be empty"));
    }
    if len > EVENT_MAX {
        return Err(CoreError::invalid(format!(
            "event {} is {len} characters long; at most {EVENT_MAX} are allowed",
            shown(event)
        )));
    }
    if event.chars().any(char::is_control) {
        return Err(CoreError::invalid(format!(
            "event {} contains a control character",
            shown(event)
        )));
    }
    Ok(())
}

pub fn status(status: Option<&str>) -> Result<(), CoreError> {
    match status {
        Some(s) if STATUSES.contains(&s) => Ok(()),
        Some(s) => Err(CoreError::invalid(format!(
            "status {} is not one of draft, active, paused, ended",
            shown(s)
        ))),
        None => Err(CoreError::invalid("status must not be NULL")),
    }
}

pub const NAME_MAX: usize = 256;
pub const DESCRIPTION_MAX: usize = 10_000;
pub const API_KEY_NAME_MAX: usize = 128;
pub const API_KEY_KINDS: [&str; 2] = ["client", "admin"];

/// Optional free text (an experiment's name or description): at most `max` characters.
pub fn text_length(what: &str, value: Option<&str>, max: usize) -> Result<(), CoreError> {
    match value {
        Some(v) if v.len() > max && v.chars().count() > max => Err(CoreError::invalid(format!(
            "{what} is {} characters long; at most {max} are allowed",
            v.chars().count()
        ))),
        _ => Ok(()),
    }
}

/// An API key's name: 1–128 characters without control characters.
pub fn api_key_name(name: Option<&str>) -> Result<(), CoreError> {
    match name {
        Some(n)
            if !n.is_empty()
                && n.chars().count() <= API_KEY_NAME_MAX
                && !n.chars().any(char::is_control) =>
        {
            Ok(())
        }
        _ => Err(CoreError::invalid(format!(
            "an API key name must be 1 to {API_KEY_NAME_MAX} characters without control characters"
        ))),
    }
}

/// An API key's kind: `client` or `admin`.
pub fn api_key_kind(kind: Option<&str>) -> Result<(), CoreError> {
    match kind {
        Some(k) if API_KEY_KINDS.contains(&k) => Ok(()),
        Some(k) => Err(CoreError::invalid(format!(
            "API key kind must be client or admin, not {}",
            shown(k)
        ))),
        None => Err(CoreError::invalid(
            "API key kind must be client or admin, not NULL",
        )),
    }
}

/// The size of an event's properties as JSON text.
pub fn properties_size(bytes: usize) -> Result<(), CoreError> {
    if bytes > PROPERTIES_MAX_BYTES {
        return Err(CoreError::invalid(format!(
            "properties must be at most 64 KiB of JSON ({PROPERTIES_MAX_BYTES} bytes), got {bytes}"
        )));
    }
    Ok(())
}

/// `alpha` of `amba_results`: strictly between 0 and 1.
pub fn alpha(alpha: Option<f64>) -> Result<f64, CoreError> {
    match alpha {
        Some(a) if a > 0.0 && a < 1.0 => Ok(a),
        Some(a) => Err(CoreError::invalid(format!(
            "alpha must be strictly between 0 and 1, got {a}"
        ))),
        None => Err(CoreError::invalid("alpha must not be NULL")),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub key: String,
    pub weight: f64,
}

/// Parses and checks a variants array: at least two objects `{"key", "weight"}` with
/// unique valid keys, finite non-negative numeric weights and a positive sum.
pub fn variants_json(text: &str) -> Result<Vec<Variant>, CoreError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() && e.to_string().contains("number out of range") {
            CoreError::invalid("a variant weight is not finite as double precision")
        } else {
            CoreError::invalid(format!("variants is not valid JSON ({e})"))
        }
    })?;
    variants(&value)
}

/// The most variants an experiment may have: every result, the report page and the daily
/// rows grow with their number (a thousand is far beyond any real test).
pub const MAX_VARIANTS: usize = 1000;

pub fn variants(value: &Value) -> Result<Vec<Variant>, CoreError> {
    let items = value.as_array().ok_or_else(|| {
        CoreError::invalid(
            r#"variants must be a JSON array such as [{"key":"control","weight":50},{"key":"treatment","weight":50}]"#,
        )
    })?;
    if items.len() < 2 {
        return Err(CoreError::invalid(format!(
            "an experiment needs at least two variants, got {}",
            items.len()
        )));
    }
    if items.len() > MAX_VARIANTS {
        return Err(CoreError::invalid(format!(
            "an experiment has at most {MAX_VARIANTS} variants, got {}",
            items.len()
        )));
    }
    let mut out: Vec<Variant> = Vec::with_capacity(items.len());
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let obj = item.as_object().ok_or_else(|| {
            CoreError::invalid(format!(
                "variants[{i}] must be an object with \"key\" and \"weight\""
            ))
        })?;
        if let Some(extra) = obj.keys().find(|k| *k != "key" && *k != "weight") {
            return Err(CoreError::invalid(format!(
                "variants[{i}] has an unknown field {extra:?}; only \"key\" and \"weight\" are allowed"
            )));
        }
        let key = match obj.get("key") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(CoreError::invalid(format!(
                    "variants[{i}].key must be a string"
                )))
            }
            None => return Err(CoreError::invalid(format!("variants[{i}] has no \"key\""))),
        };
        variant_key(Some(key))?;
        let weight = match obj.get("weight") {
            Some(Value::Number(n)) => n.as_f64().ok_or_else(|| {
                CoreError::invalid(format!("variants[{i}].weight is not a finite number"))
            })?,
            Some(_) => {
                return Err(CoreError::invalid(format!(
                    "variants[{i}].weight must be a JSON number, not a string, boolean or null"
                )))
            }
            None => {
                return Err(CoreError::invalid(format!(
                    "variants[{i}] has no \"weight\""
                )))
            }
        };
        if !weight.is_finite() {
            return Err(CoreError::invalid(format!(
                "variants[{i}].weight is not finite"
            )));
        }
        if weight < 0.0 {
            return Err(CoreError::invalid(format!(
                "variants[{i}].weight is {weight}; weights must be >= 0"
            )));
        }
        if !seen.insert(key) {
            return Err(CoreError::invalid(format!(
                "variant key {key:?} appears twice"
            )));
        }
        // -0.0 is stored as 0.
        out.push(Variant {
            key: key.to_string(),
            weight: weight + 0.0,
        });
    }
    let total: f64 = out.iter().fold(0.0, |acc, v| acc + v.weight);
    if !(total > 0.0) || !total.is_finite() {
        return Err(CoreError::invalid(
            "the weights must sum to a finite number greater than 0",
        ));
    }
    Ok(out)
}

/// Rules for replacing an experiment's variants: the control stays first, and a variant
/// that has assignments is not removed. `has_assignments` answers for a removed key.
pub fn variant_update(
    old_keys: &[String],
    new: &[Variant],
    mut has_assignments: impl FnMut(&str) -> bool,
) -> Result<(), CoreError> {
    if let (Some(old_control), Some(new_first)) = (old_keys.first(), new.first()) {
        if *old_control != new_first.key {
            return Err(CoreError::invalid(format!(
                "the control {old_control:?} must stay the first variant (got {:?} first)",
                new_first.key
            )));
        }
    }
    for old in old_keys {
        if !new.iter().any(|v| v.key == *old) && has_assignments(old) {
            return Err(CoreError::invalid(format!(
                "variant {old:?} has assignments and cannot be removed; set its weight to 0 instead"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn err(r: Result<impl std::fmt::Debug, CoreError>) -> String {
        let e = r.expect_err("expected an error");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        e.to_string()
    }

    #[test]
    fn experiment_keys() {
        assert!(experiment_key(Some("checkout.v2:blue-button_1")).is_ok());
        assert!(experiment_key(Some(&"a".repeat(128))).is_ok());
        assert!(err(experiment_key(Some(&"a".repeat(129)))).contains("129 characters"));
        assert!(err(experiment_key(Some(""))).contains("empty"));
        assert!(err(experiment_key(None)).contains("NULL"));
        assert!(err(experiment_key(Some("a b"))).contains("' '"));
        assert!(err(experiment_key(Some("é"))).starts_with("INVALID_ARGUMENT: "));
    }

    #[test]
    fn user_ids_count_characters_not_bytes() {
        assert!(user_id(Some(&"é".repeat(512))).is_ok());
        assert!(user_id(Some(" padded ")).is_ok());
        assert!(err(user_id(Some(&"é".repeat(513)))).contains("513"));
        assert!(err(user_id(Some(""))).contains("empty"));
        assert!(err(user_id(None)).contains("NULL"));
    }

    #[test]
    fn events() {
        assert!(event(Some("purchase completed ✓")).is_ok());
        assert!(err(event(Some("a\nb"))).contains("control"));
        assert!(err(event(Some("a\u{7f}"))).contains("control"));
        assert!(err(event(Some(&"e".repeat(129)))).contains("129"));
        assert!(err(event(Some(""))).contains("empty"));
    }

    #[test]
    fn statuses_and_alpha() {
        for s in STATUSES {
            assert!(status(Some(s)).is_ok());
        }
        assert!(err(status(Some("Active"))).contains("not one of"));
        assert!(err(status(None)).contains("NULL"));
        assert_eq!(alpha(Some(0.1)).unwrap(), 0.1);
        for bad in [0.0, 1.0, -0.5, 2.0, f64::NAN, f64::INFINITY] {
            err(alpha(Some(bad)));
        }
        err(alpha(None));
    }

    #[test]
    fn good_variants() {
        let v = variants_json(
            r#"[{"key":"control","weight":50},{"key":"b","weight":0.5},{"key":"c","weight":0}]"#,
        )
        .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[1],
            Variant {
                key: "b".into(),
                weight: 0.5
            }
        );
        assert!(variants_json(r#"[{"key":"a","weight":-0},{"key":"b","weight":1}]"#).is_ok());
    }

    #[test]
    fn bad_variants() {
        let cases = [
            (r#"{"key":"a"}"#, "array"),
            (r#"[{"key":"a","weight":1}]"#, "at least two"),
            (r#"[]"#, "at least two"),
            (r#"[1, 2]"#, "object"),
            (
                r#"[{"key":"a","weight":1},{"key":"a","weight":1}]"#,
                "twice",
            ),
            (
                r#"[{"key":"a","weight":1},{"key":"b","weight":"1"}]"#,
                "JSON number",
            ),
            (
                r#"[{"key":"a","weight":1},{"key":"b","weight":true}]"#,
                "JSON number",
            ),
            (
                r#"[{"key":"a","weight":1},{"key":"b","weight":null}]"#,
                "JSON number",
            ),
            (r#"[{"key":"a","weight":1},{"key":"b"}]"#, "no \"weight\""),
            (r#"[{"key":"a","weight":1},{"weight":1}]"#, "no \"key\""),
            (r#"[{"key":"a","weight":1},{"key":5,"weight":1}]"#, "string"),
            (
                r#"[{"key":"a","weight":1},{"key":"b c","weight":1}]"#,
                "contains",
            ),
            (
                r#"[{"key":"a","weight":1},{"key":"b","weight":-1}]"#,
                ">= 0",
            ),
            (
                r#"[{"key":"a","weight":0},{"key":"b","weight":0}]"#,
                "greater than 0",
            ),
            (
                r#"[{"key":"a","weight":1},{"key":"b","weight":1e999}]"#,
                "not finite",
            ),
            (
                r#"[{"key":"a","weight":1e308},{"key":"b","weight":1e308}]"#,
                "finite number greater",
            ),
            (
                r#"[{"key":"a","weight":1},{"key":"b","weight":1,"x":1}]"#,
                "unknown field",
            ),
            (r#"not json"#, "valid JSON"),
        ];
        for (input, needle) in cases {
            let message = err(variants_json(input));
            assert!(message.contains(needle), "{input}: {message}");
        }
        let long = format!(
            r#"[{{"key":"a","weight":1}},{{"key":"{}","weight":1}}]"#,
            "v".repeat(65)
        );
        assert!(err(variants_json(&long)).contains("65 characters"));
    }

    #[test]
    fn updates_keep_control_and_assigned_variants() {
        let old = vec!["control".to_string(), "b".to_string(), "c".to_string()];
        let v = |keys: &[&str]| {
            keys.iter()
                .map(|k| Variant {
                    key: k.to_string(),
                    weight: 1.0,
                })
                .collect::<Vec<_>>()
        };
        assert!(variant_update(&old, &v(&["control", "c", "b", "d"]), |_| true).is_ok());
        assert!(variant_update(&old, &v(&["control", "b"]), |k| k != "c").is_ok());
        assert!(
            err(variant_update(&old, &v(&["control", "b"]), |k| k == "c"))
                .contains("set its weight to 0")
        );
        assert!(
            err(variant_update(&old, &v(&["b", "control", "c"]), |_| false))
                .contains("must stay the first")
        );
    }
}
