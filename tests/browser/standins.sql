-- Stand-ins for the report page's data sources, for developing and testing
-- sql/report.sql WITHOUT the extension: a plain database (report_dev) gets schemas
-- `amba` and `amba_api` holding fake versions of the internal functions the report reads
--   amba._get_experiment(text), amba._results(text, text, float8),
--   amba._results_daily(text, text, float8), amba._raise(text, text),
--   amba._http_rethrow(text, text)
-- computed from a small table of synthetic daily counts (schema report_standin).
-- The statistics follow SPEC §3b/§3e closely (normal quantile instead of Student's t,
-- an approximate chi-square tail); they only need to look real, the browser test compares
-- the page against whatever these functions return.
--
-- Never load this into a database with the amba extension: it drops schemas amba and
-- amba_api. tests/browser/load_standins.sh refuses to.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
\o /dev/null

DROP SCHEMA IF EXISTS amba_api CASCADE;
DROP SCHEMA IF EXISTS amba CASCADE;
DROP SCHEMA IF EXISTS report_standin CASCADE;
-- sql/report.sql's public amba_report (loaded with @extschema@ = public): its SQL body does
-- not depend on amba._report, so the CASCADE above leaves it behind; drop it so that
-- loading again works.
DROP FUNCTION IF EXISTS public.amba_report(text, text);
CREATE SCHEMA amba;
CREATE SCHEMA amba_api;
CREATE SCHEMA report_standin;

-- The extension's roles (cluster-wide; the extension reuses existing ones).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amba_admin') THEN
        CREATE ROLE amba_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amba_analyst') THEN
        CREATE ROLE amba_analyst NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amba_client') THEN
        CREATE ROLE amba_client NOLOGIN;
    END IF;
END
$roles$;
GRANT USAGE ON SCHEMA amba TO amba_admin, amba_analyst;
GRANT USAGE ON SCHEMA amba_api TO PUBLIC;

----------------------------------------------------------------------------------------
-- Synthetic data
----------------------------------------------------------------------------------------
CREATE TABLE report_standin.experiments (key text PRIMARY KEY, doc jsonb NOT NULL);
-- New exposures / conversions per (day, variant); `ord` is the variant's position.
CREATE TABLE report_standin.daily (
    experiment_key text, day date, ord int, variant text,
    new_assigned bigint, new_exposed bigint, new_converted bigint,
    PRIMARY KEY (experiment_key, day, ord));
-- For SRM: the weight share each exposed user was expected to have (current weights).

