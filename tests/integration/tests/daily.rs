//! Results over time (SPEC §3e): each day's rows of `amba_results_daily` equal what
//! `amba_results` returns on the data as it stood at the end of that day — checked by
//! rolling the data back to each day's end inside a transaction and asking amba_results.

use amba_integration_tests::{connect, unique};

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
        _ => false,
    }
}

/// ρ² of the confidence sequence (SPEC §3b), τ = 5000.
fn rho2(alpha: f64) -> f64 {
    (-2.0 * alpha.ln() + (1.0 - 2.0 * alpha.ln()).ln()) / 5000.0
}

#[test]
fn each_day_equals_amba_results_on_the_data_of_that_day() {
    let mut c = connect();
    let key = unique("daily");
    let event = unique("daily_buy");
    c.execute(
        "SELECT amba_create_experiment($1, '[{\"key\":\"c\",\"weight\":2},{\"key\":\"t\",\"weight\":1},{\"key\":\"u\",\"weight\":1}]')",
        &[&key],
    )
    .unwrap();
    let id: i64 = c
        .query_one("SELECT id FROM amba.experiments WHERE key = $1", &[&key])
        .unwrap()
        .get(0);
    // 600 users over days 0..9 (UTC), exposed 0..2 days after assignment (some never),
    // converting 0..5 days after exposure (some before assignment: never counts); a quiet
    // day 6 with no activity; the last event on day 12.
    c.execute(
        "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
         SELECT $1, $2 || i, (ARRAY['c','c','t','u'])[1 + i % 4], 1,
                '2026-10-01 00:00+00'::timestamptz + ((i * 7) % 9 + CASE WHEN (i * 7) % 9 >= 6 THEN 1 ELSE 0 END) * interval '1 day'
                + (i % 23) * interval '1 hour'
           FROM generate_series(1, 600) i",
        &[&id, &format!("{key}-")],
    )
    .unwrap();
    c.execute(
        "INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
         SELECT experiment_id, user_id, assigned_at + ((hashtext(user_id) & 3) % 3) * interval '1 day' + interval '5 minutes'
           FROM amba.assignments WHERE experiment_id = $1 AND hashtext(user_id) % 5 <> 0",
        &[&id],
    )
    .unwrap();
    c.execute(
        "INSERT INTO amba.events (user_id, event, occurred_at)
         SELECT a.user_id, $2, a.assigned_at + ((hashtext(a.user_id || 'e') & 7) - 1) * interval '16 hours'
           FROM amba.assignments a WHERE a.experiment_id = $1 AND (hashtext(a.user_id || 'c') & 7) < 3 + (a.variant = 't')::int
         UNION ALL
         SELECT a.user_id, $2, '2026-10-13 12:00+00' FROM amba.assignments a
          WHERE a.experiment_id = $1 AND a.user_id = $3",
        &[&id, &event, &format!("{key}-5")],
    )
    .unwrap();
    let daily = c
        .query(
            "SELECT day::text, variant, is_control, exposed_count, converted_count, conversion_rate, lift, lift_ci_low,
                    lift_ci_high, p_value, sequential_p_value, lift_cs_low, lift_cs_high
               FROM amba_results_daily($1, $2)",
            &[&key, &event],
        )
        .unwrap();
    let days: Vec<String> = daily
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(days.first().map(String::as_str), Some("2026-10-01"));
    // Through the latest exposure or event of an assigned user, every calendar day.
    let last: String = c
        .query_one(
            "SELECT (greatest((SELECT max(exposed_at) FROM amba.exposures WHERE experiment_id = $1),
                              (SELECT max(e.occurred_at) FROM amba.events e JOIN amba.assignments a
                                  ON a.user_id = e.user_id AND a.experiment_id = $1 WHERE e.event = $2))
                     AT TIME ZONE 'UTC')::date::text",
            &[&id, &event],
        )
        .unwrap()
        .get(0);
    assert_eq!(days.last(), Some(&last));
    assert_eq!(last, "2026-10-14");
    assert_eq!(days.len(), 14, "every calendar day, quiet ones included");
    assert_eq!(daily.len(), 14 * 3);
    let mut failures = Vec::new();
    let mut checked_cs = 0;
    for (d, day) in days.iter().enumerate() {
        let rows: Vec<_> = daily
            .iter()
            .filter(|r| r.get::<_, String>(0) == *day)
            .collect();
        assert_eq!(
            rows.iter()
                .map(|r| r.get::<_, String>(1))
                .collect::<Vec<_>>(),
            ["c", "t", "u"],
            "{day}: variant order"
        );
        let mut tx = c.transaction().unwrap();
        let end = format!("{day} 00:00+00");
        tx.execute("DELETE FROM amba.exposures WHERE experiment_id = $1 AND exposed_at >= $2::text::timestamptz + interval '1 day'", &[&id, &end]).unwrap();
        tx.execute("DELETE FROM amba.events WHERE event = $1 AND occurred_at >= $2::text::timestamptz + interval '1 day'", &[&event, &end]).unwrap();
        let want = tx
            .query(
                "SELECT variant, exposed_count, converted_count, conversion_rate, lift, lift_ci_low, lift_ci_high,
                        p_value, sequential_p_value FROM amba_results($1, $2)",
                &[&key, &event],
            )
            .unwrap();
        tx.rollback().unwrap();
        for (got, want) in rows.iter().zip(&want) {
            let v: String = got.get(1);
            if (got.get::<_, i64>(3), got.get::<_, i64>(4))
                != (want.get::<_, i64>(1), want.get::<_, i64>(2))
            {
                failures.push(format!(
                    "{day} {v}: counts {:?} vs {:?}",
                    (got.get::<_, i64>(3), got.get::<_, i64>(4)),
                    (want.get::<_, i64>(1), want.get::<_, i64>(2))
                ));
            }
            for (g, w, name) in [
                (5, 3, "rate"),
                (6, 4, "lift"),
                (7, 5, "ci_low"),
                (8, 6, "ci_high"),
                (9, 7, "p"),
                (10, 8, "seq_p"),
            ] {
                let (gv, wv): (Option<f64>, Option<f64>) = (got.get(g), want.get(w));
                if !close(gv, wv) {
                    failures.push(format!("{day} {v}: {name} {gv:?} vs {wv:?}"));
                }
            }
            // The always-valid interval from the contract formula and the day's counts.
            let lift: Option<f64> = got.get(6);
            let (cs_low, cs_high): (Option<f64>, Option<f64>) = (got.get(11), got.get(12));
            match lift {
                None => {
                    if cs_low.is_some() || cs_high.is_some() {
                        failures.push(format!("{day} {v}: cs without a lift"));
                    }
                }
                Some(lift) => {
                    let control = &rows[0];
                    let (n_c, x_c) = (
                        control.get::<_, i64>(3) as f64,
                        control.get::<_, i64>(4) as f64,
                    );
                    let (n_t, x_t) = (got.get::<_, i64>(3) as f64, got.get::<_, i64>(4) as f64);
                    let (p_c, p_t) = (x_c / n_c, x_t / n_t);
                    let var = p_t * (1.0 - p_t) / (p_c * p_c * n_t)
                        + p_c * (1.0 - p_c) * p_t * p_t / (p_c.powi(4) * n_c);
                    let n = n_t + n_c;
                    let r2 = rho2(0.05);
                    let half = (var * n).sqrt()
                        * (2.0 * (n * r2 + 1.0) * ((n * r2 + 1.0).sqrt() / 0.05).ln()
                            / (n * n * r2))
                            .sqrt();
                    if !close(cs_low, Some(lift - half)) || !close(cs_high, Some(lift + half)) {
                        failures.push(format!(
                            "{day} {v}: cs {cs_low:?}..{cs_high:?} vs {}..{}",
                            lift - half,
                            lift + half
                        ));
                    }
                    checked_cs += 1;
                }
            }
        }
        let _ = d;
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked_cs >= 10, "too few days with a lift: {checked_cs}");
    // Nobody exposed: no rows.
    let empty = unique("daily_empty");
    c.execute("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&empty]).unwrap();
    assert_eq!(
        c.query("SELECT * FROM amba_results_daily($1, 'x')", &[&empty])
            .unwrap()
            .len(),
        0
    );
}
