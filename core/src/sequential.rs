//! Guardrails (CONTRACT §12): the relative lift of a variant over the control with its
//! always-valid confidence sequence, the rule that trips a guardrail, and the validation of
//! an experiment's `guardrails` array.
//!
//! - `conversion` guardrails take exactly the `lift_cs_low/high` of §3e (the lift of §3b
//!   and [`stats::lift_confidence_sequence`] on its delta-method variance), computed by the
//!   same functions `amba_results_daily` calls;
//! - `mean` guardrails take the relative confidence sequence of gbstats 0.8.0
//!   `SequentialTwoSidedTTest` (τ = 5000, `difference_type="relative"`) on two
//!   `SampleMeanStatistic(n, sum, sum_squares)`, the per-user Y of §3c (count, or sum of
//!   `value_property`; no cap, no CUPED). Where gbstats returns its uninformative default
//!   (n < 2 in an arm, a control mean of 0, a zero variance in either arm) there is no
//!   interval (`None`, SQL NULL), and a guardrail without an interval never trips.
//!
//! Because the interval is valid at every sample size at once, a guardrail can be checked
//! as often as one likes: under no effect the chance that it ever trips stays at most
//! alpha (core/tests/sequential_reference.rs shows it by simulation).

use crate::error::CoreError;
use crate::finite;
use crate::stats::{self, Arm};
use serde_json::{Map, Value};

/// At most this many guardrails per experiment.
pub const GUARDRAILS_MAX: usize = 10;
/// `event` and `value_property`: at most this many characters (as events elsewhere).
pub const GUARDRAIL_TEXT_MAX: usize = 128;
/// `alpha` when a guardrail does not say.
pub const DEFAULT_ALPHA: f64 = 0.05;
/// `tolerance` when a guardrail does not say.
pub const DEFAULT_TOLERANCE: f64 = 0.0;

const FIELDS: [&str; 6] = [
    "event",
    "value_property",
    "kind",
    "bad",
    "tolerance",
    "alpha",
];

/// What a guardrail measures per exposed user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardrailKind {
    /// 1 when the user has the event at or after assignment, else 0 (§3b/§3e).
    Conversion,
    /// Y of §3c: the number of events, or the sum of `value_property` (no cap, no CUPED).
    Mean,
}

impl GuardrailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailKind::Conversion => "conversion",
            GuardrailKind::Mean => "mean",
        }
    }
}

/// Which direction of the lift is harmful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    Decrease,
    Increase,
}

impl Bad {
    pub fn as_str(self) -> &'static str {
        match self {
            Bad::Decrease => "decrease",
            Bad::Increase => "increase",
        }
    }
}

/// One element of an experiment's `guardrails` array, with its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrail {
    pub event: String,
    /// `None`: count the events (`mean`); not used by `conversion` guardrails.
    pub value_property: Option<String>,
    pub kind: GuardrailKind,
    pub bad: Bad,
    /// Relative lift tolerated in the bad direction (0.02: a 2% harm is tolerated), >= 0.
    pub tolerance: f64,
    /// 0 < alpha < 1: the interval is a (1 − alpha) confidence sequence.
    pub alpha: f64,
}

/// Sufficient statistics of one variant for a guardrail: exposed users `n`, `sum` = ΣY and
/// `sum_squares` = ΣY² over them (every exposed user counts, Y = 0 without events). For a
/// `conversion` guardrail Y is 0 or 1, so `sum` (= `sum_squares`) is the number of
/// converted users.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ArmSums {
    pub n: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

impl ArmSums {
    /// A conversion arm: `exposed` users of whom `converted` converted.
    pub fn conversion(exposed: u64, converted: u64) -> ArmSums {
        let x = converted as f64;
        ArmSums {
            n: exposed,
            sum: x,
            sum_squares: x,
        }
    }

    /// The sums of per-user values, added left to right (as SQL's `sum()` over doubles).
    pub fn from_values<I: IntoIterator<Item = f64>>(values: I) -> ArmSums {
        values.into_iter().fold(ArmSums::default(), |mut a, y| {
            a.n += 1;
            a.sum += y;
            a.sum_squares += y * y;
            a
        })
    }