CREATE FUNCTION report_standin.add_experiment(
    k text, name text, description text, status text, variants jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO report_standin.experiments VALUES (k, jsonb_build_object(
        'key', k, 'name', name, 'description', description, 'status', status,
        'variants', variants,
        'targeting', NULL, 'coverage', 1, 'layer', NULL, 'holdout', NULL,
        'created_at', '2026-03-02T09:15:00Z', 'updated_at', '2026-03-04T17:40:12Z'));
$$;

-- Targeting and coverage (SPEC §10), as the experiment jsonb carries them.
CREATE FUNCTION report_standin.set_audience(k text, targeting jsonb, coverage float8) RETURNS void
LANGUAGE sql AS $$
    UPDATE report_standin.experiments
       SET doc = doc || jsonb_build_object('targeting', targeting, 'coverage', coverage)
     WHERE key = k;
$$;

-- Layer and holdout (SPEC §11), as the experiment jsonb carries them: "layer" is
-- {key, start, end} (start and end null while the experiment is ended) or null, "holdout"
-- the holdout's key or null.
CREATE FUNCTION report_standin.set_placement(k text, layer jsonb, holdout text) RETURNS void
LANGUAGE sql AS $$
    UPDATE report_standin.experiments
       SET doc = doc || jsonb_build_object('layer', layer, 'holdout', holdout)
     WHERE key = k;
$$;

-- Daily counts: `rates` per variant, `skew` multiplies a variant's exposure share (SRM).
CREATE FUNCTION report_standin.simulate(
    k text, first_day date, days int, per_day int, rates float8[], skew float8[],
    seed float8) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v jsonb := (SELECT doc->'variants' FROM report_standin.experiments WHERE key = k);
    w float8[] := ARRAY(SELECT (e->>'weight')::float8 FROM jsonb_array_elements(v) e);
    keys text[] := ARRAY(SELECT e->>'key' FROM jsonb_array_elements(v) e);
    total float8 := (SELECT sum(x) FROM unnest(w) x);
    d int; i int; n bigint; x bigint; share float8; noise float8;
BEGIN
    PERFORM setseed(seed);
    FOR d IN 0 .. days - 1 LOOP
        FOR i IN 1 .. array_length(keys, 1) LOOP
            share := w[i] / total * coalesce(skew[i], 1);
            noise := 0.97 + random() * 0.06;
            n := round(per_day * share * noise * (1 + 0.25 * sin(d / 3.0)));
            x := round(n * rates[i] * (0.8 + random() * 0.4));
            INSERT INTO report_standin.daily
            VALUES (k, first_day + d, i, keys[i], round(n * 1.04), n, least(x, n));
        END LOOP;
    END LOOP;
END
$$;

SELECT report_standin.add_experiment('checkout-redesign', 'Checkout redesign',
    'One-page checkout vs. the current three-step flow. Primary metric: purchase.',
    'active',
    '[{"key":"control","weight":50},{"key":"one-page","weight":25},{"key":"one-page-express","weight":25}]');
SELECT report_standin.simulate('checkout-redesign', '2026-03-03', 30, 2400,
    ARRAY[0.100, 0.109, 0.097], NULL, 0.11);
SELECT report_standin.set_audience('checkout-redesign',
    '{"country": {"$in": ["US", "CA"]}, "app.version": {"$vgte": "2.4.0"}}', 0.8);
SELECT report_standin.set_placement('checkout-redesign',
    '{"key": "checkout", "start": 0, "end": 0.3}', 'q4-holdout');

SELECT report_standin.add_experiment('hostile.srm',
    '<script>alert(1)</script> "Pricing" & ''friends''',
    '"><img src=x onerror=alert(1)> <b>not bold</b> & <svg onload=alert(2)> O''Reilly',
    'paused',
    '[{"key":"control","weight":50},{"key":"<script>alert(1)</script>","weight":50},'
    '{"key":"\"><img src=x onerror=alert(1)>","weight":0},{"key":"o''brien&co","weight":0}]');
SELECT report_standin.simulate('hostile.srm', '2026-04-10', 14, 1500,
    ARRAY[0.20, 0.22, 0.2, 0.2], ARRAY[1.12, 0.88], 0.22);
SELECT report_standin.set_audience('hostile.srm',
    '{"email": {"$regex": "</code><img src=x onerror=alert(4)>"}, "plan": "o''brien & <co>"}', 0.125);
-- Hostile layer and holdout keys (the extension never lets such keys in; the page escapes
-- them all the same) and a range that needs more than 2 decimals.
SELECT report_standin.set_placement('hostile.srm',
    '{"key": "</code><img src=x onerror=alert(5)> \"q\" & ''s''", "start": 0.125, "end": 0.4583333333333333}',
    '"><svg onload=alert(6)></svg>&amp;');

SELECT report_standin.add_experiment('empty-exp', 'Nobody exposed yet', NULL, 'draft',
    '[{"key":"control","weight":1},{"key":"treatment","weight":1}]');
SELECT report_standin.set_placement('empty-exp', '{"key": "checkout", "start": 0.3, "end": 1}', NULL);

SELECT report_standin.add_experiment('one-day', 'Launched today', 'A single day of data.',
    'active', '[{"key":"control","weight":50},{"key":"treatment","weight":50}]');
SELECT report_standin.simulate('one-day', '2026-05-20', 1, 900,
    ARRAY[0.05, 0.065], NULL, 0.33);

SELECT report_standin.add_experiment('long-90', 'Search ranking (90 days, 5 arms)',
    'Five ranking models; "v3-bm25" was switched off (weight 0) after two weeks.', 'ended',
    '[{"key":"control","weight":40},{"key":"v1-ltr","weight":15},{"key":"v2-neural","weight":15},'
    '{"key":"v3-bm25","weight":0},{"key":"v4-hybrid","weight":30}]');
SELECT report_standin.simulate('long-90', '2026-01-01', 90, 3000,
    ARRAY[0.031, 0.0315, 0.034, 0.029, 0.0326], NULL, 0.44);
-- Ended: its range in the layer is freed (start and end null); the holdout stays named.
SELECT report_standin.set_placement('long-90', '{"key": "search", "start": null, "end": null}',
    'q4-holdout');
-- v3-bm25 ran for the first 14 days only (its weight was 15 then).
UPDATE report_standin.daily SET new_assigned = round(3000 * 0.15), new_exposed = round(3000 * 0.14),
       new_converted = round(3000 * 0.14 * 0.029 * (0.8 + (day - date '2026-01-01') % 5 * 0.1))
 WHERE experiment_key = 'long-90' AND variant = 'v3-bm25' AND day < date '2026-01-15';

----------------------------------------------------------------------------------------
-- Statistics helpers (stand-in quality)
----------------------------------------------------------------------------------------
-- erfc, Numerical Recipes' erfcc (fractional error < 1.2e-7 everywhere).
CREATE FUNCTION report_standin.erfc(x float8) RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN x >= 0 THEN r ELSE 2 - r END
      FROM (SELECT t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
                 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
                 + t * (-0.82215223 + t * 0.17087277))))))))) AS r
              FROM (SELECT abs(x) AS z, 1 / (1 + 0.5 * abs(x)) AS t) s) s2
