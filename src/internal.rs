//! Helpers for the hand-written SQL in `sql/`: the contract's validation rules and errors
//! live in Rust once (the core), and the plpgsql functions call them. All in schema
//! `amba`, not executable by PUBLIC (see sql/access.sql).

use pgrx::prelude::*;

/// Created in schema `amba` (the extension's data schema), away from user schemas.
#[pg_schema]
mod amba {
    use crate::errors::{raise, raise_code, OrRaise};
    use crate::spi::run_fresh;
    use amba_core::{validate, CoreError, ErrorCode};
    use pgrx::pg_sys;
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// Raises the contract error `code` with `detail` (used by plpgsql).
    #[pg_extern(name = "_raise", volatile)]
    fn raise_error(code: &str, detail: &str) {
        match ErrorCode::from_name(code) {
            Some(code) => raise(CoreError::new(code, detail)),
            None => panic!("unknown error code {code:?}"),
        }
    }

    /// The HTTP status of the contract error a message starts with (`CODE: ...`); NULL
    /// for any other message (PostgREST maps those SQLSTATEs itself).
    #[pg_extern(name = "_http_status", immutable, parallel_safe)]
    fn http_status(message: Option<&str>) -> Option<i32> {
        ErrorCode::from_message(message?).map(|c| c.http_status() as i32)
    }

    #[pg_extern(name = "_check_experiment_key", immutable, parallel_safe)]
    fn check_experiment_key(experiment_key: Option<&str>) {
        validate::experiment_key(experiment_key).or_raise();
    }

    #[pg_extern(name = "_check_status", immutable, parallel_safe)]
    fn check_status(status: Option<&str>) {
        validate::status(status).or_raise();
    }

    #[pg_extern(name = "_check_track", immutable, parallel_safe)]
    fn check_track(user_id: Option<&str>, event: Option<&str>) {
        validate::user_id(user_id).or_raise();
        validate::event(event).or_raise();
    }

    #[pg_extern(name = "_check_user_id", immutable, parallel_safe)]
    fn check_user_id(user_id: Option<&str>) {
        validate::user_id(user_id).or_raise();
    }

    #[pg_extern(name = "_check_variant_key", immutable, parallel_safe)]
    fn check_variant_key(variant: Option<&str>) {
        validate::variant_key(variant).or_raise();
    }

    /// An experiment's name (at most 256 characters) and description (at most 10,000).
    #[pg_extern(name = "_check_texts", immutable, parallel_safe)]
    fn check_texts(name: Option<&str>, description: Option<&str>) {
        validate::text_length("name", name, validate::NAME_MAX).or_raise();
        validate::text_length("description", description, validate::DESCRIPTION_MAX).or_raise();
    }

    #[pg_extern(name = "_check_api_key", immutable, parallel_safe)]
    fn check_api_key(name: Option<&str>, kind: Option<&str>) {
        validate::api_key_name(name).or_raise();
        validate::api_key_kind(kind).or_raise();
    }

    /// Coverage (SPEC §10): NULL (unchanged / the default 1), or a number from 0 to 1.
    #[pg_extern(name = "_check_coverage", immutable, parallel_safe)]
    fn check_coverage(coverage: Option<f64>) {
        if let Some(c) = coverage {
            if !(c.is_finite() && (0.0..=1.0).contains(&c)) {
                raise_code(
                    ErrorCode::InvalidArgument,
                    format!("coverage must be a number from 0 to 1, not {c}"),
                );
            }
        }
    }

    /// A targeting condition (SPEC §10), checked once, when it is set: a JSON object in
    /// GrowthBook's condition language (unknown operators, bad regular expressions and
    /// oversized conditions are INVALID_ARGUMENT naming the path). Returns what is stored:
    /// NULL for NULL or `{}` (everyone), else the condition as given.
    #[pg_extern(name = "_normalize_targeting", immutable, parallel_safe)]
    fn normalize_targeting(targeting: Option<crate::jsonb::JsonbDatum>) -> Option<JsonB> {
        let value = targeting?.to_value("targeting");
        let condition = amba_core::condition::compile_named(&value, "targeting").or_raise();
        (!condition.is_empty()).then_some(JsonB(value))
    }