    /// Adds one user with value `y`.
    pub fn push(&mut self, y: f64) {
        self.n += 1;
        self.sum += y;
        self.sum_squares += y * y;
    }

    /// The conversion counts, when `sum` is a whole number of converted users in [0, n].
    pub fn as_conversion(&self) -> Option<Arm> {
        let x = self.sum;
        (x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= self.n as f64)
            .then(|| Arm::new(self.n, x as u64))
    }
}

/// The relative lift of a variant over the control and its always-valid interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiftCs {
    pub lift: f64,
    pub cs_low: f64,
    pub cs_high: f64,
}

/// A `conversion` guardrail's lift and interval: exactly `lift`, `lift_cs_low` and
/// `lift_cs_high` of §3e (`amba_results_daily`) on these counts — the §3b lift
/// `(p_t − p_c)/p_c` and [`stats::lift_confidence_sequence`] with N = n_t + n_c on its
/// delta-method variance. `None` when n_t < 2, n_c < 2, p_c = 0 or the variance is 0.
pub fn conversion_lift_cs(control: Arm, treatment: Arm, alpha: f64) -> Option<LiftCs> {
    let effect = stats::effect(control, treatment, alpha)?;
    let var = stats::lift_variance_of(control, treatment)?;
    let total_n = (control.exposed + treatment.exposed) as f64;
    let (cs_low, cs_high) = stats::lift_confidence_sequence(total_n, effect.lift, var, alpha)?;
    Some(LiftCs {
        lift: effect.lift,
        cs_low,
        cs_high,
    })
}

/// Relative size of the rounding noise of a centred sum computed from raw sums (the same
/// rule as `amba_metric_results`, crate::metric): ΣY² − (ΣY)²/n below 3nε·ΣY² is noise,
/// not spread (1000 users all with Y = 9.99 give about 3e-9 instead of 0).
fn sample_variance(n: f64, sum: f64, sum_squares: f64) -> f64 {
    let m2 = sum_squares - sum * sum / n;
    if m2 <= 3.0 * n * f64::EPSILON * sum_squares.abs() {
        0.0
    } else {
        m2 / (n - 1.0)
    }
}

/// A `mean` guardrail's lift and interval: gbstats 0.8.0
/// `SequentialTwoSidedTTest(SampleMeanStatistic(n_c, S_c, SS_c), SampleMeanStatistic(n_t,
/// S_t, SS_t), SequentialConfig(alpha, sequential_tuning_parameter=5000,
/// difference_type="relative")).compute_result()`: `lift = (m_t − m_c)/m_c`,
/// `var = v_t/(m_c² n_t) + v_c m_t²/(m_c⁴ n_c)` with v = (SS − S²/n)/(n − 1), and the
/// interval of [`stats::lift_confidence_sequence`] with N = n_t + n_c.
///
/// `None` where gbstats gives up (its default output): n_c < 2 or n_t < 2, m_c = 0, or a
/// variance of 0 in either arm (decided as `amba_metric_results` does: a variance within
/// rounding noise of 0 is 0); also for alpha outside (0, 1) or anything non-finite.
pub fn mean_lift_cs(control: &ArmSums, treatment: &ArmSums, alpha: f64) -> Option<LiftCs> {
    if control.n < 2 || treatment.n < 2 {
        return None;
    }
    let (n_c, n_t) = (control.n as f64, treatment.n as f64);
    let mean_c = finite(control.sum / n_c)?;
    let mean_t = finite(treatment.sum / n_t)?;
    if mean_c == 0.0 {
        return None;
    }
    let v_c = sample_variance(n_c, control.sum, control.sum_squares);
    let v_t = sample_variance(n_t, treatment.sum, treatment.sum_squares);
    if !(v_c > 0.0 && v_t > 0.0 && v_c.is_finite() && v_t.is_finite()) {
        return None;
    }
    let lift = finite((mean_t - mean_c) / mean_c)?;
    let mc2 = mean_c * mean_c;
    let var = v_t / (mc2 * n_t) + v_c * mean_t * mean_t / (mc2 * mc2 * n_c);
    let (cs_low, cs_high) = stats::lift_confidence_sequence(n_c + n_t, lift, var, alpha)?;
    Some(LiftCs {
        lift,
        cs_low,
        cs_high,
    })
}

