//! Every `evalCondition` case of GrowthBook's SDK test suite (CONTRACT section 10), from
//! `fixtures/growthbook_eval_condition.json` (regenerate with
//! `python3 scripts/fixtures/growthbook_cases.py CASES_JSON COMMIT`; the file records the
//! repository, commit and spec version).
//!
//! - Cases with the saved-group operators `$inGroup` / `$notInGroup` (those that carry saved
//!   groups): the condition must be rejected at compile time as an unknown operator.
//! - Evaluated once (`eval_condition`, what `amba_eval_condition` runs): every other case
//!   gives GrowthBook's answer.
//! - Written as an experiment's targeting (`compile_named`): every other case compiles and
//!   evaluates to the expected boolean, except the cases listed in
//!   [`EXPECTED_DIFFERENCES`], each with its reason: rejected when written. The test fails
//!   if a listed case starts to agree or another case starts to differ: the list is exact.
//!
//! All failures are collected and reported together, each with its case.

use amba_core::condition::{compile, compile_named, eval_condition};
use amba_core::ErrorCode;
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/growthbook_eval_condition.json");

const SAVED_GROUP_OPERATORS: [&str; 2] = ["$inGroup", "$notInGroup"];

/// Cases whose condition amba rejects when written as targeting, by name, with the reason.
/// In each, GrowthBook evaluates a condition it cannot make sense of to false, where the
/// contract has amba reject the condition when it is written (`INVALID_ARGUMENT` at create/update,
/// never at assignment): a condition that can never hold is a mistake to report, not a
/// silent "nobody is targeted".
const EXPECTED_DIFFERENCES: [(&str, &str); 3] = [
    (
        "unknown operator - pass",
        "unknown operator $regx: GrowthBook evaluates to false, amba rejects the condition",
    ),
    (
        "$regex invalid - pass",
        "pattern \"/???***[)\" is not a valid regex (nor a valid JavaScript one): GrowthBook \
         evaluates to false, amba rejects the condition",
    ),
    (
        "$regex invalid - fail",
        "same pattern as \"$regex invalid - pass\", other attributes",
    ),
];

struct Case<'a> {
    index: usize,
    name: &'a str,
    condition: &'a Value,
    attributes: &'a Value,
    expected: bool,
    saved_groups: Option<&'a Value>,
}

fn cases(doc: &Value) -> Vec<Case<'_>> {
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let c = c.as_array().expect("a case is an array");
            assert!(c.len() == 4 || c.len() == 5, "case #{index}: {c:?}");
            Case {
                index,
                name: c[0].as_str().expect("name"),
                condition: &c[1],
                attributes: &c[2],
                expected: c[3].as_bool().expect("expected boolean"),
                saved_groups: c.get(4),
            }
        })
        .collect()
}

/// Whether any object in `v` has one of `keys` as a key.
fn uses_key(v: &Value, keys: &[&str]) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, inner)| keys.contains(&k.as_str()) || uses_key(inner, keys)),
        Value::Array(items) => items.iter().any(|inner| uses_key(inner, keys)),
        _ => false,
    }
}

#[test]
fn fixture_is_growthbook_spec_0_8_0() {
    let doc: Value = serde_json::from_str(FIXTURE).expect("valid JSON");
    assert_eq!(doc["spec_version"], "0.8.0");
    assert_eq!(
        doc["source"],
        "https://github.com/growthbook/growthbook packages/sdk-js/test/cases.json"
    );
    let commit = doc["commit"].as_str().expect("commit");
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "{commit}"
    );
    assert_eq!(doc["cases"].as_array().unwrap().len(), 248);
    assert_eq!(doc["case_count"], 248);
}

