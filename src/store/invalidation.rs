//! amba's invalidation callbacks, registered once per backend from `_PG_init`. Each calls
//! the reset of every cache that depends on what changed. PostgreSQL calls them while it
//! processes invalidation messages: they must not error or allocate.

use super::{access, catalog, heap_insert};
use pgrx::pg_sys;

/// A relation changed (ALTER, DROP, VACUUM FULL, CLUSTER, a policy, a grant, a child
/// table...), or every relation (InvalidOid).
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    catalog::forget(relid);
    heap_insert::forget(relid);
    access::forget_verdicts(Some(relid));
}

/// Role memberships and role attributes (inheritance) decide which policies apply.
unsafe extern "C-unwind" fn roles_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    access::forget_verdicts(None);
}

/// Called once, from `_PG_init` (PostgreSQL has room for a fixed number of callbacks).
pub fn register() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0));
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
            pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
            pg_sys::SysCacheIdentifier::AUTHOID,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(roles_changed),
                pg_sys::Datum::from(0),
            );
        }
    }
}