$$;
CREATE FUNCTION report_standin.pnorm(x float8) RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
    SELECT 0.5 * report_standin.erfc(-x / sqrt(2))
$$;
-- Chi-square upper tail, Wilson-Hilferty approximation.
CREATE FUNCTION report_standin.pchisq_upper(x float8, k int) RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN k < 1 THEN NULL
                WHEN k = 1 THEN report_standin.erfc(sqrt(x / 2))
                WHEN k = 2 THEN exp(-x / 2)
                ELSE 1 - report_standin.pnorm(((x / k) ^ (1.0 / 3) - (1 - 2.0 / (9 * k))) / sqrt(2.0 / (9 * k)))
           END
$$;

-- Cumulative counts per (day, variant) from the first day with exposures to the last.
CREATE FUNCTION report_standin.cumulative(k text)
RETURNS TABLE (day date, ord int, variant text, assigned bigint, n bigint, x bigint)
LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT min(day) AS d0, max(day) AS d1 FROM report_standin.daily
         WHERE experiment_key = k AND new_exposed > 0),
    days AS (SELECT generate_series(d0, d1, interval '1 day')::date AS day FROM bounds WHERE d0 IS NOT NULL),
    vars AS (SELECT (ordinality)::int AS ord, e->>'key' AS variant
               FROM report_standin.experiments, jsonb_array_elements(doc->'variants') WITH ORDINALITY AS t(e, ordinality)
              WHERE key = k)
    SELECT days.day, vars.ord, vars.variant,
           sum(coalesce(d.new_assigned, 0)) OVER w::bigint,
           sum(coalesce(d.new_exposed, 0)) OVER w::bigint,
           sum(coalesce(d.new_converted, 0)) OVER w::bigint
      FROM days CROSS JOIN vars
      LEFT JOIN report_standin.daily d
        ON d.experiment_key = k AND d.day = days.day AND d.ord = vars.ord
    WINDOW w AS (PARTITION BY vars.ord ORDER BY days.day)
$$;

-- One comparison against the control (SPEC §3b / §3e formulas).
CREATE FUNCTION report_standin.compare(n_t bigint, x_t bigint, n_c bigint, x_c bigint, alpha float8,
    OUT z float8, OUT p float8, OUT lift float8, OUT lo float8, OUT hi float8,
    OUT ctw float8, OUT seq_p float8, OUT cs_lo float8, OUT cs_hi float8)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    p_t float8; p_c float8; pp float8; se float8; v_t float8; v_c float8; var float8;
    q float8 := 1.959963984540054; rho2 float8; big_n float8; s float8; half float8;