    /// Segment dimensions (SPEC §13): at most 5 distinct attribute paths (dotted, as in
    /// conditions), each 1 to 128 characters without control characters. NULL for NULL or
    /// an empty array (none).
    #[pg_extern(name = "_normalize_dimensions", immutable, parallel_safe)]
    fn normalize_dimensions(dimensions: Option<Vec<Option<String>>>) -> Option<Vec<String>> {
        let dimensions = dimensions?;
        if dimensions.len() > 5 {
            raise_code(
                ErrorCode::InvalidArgument,
                format!(
                    "an experiment has at most 5 dimensions, got {}",
                    dimensions.len()
                ),
            );
        }
        let mut seen: Vec<String> = Vec::new();
        for path in dimensions {
            let Some(path) = path else {
                raise_code(ErrorCode::InvalidArgument, "a dimension must not be NULL");
            };
            validate::event(Some(&path))
                .map_err(|e| CoreError::invalid(e.detail.replacen("event", "a dimension", 1)))
                .or_raise();
            if seen.contains(&path) {
                raise_code(
                    ErrorCode::InvalidArgument,
                    format!("dimension {path:?} is listed twice"),
                );
            }
            seen.push(path);
        }
        (!seen.is_empty()).then_some(seen)
    }

    /// Validates a variants array given as JSON text (so numbers beyond double precision,
    /// like 1e999, reach the validator instead of failing in a jsonb conversion) and returns
    /// it in canonical form: `[{"key": ..., "weight": ...}, ...]`.
    #[pg_extern(name = "_normalize_variants", immutable, parallel_safe)]
    fn normalize_variants(variants: Option<&str>) -> JsonB {
        let text = variants
            .unwrap_or_else(|| raise_code(ErrorCode::InvalidArgument, "variants must not be NULL"));
        let parsed = validate::variants_json(text).or_raise();
        JsonB(serde_json::Value::Array(
            parsed
                .into_iter()
                .map(|v| serde_json::json!({ "key": v.key, "weight": v.weight }))
                .collect(),
        ))
    }

    /// The control stays first; `assigned_removed` lists removed variants that have
    /// assignments or overrides (the name is 0.1.0's, kept for upgrades).
    #[pg_extern(name = "_check_variant_update", immutable, parallel_safe)]
    fn check_variant_update(
        old_keys: Vec<String>,
        new_keys: Vec<String>,
        assigned_removed: Vec<String>,
    ) {
        let new: Vec<validate::Variant> = new_keys
            .into_iter()
            .map(|key| validate::Variant { key, weight: 1.0 })
            .collect();
        validate::variant_update(&old_keys, &new, |k| assigned_removed.iter().any(|a| a == k))
            .or_raise();
    }

    /// `n` bytes from PostgreSQL's cryptographically strong random source (for API keys).
    #[pg_extern(name = "_random_bytes", volatile)]
    fn random_bytes(n: i32) -> Vec<u8> {
        if !(1..=1024).contains(&n) {
            raise_code(
                ErrorCode::InvalidArgument,
                format!("cannot draw {n} random bytes"),
            );
        }
        let mut buf = vec![0u8; n as usize];
        let ok = unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr().cast(), buf.len()) };
        if !ok {
            panic!("could not generate random bytes");
        }
        buf
    }

    /// Runs a modifying statement of amba's own SQL in the latest snapshot (cross-checked
    /// in REPEATABLE READ: see spi::run_fresh); returns the rows processed. Invoker's rights;
    /// not executable by PUBLIC.
    #[pg_extern(name = "_exec_fresh", volatile)]
    fn exec_fresh(query: &str, params: Vec<Option<String>>) -> i64 {
        run_fresh(query, &params, false).processed as i64
    }

    /// The first column of a query of amba's own SQL, run in the latest snapshot.
    #[pg_extern(name = "_select_fresh", volatile)]
    fn select_fresh(query: &str, params: Vec<Option<String>>) -> Vec<Option<String>> {
        run_fresh(query, &params, true).first_column
    }

    /// Kept for version 0.1.0's install script, whose cache-invalidation trigger called it;
    /// 0.2.0 checks cached definitions against each statement's snapshot instead.
    #[pg_extern(name = "_invalidate_relcache", volatile, sql = false)]
    fn invalidate_relcache(relid: pg_sys::Oid) {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    }
}
