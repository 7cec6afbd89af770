//! Results over time (SPEC §3e): each day's rows of `amba_results_daily` equal what
//! `amba_results` returns on the data as it stood at the end of that day — checked by
//! rolling the data back to each day's end inside a transaction and asking amba_results.
//! Their intervals at another alpha are checked against the contract formulas computed here.

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

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz).
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..1000 {
        let m = m as f64;
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + numerator / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-16 {
            break;
        }
    }
    front * f
}

/// Student's t quantile T⁻¹(p; ν) for p > 1/2: bisection on the distribution function
/// 1 − I_{ν/(ν+t²)}(ν/2, 1/2)/2 (within 1e-12 for the ν of a few thousand users; for huge
/// ν the log-gamma differences lose digits).
fn t_quantile(p: f64, nu: f64) -> f64 {
    assert!(p > 0.5 && p < 1.0);
    let upper_tail = |t: f64| 0.5 * incomplete_beta(nu / (nu + t * t), nu / 2.0, 0.5);
    let (mut lo, mut hi) = (0.0f64, 1e6f64);
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if upper_tail(mid) > 1.0 - p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

fn close_to(a: Option<f64>, b: f64, tolerance: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= tolerance * b.abs().max(1.0))
}

/// `amba_results_daily(..., alpha)` at alpha = 0.1, against the contract's formulas (SPEC
/// §3b for the interval and the sequential p-value, §3e for the always-valid band)
/// computed here from each day's counts, with a t quantile of this file's own (checked
/// against scipy's values below) — not against the function at another alpha, nor against
/// amba_results. Planted bug this catches: the daily rows ignoring their alpha (e.g.
/// `analyze(&arms, 0.05)` instead of `analyze(&arms, alpha)` in src/results/daily.rs):
/// lift_ci_* and sequential_p_value would be those of alpha = 0.05; a band ignoring it
/// would fail lift_cs_*.
#[test]
fn daily_intervals_follow_alpha() {
    // The quantile above, against scipy.stats.t.ppf (scipy 1.17.1, as pinned in
    // scripts/fixtures/requirements.txt).
    for (p, nu, want) in [
        (0.95, 10.0, 1.812_461_122_811_675_6),
        (0.975, 10.0, 2.228_138_851_986_274),
        (0.95, 57.3, 1.671_884_277_209_529_3),
        (0.995, 3.5, 5.085_702_223_091_256),
        (0.95, 398.7, 1.648_684_420_587_155_8),
    ] {
        let got = t_quantile(p, nu);
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "t quantile {p} {nu}: {got} vs {want}"
        );
    }

    let mut c = connect();
    let key = unique("daily_alpha");
    let event = unique("daily_alpha_buy");
    c.execute(
        "SELECT amba_create_experiment($1, '[{\"key\":\"c\",\"weight\":1},{\"key\":\"t\",\"weight\":1}]')",
        &[&key],
    )
    .unwrap();
    let id: i64 = c
        .query_one("SELECT id FROM amba.experiments WHERE key = $1", &[&key])
        .unwrap()
        .get(0);
    // Five days; each day 40 new exposed users per variant, of whom 8 + d (control) and
    // 10 + 2d (treatment) convert.
    c.batch_execute("BEGIN").unwrap();
    c.execute(
        "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
         SELECT $1, $2 || v || '-' || d || '-' || i, v, 1,
                '2026-11-01 00:00+00'::timestamptz + d * interval '1 day' + i * interval '10 minutes'
           FROM unnest(ARRAY['c', 't']) v, generate_series(0, 4) d, generate_series(1, 40) i",
        &[&id, &format!("{key}-")],
    )
    .unwrap();
    c.execute(
        "INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
         SELECT experiment_id, user_id, assigned_at + interval '1 minute' FROM amba.assignments WHERE experiment_id = $1",
        &[&id],
    )
    .unwrap();
    c.execute(
        "INSERT INTO amba.events (user_id, event, occurred_at)
         SELECT $1 || v || '-' || d || '-' || i, $2,
                '2026-11-01 00:00+00'::timestamptz + d * interval '1 day' + i * interval '10 minutes' + interval '2 minutes'
           FROM unnest(ARRAY['c', 't']) v, generate_series(0, 4) d, generate_series(1, 40) i
          WHERE i <= CASE v WHEN 'c' THEN 8 + d ELSE 10 + 2 * d END",
        &[&format!("{key}-"), &event],
    )
    .unwrap();
    c.batch_execute("COMMIT").unwrap();

    let alpha = 0.1f64;
    let rows = c
        .query(
            "SELECT day::text, variant, exposed_count, converted_count, lift, lift_ci_low, lift_ci_high,
                    p_value, sequential_p_value, lift_cs_low, lift_cs_high
               FROM amba_results_daily($1, $2, $3)",
            &[&key, &event, &alpha],
        )
        .unwrap();
    let at_default = c
        .query(
            "SELECT day::text, variant, exposed_count, converted_count, lift, lift_ci_low, lift_ci_high,
                    p_value, sequential_p_value, lift_cs_low, lift_cs_high
               FROM amba_results_daily($1, $2)",
            &[&key, &event],
        )
        .unwrap();
    assert_eq!(rows.len(), 10, "five days, two variants");
    let mut failures = Vec::new();
    for (day, pair) in rows.chunks(2).enumerate() {
        let (control, treated) = (&pair[0], &pair[1]);
        assert_eq!(
            (control.get::<_, String>(1), treated.get::<_, String>(1)),
            ("c".to_string(), "t".to_string())
        );
        let d = day as f64;
        let (n_c, x_c) = (
            control.get::<_, i64>(2) as f64,
            control.get::<_, i64>(3) as f64,
        );
        let (n_t, x_t) = (
            treated.get::<_, i64>(2) as f64,
            treated.get::<_, i64>(3) as f64,
        );
        // The data as inserted, cumulated to the end of the day.
        assert_eq!((n_c, n_t), (40.0 * (d + 1.0), 40.0 * (d + 1.0)));
        assert_eq!(x_c, (0..=day).map(|k| 8.0 + k as f64).sum::<f64>());
        assert_eq!(x_t, (0..=day).map(|k| 10.0 + 2.0 * k as f64).sum::<f64>());
        let (p_c, p_t) = (x_c / n_c, x_t / n_t);
        let (v_c, v_t) = (p_c * (1.0 - p_c), p_t * (1.0 - p_t));
        let lift = (p_t - p_c) / p_c;
        let var = v_t / (p_c * p_c * n_t) + v_c * p_t * p_t / (p_c.powi(4) * n_c);
        let nu = (v_t / n_t + v_c / n_c).powi(2)
            / (v_t * v_t / (n_t * n_t * (n_t - 1.0)) + v_c * v_c / (n_c * n_c * (n_c - 1.0)));
        let q = t_quantile(1.0 - alpha / 2.0, nu);
        let n = n_t + n_c;
        let rho2 = (-2.0 * alpha.ln() + (1.0 - 2.0 * alpha.ln()).ln()) / 5000.0;
        let s = n * lift * lift / var;
        let seq_p = (0.5 * (n * rho2 + 1.0).ln() - rho2 * s / (2.0 * (n * rho2 + 1.0)))
            .exp()
            .min(1.0);
        let half = (var * n).sqrt()
            * (2.0 * (n * rho2 + 1.0) * ((n * rho2 + 1.0).sqrt() / alpha).ln() / (n * n * rho2))
                .sqrt();
        for (col, name, want, tolerance) in [
            (4, "lift", lift, 1e-12),
            (5, "lift_ci_low", lift - q * var.sqrt(), 1e-9),
            (6, "lift_ci_high", lift + q * var.sqrt(), 1e-9),
            (8, "sequential_p_value", seq_p, 1e-9),
            (9, "lift_cs_low", lift - half, 1e-9),
            (10, "lift_cs_high", lift + half, 1e-9),
        ] {
            let got: Option<f64> = treated.get(col);
            if !close_to(got, want, tolerance) {
                failures.push(format!("day {day} {name}: {got:?} vs {want}"));
            }
        }
        // The control row has no effect; the z-test's p-value has no alpha.
        for col in [4, 5, 6, 8, 9, 10] {
            assert_eq!(control.get::<_, Option<f64>>(col), None);
        }
        let other = &at_default[2 * day + 1];
        assert_eq!(
            treated.get::<_, Option<f64>>(7),
            other.get::<_, Option<f64>>(7)
        );
        // At 0.1 each interval lies strictly inside the one at 0.05.
        for (low, high) in [(5, 6), (9, 10)] {
            let (l1, h1): (f64, f64) = (treated.get(low), treated.get(high));
            let (l5, h5): (f64, f64) = (other.get(low), other.get(high));
            assert!(
                l5 < l1 && h1 < h5,
                "day {day}: {l1}..{h1} not inside {l5}..{h5}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A stray `occurred_at` centuries away would make the daily rows (and the report page)
/// millions of days long: refused with INVALID_ARGUMENT naming the dates, with nothing
/// allocated for them; 36,600 days (the limit) are still answered.
#[test]
fn a_span_beyond_a_century_is_invalid_argument() {
    let mut c = connect();
    let key = unique("daily_span");
    let event = unique("daily_span_buy");
    c.execute(
        "SELECT amba_create_experiment($1, '[{\"key\":\"c\",\"weight\":1},{\"key\":\"t\",\"weight\":1}]')",
        &[&key],
    )
    .unwrap();
    c.execute(
        "SELECT amba_assign($1, 'u1'), amba_expose($1, 'u1')",
        &[&key],
    )
    .unwrap();
    let first_day: String = c
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::date::text", &[])
        .unwrap()
        .get(0);
    // The last day the limit allows: 36,600 days, first and last included.
    c.execute(
        "SELECT amba_track('u1', $1, NULL, (($2::text::date + 36599)::timestamp AT TIME ZONE 'UTC') + interval '1 hour')",
        &[&event, &first_day],
    )
    .unwrap();
    let days: i64 = c
        .query_one(
            "SELECT count(DISTINCT day) FROM amba_results_daily($1, $2)",
            &[&key, &event],
        )
        .unwrap()
        .get(0);
    assert_eq!(days, 36_600);
    // Rows are days × variants: 20 variants over 36,600 days would be 732,000 rows, over
    // the 400,000 held at most.
    let wide = unique("daily_wide");
    let twenty: Vec<String> = (0..20)
        .map(|i| format!("{{\"key\":\"v{i}\",\"weight\":1}}"))
        .collect();
    c.execute(
        "SELECT amba_create_experiment($1, $2::text::jsonb)",
        &[&wide, &format!("[{}]", twenty.join(","))],
    )
    .unwrap();
    c.execute(
        "SELECT amba_assign($1, 'u1'), amba_expose($1, 'u1')",
        &[&wide],
    )
    .unwrap();
    let e = c
        .query_one(
            "SELECT count(*) FROM amba_results_daily($1, $2)",
            &[&wide, &event],
        )
        .unwrap_err();
    let message = amba_integration_tests::db_message(&e);
    assert!(
        message.starts_with("INVALID_ARGUMENT:") && message.contains("rows"),
        "{message}"
    );
    // One day more, then year 294000.
    for at in [
        "($2::text::date + 36600)::timestamp AT TIME ZONE 'UTC'",
        "'294000-01-01 00:00+00'::timestamptz",
    ] {
        c.execute(
            &format!(
                "SELECT amba_track('u1', $1, NULL, {at} + interval '1 hour' * length($2::text))"
            ),
            &[&event, &first_day],
        )
        .unwrap();
        for sql in [
            "SELECT count(*) FROM amba_results_daily($1, $2)",
            "SELECT length(amba_report($1, $2))::bigint",
        ] {
            let e = c.query_one(sql, &[&key, &event]).unwrap_err();
            let message = amba_integration_tests::db_message(&e);
            assert_eq!(
                amba_integration_tests::sqlstate(&e),
                "22023",
                "{sql}: {message}"
            );
            assert!(
                message.starts_with("INVALID_ARGUMENT:") && message.contains(&first_day),
                "{sql}: {message}"
            );
        }
    }
}
