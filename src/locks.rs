//! Transaction-level advisory locks that order first assignments against the changes that
//! could invalidate them, without touching any row (no tuple lock, no MultiXact, no dirty
//! page): a first assignment holds its experiment's lock shared; an update that removes
//! variants and a delete hold it exclusively. Aliasing (CONTRACT 3d) holds the user locks
//! of both ids exclusively; assign, expose and track hold the caller's user lock shared.
//! The same keys are taken from SQL with pg_advisory_xact_lock(EXPERIMENT_SPACE, id).

use pgrx::pg_sys;
use pgrx::prelude::*;

/// First key of the two-int4 advisory lock space for experiments ('amba').
pub const EXPERIMENT_SPACE: i32 = 0x616d_6261;
/// First key for user ids ('ambu'); the second is a 32-bit hash of the id.
pub const USER_SPACE: i32 = 0x616d_6275;

fn lock(space: i32, key: i32, exclusive: bool) {
    let f = if exclusive { pg_sys::pg_advisory_xact_lock_int4 } else { pg_sys::pg_advisory_xact_lock_shared_int4 };
    unsafe {
        pgrx::direct_function_call::<()>(f, &[space.into_datum(), key.into_datum()]);
    }
}

/// The experiment's lock, shared: taken by a first assignment.
pub fn experiment_shared(experiment_id: i64) {
    lock(EXPERIMENT_SPACE, experiment_id as i32, false);
}

pub fn user_key(user_id: &str) -> i32 {
    amba_core::bucket::hash("", user_id) as u32 as i32
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

    /// Both user ids' locks, exclusive, in a fixed order (so two aliases never deadlock):
    /// taken by amba_alias.
    #[pg_extern(name = "_lock_users", volatile)]
    fn lock_users(a: &str, b: &str) {
        let (ka, kb) = (super::user_key(a), super::user_key(b));
        for key in [ka.min(kb), ka.max(kb)] {
            super::lock(super::USER_SPACE, key, true);
        }
    }
}
