//! `#[pg_test]` tests: every SQL function and error, inside a real PostgreSQL.
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn assign_is_sticky() {
        Spi::run("SELECT amba_create_experiment('t1', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')").unwrap();
        let first = Spi::get_one::<String>("SELECT amba_assign('t1', 'u1')").unwrap().unwrap();
        let again = Spi::get_one::<String>("SELECT amba_assign('t1', 'u1')").unwrap().unwrap();
        assert_eq!(first, again);
    }
}