/// The trip rule of §12: `bad` = decrease and `cs_high < −tolerance`, or `bad` = increase
/// and `cs_low > tolerance`. No interval never trips.
pub fn trips(bad: Bad, tolerance: f64, cs: Option<&LiftCs>) -> bool {
    match (cs, bad) {
        (None, _) => false,
        (Some(cs), Bad::Decrease) => cs.cs_high < -tolerance,
        (Some(cs), Bad::Increase) => cs.cs_low > tolerance,
    }
}

/// One row of `amba_check_guardrails` (apart from the experiment, guardrail index, variant
/// and `paused`). The three numbers are NULL together.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GuardrailRow {
    pub lift: Option<f64>,
    pub cs_low: Option<f64>,
    pub cs_high: Option<f64>,
    pub tripped: bool,
}

impl GuardrailRow {
    fn of(guardrail: &Guardrail, cs: Option<LiftCs>) -> GuardrailRow {
        GuardrailRow {
            lift: cs.map(|c| c.lift),
            cs_low: cs.map(|c| c.cs_low),
            cs_high: cs.map(|c| c.cs_high),
            tripped: trips(guardrail.bad, guardrail.tolerance, cs.as_ref()),
        }
    }
}

/// A guardrail on one non-control variant: the lift and interval of its kind
/// ([`conversion_lift_cs`] on the counts — `sum` the converted users, see
/// [`ArmSums::as_conversion`]; no interval when `sum` is not a whole number in [0, n] — or
/// [`mean_lift_cs`]) at the guardrail's alpha, and whether it trips.
pub fn evaluate(guardrail: &Guardrail, control: &ArmSums, variant: &ArmSums) -> GuardrailRow {
    let cs = match guardrail.kind {
        GuardrailKind::Conversion => match (control.as_conversion(), variant.as_conversion()) {
            (Some(c), Some(t)) => conversion_lift_cs(c, t, guardrail.alpha),
            _ => None,
        },
        GuardrailKind::Mean => mean_lift_cs(control, variant, guardrail.alpha),
    };
    GuardrailRow::of(guardrail, cs)
}

// ---------------------------------------------------------------------------------------
// Validation

/// A short, printable rendering of user input for error messages.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{:?}", format!("{cut}…"))
    } else {
        format!("{cut:?}")
    }
}

/// `event` / `value_property`: 1 to 128 characters without control characters.
fn text_field(at: &str, value: &Value) -> Result<String, CoreError> {
    let s = value
        .as_str()
        .ok_or_else(|| CoreError::invalid(format!("{at} must be a string")))?;
    let len = s.chars().count();
    if len == 0 {
        return Err(CoreError::invalid(format!("{at} must not be empty")));
    }
    if len > GUARDRAIL_TEXT_MAX {
        return Err(CoreError::invalid(format!(
            "{at} {} is {len} characters long; at most {GUARDRAIL_TEXT_MAX} are allowed",
            shown(s)
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(CoreError::invalid(format!(
            "{at} {} contains a control character",
            shown(s)
        )));
    }
    Ok(s.to_string())
}

fn number_field(at: &str, value: &Value) -> Result<f64, CoreError> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| CoreError::invalid(format!("{at} is not a finite number"))),
        _ => Err(CoreError::invalid(format!(
            "{at} must be a JSON number, not a string, boolean, null, array or object"
        ))),
    }
}

