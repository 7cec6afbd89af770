-- Amba experiments: the report page (SPEC §3e and §5b).
-- amba._report(experiment_key, conversion_event) returns one self-contained HTML5 document
-- (inline CSS, inline SVG charts drawn here, no script, no external resource) built ONLY
-- from amba._get_experiment, amba._results and amba._results_daily, and for 0.3.0's
-- features amba._guardrail_status (read-only: rendering never pauses anything), the latest
-- auto_pause row of amba.experiment_history, amba._results_by and amba.weight_versions, so
-- every number shown is one of theirs. Every user-supplied text is HTML-escaped; every number in the results
-- table carries its full value in data-value (tests/browser/report_test.py checks both).
-- amba_api.experiments_report serves it over PostgREST as text/html (a media type handler).
-- All functions: schema-qualified calls with exact argument types, fixed search_path.

----------------------------------------------------------------------------------------
-- Formatting helpers
----------------------------------------------------------------------------------------
-- HTML-escapes text for element content and double- or single-quoted attributes.
CREATE FUNCTION amba._report_esc(s text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT replace(replace(replace(replace(replace(coalesce(s, ''),
           '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;')
$fn$;

-- Shortens text to n characters (for chart labels; the table shows it whole). Not escaped.
CREATE FUNCTION amba._report_trunc(s text, n integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN length(s) > n THEN left(s, n - 1) || '…' ELSE s END
$fn$;

-- Full value for a data-value attribute: '' for NULL, else float8's shortest exact text
-- (the callers run with extra_float_digits = 3).
CREATE FUNCTION amba._report_val(v double precision) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce(v::text, '')
$fn$;

-- A count with thousands separators; '—' for NULL.
CREATE FUNCTION amba._report_int(v bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN v IS NULL THEN '—' ELSE to_char(v, 'FM9,999,999,999,999,999,990') END
$fn$;

-- A fraction as a percentage with `decimals` decimals ('+' on positive values when
-- `signed`, a real minus sign on negative ones); '—' for NULL.
CREATE FUNCTION amba._report_pct(v double precision, signed boolean, decimals integer)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r numeric;
BEGIN
    IF v IS NULL THEN RETURN '—'; END IF;
    IF v = 'NaN'::double precision THEN RETURN 'NaN'; END IF;
    IF v = 'Infinity'::double precision THEN RETURN '+∞'; END IF;
    IF v = '-Infinity'::double precision THEN RETURN '−∞'; END IF;
    r := round((v * 100)::numeric, decimals);
    IF r = 0 THEN
        r := abs(r);                            -- no "-0.00%"
    END IF;
    RETURN CASE WHEN r < 0 THEN '−' || (-r)::text
                WHEN r > 0 AND signed THEN '+' || r::text
                ELSE r::text END || '%';
END
$fn$;

-- A p-value with 4 significant digits, '< 0.0001' below that; '—' for NULL.
CREATE FUNCTION amba._report_p(v double precision) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    e integer;
    r numeric;
BEGIN
    IF v IS NULL THEN RETURN '—'; END IF;
    IF v = 'NaN'::double precision THEN RETURN 'NaN'; END IF;
    IF v < 0.0001 THEN RETURN '< 0.0001'; END IF;
    IF v = 'Infinity'::double precision THEN RETURN '∞'; END IF;
    e := floor(log(v))::integer;                -- v = m · 10^e, 1 <= m < 10
    r := round(v::numeric, 3 - e);
    IF r >= power(10::numeric, e + 1) THEN      -- rounding carried into the next decade
        r := round(v::numeric, greatest(2 - e, 0));
    END IF;
    RETURN r::text;
END
$fn$;

-- Chance to win as a percentage (2 decimals), without claiming certainty at the ends.
CREATE FUNCTION amba._report_chance(v double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN v IS NULL THEN '—'
                WHEN v > 0.9999 AND v <= 1 THEN '> 99.99%'
                WHEN v < 0.0001 AND v >= 0 THEN '< 0.01%'
                ELSE amba._report_pct(v, false, 2) END
$fn$;

-- A table cell holding one number: display text plus its full value in data-value.
CREATE FUNCTION amba._report_td(col text, v double precision, shown text, extra_class text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT format('<td class="num%s%s" data-col="%s" data-value="%s">%s</td>',
                  CASE WHEN v IS NULL THEN ' null' ELSE '' END,
                  CASE WHEN extra_class <> '' THEN ' ' || extra_class ELSE '' END,
                  col, amba._report_val(v), shown)
$fn$;

-- "pos" / "neg" / "" for colouring a lift whose interval excludes zero.
CREATE FUNCTION amba._report_sign_class(lo double precision, hi double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN lo > 0 THEN 'pos' WHEN hi < 0 THEN 'neg' ELSE '' END
$fn$;

-- A timestamp given as JSON text, shown in UTC; the text itself if it does not parse.
CREATE FUNCTION amba._report_time(ts text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF ts IS NULL THEN RETURN '—'; END IF;
    RETURN to_char(ts::timestamptz AT TIME ZONE 'UTC'::text, 'YYYY-MM-DD HH24:MI "UTC"');
EXCEPTION WHEN OTHERS THEN
    RETURN amba._report_esc(ts);
END
$fn$;

-- Finite (not NULL, NaN or infinite).
CREATE FUNCTION amba._report_finite(v double precision) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT v IS NOT NULL AND v <> 'NaN'::double precision
       AND v <> 'Infinity'::double precision AND v <> '-Infinity'::double precision
$fn$;

-- The coverage (a share, 0 to 1) as a percentage with at most 2 decimals, trailing zeros
-- dropped ("100%", "12.5%"); "< 0.01%" for a positive share that rounds to 0; '—' for NULL.
CREATE FUNCTION amba._report_coverage(v double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN v IS NULL THEN '—'
                WHEN NOT amba._report_finite(v) THEN v::text
                WHEN v > 0 AND round((v * 100)::numeric, 2) = 0 THEN '< 0.01%'
                ELSE trim_scale(round((v * 100)::numeric, 2))::text || '%' END
$fn$;

-- A position in a layer's unit interval (SPEC §11) for display: 2 decimals ("0.30"), or up
-- to 4 (trailing zeros dropped, "0.125") when 2 would round it; '—' for NULL.
CREATE FUNCTION amba._report_pos(v double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN v IS NULL THEN '—'
                WHEN NOT amba._report_finite(v) THEN v::text
                WHEN round(v::numeric, 4) = round(v::numeric, 2) THEN round(v::numeric, 2)::text
                ELSE trim_scale(round(v::numeric, 4))::text END
$fn$;

-- A variant weight for display: as given when it is short, else rounded to 4 decimals.
CREATE FUNCTION amba._report_weight(w double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN w IS NULL THEN '—'
                WHEN NOT amba._report_finite(w) OR abs(w) >= 1e15 THEN w::text
                WHEN length(w::text) <= 8 OR round(w::numeric, 4) = 0 THEN w::text
                ELSE trim_scale(round(w::numeric, 4))::text END
$fn$;

-- "Nice" axis ticks covering [lo, hi] (about `target` intervals): the first tick is <= lo,
-- the last >= hi; they are the axis domain.
CREATE FUNCTION amba._report_ticks(lo double precision, hi double precision, target integer)
RETURNS double precision[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    span double precision;
    raw double precision;
    mag double precision;
    norm double precision;
    step double precision;
    k0 double precision;
    k1 double precision;
    out double precision[] := '{}';
BEGIN
    IF NOT amba._report_finite(lo) OR NOT amba._report_finite(hi) THEN RETURN NULL; END IF;
    IF hi - lo <= 1e-12 THEN
        span := greatest(abs(lo), abs(hi), 0.01) * 0.5;
        lo := lo - span;
        hi := hi + span;
    END IF;
    raw := (hi - lo) / greatest(target, 1);
    mag := 10 ^ floor(log(raw));
    norm := raw / mag;
    step := CASE WHEN norm < 1.5 THEN 1 WHEN norm < 3 THEN 2 WHEN norm < 7 THEN 5 ELSE 10 END * mag;
    k0 := floor(lo / step + 1e-9);
    k1 := ceil(hi / step - 1e-9);
    FOR i IN 0 .. least((k1 - k0)::integer, 40) LOOP
        out := out || ((k0 + i) * step);
    END LOOP;
    RETURN out;
END
$fn$;

-- An axis label for a lift tick: a percentage with as many decimals as the step needs.
CREATE FUNCTION amba._report_tick(v double precision, step double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE WHEN abs(v) < step * 1e-6 THEN '0%'
                ELSE amba._report_pct(v, true,
                         greatest(0, ceil(-log(step * 100) - 1e-6))::integer) END
$fn$;

-- A coordinate with one decimal.
CREATE FUNCTION amba._report_xy(v double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT round(greatest(least(v, 1e6), -1e6)::numeric, 1)::text
$fn$;

----------------------------------------------------------------------------------------
-- Charts (inline SVG)
----------------------------------------------------------------------------------------
-- Forest plot: each non-control variant's lift (a marker, class "lift-marker") with its
-- (1 - alpha) interval, against a zero line. `res` is amba._results as a jsonb array.
CREATE FUNCTION amba._report_forest(res jsonb, alpha double precision) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    px0 constant double precision := 230;
    px1 constant double precision := 760;
    width constant integer := 960;
    row_h constant integer := 46;
    top_pad constant integer := 10;
    r record;
    n integer;
    lo double precision;
    hi double precision;
    ticks double precision[];
    d0 double precision;
    d1 double precision;
    step double precision;
    t double precision;
    i integer := 0;
    y double precision;
    axis_y double precision;
    height integer;
    x_m double precision;
    x_lo double precision;
    x_hi double precision;
    color text;
    svg text := '';
    control_key text;
BEGIN
    SELECT x->>'variant' INTO control_key
      FROM jsonb_array_elements(res) x WHERE (x->>'is_control')::boolean LIMIT 1;
    SELECT count(*) INTO n
      FROM jsonb_array_elements(res) x WHERE NOT (x->>'is_control')::boolean;
    SELECT min(v), max(v) INTO lo, hi
      FROM jsonb_array_elements(res) x,
           LATERAL unnest(ARRAY[(x->>'lift')::double precision, (x->>'lift_ci_low')::double precision,
                                (x->>'lift_ci_high')::double precision, 0::double precision]) v
     WHERE NOT (x->>'is_control')::boolean AND amba._report_finite(v);
    ticks := amba._report_ticks(coalesce(lo, -0.05), coalesce(hi, 0.05), 6);
    d0 := ticks[1];
    d1 := ticks[array_length(ticks, 1)];
    step := ticks[2] - ticks[1];
    axis_y := top_pad + n * row_h + 4;
    height := axis_y::integer + 52;

    svg := format('<svg class="chart forest" viewBox="0 0 %s %s" width="100%%" role="img" '
                  'aria-label="Lift of each variant over the control with its %s%% confidence interval" '
                  'xmlns="http://www.w3.org/2000/svg">', width, height,
                  round(((1 - alpha) * 100)::numeric, 1)::text::float8);
    -- Row stripes, grid and tick labels.
    FOR r IN SELECT x, ordinality FROM jsonb_array_elements(res) WITH ORDINALITY AS t(x, ordinality)
              WHERE NOT (x->>'is_control')::boolean ORDER BY ordinality LOOP
        IF i % 2 = 0 THEN
            svg := svg || format('<rect class="stripe" x="0" y="%s" width="%s" height="%s"/>',
                                 top_pad + i * row_h, width, row_h);
        END IF;
        i := i + 1;
    END LOOP;
    FOREACH t IN ARRAY ticks LOOP
        svg := svg || format('<line class="grid" x1="%1$s" x2="%1$s" y1="%2$s" y2="%3$s"/>'
                             '<text class="tick" x="%1$s" y="%4$s" text-anchor="middle">%5$s</text>',
                             amba._report_xy(px0 + (t - d0) / (d1 - d0) * (px1 - px0)),
                             top_pad, axis_y, axis_y + 18, amba._report_tick(t, step));
    END LOOP;
    svg := svg || format('<line class="axis" x1="%s" x2="%s" y1="%3$s" y2="%3$s"/>', px0, px1, axis_y)
        || format('<line class="zero" x1="%1$s" x2="%1$s" y1="%2$s" y2="%3$s"/>',
                  amba._report_xy(px0 + (0 - d0) / (d1 - d0) * (px1 - px0)), top_pad - 4, axis_y)
        || format('<text class="axis-title" x="%s" y="%s" text-anchor="middle">Relative lift over %s '
                  '(%s%% confidence interval)</text>',
                  amba._report_xy((px0 + px1) / 2), axis_y + 40,
                  amba._report_esc(amba._report_trunc(control_key, 40)),
                  round(((1 - alpha) * 100)::numeric, 1)::text::float8);

    i := 0;
    FOR r IN SELECT x->>'variant' AS variant,
                    (x->>'lift')::double precision AS lift,
                    (x->>'lift_ci_low')::double precision AS ci_low,
                    (x->>'lift_ci_high')::double precision AS ci_high
               FROM jsonb_array_elements(res) WITH ORDINALITY AS t(x, ordinality)
              WHERE NOT (x->>'is_control')::boolean ORDER BY ordinality LOOP
        y := top_pad + i * row_h + row_h / 2.0;
        i := i + 1;
        svg := svg || format('<g class="forest-row" data-variant="%s">', amba._report_esc(r.variant))
            || format('<text class="label" x="%s" y="%s" text-anchor="end">%s<title>%s</title></text>',
                      px0 - 16, amba._report_xy(y + 4.5),
                      amba._report_esc(amba._report_trunc(r.variant, 26)), amba._report_esc(r.variant));
        IF amba._report_finite(r.lift) THEN
            color := CASE amba._report_sign_class(r.ci_low, r.ci_high)
                         WHEN 'pos' THEN 'pos' WHEN 'neg' THEN 'neg' ELSE 'neutral' END;
            x_m := px0 + (r.lift - d0) / (d1 - d0) * (px1 - px0);
            IF r.ci_low IS NOT NULL AND r.ci_high IS NOT NULL THEN
                x_lo := px0 + (greatest(r.ci_low, d0) - d0) / (d1 - d0) * (px1 - px0);
                x_hi := px0 + (least(r.ci_high, d1) - d0) / (d1 - d0) * (px1 - px0);
                svg := svg || format('<line class="ci %s" x1="%s" x2="%s" y1="%4$s" y2="%4$s"/>'
                                     '<line class="cap %1$s" x1="%2$s" x2="%2$s" y1="%5$s" y2="%6$s"/>'
                                     '<line class="cap %1$s" x1="%3$s" x2="%3$s" y1="%5$s" y2="%6$s"/>',
                                     color, amba._report_xy(x_lo), amba._report_xy(x_hi),
                                     amba._report_xy(y), amba._report_xy(y - 7), amba._report_xy(y + 7));
            END IF;
            svg := svg || format('<circle class="lift-marker %s" cx="%s" cy="%s" r="6.5" '
                                 'data-variant="%s" data-value="%s"><title>%s: %s [%s, %s]</title></circle>',
                                 color, amba._report_xy(x_m), amba._report_xy(y),
                                 amba._report_esc(r.variant), amba._report_val(r.lift),
                                 amba._report_esc(r.variant), amba._report_pct(r.lift, true, 2),
                                 amba._report_pct(r.ci_low, true, 2), amba._report_pct(r.ci_high, true, 2))
                || format('<text class="value %s" x="%s" y="%s">%s</text>'
                          '<text class="interval" x="%s" y="%s">[%s, %s]</text>',
                          color, px1 + 18, amba._report_xy(y - 2), amba._report_pct(r.lift, true, 2),
                          px1 + 18, amba._report_xy(y + 14),
                          amba._report_pct(r.ci_low, true, 2), amba._report_pct(r.ci_high, true, 2));
        ELSE
            svg := svg || format('<text class="nodata" x="%s" y="%s" text-anchor="middle">'
                                 'not enough data to estimate the lift</text>',
                                 amba._report_xy((px0 + px1) / 2), amba._report_xy(y + 4.5));
        END IF;
        svg := svg || '</g>';
    END LOOP;
    RETURN svg || '</svg>';
END
$fn$;

-- Lift over time for one non-control variant: the cumulative lift per day (a line, with a
-- point per day) inside the always-valid confidence sequence (lift_cs_low/high, a shaded
-- band). `daily` is amba._results_daily as a jsonb array; `idx` makes the clip id unique.
CREATE FUNCTION amba._report_timeseries(daily jsonb, variant_key text, control_key text,
                                        idx integer, alpha double precision) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    width constant integer := 960;
    height constant integer := 250;
    px0 constant double precision := 70;
    px1 constant double precision := 826;
    py0 constant double precision := 44;
    py1 constant double precision := 206;
    first_day date;
    last_day date;
    ndays integer;
    days date[];
    lifts double precision[];
    cs_lo double precision[];
    cs_hi double precision[];
    exposed bigint[];
    converted bigint[];
    cnt integer;
    skip integer;
    lo double precision;
    hi double precision;
    ticks double precision[];
    d0 double precision;
    d1 double precision;
    step double precision;
    t double precision;
    xs double precision[] := '{}';
    day_step integer;
    dd integer;
    run_pts text[] := '{}';
    run_lo text[] := '{}';
    line text := '';
    band text := '';
    pts text := '';
    grid text := '';
    svg text;
    last_i integer;
    color text;
    conf text := round(((1 - alpha) * 100)::numeric, 1)::text::float8::text;
    i integer;
    xpos double precision;
    dot_r double precision;
BEGIN
    SELECT min((x->>'day')::date), max((x->>'day')::date) INTO first_day, last_day
      FROM jsonb_array_elements(daily) x;
    ndays := last_day - first_day;
    SELECT array_agg((x->>'day')::date ORDER BY (x->>'day')::date),
           array_agg((x->>'lift')::double precision ORDER BY (x->>'day')::date),
           array_agg((x->>'lift_cs_low')::double precision ORDER BY (x->>'day')::date),
           array_agg((x->>'lift_cs_high')::double precision ORDER BY (x->>'day')::date),
           array_agg((x->>'exposed_count')::bigint ORDER BY (x->>'day')::date),
           array_agg((x->>'converted_count')::bigint ORDER BY (x->>'day')::date)
      INTO days, lifts, cs_lo, cs_hi, exposed, converted
      FROM jsonb_array_elements(daily) x
     WHERE x->>'variant' = variant_key;
    cnt := coalesce(array_length(days, 1), 0);

    svg := format('<svg class="chart timeseries" viewBox="0 0 %s %s" width="100%%" role="img" '
                  'aria-label="Cumulative lift over time with the always-valid interval" '
                  'xmlns="http://www.w3.org/2000/svg" data-variant="%s">'
                  '<text class="panel-title" x="%s" y="20">%s <tspan class="vs">vs %s</tspan></text>',
                  width, height, amba._report_esc(variant_key), px0,
                  amba._report_esc(amba._report_trunc(variant_key, 48)),
                  amba._report_esc(amba._report_trunc(control_key, 32)));

    -- The y domain: every lift, the band from the first 20% of days on (early bands are
    -- very wide; they are clipped) and zero.
    skip := floor(cnt * 0.2);
    SELECT min(v), max(v) INTO lo, hi
      FROM (SELECT unnest(lifts) AS v
            UNION ALL SELECT unnest(cs_lo[skip + 1:cnt])
            UNION ALL SELECT unnest(cs_hi[skip + 1:cnt])
            UNION ALL SELECT 0) s
     WHERE amba._report_finite(v);
    IF cnt = 0 OR NOT EXISTS (SELECT 1 FROM unnest(lifts) v WHERE amba._report_finite(v)) THEN
        -- A short panel: title and a note.
        RETURN replace(svg, format('viewBox="0 0 %s %s"', width, height), format('viewBox="0 0 %s 66"', width))
            || format('<text class="nodata" x="%s" y="50" text-anchor="middle">'
                      'not enough data to estimate the lift yet</text></svg>',
                      amba._report_xy((px0 + px1) / 2));
    END IF;
    ticks := amba._report_ticks(lo, hi, 5);
    d0 := ticks[1];
    d1 := ticks[array_length(ticks, 1)];
    step := ticks[2] - ticks[1];

    FOR i IN 1 .. cnt LOOP
        xs := xs || CASE WHEN ndays = 0 THEN (px0 + px1) / 2
                         ELSE px0 + (days[i] - first_day)::double precision / ndays * (px1 - px0) END;
    END LOOP;

    -- Grid, y ticks, x ticks (about 8 dates), zero line.
    FOREACH t IN ARRAY ticks LOOP
        grid := grid || format('<line class="grid" x1="%s" x2="%s" y1="%3$s" y2="%3$s"/>'
                               '<text class="tick" x="%s" y="%s" text-anchor="end">%s</text>',
                               px0, px1, amba._report_xy(py1 - (t - d0) / (d1 - d0) * (py1 - py0)),
                               px0 - 8, amba._report_xy(py1 - (t - d0) / (d1 - d0) * (py1 - py0) + 4),
                               amba._report_tick(t, step));
    END LOOP;
    day_step := (SELECT s FROM unnest(ARRAY[1, 2, 7, 14, 28, 56, 91, 182, 364, 728]) s
                  WHERE ndays / s <= 8 ORDER BY s LIMIT 1);
    day_step := coalesce(day_step, greatest(ndays / 8, 1));
    dd := 0;
    WHILE dd <= ndays LOOP
        xpos := CASE WHEN ndays = 0 THEN (px0 + px1) / 2
                     ELSE px0 + dd::double precision / ndays * (px1 - px0) END;
        grid := grid || format('<line class="xtick" x1="%1$s" x2="%1$s" y1="%2$s" y2="%3$s"/>'
                               '<text class="tick" x="%1$s" y="%4$s" text-anchor="middle">%5$s</text>',
                               amba._report_xy(xpos), py1, py1 + 5, py1 + 20,
                               CASE WHEN ndays = 0 THEN to_char((first_day + dd)::timestamp, 'YYYY-MM-DD'::text)
                                    ELSE to_char((first_day + dd)::timestamp, 'Mon DD'::text) END);
        dd := dd + day_step;
    END LOOP;
    grid := grid || format('<line class="axis" x1="%s" x2="%s" y1="%3$s" y2="%3$s"/>', px0, px1, py1)
        || format('<line class="zero" x1="%s" x2="%s" y1="%3$s" y2="%3$s"/>', px0, px1,
                  amba._report_xy(py1 - (0 - d0) / (d1 - d0) * (py1 - py0)));

    -- The band, one polygon per run of days that have one (a bar for a single day).
    FOR i IN 1 .. cnt + 1 LOOP
        IF i <= cnt AND amba._report_finite(cs_lo[i]) AND amba._report_finite(cs_hi[i]) THEN
            run_pts := run_pts || (amba._report_xy(xs[i]) || ',' ||
                       amba._report_xy(py1 - (cs_hi[i] - d0) / (d1 - d0) * (py1 - py0)));
            run_lo := (amba._report_xy(xs[i]) || ',' ||
                       amba._report_xy(py1 - (cs_lo[i] - d0) / (d1 - d0) * (py1 - py0))) || run_lo;
        ELSIF array_length(run_pts, 1) > 0 THEN
            IF array_length(run_pts, 1) = 1 THEN
                band := band || format('<rect class="cs-band" x="%s" width="16" y="%s" height="%s"/>',
                    amba._report_xy(xs[i - 1] - 8),
                    amba._report_xy(py1 - (cs_hi[i - 1] - d0) / (d1 - d0) * (py1 - py0)),
                    amba._report_xy((cs_hi[i - 1] - cs_lo[i - 1]) / (d1 - d0) * (py1 - py0)));
            ELSE
                band := band || format('<polygon class="cs-band" points="%s"/>',
                                       array_to_string(run_pts || run_lo, ' '));
            END IF;
            run_pts := '{}';
            run_lo := '{}';
        END IF;
    END LOOP;

    -- The lift line (broken where the lift is undefined) and one point per day.
    dot_r := CASE WHEN cnt <= 31 THEN 3 WHEN cnt <= 62 THEN 2 ELSE 1.6 END;
    FOR i IN 1 .. cnt LOOP
        IF amba._report_finite(lifts[i]) THEN
            line := line || CASE WHEN i > 1 AND amba._report_finite(lifts[i - 1]) THEN ' L' ELSE ' M' END
                || amba._report_xy(xs[i]) || ' '
                || amba._report_xy(py1 - (lifts[i] - d0) / (d1 - d0) * (py1 - py0));
            pts := pts || format('<circle class="ts-point" cx="%s" cy="%s" r="%s" data-day="%s" '
                                 'data-value="%s" data-cs-low="%s" data-cs-high="%s">'
                                 '<title>%s: lift %s, always-valid %s%% interval [%s, %s]; '
                                 '%s exposed, %s converted</title></circle>',
                                 amba._report_xy(xs[i]),
                                 amba._report_xy(py1 - (lifts[i] - d0) / (d1 - d0) * (py1 - py0)),
                                 dot_r, to_char((days[i])::timestamp, 'YYYY-MM-DD'::text),
                                 amba._report_val(lifts[i]), amba._report_val(cs_lo[i]),
                                 amba._report_val(cs_hi[i]), to_char((days[i])::timestamp, 'YYYY-MM-DD'::text),
                                 amba._report_pct(lifts[i], true, 2), conf,
                                 amba._report_pct(cs_lo[i], true, 2), amba._report_pct(cs_hi[i], true, 2),
                                 amba._report_int(exposed[i]), amba._report_int(converted[i]));
            last_i := i;
        END IF;
    END LOOP;

    color := CASE amba._report_sign_class(cs_lo[last_i], cs_hi[last_i])
                 WHEN 'pos' THEN 'pos' WHEN 'neg' THEN 'neg' ELSE 'neutral' END;
    RETURN svg || grid
        || format('<clipPath id="ts-clip-%s"><rect x="%s" y="%s" width="%s" height="%s"/></clipPath>',
                  idx, px0, py0 - 6, px1 - px0 + 10, py1 - py0 + 6)
        || format('<g clip-path="url(#ts-clip-%s)">', idx) || band
        || CASE WHEN line <> '' THEN format('<path class="lift-line" d="%s"/>', ltrim(line)) ELSE '' END
        || pts || '</g>'
        || format('<text class="value %s" x="%s" y="%s">%s</text>', color, px1 + 14,
                  amba._report_xy(greatest(least(py1 - (lifts[last_i] - d0) / (d1 - d0) * (py1 - py0), py1), py0) + 4),
                  amba._report_pct(lifts[last_i], true, 2))
        || format('<text class="interval" x="%s" y="%s">[%s, %s]</text>', px1 + 14,
                  amba._report_xy(greatest(least(py1 - (lifts[last_i] - d0) / (d1 - d0) * (py1 - py0), py1), py0) + 20),
                  amba._report_pct(cs_lo[last_i], true, 1), amba._report_pct(cs_hi[last_i], true, 1))
        || '</svg>';
END
$fn$;

----------------------------------------------------------------------------------------
-- 0.3.0 sections: guardrails (SPEC §12), segments (§13), bandit weights (§14). Each reads
-- only: amba._guardrail_status never pauses (the report renders in a STABLE function).
----------------------------------------------------------------------------------------
-- A guardrail's rule in words: "purchase (conversion) must not decrease by more than 2%".
CREATE FUNCTION amba._report_guardrail_rule(g jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT format('<code>%s</code>%s (%s) must not %s%s',
                  amba._report_esc(g->>'event'),
                  CASE WHEN jsonb_typeof(g->'value_property') = 'string'
                       THEN format(' · <code>%s</code>', amba._report_esc(g->>'value_property')) ELSE '' END,
                  amba._report_esc(coalesce(g->>'kind', 'conversion')),
                  CASE WHEN g->>'bad' = 'increase' THEN 'increase' ELSE 'decrease' END,
                  CASE WHEN jsonb_typeof(g->'tolerance') = 'number' AND (g->>'tolerance')::double precision > 0
                       THEN ' by more than ' || amba._report_pct((g->>'tolerance')::double precision, false, 2)
                       ELSE '' END)
$fn$;

-- The banner of an experiment a guardrail paused (its latest auto_pause audit row): which
-- guardrail and variant tripped, and when. '' when no guardrail ever paused it.
CREATE FUNCTION amba._report_autopause(exp_doc jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    h record;
    t jsonb;
    items text := '';
    g jsonb;
BEGIN
    SELECT x.changed_at, x.after INTO h
      FROM amba.experiment_history x
     WHERE x.experiment_key = exp_doc->>'key' AND x.action = 'auto_pause'
     ORDER BY x.history_id DESC LIMIT 1;
    IF h.changed_at IS NULL THEN
        RETURN '';
    END IF;
    FOR t IN SELECT e FROM jsonb_array_elements(
                 CASE WHEN jsonb_typeof(h.after->'tripped') = 'array' THEN h.after->'tripped' ELSE '[]' END) e LOOP
        g := CASE WHEN jsonb_typeof(t->'guardrail') = 'number'
                  THEN exp_doc->'guardrails'->((t->>'guardrail')::integer) END;
        items := items || format(
            '<li class="tripped-item" data-guardrail="%s" data-variant="%s">Guardrail <b>#%s</b>%s: '
            'variant <b>%s</b>, lift <span data-col="lift" data-value="%s">%s</span>, always-valid interval '
            '[<span data-col="cs_low" data-value="%s">%s</span>, <span data-col="cs_high" data-value="%s">%s</span>]</li>',
            amba._report_esc(t->>'guardrail'), amba._report_esc(t->>'variant'),
            amba._report_esc(t->>'guardrail'),
            CASE WHEN g IS NOT NULL THEN ' (' || amba._report_guardrail_rule(g) || ')' ELSE '' END,
            amba._report_esc(t->>'variant'),
            amba._report_val((t->>'lift')::double precision), amba._report_pct((t->>'lift')::double precision, true, 2),
            amba._report_val((t->>'cs_low')::double precision), amba._report_pct((t->>'cs_low')::double precision, true, 2),
            amba._report_val((t->>'cs_high')::double precision), amba._report_pct((t->>'cs_high')::double precision, true, 2));
    END LOOP;
    RETURN format('<section class="autopause" id="auto-pause" role="alert" data-paused-at="%s">'
                  '<div class="icon" aria-hidden="true">‖</div><div><h2>%s</h2>'
                  '<p>A guardrail tripped on <time data-field="auto-paused-at" datetime="%s">%s UTC</time>: '
                  'amba paused the experiment, so no new user is enrolled.%s</p><ul>%s</ul></div></section>',
                  to_char(h.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                  CASE WHEN exp_doc->>'status' = 'paused' THEN 'Paused automatically by a guardrail'
                       ELSE 'Was paused automatically by a guardrail' END,
                  to_char(h.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                  to_char(h.changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                  CASE WHEN exp_doc->>'status' = 'paused' THEN ''
                       ELSE format(' It has since been set to <b>%s</b>.', amba._report_esc(exp_doc->>'status')) END,
                  items);
END
$fn$;

-- Guardrails: per guardrail and non-control variant, the lift and its always-valid
-- interval, and whether it trips, from amba._guardrail_status (which writes nothing).
CREATE FUNCTION amba._report_guardrails(exp_doc jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r record;
    g jsonb;
    rows_html text := '';
    n_tripped integer := 0;
BEGIN
    IF jsonb_typeof(exp_doc->'guardrails') <> 'array' OR jsonb_array_length(exp_doc->'guardrails') = 0 THEN
        RETURN '';
    END IF;
    FOR r IN SELECT s.guardrail, s.variant, s.lift, s.cs_low, s.cs_high, s.tripped
               FROM amba._guardrail_status(exp_doc->>'key') WITH ORDINALITY AS s(
                    experiment_key, guardrail, variant, lift, cs_low, cs_high, tripped, paused, ord)
              ORDER BY s.ord LOOP
        g := exp_doc->'guardrails'->r.guardrail;
        IF r.tripped THEN n_tripped := n_tripped + 1; END IF;
        rows_html := rows_html
            || format('<tr data-guardrail="%s" data-variant="%s" data-tripped="%s"%s>',
                      r.guardrail, amba._report_esc(r.variant), CASE WHEN r.tripped THEN 'true' ELSE 'false' END,
                      CASE WHEN r.tripped THEN ' class="tripped"' ELSE '' END)
            || format('<td class="variant"><b>#%s</b> %s<span class="sub">alpha %s</span></td>',
                      r.guardrail, amba._report_guardrail_rule(g), amba._report_esc(g->>'alpha'))
            || format('<td class="variant"><span class="vkey" data-field="variant-key">%s</span></td>',
                      amba._report_esc(r.variant))
            || amba._report_td('lift'::text, r.lift, amba._report_pct(r.lift, true, 2), ''::text)
            || amba._report_td('cs_low'::text, r.cs_low, amba._report_pct(r.cs_low, true, 2), ''::text)
            || amba._report_td('cs_high'::text, r.cs_high, amba._report_pct(r.cs_high, true, 2), ''::text)
            || format('<td data-col="status">%s</td></tr>',
                      CASE WHEN r.tripped THEN '<span class="pill neg">tripped</span>'
                           WHEN r.cs_low IS NULL OR r.cs_high IS NULL THEN '<span class="pill">not enough data</span>'
                           ELSE '<span class="pill pos">ok</span>' END);
    END LOOP;
    RETURN '<section class="card" id="guardrails"><h2>Guardrails</h2>'
        || format('<p class="hint">Each guardrail against each variant: the relative lift over the control and '
                  'its always-valid interval (safe to check at any time). A guardrail trips when the whole '
                  'interval is past the tolerance in the bad direction; then amba pauses an active experiment '
                  'when the guardrails are checked (this page only looks). %s</p>',
                  CASE WHEN n_tripped > 0 THEN format('<b class="neg" data-field="guardrails-tripped">%s tripping now.</b>', n_tripped)
                       ELSE '<b data-field="guardrails-tripped">None tripping now.</b>' END)
        || '<div class="table-wrap"><table id="guardrails-table"><thead><tr>'
        || '<th class="variant">Guardrail</th><th class="variant">Variant</th><th>Lift</th>'
        || '<th>Always-valid<br>low</th><th>Always-valid<br>high</th><th>Status</th></tr></thead><tbody>'
        || CASE WHEN rows_html = '' THEN '<tr><td colspan="6" class="variant">No data yet.</td></tr>' ELSE rows_html END
        || '</tbody></table></div></section>';
END
$fn$;

-- Results by segment: amba._results_by for each of the experiment's dimensions, for the
-- report's conversion event (p_value_holm adjusted over each dimension's comparisons).
CREATE FUNCTION amba._report_segments(exp_doc jsonb, conversion_event text, alpha double precision)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    dim text;
    r record;
    html text := '';
    rows_html text;
    conf text := round(((1 - alpha) * 100)::numeric, 1)::text::float8::text;
BEGIN
    IF jsonb_typeof(exp_doc->'dimensions') <> 'array' OR jsonb_array_length(exp_doc->'dimensions') = 0 THEN
        RETURN '';
    END IF;
    FOR dim IN SELECT d FROM jsonb_array_elements_text(exp_doc->'dimensions') WITH ORDINALITY AS t(d, o) ORDER BY o LOOP
        rows_html := '';
        FOR r IN SELECT b.* FROM amba._results_by(exp_doc->>'key', conversion_event, dim, alpha) WITH ORDINALITY AS b(
                     dimension_value, variant, is_control, assigned_count, exposed_count, converted_count,
                     conversion_rate, z_score, p_value, lift, lift_ci_low, lift_ci_high, chance_to_win,
                     p_value_holm, sequential_p_value, srm_p_value, ord)
                  ORDER BY b.ord LOOP
            rows_html := rows_html
                || format('<tr data-dimension="%s" data-dimension-value="%s"%s data-variant="%s"%s>',
                          amba._report_esc(dim), amba._report_esc(r.dimension_value),
                          CASE WHEN r.dimension_value IS NULL THEN ' data-null=""' ELSE '' END,
                          amba._report_esc(r.variant), CASE WHEN r.is_control THEN ' class="control"' ELSE '' END)
                || format('<td class="variant" data-field="dimension-value">%s</td>',
                          CASE WHEN r.dimension_value IS NULL THEN '<i>(no value)</i>'
                               ELSE amba._report_esc(r.dimension_value) END)
                || format('<td class="variant"><span class="vkey" data-field="variant-key">%s</span></td>',
                          amba._report_esc(r.variant))
                || amba._report_td('exposed_count'::text, r.exposed_count::double precision, amba._report_int(r.exposed_count), ''::text)
                || amba._report_td('converted_count'::text, r.converted_count::double precision, amba._report_int(r.converted_count), ''::text)
                || amba._report_td('conversion_rate'::text, r.conversion_rate, amba._report_pct(r.conversion_rate, false, 2), ''::text)
                || format('<td class="num lift %s"><span class="lift-main" data-col="lift" data-value="%s">%s</span>'
                          '<span class="sub%s">[<span data-col="lift_ci_low" data-value="%s">%s</span>, '
                          '<span data-col="lift_ci_high" data-value="%s">%s</span>]</span></td>',
                          CASE WHEN r.lift IS NULL THEN 'null' ELSE amba._report_sign_class(r.lift_ci_low, r.lift_ci_high) END,
                          amba._report_val(r.lift), amba._report_pct(r.lift, true, 2),
                          CASE WHEN r.lift_ci_low IS NULL AND r.lift_ci_high IS NULL THEN ' ci-none' ELSE '' END,
                          amba._report_val(r.lift_ci_low), amba._report_pct(r.lift_ci_low, true, 2),
                          amba._report_val(r.lift_ci_high), amba._report_pct(r.lift_ci_high, true, 2))
                || amba._report_td('p_value_holm'::text, r.p_value_holm, amba._report_p(r.p_value_holm), ''::text)
                || '</tr>';
        END LOOP;
        html := html
            || format('<h3 class="segment-title">By <code data-field="dimension">%s</code></h3>', amba._report_esc(dim))
            || format('<div class="table-wrap"><table class="segments-table" data-dimension="%s"><thead><tr>',
                      amba._report_esc(dim))
            || '<th class="variant">Value</th><th class="variant">Variant</th><th>Exposed</th><th>Converted</th>'
            || format('<th>Conversion<br>rate</th><th>Lift<br>[%s%% CI]</th><th>Holm<br>p-value</th></tr></thead><tbody>', conf)
            || CASE WHEN rows_html = '' THEN '<tr><td colspan="7" class="variant">No assignment with segment values yet.</td></tr>'
                    ELSE rows_html END
            || '</tbody></table></div>';
    END LOOP;
    RETURN '<section class="card" id="segments"><h2>Results by segment</h2>'
        || format('<p class="hint">The results split by the attributes given at each user''s first assignment '
                  '(<i>(no value)</i>: users without that attribute). The Holm p-value is adjusted over every '
                  'comparison of a table: many segments make chance differences likely.</p>')
        || html || '</section>';
END
$fn$;

-- A bandit's weights over time: each weight version (amba.weight_versions) with its time,
-- every variant's weight and share, drawn as stacked bars (inline SVG) and listed.
CREATE FUNCTION amba._report_bandit(exp_doc jsonb) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    palette constant text[] := ARRAY['#3d4a5c', '#2f5fd0', '#157a3b', '#b54708', '#7a2e9e', '#0e7490', '#b42318', '#667085'];
    keys text[];
    r record;
    k text;
    i integer;
    n integer := 0;
    total double precision;
    w double precision;
    x double precision;
    bar_w double precision;
    px0 constant double precision := 150;
    px1 constant double precision := 900;
    row_h constant integer := 26;
    svg text := '';
    legend text := '';
    head text := '';
    rows_html text := '';
BEGIN
    IF jsonb_typeof(exp_doc->'bandit') <> 'object' THEN
        RETURN '';
    END IF;
    SELECT array_agg(v->>'key' ORDER BY o) INTO keys
      FROM jsonb_array_elements(coalesce(exp_doc->'variants', '[]')) WITH ORDINALITY AS t(v, o);
    keys := coalesce(keys, '{}');
    FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
        legend := legend || format('<span><i class="swatch" style="background:%s"></i>%s</span>',
                                   palette[1 + (i - 1) % 8], amba._report_esc(keys[i]));
        head := head || format('<th>%s</th>', amba._report_esc(keys[i]));
    END LOOP;
    FOR r IN SELECT wv.version, wv.created_at, wv.variant_keys, wv.weights
               FROM amba.weight_versions wv JOIN amba.experiments e ON e.id = wv.experiment_id
              WHERE e.key = exp_doc->>'key' ORDER BY wv.version LOOP
        SELECT sum(v) INTO total FROM unnest(r.weights) v;
        rows_html := rows_html
            || format('<tr data-version="%s"><td class="variant"><b>v%s</b></td><td class="variant">'
                      '<time data-field="version-created" datetime="%s">%s UTC</time></td>',
                      r.version, r.version,
                      to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                      to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'));
        svg := svg || format('<g class="wv-row" data-version="%s"><text class="label" x="%s" y="%s" text-anchor="end">v%s · %s</text>',
                             r.version, px0 - 10, n * row_h + 17, r.version,
                             to_char(r.created_at AT TIME ZONE 'UTC', 'Mon DD HH24:MI'));
        x := px0;
        FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
            k := keys[i];
            w := r.weights[array_position(r.variant_keys, k)];
            rows_html := rows_html || format('<td class="num" data-variant="%s" data-col="weight" data-value="%s">%s<span class="sub">%s</span></td>',
                amba._report_esc(k), amba._report_val(w), amba._report_weight(w),
                CASE WHEN total > 0 AND w IS NOT NULL THEN amba._report_pct(w / total, false, 1) ELSE '' END);
            IF total > 0 AND w > 0 THEN
                bar_w := w / total * (px1 - px0);
                svg := svg || format('<rect class="wv-seg" x="%s" y="%s" width="%s" height="%s" fill="%s" data-variant="%s" data-share="%s">'
                                     '<title>v%s %s: %s</title></rect>',
                                     amba._report_xy(x), n * row_h + 4, amba._report_xy(bar_w), row_h - 8,
                                     palette[1 + (i - 1) % 8], amba._report_esc(k), amba._report_val(w / total),
                                     r.version, amba._report_esc(k), amba._report_pct(w / total, false, 1));
                IF bar_w >= 48 THEN
                    svg := svg || format('<text class="wv-pct" x="%s" y="%s" text-anchor="middle">%s</text>',
                                         amba._report_xy(x + bar_w / 2), n * row_h + 17,
                                         amba._report_pct(w / total, false, 1));
                END IF;
                x := x + bar_w;
            END IF;
        END LOOP;
        rows_html := rows_html || '</tr>';
        svg := svg || '</g>';
        n := n + 1;
    END LOOP;
    RETURN '<section class="card" id="bandit"><h2>Bandit: weights over time</h2>'
        || format('<p class="hint">Traffic follows the winner on <code data-field="bandit-event">%s</code> (%s): '
                  'each update writes a new weight version, and users already assigned keep their variant. '
                  'Floor %s per variant; updates wait for %s exposed users per variant.</p>',
                  amba._report_esc(exp_doc->'bandit'->>'event'), amba._report_esc(coalesce(exp_doc->'bandit'->>'kind', 'conversion')),
                  amba._report_esc(coalesce(exp_doc->'bandit'->>'min_weight', '—')),
                  amba._report_esc(coalesce(exp_doc->'bandit'->>'min_users', '—')))
        || '<div class="legend">' || legend || '</div>'
        || format('<svg class="chart weights" viewBox="0 0 960 %s" width="100%%" role="img" '
                  'aria-label="Share of traffic of each variant in each weight version" '
                  'xmlns="http://www.w3.org/2000/svg">%s</svg>', greatest(n, 1) * row_h + 4, svg)
        || '<div class="table-wrap"><table id="weights-table"><thead><tr><th class="variant">Version</th>'
        || '<th class="variant">Since</th>' || head || '</tr></thead><tbody>' || rows_html
        || '</tbody></table></div></section>';
END
$fn$;

----------------------------------------------------------------------------------------
-- The page
----------------------------------------------------------------------------------------
CREATE FUNCTION amba._report_css() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT $css$
:root{--fg:#1f2933;--muted:#5f6b7a;--line:#e3e7ed;--bg:#f4f6f9;--card:#fff;--accent:#2f5fd0;
--pos:#157a3b;--neg:#b42318;--neutral:#3d4a5c;--band:#2f5fd0}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif}
.topbar{background:#16202e;color:#cfd6e0;padding:10px 32px;display:flex;justify-content:space-between;
align-items:center;font-size:13px}
.topbar .brand{font-weight:650;color:#fff;letter-spacing:.02em}
main{max-width:1120px;margin:0 auto;padding:22px 32px 40px}
h1{font-size:27px;line-height:1.25;margin:0 0 10px;overflow-wrap:anywhere}
h1.untitled{color:var(--muted)}
h2{font-size:16px;margin:0 0 4px}
.hint{color:var(--muted);font-size:13px;margin:0 0 14px}
.meta{display:flex;flex-wrap:wrap;gap:8px 18px;align-items:center;color:var(--muted);font-size:13px}
.meta b{font-weight:600;color:var(--fg)}
.meta.audience{margin-top:8px}
.meta .targeting,.meta .layer,.meta .holdout{max-width:100%;overflow-wrap:anywhere}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;background:#e9edf3;
color:#243040;padding:2px 6px;border-radius:4px;overflow-wrap:anywhere}
.description{margin:14px 0 0;white-space:pre-wrap;overflow-wrap:anywhere;max-width:80ch}
.status{display:inline-block;text-transform:uppercase;font-size:11px;font-weight:700;letter-spacing:.07em;
padding:3px 9px;border-radius:999px;background:#e5e8ed;color:#3b4656}
.status-active{background:#dcf5e4;color:#11632f}.status-paused{background:#fdf0d3;color:#8a4b08}
.status-ended{background:#dde7fb;color:#1e429f}.status-draft{background:#e8e9ee;color:#4b5563}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:20px 24px;margin:16px 0;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
.header-card{padding:24px}
.stats{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:12px;margin:16px 0}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
.stat .label{font-size:12px;color:var(--muted)}
.stat .value{font-size:21px;font-weight:650;line-height:1.3;font-variant-numeric:tabular-nums}
.stat .sub{font-size:12px;color:var(--muted)}
.stat.bad{border-color:#f1b2ac;background:#fff6f5}.stat.bad .value{color:var(--neg)}
.srm-warning{display:flex;gap:16px;border:2px solid #d92d20;background:#fef3f2;color:#7a271a;border-radius:10px;
padding:16px 20px;margin:16px 0}
.srm-warning .icon{flex:none;width:34px;height:34px;border-radius:50%;background:#d92d20;color:#fff;
font:700 22px/34px system-ui,sans-serif;text-align:center}
.srm-warning h2{color:#b42318;font-size:17px;margin:2px 0 6px}
.srm-warning p{margin:4px 0}
.notice{border-left:4px solid var(--accent);background:#eef3fd;padding:14px 18px;border-radius:6px}
.notice h2{margin-bottom:4px}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:13px}
th{font-size:12px;font-weight:600;color:var(--muted);text-align:right;padding:8px 6px;
border-bottom:2px solid var(--line);vertical-align:bottom}
td{padding:10px 6px;border-bottom:1px solid var(--line);text-align:right;vertical-align:top;white-space:nowrap}
tbody tr:last-child td{border-bottom:none}
tr.control td{background:#f8f9fb}
th.variant,td.variant{text-align:left;white-space:normal;min-width:120px;max-width:230px;overflow-wrap:anywhere}
td.variant .vkey{font-weight:600}
td.null{color:#a0a8b4}
.sub{display:block;font-size:12px;color:var(--muted)}
.sub.ci-none{display:none}
.pos{color:var(--pos)}.neg{color:var(--neg)}
td .lift-main{font-weight:600}
.pill{display:inline-block;font-size:11px;font-weight:600;padding:1px 7px;border-radius:999px;background:#e9edf3;
color:#475467;margin:3px 4px 0 0;white-space:nowrap}
.pill.pos{background:#dcf5e4;color:#11632f}.pill.neg{background:#fde4e1;color:#912018}
.pill.off{background:#f2f4f7;color:#667085}
ul.summary{margin:8px 0 0;padding-left:20px}ul.summary li{margin:4px 0}
.legend{display:flex;gap:18px;font-size:12px;color:var(--muted);margin:0 0 6px}
.legend i{display:inline-block;vertical-align:middle;margin-right:6px}
.legend .band{width:22px;height:10px;background:rgba(47,95,208,.18);border:1px solid rgba(47,95,208,.35)}
.legend .line{width:22px;height:0;border-top:2px solid var(--band)}
.legend .zero{width:22px;height:0;border-top:1.5px dashed #8792a2}
svg.chart{display:block;max-width:100%;height:auto;font-size:12px}
svg.timeseries{margin-top:10px;border-top:1px solid var(--line)}
svg .stripe{fill:#f7f8fa}
svg .grid{stroke:#e6e9ee;stroke-width:1}
svg .xtick{stroke:#c3cad4}
svg .axis{stroke:#c3cad4;stroke-width:1}
svg .zero{stroke:#7b8798;stroke-width:1.5;stroke-dasharray:5 4}
svg .tick{fill:#6b7685;font-size:11.5px}
svg .axis-title{fill:#5f6b7a;font-size:12px}
svg .label{fill:#1f2933;font-size:13.5px;font-weight:600}
svg .value{font-size:13.5px;font-weight:650;fill:var(--neutral)}
svg .interval{font-size:12px;fill:#6b7685}
svg .value.pos{fill:var(--pos)}svg .value.neg{fill:var(--neg)}
svg .nodata{fill:#8a94a3;font-style:italic;font-size:13px}
svg .ci{stroke-width:3;stroke-linecap:round}svg .cap{stroke-width:2}
svg .ci.neutral,svg .cap.neutral{stroke:#66758a}svg .ci.pos,svg .cap.pos{stroke:var(--pos)}
svg .ci.neg,svg .cap.neg{stroke:var(--neg)}
svg .lift-marker{stroke:#fff;stroke-width:2}
svg .lift-marker.neutral{fill:#3d4a5c}svg .lift-marker.pos{fill:var(--pos)}svg .lift-marker.neg{fill:var(--neg)}
svg .panel-title{font-size:14px;font-weight:650;fill:#1f2933}
svg .panel-title .vs{font-weight:400;fill:#6b7685}
svg .cs-band{fill:rgba(47,95,208,.16);stroke:rgba(47,95,208,.32);stroke-width:1}
svg .lift-line{fill:none;stroke:var(--band);stroke-width:2;stroke-linejoin:round}
svg .ts-point{fill:var(--band);stroke:#fff;stroke-width:.8}
.autopause{display:flex;gap:16px;border:2px solid #dc6803;background:#fffaeb;color:#7a2e0e;border-radius:10px;
padding:16px 20px;margin:16px 0}
.autopause .icon{flex:none;width:34px;height:34px;border-radius:50%;background:#dc6803;color:#fff;
font:700 18px/34px system-ui,sans-serif;text-align:center}
.autopause h2{color:#b54708;font-size:17px;margin:2px 0 6px}
.autopause p{margin:4px 0}.autopause ul{margin:6px 0 0;padding-left:20px}
tr.tripped td{background:#fff6f5}
h3.segment-title{font-size:14px;margin:16px 0 6px}
.legend .swatch{width:12px;height:12px;border-radius:2px}
svg .wv-seg{stroke:#fff;stroke-width:1}svg .wv-pct{fill:#fff;font-size:11.5px;font-weight:600}
.notes{color:var(--muted);font-size:12.5px}.notes h2{color:var(--fg)}
.notes ul{margin:6px 0 0;padding-left:18px}.notes li{margin:3px 0}
footer{max-width:1120px;margin:0 auto;padding:0 32px 28px;color:#8a94a3;font-size:12px}
@media (max-width:760px){.stats{grid-template-columns:repeat(2,minmax(0,1fr))}main{padding:16px}}
@media print{body{background:#fff}.card,.stat{box-shadow:none}.topbar{background:#fff;color:#000}
.topbar .brand{color:#000}}
$css$
$fn$;

CREATE FUNCTION amba._report(experiment_key text, conversion_event text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 3
AS $fn$
DECLARE
    alpha constant double precision := 0.05;
    conf text := round(((1 - 0.05) * 100)::numeric, 1)::text::float8::text;   -- "95"
    exp_doc jsonb;
    res jsonb;
    daily jsonb;
    r record;
    weights jsonb;
    weight_sum double precision;
    w double precision;
    control_key text;
    total_exposed bigint := 0;
    total_converted bigint := 0;
    srm double precision;
    first_day date;
    last_day date;
    n_days integer := 0;
    rows_html text := '';
    summary_html text := '';
    charts_html text := '';
    head_html text;
    srm_html text := '';
    stats_html text;
    notice_html text := '';
    title text;
    status text;
    coverage double precision;
    layer_doc jsonb;
    layer_start double precision;
    layer_end double precision;
    generated timestamp := now() AT TIME ZONE 'UTC'::text;
    verdict text;
    pill text;
    i integer := 0;
    autopause_html text;
    v030_html text;
BEGIN
    exp_doc := amba._get_experiment(experiment_key);
    IF exp_doc IS NULL THEN
        PERFORM amba._raise('EXPERIMENT_NOT_FOUND'::text,
            format('experiment %s does not exist', to_json(experiment_key))::text);
    END IF;

    -- The numbers, each source read once; jsonb keeps every float8 exactly (shortest exact
    -- text with extra_float_digits = 3, read back by float8in).
    SELECT jsonb_agg(to_jsonb(x) ORDER BY x.ord) INTO res
      FROM amba._results(experiment_key, conversion_event, alpha) WITH ORDINALITY AS x(
               variant, is_control, assigned_count, exposed_count, converted_count, conversion_rate,
               z_score, p_value, lift, lift_ci_low, lift_ci_high, chance_to_win, p_value_holm,
               sequential_p_value, srm_p_value, ord);
    res := coalesce(res, '[]'::jsonb);
    weights := coalesce(exp_doc->'variants', '[]'::jsonb);
    SELECT sum(CASE WHEN jsonb_typeof(v->'weight') = 'number' THEN (v->>'weight')::double precision END)
      INTO weight_sum FROM jsonb_array_elements(weights) v;
    SELECT coalesce(sum((x->>'exposed_count')::bigint), 0), coalesce(sum((x->>'converted_count')::bigint), 0),
           min((x->>'srm_p_value')::double precision)
      INTO total_exposed, total_converted, srm
      FROM jsonb_array_elements(res) x;
    SELECT x->>'variant' INTO control_key
      FROM jsonb_array_elements(res) x WHERE (x->>'is_control')::boolean LIMIT 1;

    IF total_exposed > 0 THEN
        SELECT jsonb_agg(to_jsonb(d) ORDER BY d.ord) INTO daily
          FROM amba._results_daily(experiment_key, conversion_event, alpha) WITH ORDINALITY AS d(
                   day, variant, is_control, exposed_count, converted_count, conversion_rate, lift,
                   lift_ci_low, lift_ci_high, p_value, sequential_p_value, lift_cs_low, lift_cs_high, ord);
        SELECT min((x->>'day')::date), max((x->>'day')::date) INTO first_day, last_day
          FROM jsonb_array_elements(coalesce(daily, '[]'::jsonb)) x;
        n_days := coalesce(last_day - first_day + 1, 0);
    END IF;

    -- Header.
    title := nullif(btrim(exp_doc->>'name'), '');
    -- An experiment jsonb without the key (before 0.3.0) means everyone is covered.
    coverage := CASE WHEN jsonb_typeof(exp_doc->'coverage') = 'number'
                     THEN (exp_doc->>'coverage')::double precision
                     WHEN exp_doc->'coverage' IS NULL THEN 1 END;
    -- The layer's range (SPEC §11): {key, start, end}; start and end are null while the
    -- experiment is ended (its range is freed). No key (before 0.3.0) or null: no layer.
    layer_doc := CASE WHEN jsonb_typeof(exp_doc->'layer') = 'object' THEN exp_doc->'layer' END;
    layer_start := CASE WHEN jsonb_typeof(layer_doc->'start') = 'number'
                        THEN (layer_doc->>'start')::double precision END;
    layer_end := CASE WHEN jsonb_typeof(layer_doc->'end') = 'number'
                      THEN (layer_doc->>'end')::double precision END;
    status := coalesce(exp_doc->>'status', 'unknown');
    head_html := '<section class="card header-card">'
        || CASE WHEN title IS NOT NULL
                THEN format('<h1 data-field="name">%s</h1>', amba._report_esc(exp_doc->>'name'))
                ELSE format('<h1 class="untitled">%s</h1>', amba._report_esc(exp_doc->>'key')) END
        || '<div class="meta">'
        || format('<span class="status status-%s" data-field="status">%s</span>',
                  CASE WHEN status IN ('active', 'paused', 'ended', 'draft') THEN status ELSE 'other' END,
                  amba._report_esc(status))
        || format('<span>Experiment <code data-field="key">%s</code></span>', amba._report_esc(exp_doc->>'key'))
        || format('<span>Conversion event <code data-field="event">%s</code></span>',
                  amba._report_esc(conversion_event))
        || format('<span>Created <b>%s</b></span><span>Updated <b>%s</b></span>',
                  amba._report_time(exp_doc->>'created_at'), amba._report_time(exp_doc->>'updated_at'))
        || '</div>'
        -- Who may be enrolled, in the order amba checks it (SPEC §10, §11): the targeting
        -- condition as JSON text, or everyone; the layer with the experiment's range in it
        -- (exact bounds in data-start/data-end); the coverage as a percentage (its exact
        -- value in data-value); the holdout users pass through first.
        || '<div class="meta audience" id="audience">'
        || CASE WHEN jsonb_typeof(exp_doc->'targeting') = 'object' AND exp_doc->'targeting' <> '{}'::jsonb
                THEN format('<span class="targeting">Targeting <code data-field="targeting">%s</code></span>',
                            amba._report_esc((exp_doc->'targeting')::text))
                ELSE '<span class="targeting">Targeting <b data-field="targeting" data-everyone="">everyone</b></span>' END
        || CASE WHEN layer_doc IS NULL
                THEN '<span class="layer">Layer <b data-field="layer" data-none="">none</b></span>'
                WHEN layer_start IS NULL OR layer_end IS NULL
                THEN format('<span class="layer" title="Experiments of a layer never share a user; an ended '
                            'experiment holds no range">Layer <code data-field="layer" data-layer-key="%1$s" '
                            'data-start="" data-end="">%1$s</code> <i data-field="layer-freed">no range: freed '
                            'while ended</i></span>',
                            amba._report_esc(layer_doc->>'key'))
                ELSE format('<span class="layer" title="Experiments of a layer never share a user: this one '
                            'enrols only users whose layer bucket is in this range">Layer <code data-field="layer" '
                            'data-layer-key="%s" data-start="%s" data-end="%s">%s [%s, %s)</code></span>',
                            amba._report_esc(layer_doc->>'key'), amba._report_val(layer_start),
                            amba._report_val(layer_end), amba._report_esc(layer_doc->>'key'),
                            amba._report_pos(layer_start), amba._report_pos(layer_end)) END
        || format('<span>Coverage <b data-field="coverage" data-value="%s">%s</b> of eligible users</span>',
                  amba._report_val(coverage), amba._report_coverage(coverage))
        || CASE WHEN jsonb_typeof(exp_doc->'holdout') = 'string'
                THEN format('<span class="holdout" title="Users pass through this holdout experiment first; '
                            'those in its control group are not enrolled here">Holdout <code data-field="holdout">%s</code></span>',
                            amba._report_esc(exp_doc->>'holdout'))
                ELSE '<span class="holdout">Holdout <b data-field="holdout" data-none="">none</b></span>' END
        || '</div>'
        || CASE WHEN nullif(exp_doc->>'description', '') IS NOT NULL
                THEN format('<p class="description" data-field="description">%s</p>',
                            amba._report_esc(exp_doc->>'description'))
                ELSE '<p class="description hint">No description.</p>' END
        || '</section>';

    -- Sample ratio mismatch: prominent, above everything else.
    IF srm < 0.001 THEN
        srm_html := format(
            '<section class="srm-warning" id="srm-warning" role="alert" data-srm-p-value="%s">'
            '<div class="icon" aria-hidden="true">!</div><div>'
            '<h2>Sample ratio mismatch: do not trust these results</h2>'
            '<p>The exposed users are not split across the variants the way the weights say they '
            'should be (SRM p-value <b>%s</b>, below 0.001). Exposures are being lost or skewed in '
            'some variant: for example a variant that fails to load or to log its exposure, a '
            'redirect, bot filtering or caching that affects one variant only.</p>'
            '<p>Every comparison below may be biased in either direction. Find and fix the cause '
            'before making a decision; the lifts, p-values and chances to win on this page cannot be '
            'relied on until then.</p></div></section>',
            amba._report_val(srm), amba._report_p(srm));
    END IF;

    -- Guardrails (SPEC §12): the banner of an automatic pause, above everything but the
    -- SRM warning; the guardrails, segments (§13) and bandit weights (§14) after the results.
    autopause_html := amba._report_autopause(exp_doc);
    v030_html := amba._report_guardrails(exp_doc)
        || amba._report_segments(exp_doc, conversion_event, alpha)
        || amba._report_bandit(exp_doc);

    -- Key figures.
    stats_html := '<div class="stats">'
        || format('<div class="stat"><div class="label">Exposed users</div><div class="value">%s</div>'
                  '<div class="sub">%s variants</div></div>',
                  amba._report_int(total_exposed), jsonb_array_length(res))
        || format('<div class="stat"><div class="label">Converted users</div><div class="value">%s</div>'
                  '<div class="sub">%s overall</div></div>',
                  amba._report_int(total_converted),
                  CASE WHEN total_exposed > 0
                       THEN amba._report_pct(total_converted::double precision / total_exposed, false, 2)
                       ELSE '—' END)
        || format('<div class="stat"><div class="label">Days of data (UTC)</div><div class="value">%s</div>'
                  '<div class="sub">%s</div></div>',
                  n_days,
                  CASE WHEN first_day IS NULL THEN 'no exposures yet'
                       WHEN first_day = last_day THEN to_char((first_day)::timestamp, 'YYYY-MM-DD'::text)
                       ELSE to_char((first_day)::timestamp, 'YYYY-MM-DD'::text) || ' → ' || to_char((last_day)::timestamp, 'YYYY-MM-DD'::text) END)
        || format('<div class="stat%s"><div class="label">Sample ratio check</div>'
                  '<div class="value" data-col="srm_p_value" data-value="%s">%s</div>'
                  '<div class="sub">%s</div></div>',
                  CASE WHEN srm < 0.001 THEN ' bad' ELSE '' END, amba._report_val(srm),
                  CASE WHEN srm IS NULL THEN '—' WHEN srm < 0.001 THEN 'Failed' ELSE 'Passed' END,
                  CASE WHEN srm IS NULL THEN 'needs exposures'
                       ELSE 'SRM p-value ' || amba._report_p(srm) END)
        || '</div>';

    -- The results table, and a one-line verdict per variant.
    FOR r IN SELECT x.*
               FROM jsonb_to_recordset(res) AS x(
                    variant text, is_control boolean, assigned_count bigint, exposed_count bigint,
                    converted_count bigint, conversion_rate double precision, z_score double precision,
                    p_value double precision, lift double precision, lift_ci_low double precision,
                    lift_ci_high double precision, chance_to_win double precision,
                    p_value_holm double precision, sequential_p_value double precision,
                    srm_p_value double precision, ord bigint)
              ORDER BY x.ord LOOP
        SELECT CASE WHEN jsonb_typeof(v->'weight') = 'number' THEN (v->>'weight')::double precision END
          INTO w FROM jsonb_array_elements(weights) v WHERE v->>'key' = r.variant LIMIT 1;
        IF r.is_control THEN
            pill := '<span class="pill">control</span>';
            verdict := NULL;
        ELSIF r.lift IS NULL THEN
            pill := '<span class="pill">not enough data</span>';
            verdict := 'not enough data to compare with the control yet.';
        ELSIF r.p_value_holm < alpha AND r.lift > 0 THEN
            pill := '<span class="pill pos">better</span>';
            verdict := format('<b class="pos">%s</b> over the control, significantly better (Holm-adjusted p-value %s, chance to win %s).',
                              amba._report_pct(r.lift, true, 2), amba._report_p(r.p_value_holm),
                              amba._report_chance(r.chance_to_win));
        ELSIF r.p_value_holm < alpha AND r.lift < 0 THEN
            pill := '<span class="pill neg">worse</span>';
            verdict := format('<b class="neg">%s</b> against the control, significantly worse (Holm-adjusted p-value %s, chance to win %s).',
                              amba._report_pct(r.lift, true, 2), amba._report_p(r.p_value_holm),
                              amba._report_chance(r.chance_to_win));
        ELSE
            pill := '<span class="pill">inconclusive</span>';
            verdict := format('<b>%s</b> against the control, not significant (Holm-adjusted p-value %s, chance to win %s).',
                              amba._report_pct(r.lift, true, 2), amba._report_p(r.p_value_holm),
                              amba._report_chance(r.chance_to_win));
        END IF;
        IF w = 0 THEN
            pill := pill || '<span class="pill off">weight 0: off</span>';
        END IF;
        IF verdict IS NOT NULL THEN
            summary_html := summary_html || format('<li><b>%s</b>: %s%s</li>', amba._report_esc(r.variant),
                verdict,
                CASE WHEN r.sequential_p_value < alpha
                     THEN ' The always-valid p-value agrees (' || amba._report_p(r.sequential_p_value) || ').'
                     ELSE '' END);
        END IF;

        rows_html := rows_html
            || format('<tr data-variant="%s"%s><td class="variant"><span class="vkey" data-field="variant-key">%s</span><br>%s</td>',
                      amba._report_esc(r.variant), CASE WHEN r.is_control THEN ' class="control"' ELSE '' END,
                      amba._report_esc(r.variant), pill)
            || format('<td class="num" data-col="weight" data-value="%s">%s<span class="sub">%s</span></td>',
                      amba._report_val(w), amba._report_weight(w),
                      CASE WHEN weight_sum > 0 AND w IS NOT NULL
                           THEN amba._report_pct(w / weight_sum, false, 1) ELSE '' END)
            || amba._report_td('assigned_count'::text, r.assigned_count::double precision, amba._report_int(r.assigned_count), ''::text)
            || format('<td class="num" data-col="exposed_count" data-value="%s">%s<span class="sub">%s</span></td>',
                      amba._report_val(r.exposed_count::double precision), amba._report_int(r.exposed_count),
                      CASE WHEN total_exposed > 0
                           THEN amba._report_pct(r.exposed_count::double precision / total_exposed, false, 1)
                           ELSE '' END)
            || amba._report_td('converted_count'::text, r.converted_count::double precision, amba._report_int(r.converted_count), ''::text)
            || amba._report_td('conversion_rate'::text, r.conversion_rate,
                               amba._report_pct(r.conversion_rate, false, 2), ''::text)
            || format('<td class="num lift %s"><span class="lift-main" data-col="lift" data-value="%s">%s</span>'
                      '<span class="sub%s">[<span data-col="lift_ci_low" data-value="%s">%s</span>, '
                      '<span data-col="lift_ci_high" data-value="%s">%s</span>]</span></td>',
                      CASE WHEN r.lift IS NULL THEN 'null' ELSE amba._report_sign_class(r.lift_ci_low, r.lift_ci_high) END,
                      amba._report_val(r.lift), amba._report_pct(r.lift, true, 2),
                      CASE WHEN r.lift_ci_low IS NULL AND r.lift_ci_high IS NULL THEN ' ci-none' ELSE '' END,
                      amba._report_val(r.lift_ci_low), amba._report_pct(r.lift_ci_low, true, 2),
                      amba._report_val(r.lift_ci_high), amba._report_pct(r.lift_ci_high, true, 2))
            || amba._report_td('p_value'::text, r.p_value, amba._report_p(r.p_value), ''::text)
            || amba._report_td('p_value_holm'::text, r.p_value_holm, amba._report_p(r.p_value_holm), ''::text)
            || amba._report_td('sequential_p_value'::text, r.sequential_p_value, amba._report_p(r.sequential_p_value), ''::text)
            || amba._report_td('chance_to_win'::text, r.chance_to_win, amba._report_chance(r.chance_to_win), ''::text)
            || '</tr>';
    END LOOP;

    IF total_exposed = 0 THEN
        notice_html := '<section class="card notice" id="no-exposures"><h2>No exposures yet</h2>'
            '<p class="hint" style="margin:0">Nobody has been exposed to this experiment, so there is '
            'nothing to compare and no charts. Users count in the results once <code>amba_expose</code> '
            'records that they saw their variant.</p></section>';
    ELSE
        charts_html := '<section class="card" id="forest"><h2>Lift over the control</h2>'
            || format('<p class="hint">Relative change in conversion rate of each variant over '
                      '<b>%s</b>, with its %s%% confidence interval. Intervals that do not cross the '
                      'dashed zero line are significant before the Holm adjustment.</p>',
                      amba._report_esc(control_key), conf)
            || amba._report_forest(res, alpha) || '</section>'
            || '<section class="card" id="lift-over-time"><h2>Lift over time</h2>'
            || format('<p class="hint">Cumulative lift at the end of each UTC day, inside the always-valid '
                      '%s%% confidence sequence: unlike a fixed confidence interval it stays valid however '
                      'often the results are looked at, so a band that stays clear of zero is a safe signal '
                      'to stop.</p>', conf)
            || format('<div class="legend"><span><i class="line"></i>cumulative lift</span>'
                      '<span><i class="band"></i>always-valid %s%% interval</span>'
                      '<span><i class="zero"></i>no change</span></div>', conf);
        FOR r IN SELECT x->>'variant' AS variant
                   FROM jsonb_array_elements(res) WITH ORDINALITY AS t(x, ordinality)
                  WHERE NOT (x->>'is_control')::boolean ORDER BY ordinality LOOP
            i := i + 1;
            charts_html := charts_html
                || amba._report_timeseries(coalesce(daily, '[]'::jsonb), r.variant, control_key, i, alpha);
        END LOOP;
        charts_html := charts_html || '</section>';
    END IF;

    RETURN '<!DOCTYPE html>' || E'\n'
        || '<html lang="en"><head><meta charset="utf-8">'
        || '<meta name="viewport" content="width=device-width, initial-scale=1">'
        || '<meta http-equiv="Content-Security-Policy" content="default-src ''none''; style-src ''unsafe-inline''; base-uri ''none''; form-action ''none''">'
        || '<meta name="generator" content="amba">'
        || format('<title>%s · experiment report</title>',
                  amba._report_esc(coalesce(title, exp_doc->>'key')))
        || '<style>' || amba._report_css() || '</style></head><body>' || E'\n'
        || '<header class="topbar"><span class="brand">Amba · Experiment report</span>'
        || format('<span>Generated <time data-field="generated-at" datetime="%s">%s UTC</time></span></header>',
                  to_char(generated, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), to_char(generated, 'YYYY-MM-DD HH24:MI:SS'))
        || E'\n<main>' || head_html || srm_html || autopause_html || stats_html || notice_html
        || CASE WHEN summary_html <> '' AND total_exposed > 0
                THEN '<section class="card" id="summary"><h2>Summary</h2>'
                     || format('<p class="hint">Each variant against the control <b>%s</b>, at a %s%% significance level%s.%s</p>',
                               amba._report_esc(control_key), round((alpha * 100)::numeric, 1)::text::float8,
                               CASE WHEN jsonb_array_length(res) > 2
                                    THEN format(' after the Holm adjustment for %s comparisons', jsonb_array_length(res) - 1)
                                    ELSE '' END,
                               CASE WHEN srm < 0.001 THEN ' <b class="neg">The sample ratio check failed: none of this can be trusted.</b>' ELSE '' END)
                     || '<ul class="summary">' || summary_html || '</ul></section>'
                ELSE '' END
        || E'\n<section class="card" id="results"><h2>Results by variant</h2>'
        || format('<p class="hint">Users who were exposed, and those of them with a <code>%s</code> event at or after their assignment.</p>',
                  amba._report_esc(conversion_event))
        || '<div class="table-wrap"><table id="results-table"><thead><tr>'
        || '<th class="variant">Variant</th><th>Weight<br>(share)</th><th>Assigned</th><th>Exposed<br>(share)</th><th>Converted</th>'
        || format('<th>Conversion<br>rate</th><th>Lift<br>[%s%% CI]</th><th>p-value</th><th>Holm<br>p-value</th>', conf)
        || '<th>Sequential<br>p-value</th><th>Chance<br>to win</th></tr></thead><tbody>'
        || rows_html || '</tbody></table></div></section>' || E'\n'
        || v030_html || charts_html || E'\n'
        || '<section class="card notes" id="method"><h2>How to read this</h2><ul>'
        || '<li><b>Conversion rate</b>: converted ÷ exposed. <b>Lift</b>: relative change of the conversion rate over the control, with a '
        || conf || '% confidence interval (delta method, Welch–Satterthwaite degrees of freedom).</li>'
        || '<li><b>p-value</b>: two-sided pooled two-proportion z-test against the control. <b>Holm p-value</b>: adjusted for comparing several variants with the same control. <b>Sequential p-value</b>: always valid, safe to read at any time while the experiment runs.</li>'
        || '<li><b>Chance to win</b>: posterior probability that the variant converts better than the control (flat prior).</li>'
        || '<li><b>Sample ratio check</b>: chi-square test of the exposed counts against the weights in force when each user was assigned; below 0.001 the split is broken and the results are not trustworthy.</li>'
        || '<li>Days are UTC; numbers are cumulative up to the end of each day. “—” means not defined (the control row, or too little data).</li>'
        || '</ul></section></main>'
        || format('<footer>Generated %s UTC by amba from <code>amba_results</code> and <code>amba_results_daily</code>, and where the experiment has them its guardrails, segments and bandit weights (alpha = %s).</footer>',
                  to_char(generated, 'YYYY-MM-DD HH24:MI:SS'), alpha)
        || E'\n</body></html>\n';
END
$fn$;

COMMENT ON FUNCTION amba._report(text, text) IS
'The report page of an experiment for a conversion event: one self-contained HTML document (inline CSS and SVG, no script, no external resource). EXPERIMENT_NOT_FOUND for an unknown key.';

----------------------------------------------------------------------------------------
-- PostgREST: GET /rpc/experiments_report?experiment_key=&conversion_event= with
-- Accept: text/html (a media type handler: a function returning a domain named "text/html").
----------------------------------------------------------------------------------------
CREATE DOMAIN amba_api."text/html" AS text;

CREATE FUNCTION amba_api.experiments_report(experiment_key text, conversion_event text)
RETURNS amba_api."text/html"
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN amba._report(experiment_key, conversion_event);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_report(text, text) IS
'The experiment''s report page as HTML (request it with Accept: text/html). 404 EXPERIMENT_NOT_FOUND.';

----------------------------------------------------------------------------------------
-- Privileges
----------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION
    amba._report(text, text), amba._report_weight(double precision),
    amba._report_esc(text), amba._report_trunc(text, integer), amba._report_val(double precision),
    amba._report_int(bigint), amba._report_pct(double precision, boolean, integer),
    amba._report_p(double precision), amba._report_chance(double precision),
    amba._report_td(text, double precision, text, text),
    amba._report_sign_class(double precision, double precision), amba._report_time(text),
    amba._report_finite(double precision), amba._report_coverage(double precision),
    amba._report_pos(double precision),
    amba._report_ticks(double precision, double precision, integer),
    amba._report_tick(double precision, double precision), amba._report_xy(double precision),
    amba._report_forest(jsonb, double precision),
    amba._report_timeseries(jsonb, text, text, integer, double precision),
    amba._report_guardrail_rule(jsonb), amba._report_autopause(jsonb),
    amba._report_guardrails(jsonb), amba._report_segments(jsonb, text, double precision),
    amba._report_bandit(jsonb),
    amba._report_css()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    amba._report(text, text), amba._report_weight(double precision),
    amba._report_esc(text), amba._report_trunc(text, integer), amba._report_val(double precision),
    amba._report_int(bigint), amba._report_pct(double precision, boolean, integer),
    amba._report_p(double precision), amba._report_chance(double precision),
    amba._report_td(text, double precision, text, text),
    amba._report_sign_class(double precision, double precision), amba._report_time(text),
    amba._report_finite(double precision), amba._report_coverage(double precision),
    amba._report_pos(double precision),
    amba._report_ticks(double precision, double precision, integer),
    amba._report_tick(double precision, double precision), amba._report_xy(double precision),
    amba._report_forest(jsonb, double precision),
    amba._report_timeseries(jsonb, text, text, integer, double precision),
    amba._report_guardrail_rule(jsonb), amba._report_autopause(jsonb),
    amba._report_guardrails(jsonb), amba._report_segments(jsonb, text, double precision),
    amba._report_bandit(jsonb),
    amba._report_css()
TO amba_admin, amba_analyst;
REVOKE ALL ON FUNCTION amba_api.experiments_report(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION amba_api.experiments_report(text, text) TO amba_admin;

-- The public SQL function: an analyst's `SELECT amba_report(...)`.
CREATE FUNCTION @extschema@.amba_report(experiment_key text, conversion_event text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._report($1, $2) $fn$;
