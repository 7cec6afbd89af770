//! Helpers for the hand-written SQL in `sql/`: the contract's validation rules and
//! errors live in Rust once, and the plpgsql functions call them. All in schema `amba`,
//! not executable by PUBLIC (see sql/http.sql).

use pgrx::prelude::*;

/// Created in schema `amba` (the extension's data schema), away from user schemas.
#[pg_schema]
mod amba {
    use crate::errors::{code_from_name, raise, raise_code, OrRaise};
    use amba_core::{validate, CoreError, ErrorCode};
    use pgrx::pg_sys;
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// Raises the contract error `code` with `detail` (used by plpgsql).
    #[pg_extern(name = "_raise", volatile)]
    fn raise_error(code: &str, detail: &str) {
        match code_from_name(code) {
            Some(code) => raise(CoreError::new(code, detail)),
            None => panic!("unknown error code {code:?}"),
        }
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

    /// Validates a variants array given as JSON text (so numbers beyond double precision,
    /// like 1e999, reach the validator instead of failing in a jsonb conversion) and returns
    /// it in canonical form: `[{"key": ..., "weight": ...}, ...]`.
    #[pg_extern(name = "_normalize_variants", immutable, parallel_safe)]
    fn normalize_variants(variants: Option<&str>) -> JsonB {
        let text = variants.unwrap_or_else(|| {
            raise_code(ErrorCode::InvalidArgument, "variants must not be NULL")
        });
        let parsed = validate::variants_json(text).or_raise();
        JsonB(serde_json::Value::Array(
            parsed
                .into_iter()
                .map(|v| serde_json::json!({ "key": v.key, "weight": v.weight }))
                .collect(),
        ))
    }

    /// The control stays first; `assigned_removed` lists removed variants that have assignments.
    #[pg_extern(name = "_check_variant_update", immutable, parallel_safe)]
    fn check_variant_update(old_keys: Vec<String>, new_keys: Vec<String>, assigned_removed: Vec<String>) {
        let new: Vec<validate::Variant> =
            new_keys.into_iter().map(|key| validate::Variant { key, weight: 1.0 }).collect();
        validate::variant_update(&old_keys, &new, |k| assigned_removed.iter().any(|a| a == k)).or_raise();
    }

    /// `n` bytes from PostgreSQL's cryptographically strong random source (for API keys).
    #[pg_extern(name = "_random_bytes", volatile)]
    fn random_bytes(n: i32) -> Vec<u8> {
        if !(1..=1024).contains(&n) {
            raise_code(ErrorCode::InvalidArgument, format!("cannot draw {n} random bytes"));
        }
        let mut buf = vec![0u8; n as usize];
        let ok = unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr().cast(), buf.len()) };
        if !ok {
            panic!("could not generate random bytes");
        }
        buf
    }

    /// Tells every backend, at commit, that the experiment definitions changed (see cache.rs).
    #[pg_extern(name = "_invalidate_relcache", volatile)]
    fn invalidate_relcache(relid: pg_sys::Oid) {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    }
}
