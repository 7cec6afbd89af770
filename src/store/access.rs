//! Privileges and row-level security, as the statement the direct path stands in for would
//! check them. The direct path is taken only for a caller who holds the privilege and for
//! whom row-level security adds nothing (see `row_security_lets_through`); otherwise the
//! SQL path runs the statement, which applies the policies or raises the error.
//! Verdicts are cached per (table, user, commands) and cleared by the relcache and
//! role-membership invalidations (`invalidation.rs`), so a policy or grant committed by
//! another session applies to the next call.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// Whether the current user holds `mode` (ACL_SELECT, ACL_INSERT...) on the table.
pub fn may(relid: pg_sys::Oid, mode: u32) -> bool {
    unsafe {
        pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), mode as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// The commands a direct path stands in for, as `pg_policy.polcmd` names them.
#[derive(Clone, Copy, PartialEq)]
pub enum Command {
    Select = b'r' as isize,
    Insert = b'a' as isize,
}

/// Whether row-level security lets the caller do each of `commands` on any row of `rel`:
/// it does not apply to them (owner, superuser, BYPASSRLS, or not enabled), or the
/// policies that apply are all the constant `true` and one of them is permissive (amba's
/// `USING (true)` / `WITH CHECK (true)` policies for its own roles). The planner would
/// then add nothing to the statement. `rel` is open with the statement's lock, so the
/// policies in its relcache entry are the committed ones.
pub unsafe fn row_security_lets_through(rel: pg_sys::Relation, commands: &[Command]) -> bool {
    unsafe {
        let relid = (*rel).rd_id;
        if pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
            != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            return true;
        }
        // With row_security = off, a statement that policies would filter is an error,
        // which SPI raises.
        if !pg_sys::row_security {
            return false;
        }
        let user = pg_sys::GetUserId();
        let mask = commands.iter().fold(0u8, |m, &c| m | c.bit());
        let known = VERDICTS.with(|v| {
            v.borrow()
                .iter()
                .find(|e| e.0 == relid && e.1 == user && e.2 == mask)
                .map(|e| e.3)
        });
        if let Some(passes) = known {
            return passes;
        }
        // Looking up role memberships may process invalidations: a verdict computed across
        // one is not kept.
        let generation = VERDICT_GENERATION.with(Cell::get);
        let passes = policies_let_through(rel, commands);
        if VERDICT_GENERATION.with(Cell::get) == generation {
            VERDICTS.with(|v| v.borrow_mut().push((relid, user, mask, passes)));
        }
        passes
    }
}

thread_local! {
    /// Verdicts of `policies_let_through`: (table, user, commands, verdict). A verdict
    /// depends on the table's policies (its relcache entry) and on the user's role
    /// memberships; a change to either clears it.
    static VERDICTS: std::cell::RefCell<Vec<(pg_sys::Oid, pg_sys::Oid, u8, bool)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static VERDICT_GENERATION: Cell<u64> = const { Cell::new(0) };
}

impl Command {
    fn bit(self) -> u8 {
        match self {
            Command::Select => 1,
            Command::Insert => 2,
        }
    }
}

/// Forgets the verdicts about `relid` (None or InvalidOid: all). Must not error or
/// allocate (called from invalidation callbacks).
pub fn forget_verdicts(relid: Option<pg_sys::Oid>) {
    VERDICT_GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    VERDICTS.with(|v| {
        if let Ok(mut v) = v.try_borrow_mut() {
            match relid {
                Some(relid) if relid != pg_sys::InvalidOid => v.retain(|e| e.0 != relid),
                _ => v.clear(),
            }
        }
    });
}

unsafe fn policies_let_through(rel: pg_sys::Relation, commands: &[Command]) -> bool {
    unsafe {
        let desc = (*rel).rd_rsdesc;
        if desc.is_null() {
            return false; // enabled without policies: no row at all
        }
        let user = pg_sys::GetUserId();
        let list = (*desc).policies;
        let policies: Vec<*const pg_sys::RowSecurityPolicy> = if list.is_null() {
            Vec::new()
        } else {
            (0..(*list).length as usize)
                .map(|i| (*(*list).elements.add(i)).ptr_value as *const pg_sys::RowSecurityPolicy)
                .collect()
        };
        commands.iter().all(|&command| {
            let mut permissive = false;
            for &ptr in &policies {
                let policy = &*ptr;
                let cmd = policy.polcmd as u8;
                if cmd != b'*' && cmd != command as u8 {
                    continue;
                }
                if !applies_to(policy.roles, user) {
                    continue;
                }
                // An INSERT checks WITH CHECK; a policy FOR ALL without one checks USING.
                let expression = match command {
                    Command::Select => policy.qual,
                    Command::Insert if policy.with_check_qual.is_null() && cmd == b'*' => {
                        policy.qual
                    }
                    Command::Insert => policy.with_check_qual,
                };
                if !is_constant_true(expression) {
                    return false;
                }
                permissive |= policy.permissive;
            }
            permissive
        })
    }
}

/// Whether a policy for `roles` applies to `user` (PUBLIC, or a role whose privileges the
/// user has: PostgreSQL's own rule, `check_role_for_policy`).
unsafe fn applies_to(roles: *mut pg_sys::ArrayType, user: pg_sys::Oid) -> bool {
    unsafe {
        let Some(roles) = std::ptr::NonNull::new(roles) else {
            return false;
        };
        let mut array = pgrx::array::RawArray::from_ptr(roles);
        array
            .data::<pg_sys::Oid>()
            .as_ref()
            .iter()
            .any(|&role| role == pg_sys::InvalidOid || pg_sys::has_privs_of_role(user, role))
    }
}

unsafe fn is_constant_true(expression: *mut pg_sys::Expr) -> bool {
    unsafe {
        if expression.is_null() || (*expression).type_ != pg_sys::NodeTag::T_Const {
            return false;
        }
        let constant = &*(expression as *const pg_sys::Const);
        constant.consttype == pg_sys::BOOLOID
            && !constant.constisnull
            && bool::from_datum(constant.constvalue, false) == Some(true)
    }
}

/// Whether a SELECT on each of `tables` would read every row for the caller: they hold
/// SELECT, and row-level security adds nothing. Opens each table with the statement's
/// lock, so the policies read are the committed ones.
pub fn readable(tables: &[pg_sys::Oid]) -> bool {
    tables.iter().all(|&relid| unsafe {
        if !may(relid, pg_sys::ACL_SELECT) {
            return false;
        }
        if pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
            != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            return true;
        }
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let allowed = row_security_lets_through(rel, &[Command::Select]);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        allowed
    })
}