fn choice<T: Copy>(at: &str, value: Option<&Value>, options: &[(&str, T)]) -> Result<T, CoreError> {
    let names: Vec<&str> = options.iter().map(|o| o.0).collect();
    let expected = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" or ");
    match value {
        None => Err(CoreError::invalid(format!(
            "{at} is missing; it must be {expected}"
        ))),
        Some(Value::String(s)) => options
            .iter()
            .find(|o| o.0 == s)
            .map(|o| o.1)
            .ok_or_else(|| {
                CoreError::invalid(format!("{at} is {}; it must be {expected}", shown(s)))
            }),
        Some(_) => Err(CoreError::invalid(format!(
            "{at} must be the string {expected}"
        ))),
    }
}

fn guardrail(i: usize, item: &Value) -> Result<Guardrail, CoreError> {
    let obj: &Map<String, Value> = item.as_object().ok_or_else(|| {
        CoreError::invalid(format!(
            "guardrails[{i}] must be an object such as {{\"event\": \"error\", \"kind\": \"conversion\", \"bad\": \"increase\"}}"
        ))
    })?;
    if let Some(extra) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(CoreError::invalid(format!(
            "guardrails[{i}] has an unknown field {}; allowed: event, value_property, kind, bad, tolerance, alpha",
            shown(extra)
        )));
    }
    let event = match obj.get("event") {
        Some(v) => text_field(&format!("guardrails[{i}].event"), v)?,
        None => {
            return Err(CoreError::invalid(format!(
                "guardrails[{i}] has no \"event\""
            )))
        }
    };
    let value_property = match obj.get("value_property") {
        None | Some(Value::Null) => None,
        Some(v) => Some(text_field(&format!("guardrails[{i}].value_property"), v)?),
    };
    let kind = choice(
        &format!("guardrails[{i}].kind"),
        obj.get("kind"),
        &[
            ("conversion", GuardrailKind::Conversion),
            ("mean", GuardrailKind::Mean),
        ],
    )?;
    let bad = choice(
        &format!("guardrails[{i}].bad"),
        obj.get("bad"),
        &[("decrease", Bad::Decrease), ("increase", Bad::Increase)],
    )?;
    let tolerance = match obj.get("tolerance") {
        None => DEFAULT_TOLERANCE,
        Some(v) => {
            let at = format!("guardrails[{i}].tolerance");
            let t = number_field(&at, v)?;
            if t < 0.0 {
                return Err(CoreError::invalid(format!(
                    "{at} is {t}; it must be >= 0 (a relative lift: 0.02 tolerates a 2% harm)"
                )));
            }
            t + 0.0 // -0 is 0
        }
    };
    let alpha = match obj.get("alpha") {
        None => DEFAULT_ALPHA,
        Some(v) => {
            let at = format!("guardrails[{i}].alpha");
            let a = number_field(&at, v)?;
            if !(a > 0.0 && a < 1.0) {
                return Err(CoreError::invalid(format!(
                    "{at} is {a}; it must be strictly between 0 and 1"
                )));
            }
            a
        }
    };
    Ok(Guardrail {
        event,
        value_property,
        kind,
        bad,
        tolerance,
        alpha,
    })
}