BEGIN
    IF n_t > 0 AND n_c > 0 THEN
        p_t := x_t::float8 / n_t; p_c := x_c::float8 / n_c;
        pp := (x_t + x_c)::float8 / (n_t + n_c);
        se := sqrt(pp * (1 - pp) * (1.0 / n_t + 1.0 / n_c));
        IF se > 0 THEN
            z := (p_t - p_c) / se;
            p := report_standin.erfc(abs(z) / sqrt(2));
        END IF;
    END IF;
    IF n_t < 2 OR n_c < 2 OR p_c = 0 THEN RETURN; END IF;
    v_t := p_t * (1 - p_t); v_c := p_c * (1 - p_c);
    var := v_t / (p_c ^ 2 * n_t) + v_c * p_t ^ 2 / (p_c ^ 4 * n_c);
    IF var = 0 THEN RETURN; END IF;
    lift := (p_t - p_c) / p_c;
    lo := lift - q * sqrt(var); hi := lift + q * sqrt(var);
    ctw := report_standin.pnorm(lift / sqrt(var));
    big_n := n_t + n_c;
    rho2 := (-2 * ln(alpha) + ln(1 - 2 * ln(alpha))) / 5000;
    s := big_n * lift ^ 2 / var;
    seq_p := least(1, exp(0.5 * ln(big_n * rho2 + 1) - rho2 * s / (2 * (big_n * rho2 + 1))));
    half := sqrt(var * big_n) * sqrt(2 * (big_n * rho2 + 1) * ln(sqrt(big_n * rho2 + 1) / alpha)
                                     / (big_n ^ 2 * rho2));
    cs_lo := lift - half; cs_hi := lift + half;
END
$$;