#[test]
fn every_growthbook_eval_condition_case() {
    let doc: Value = serde_json::from_str(FIXTURE).expect("valid JSON");
    let cases = cases(&doc);
    let mut failures = Vec::new();
    let mut differing = Vec::new();
    let (mut agreed, mut rejected_groups) = (0usize, 0usize);
    for case in &cases {
        let label = format!(
            "#{} {:?}: condition {}, attributes {}",
            case.index, case.name, case.condition, case.attributes
        );
        let saved_group = case.saved_groups.is_some();
        if saved_group != uses_key(case.condition, &SAVED_GROUP_OPERATORS) {
            failures.push(format!(
                "{label}: saved groups given without $inGroup/$notInGroup or the reverse"
            ));
            continue;
        }
        let compiled = compile_named(case.condition, "targeting");
        if saved_group {
            match compiled {
                Err(e)
                    if e.code == ErrorCode::InvalidArgument
                        && e.detail.contains("unknown operator")
                        && SAVED_GROUP_OPERATORS
                            .iter()
                            .any(|op| e.detail.contains(&format!("targeting.id.{op}"))) =>
                {
                    rejected_groups += 1
                }
                Err(e) => failures.push(format!(
                    "{label}: rejected, but not as an unknown operator at its path: {e}"
                )),
                Ok(_) => failures.push(format!("{label}: accepted; must be rejected")),
            }
            continue;
        }
        match compiled {
            Ok(condition) => {
                let got = condition.eval(case.attributes);
                if got == case.expected {
                    agreed += 1;
                } else {
                    differing.push(case.name);
                    failures.push(format!(
                        "{label}: evaluates to {got}, GrowthBook expects {}",
                        case.expected
                    ));
                }
            }
            Err(e) => {
                differing.push(case.name);
                let listed = EXPECTED_DIFFERENCES.iter().any(|(n, _)| *n == case.name);
                // A listed difference must still be the rejection of a condition
                // GrowthBook evaluates to false, with the path named.
                if !listed
                    || case.expected
                    || e.code != ErrorCode::InvalidArgument
                    || !e.detail.starts_with("targeting.name.$")
                {
                    failures.push(format!(
                        "{label}: rejected ({e}), GrowthBook expects {}",
                        case.expected
                    ));
                }
            }
        }
    }
    let listed: Vec<&str> = EXPECTED_DIFFERENCES.iter().map(|(n, _)| *n).collect();
    for name in &listed {
        if !differing.contains(name) {
            failures.push(format!(
                "{name:?} is listed as an expected difference but now agrees with GrowthBook: \
                 update EXPECTED_DIFFERENCES"
            ));
        }
    }
    for name in &differing {
        if !listed.contains(name) {
            failures.push(format!(
                "{name:?} differs from GrowthBook and is not listed in EXPECTED_DIFFERENCES"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems over {} GrowthBook cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(rejected_groups, 8, "saved-group cases");
    assert_eq!(
        agreed + rejected_groups + EXPECTED_DIFFERENCES.len(),
        cases.len(),
        "every case is accounted for"
    );
}

#[test]
fn expected_differences_are_rejections_naming_the_path() {
    let doc: Value = serde_json::from_str(FIXTURE).expect("valid JSON");
    for case in cases(&doc) {
        if let Some((_, reason)) = EXPECTED_DIFFERENCES.iter().find(|(n, _)| *n == case.name) {
            assert!(!reason.is_empty());
            let e = compile(case.condition).expect_err(case.name);
            let message = e.to_string();
            assert!(
                message.starts_with("INVALID_ARGUMENT: condition.name.$reg"),
                "{message}"
            );
        }
    }
}

/// What `amba_eval_condition` runs: every case but the saved-group ones gives GrowthBook's
/// answer, the three rejected when written included; the saved-group operators are
/// rejected as unknown.
#[test]
fn every_case_evaluated_once_gives_growthbooks_answer() {
    let doc: Value = serde_json::from_str(FIXTURE).expect("valid JSON");
    let mut failures = Vec::new();
    let (mut agreed, mut rejected_groups) = (0usize, 0usize);
    for case in cases(&doc) {
        let label = format!(
            "#{} {:?}: condition {}, attributes {}",
            case.index, case.name, case.condition, case.attributes
        );
        match (
            case.saved_groups.is_some(),
            eval_condition(case.condition, case.attributes),
        ) {
            (true, Err(e)) if e.code == ErrorCode::InvalidArgument => rejected_groups += 1,
            (true, got) => failures.push(format!("{label}: {got:?}; must be rejected")),
            (false, Ok(got)) if got == case.expected => agreed += 1,
            (false, got) => failures.push(format!(
                "{label}: {got:?}, GrowthBook expects {}",
                case.expected
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!((agreed, rejected_groups), (240, 8));
}
