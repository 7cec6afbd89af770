//! Transaction-level advisory locks that order first assignments against the changes that
//! could invalidate them, without touching any row (no tuple lock, no MultiXact, no dirty
//! page): a first assignment holds its experiment's lock shared; an update that removes
//! variants and a delete hold it exclusively. Aliasing (SPEC §3d) holds the user locks
//! of both ids exclusively; assign, expose and track hold the caller's user lock shared.
//! The same keys are taken from SQL with pg_advisory_xact_lock(EXPERIMENT_SPACE, id).

use pgrx::pg_sys;
use pgrx::prelude::*;

/// First key of the two-int4 advisory lock space for experiments ('amba').
pub const EXPERIMENT_SPACE: i32 = 0x616d_6261;
/// First key for user ids ('ambu'); the second is the id's hash modulo USER_LOCK_BUCKETS.
pub const USER_SPACE: i32 = 0x616d_6275;
/// User locks are taken per bucket of ids, so a transaction that assigns or tracks any
/// number of users holds at most this many of them (each lock takes a slot in the shared
/// lock table, sized by max_locks_per_transaction); two ids sharing a bucket only make an
/// alias wait for the other's transaction.
pub const USER_LOCK_BUCKETS: u64 = 256;

fn try_lock_exclusive(space: i32, key: i32) -> bool {
    unsafe {
        pgrx::direct_function_call::<bool>(
            pg_sys::pg_try_advisory_xact_lock_int4,
            &[space.into_datum(), key.into_datum()],
        )
        .unwrap_or(false)
    }
}

/// Runs `f` in a subtransaction and keeps what it did (its locks pass to the transaction)
/// when it returns true; rolls it back (releasing its locks) when it returns false.
fn in_subtransaction(f: impl FnOnce() -> bool) -> bool {
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let keep = f();
        if keep {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        keep
    }
}

fn lock(space: i32, key: i32, exclusive: bool) {
    let f = if exclusive {
        pg_sys::pg_advisory_xact_lock_int4
    } else {
        pg_sys::pg_advisory_xact_lock_shared_int4
    };
    unsafe {
        pgrx::direct_function_call::<()>(f, &[space.into_datum(), key.into_datum()]);
    }
}

/// The experiment's lock, shared: taken by a first assignment.
pub fn experiment_shared(experiment_id: i64) {
    lock(EXPERIMENT_SPACE, experiment_id as i32, false);
}

pub fn user_key(user_id: &str) -> i32 {
    (amba_core::bucket::hash("", user_id) % USER_LOCK_BUCKETS) as i32
}

pub fn user(user_id: &str, exclusive: bool) {
    lock(USER_SPACE, user_key(user_id), exclusive);
}

#[pg_schema]
mod amba {
    use pgrx::prelude::*;

    /// The experiment's lock, exclusive, to the end of the transaction: taken by an update
    /// that removes variants and by delete. It waits for first assignments in flight, and
    /// holds off new ones until this transaction ends.
    #[pg_extern(name = "_lock_experiment", volatile)]
    fn lock_experiment(experiment_id: i64) {
        super::lock(super::EXPERIMENT_SPACE, experiment_id as i32, true);
    }

    /// Both user ids' locks, exclusive: taken by amba_alias. It never waits while holding
    /// one of them (so it can never close a deadlock with transactions that hold shared user
    /// locks and wait for more): it blocks on the first alone, then only tries the second;
    /// when that is taken, it lets go of the first (a subtransaction rolled back), waits
    /// for the second alone, lets go of it, and starts again.
    #[pg_extern(name = "_lock_users", volatile)]
    fn lock_users(a: &str, b: &str) {
        let (ka, kb) = (super::user_key(a), super::user_key(b));
        let (first, second) = (ka.min(kb), ka.max(kb));
        loop {
            let got_both = super::in_subtransaction(|| {
                super::lock(super::USER_SPACE, first, true);
                first == second || super::try_lock_exclusive(super::USER_SPACE, second)
            });
            if got_both {
                return;
            }
            super::in_subtransaction(|| {
                super::lock(super::USER_SPACE, second, true);
                false
            });
        }
    }
}