----------------------------------------------------------------------------------------
-- The stand-ins themselves (signatures exactly as the extension's)
----------------------------------------------------------------------------------------
CREATE FUNCTION amba._raise(code text, detail text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = CASE code WHEN 'EXPERIMENT_NOT_FOUND' THEN 'P0002' WHEN 'ASSIGNMENT_REQUIRED' THEN 'P0002'
                            WHEN 'EXPERIMENT_INACTIVE' THEN '55000' WHEN 'INVALID_ARGUMENT' THEN '22023'
                            ELSE '23505' END,
        MESSAGE = code || ': ' || detail;
END
$$;

CREATE FUNCTION amba._http_rethrow(state text, message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    code text := substring(message FROM '^([A-Z_]+):');
    status integer := CASE code WHEN 'EXPERIMENT_NOT_FOUND' THEN 404 WHEN 'ASSIGNMENT_REQUIRED' THEN 404
                                WHEN 'INVALID_ARGUMENT' THEN 400 WHEN 'EXPERIMENT_INACTIVE' THEN 409
                                WHEN 'EXPERIMENT_EXISTS' THEN 409 END;
BEGIN
    IF status IS NOT NULL THEN
        RAISE SQLSTATE 'PGRST' USING
            message = json_build_object('code', code, 'message', message)::text,
            detail = json_build_object('status', status, 'headers', json_build_object())::text;
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message;
END
$$;

CREATE FUNCTION amba._get_experiment(experiment_key text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT doc FROM report_standin.experiments WHERE key = experiment_key
$$;

CREATE FUNCTION amba._results_daily(experiment_key text, conversion_event text, alpha double precision)
RETURNS TABLE (day date, variant text, is_control boolean, exposed_count bigint, converted_count bigint,
    conversion_rate double precision, lift double precision, lift_ci_low double precision,
    lift_ci_high double precision, p_value double precision, sequential_p_value double precision,
    lift_cs_low double precision, lift_cs_high double precision)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.day, t.variant, t.ord = 1, t.n, t.x,
           CASE WHEN t.n > 0 THEN t.x::float8 / t.n END,
           c.lift, c.lo, c.hi, c.p, c.seq_p, c.cs_lo, c.cs_hi
      FROM report_standin.cumulative(experiment_key) t
      JOIN report_standin.cumulative(experiment_key) ctl ON ctl.day = t.day AND ctl.ord = 1
      LEFT JOIN LATERAL report_standin.compare(t.n, t.x, ctl.n, ctl.x, alpha) c ON t.ord > 1
     ORDER BY t.day, t.ord
$$;

CREATE FUNCTION amba._results(experiment_key text, conversion_event text, alpha double precision)
RETURNS TABLE (variant text, is_control boolean, assigned_count bigint, exposed_count bigint,
    converted_count bigint, conversion_rate double precision, z_score double precision,
    p_value double precision, lift double precision, lift_ci_low double precision,
    lift_ci_high double precision, chance_to_win double precision, p_value_holm double precision,
    sequential_p_value double precision, srm_p_value double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    doc jsonb := (SELECT e.doc FROM report_standin.experiments e WHERE e.key = experiment_key);
BEGIN
    IF doc IS NULL THEN
        PERFORM amba._raise('EXPERIMENT_NOT_FOUND'::text,
            format('experiment %s does not exist', to_json(experiment_key))::text);
    END IF;
    RETURN QUERY
    WITH vars AS (
        SELECT ordinality::int AS ord, e->>'key' AS variant, (e->>'weight')::float8 AS w
          FROM jsonb_array_elements(doc->'variants') WITH ORDINALITY AS t(e, ordinality)),
    last AS (
        SELECT vars.ord, vars.variant, vars.w,
               coalesce(sum(d.new_assigned), 0)::bigint AS assigned,
               coalesce(sum(d.new_exposed), 0)::bigint AS n,
               coalesce(sum(d.new_converted), 0)::bigint AS x
          FROM vars LEFT JOIN report_standin.daily d
            ON d.experiment_key = _results.experiment_key AND d.ord = vars.ord
         GROUP BY vars.ord, vars.variant, vars.w),
    cmp AS (
        SELECT l.*, c.*
          FROM last l
          CROSS JOIN (SELECT n AS n_c, x AS x_c FROM last WHERE ord = 1) ctl
          LEFT JOIN LATERAL report_standin.compare(l.n, l.x, ctl.n_c, ctl.x_c, alpha) c ON l.ord > 1),
    holm AS (
        SELECT ord, least(1, max((m - rk + 1) * p) OVER (ORDER BY p, ord)) AS p_holm
          FROM (SELECT ord, p, row_number() OVER (ORDER BY p, ord) AS rk, count(*) OVER () AS m
                  FROM cmp WHERE p IS NOT NULL) s),
    srm AS (
        SELECT CASE WHEN sum(n) > 0 THEN report_standin.pchisq_upper(
                   sum(CASE WHEN w > 0 THEN (n - sum_n * w / sum_w) ^ 2 / nullif(sum_n * w / sum_w, 0) END),
                   (count(*) FILTER (WHERE w > 0))::int - 1) END AS p
          -- (the weights in force at assignment: here, users of a switched-off variant are
          -- taken as assigned while it had its share, so they leave the test)
          FROM (SELECT n, w, sum(n) FILTER (WHERE w > 0) OVER () AS sum_n,
                       sum(w) OVER () AS sum_w FROM last) s)
    SELECT cmp.variant, cmp.ord = 1, cmp.assigned, cmp.n, cmp.x,
           CASE WHEN cmp.n > 0 THEN cmp.x::float8 / cmp.n END,
           cmp.z, cmp.p, cmp.lift, cmp.lo, cmp.hi, cmp.ctw, holm.p_holm, cmp.seq_p, srm.p
      FROM cmp LEFT JOIN holm USING (ord) CROSS JOIN srm
     ORDER BY cmp.ord;
END
$$;
-- Let the roles run the stand-ins (the report's own grants are what run_standins.sh checks).
GRANT USAGE ON SCHEMA report_standin TO amba_admin, amba_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA report_standin TO amba_admin, amba_analyst;
\o