/// Checks an experiment's `guardrails` (§12): a JSON array of at most 10 objects
/// `{"event", "value_property"?, "kind", "bad", "tolerance"?, "alpha"?}`; `event` and a
/// non-null `value_property` 1–128 characters without control characters
/// (`value_property` missing or null: count the events; a `conversion` guardrail ignores
/// it), `kind` "conversion" | "mean", `bad` "decrease" | "increase", `tolerance` a finite
/// number >= 0 (default 0), `alpha` a number in (0, 1) (default 0.05); no other field.
/// `[]` is no guardrails; SQL NULL (no guardrails) is the caller's to handle, JSON `null`
/// is refused. Errors are `INVALID_ARGUMENT` and name the element and field.
pub fn guardrails(value: &Value) -> Result<Vec<Guardrail>, CoreError> {
    let items = value.as_array().ok_or_else(|| {
        CoreError::invalid(
            r#"guardrails must be a JSON array such as [{"event": "purchase", "kind": "conversion", "bad": "decrease"}]"#,
        )
    })?;
    if items.len() > GUARDRAILS_MAX {
        return Err(CoreError::invalid(format!(
            "an experiment has at most {GUARDRAILS_MAX} guardrails, got {}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| guardrail(i, item))
        .collect()
}

/// [`guardrails`] on JSON text.
pub fn guardrails_json(text: &str) -> Result<Vec<Guardrail>, CoreError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() && e.to_string().contains("number out of range") {
            CoreError::invalid("a guardrail number is not finite as double precision")
        } else {
            CoreError::invalid(format!("guardrails is not valid JSON ({e})"))
        }
    })?;
    guardrails(&value)
}

/// The guardrails as a JSON array with every field written out (defaults filled in,
/// `value_property` null when absent), in the order of [`guardrails`]' input.
pub fn guardrails_to_json(guardrails: &[Guardrail]) -> Value {
    Value::Array(
        guardrails
            .iter()
            .map(|g| {
                serde_json::json!({
                    "event": g.event,
                    "value_property": g.value_property,
                    "kind": g.kind.as_str(),
                    "bad": g.bad.as_str(),
                    "tolerance": g.tolerance,
                    "alpha": g.alpha,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn err(r: Result<Vec<Guardrail>, CoreError>) -> String {
        let e = r.expect_err("expected an error");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        e.to_string()
    }

    fn g(kind: GuardrailKind, bad: Bad, tolerance: f64) -> Guardrail {
        Guardrail {
            event: "e".into(),
            value_property: None,
            kind,
            bad,
            tolerance,
            alpha: 0.05,
        }
    }

    #[test]
    fn good_guardrails_and_defaults() {
        let v = guardrails_json(
            r#"[{"event":"purchase","kind":"conversion","bad":"decrease"},
                {"event":"checkout ✓","value_property":"amount","kind":"mean","bad":"decrease",
                 "tolerance":0.02,"alpha":0.01},
                {"event":"error","value_property":null,"kind":"mean","bad":"increase","tolerance":-0}]"#,
        )
        .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0],
            Guardrail {
                event: "purchase".into(),
                value_property: None,
                kind: GuardrailKind::Conversion,
                bad: Bad::Decrease,
                tolerance: 0.0,
                alpha: 0.05
            }
        );
        assert_eq!(v[1].value_property.as_deref(), Some("amount"));
        assert_eq!((v[1].tolerance, v[1].alpha), (0.02, 0.01));
        assert_eq!((v[2].kind, v[2].bad), (GuardrailKind::Mean, Bad::Increase));
        assert!(v[2].tolerance == 0.0 && v[2].tolerance.is_sign_positive());
        assert_eq!(guardrails_json("[]").unwrap(), vec![]);
        let ten = format!(
            "[{}]",
            vec![r#"{"event":"e","kind":"mean","bad":"increase"}"#; 10].join(",")
        );
        assert_eq!(guardrails_json(&ten).unwrap().len(), 10);
        // Round trip through the normalised form.
        let normal = guardrails_to_json(&v);
        assert_eq!(normal[0]["tolerance"], serde_json::json!(0.0));
        assert_eq!(normal[0]["alpha"], serde_json::json!(0.05));
        assert_eq!(normal[0]["value_property"], Value::Null);
        assert_eq!(guardrails(&normal).unwrap(), v);
        let long = "é".repeat(128);
        let ok = format!(
            r#"[{{"event":"{long}","value_property":"{long}","kind":"mean","bad":"increase"}}]"#
        );
        assert!(guardrails_json(&ok).is_ok());
    }

    #[test]
    fn bad_guardrails_name_the_element_and_field() {
        let ok = r#""event":"e","kind":"mean","bad":"increase""#;
        let cases: Vec<(String, &str)> = vec![
            (r#"{"event":"e"}"#.into(), "must be a JSON array"),
            ("null".into(), "must be a JSON array"),
            ("[1]".into(), "guardrails[0] must be an object"),
            (
                format!(r#"[{{{ok}}}, {{{ok},"x":1}}]"#),
                "guardrails[1] has an unknown field \"x\"",
            ),
            (
                format!(r#"[{{{ok},"Alpha":0.1}}]"#),
                "unknown field \"Alpha\"",
            ),
            (
                r#"[{"kind":"mean","bad":"increase"}]"#.into(),
                "guardrails[0] has no \"event\"",
            ),
            (
                r#"[{"event":null,"kind":"mean","bad":"increase"}]"#.into(),
                "guardrails[0].event must be a string",
            ),
            (
                r#"[{"event":3,"kind":"mean","bad":"increase"}]"#.into(),
                "guardrails[0].event must be a string",
            ),
            (
                r#"[{"event":"","kind":"mean","bad":"increase"}]"#.into(),
                "guardrails[0].event must not be empty",
            ),
            (
                r#"[{"event":"a\nb","kind":"mean","bad":"increase"}]"#.into(),
                "guardrails[0].event \"a\\nb\" contains a control character",
            ),
            (
                format!(
                    r#"[{{"event":"{}","kind":"mean","bad":"increase"}}]"#,
                    "e".repeat(129)
                ),
                "guardrails[0].event \"eeee",
            ),
            (
                format!(
                    r#"[{{"event":"{}","kind":"mean","bad":"increase"}}]"#,
                    "e".repeat(129)
                ),
                "129 characters long; at most 128",
            ),
            (
                format!(r#"[{{{ok},"value_property":""}}]"#),
                "guardrails[0].value_property must not be empty",
            ),
            (
                format!(r#"[{{{ok},"value_property":5}}]"#),
                "guardrails[0].value_property must be a string",
            ),
            (
                format!(r#"[{{{ok},"value_property":"a\u0007"}}]"#),
                "value_property \"a\\u{7}\" contains a control",
            ),
            (
                r#"[{"event":"e","bad":"increase"}]"#.into(),
                "guardrails[0].kind is missing; it must be \"conversion\" or \"mean\"",
            ),
            (
                r#"[{"event":"e","kind":"Mean","bad":"increase"}]"#.into(),
                "guardrails[0].kind is \"Mean\"; it must be",
            ),
            (
                r#"[{"event":"e","kind":["mean"],"bad":"increase"}]"#.into(),
                "guardrails[0].kind must be the string",
            ),
            (
                r#"[{"event":"e","kind":"mean"}]"#.into(),
                "guardrails[0].bad is missing; it must be \"decrease\" or \"increase\"",
            ),
            (
                r#"[{"event":"e","kind":"mean","bad":"up"}]"#.into(),
                "guardrails[0].bad is \"up\"",
            ),
            (
                format!(r#"[{{{ok},"tolerance":-0.01}}]"#),
                "guardrails[0].tolerance is -0.01; it must be >= 0",
            ),
            (
                format!(r#"[{{{ok},"tolerance":"0.1"}}]"#),
                "guardrails[0].tolerance must be a JSON number",
            ),
            (
                format!(r#"[{{{ok},"tolerance":null}}]"#),
                "guardrails[0].tolerance must be a JSON number",
            ),
            (
                format!(r#"[{{{ok},"tolerance":1e999}}]"#),
                "not finite as double precision",
            ),
            (
                format!(r#"[{{{ok},"alpha":0}}]"#),
                "guardrails[0].alpha is 0; it must be strictly between 0 and 1",
            ),
            (
                format!(r#"[{{{ok},"alpha":1}}]"#),
                "guardrails[0].alpha is 1; it must be strictly",
            ),
            (
                format!(r#"[{{{ok},"alpha":-0.5}}]"#),
                "guardrails[0].alpha is -0.5",
            ),
            (
                format!(r#"[{{{ok},"alpha":true}}]"#),
                "guardrails[0].alpha must be a JSON number",
            ),
            (
                format!(r#"[{{{ok},"alpha":null}}]"#),
                "guardrails[0].alpha must be a JSON number",
            ),
            (
                format!("[{}]", vec![format!("{{{ok}}}"); 11].join(",")),
                "at most 10 guardrails, got 11",
            ),
            ("[".into(), "not valid JSON"),
        ];
        for (input, needle) in cases {
            let message = err(guardrails_json(&input));
            assert!(message.starts_with("INVALID_ARGUMENT: "), "{message}");
            assert!(
                message.contains(needle),
                "{input}: {message} (wanted {needle:?})"
            );
        }
        // The first bad element is the one named.
        let message = err(guardrails_json(&format!(
            r#"[{{{ok}}}, {{{ok}}}, {{{ok},"alpha":2}}, {{"event":""}}]"#
        )));
        assert!(message.contains("guardrails[2].alpha is 2"), "{message}");
    }

    #[test]
    fn trip_rule() {
        let cs = |lo: f64, hi: f64| LiftCs {
            lift: (lo + hi) / 2.0,
            cs_low: lo,
            cs_high: hi,
        };
        // decrease: trips when the whole interval is below -tolerance
        assert!(trips(Bad::Decrease, 0.0, Some(&cs(-0.2, -0.01))));
        assert!(!trips(Bad::Decrease, 0.0, Some(&cs(-0.2, 0.0))));
        assert!(!trips(Bad::Decrease, 0.02, Some(&cs(-0.2, -0.02))));
        assert!(trips(Bad::Decrease, 0.02, Some(&cs(-0.2, -0.0201))));
        assert!(!trips(Bad::Decrease, 0.0, Some(&cs(0.1, 0.2))));
        // increase: trips when the whole interval is above tolerance
        assert!(trips(Bad::Increase, 0.0, Some(&cs(0.001, 0.2))));
        assert!(!trips(Bad::Increase, 0.0, Some(&cs(0.0, 0.2))));
        assert!(!trips(Bad::Increase, 0.05, Some(&cs(0.05, 0.2))));
        assert!(trips(Bad::Increase, 0.05, Some(&cs(0.0501, 0.2))));
        assert!(!trips(Bad::Increase, 0.0, Some(&cs(-0.3, -0.1))));
        // no interval, no trip
        assert!(!trips(Bad::Decrease, 0.0, None));
        assert!(!trips(Bad::Increase, 0.0, None));
    }

    #[test]
    fn evaluate_conversion_is_the_daily_interval() {
        let (c, t) = (Arm::new(20_000, 2_000), Arm::new(20_000, 1_700));
        let row = evaluate(
            &g(GuardrailKind::Conversion, Bad::Decrease, 0.0),
            &ArmSums::conversion(c.exposed, c.converted),
            &ArmSums::conversion(t.exposed, t.converted),
        );
        let e = stats::effect(c, t, 0.05).unwrap();
        let var = stats::lift_variance_of(c, t).unwrap();
        let (lo, hi) = stats::lift_confidence_sequence(40_000.0, e.lift, var, 0.05).unwrap();
        assert_eq!(row.lift, Some(e.lift));
        assert_eq!((row.cs_low, row.cs_high), (Some(lo), Some(hi)));
        assert!((e.lift + 0.15).abs() < 1e-12);
        assert!(hi < 0.0 && row.tripped);
        // increase on the same data does not trip; a 20% tolerance does not either
        assert!(
            !evaluate(
                &g(GuardrailKind::Conversion, Bad::Increase, 0.0),
                &ArmSums::conversion(20_000, 2_000),
                &ArmSums::conversion(20_000, 1_700)
            )
            .tripped
        );
        assert!(
            !evaluate(
                &g(GuardrailKind::Conversion, Bad::Decrease, 0.2),
                &ArmSums::conversion(20_000, 2_000),
                &ArmSums::conversion(20_000, 1_700)
            )
            .tripped
        );
    }

    #[test]
    fn null_cases() {
        let conv = g(GuardrailKind::Conversion, Bad::Decrease, 0.0);
        let none = GuardrailRow::default();
        for (c, t) in [
            ((1, 1), (10, 1)),
            ((10, 1), (1, 1)),
            ((10, 0), (10, 1)),   // p_c = 0
            ((10, 10), (10, 10)), // variance 0
            ((0, 0), (0, 0)),
        ] {
            let row = evaluate(
                &conv,
                &ArmSums::conversion(c.0, c.1),
                &ArmSums::conversion(t.0, t.1),
            );
            assert_eq!(row, none, "{c:?} {t:?}");
        }
        // not a count of converted users
        let frac = ArmSums {
            n: 10,
            sum: 2.5,
            sum_squares: 2.5,
        };
        assert_eq!(evaluate(&conv, &frac, &ArmSums::conversion(10, 3)), none);
        let over = ArmSums {
            n: 10,
            sum: 11.0,
            sum_squares: 11.0,
        };
        assert_eq!(evaluate(&conv, &over, &ArmSums::conversion(10, 3)), none);

        let mean = g(GuardrailKind::Mean, Bad::Decrease, 0.0);
        let v = |values: &[f64]| ArmSums::from_values(values.iter().copied());
        let some = v(&[1.0, 2.0, 4.0]);
        assert!(evaluate(&mean, &some, &v(&[2.0, 3.0])).lift.is_some());
        for (c, t) in [
            (v(&[5.0]), some), // n_c < 2
            (some, v(&[5.0])), // n_t < 2
            (v(&[]), some),
            (v(&[-1.0, 1.0, 0.0]), some),        // control mean 0
            (v(&[0.0, 0.0]), some),              // control mean 0, variance 0
            (v(&[3.0, 3.0, 3.0]), some),         // control variance 0
            (some, v(&[3.0, 3.0])),              // treatment variance 0 (gbstats gives up)
            (v(&[9.99; 1000]), v(&[9.99; 700])), // rounding noise is not variance
            (some, v(&[0.0; 5])),                // treatment collapsed to 0: variance 0
        ] {
            assert_eq!(evaluate(&mean, &c, &t), none, "{c:?} {t:?}");
        }
        assert_eq!(mean_lift_cs(&some, &some, 0.0), None);
        assert_eq!(mean_lift_cs(&some, &some, 1.0), None);
        assert_eq!(mean_lift_cs(&some, &some, f64::NAN), None);
        let inf = ArmSums {
            n: 3,
            sum: f64::INFINITY,
            sum_squares: f64::INFINITY,
        };
        assert_eq!(mean_lift_cs(&inf, &some, 0.05), None);
        assert_eq!(mean_lift_cs(&some, &inf, 0.05), None);
    }

    #[test]
    fn mean_interval_by_hand() {
        // control 1, 2, 3, 6: mean 3, v = 14/3; treatment 2, 4, 6: mean 4, v = 4.
        let c = ArmSums::from_values([1.0, 2.0, 3.0, 6.0]);
        let t = ArmSums::from_values([2.0, 4.0, 6.0]);
        let cs = mean_lift_cs(&c, &t, 0.05).unwrap();
        assert!((cs.lift - 1.0 / 3.0).abs() < 1e-15);
        let var = 4.0 / (9.0 * 3.0) + (14.0 / 3.0) * 16.0 / (81.0 * 4.0);
        let (lo, hi) = stats::lift_confidence_sequence(7.0, 1.0 / 3.0, var, 0.05).unwrap();
        assert!((cs.cs_low - lo).abs() < 1e-12 && (cs.cs_high - hi).abs() < 1e-12);
        // symmetric about the lift, wider at smaller alpha
        assert!(((cs.cs_high - cs.lift) - (cs.lift - cs.cs_low)).abs() < 1e-9);
        let wide = mean_lift_cs(&c, &t, 0.01).unwrap();
        assert!(wide.cs_low < cs.cs_low && wide.cs_high > cs.cs_high);
        // negative control mean: gbstats answers (divides by it)
        let neg = mean_lift_cs(&ArmSums::from_values([-1.0, -2.0, -4.0]), &t, 0.05).unwrap();
        assert!(neg.lift < -2.0);
    }
}
