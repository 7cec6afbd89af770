#!/usr/bin/env python3
"""Browser test of the experiment report page (SPEC §3e / §5b).

Renders `SELECT amba._report(key, event)` in Debian's headless Chromium (driven by
Playwright, never a downloaded browser) and checks it the way a person would look at it:

  * no console error, no page error, no dialog (window.alert never fires);
  * no network request at all besides the document itself (everything is routed);
  * the table's numbers (data-value) equal amba._results(key, event, 0.05), queried here,
    to 1e-12 relative, and the shown text is that number, formatted (percentages with 2
    decimals, p-values with 4 significant digits or "< 0.0001", "—" for NULL);
  * user texts (name, description, key, event, variant keys, the targeting condition, the
    layer and holdout keys) appear as text, equal to the raw strings, and nothing was
    injected: only an allowlist of elements, no on* attribute;
  * the header tells who may be enrolled, in the order amba checks it: the targeting
    condition as JSON text equal to the experiment's ("everyone" without one), the layer
    with the experiment's range ("checkout [0.00, 0.30)", exact bounds in data-start /
    data-end; "none" without a layer, the key and "freed" while ended), the coverage as a
    percentage whose data-value is the experiment's coverage, and the holdout's key ("none"
    without one);
  * the charts: one lift marker per non-control variant with a lift (its value exact), one
    lift-over-time panel per non-control variant whose points equal amba._results_daily;
    no chart and a notice when nobody is exposed;
  * the sample-ratio-mismatch warning is shown iff srm_p_value < 0.001, above the results;
  * the generation time is there (UTC);
  * 0.3.0 (SPEC §12-§14): with guardrails, a row per guardrail and variant whose lift and
    always-valid interval equal amba._guardrail_status and whose lift equals one computed
    here from the raw rows, "tripped" exactly where it trips, and for an experiment a
    guardrail paused, a banner naming the guardrail and variant of the latest auto_pause
    history row and its time; with dimensions, a table per dimension whose rows equal
    amba._results_by and whose exposed/converted counts equal a count by hand from the raw
    rows (assignment_dimensions, exposures, events), hostile values shown as text; for a
    bandit, every weight version (time, each variant's weight and share, as stacked bars);
  * rendering changes nothing: the experiment's status, revision, weight versions and
    history are the same after it (an active experiment whose guardrail trips stays active);
and saves a full-page screenshot.

    python3 tests/browser/report_test.py --database-url postgresql://postgres@localhost:28815/report_dev \
        --experiment checkout-redesign --event purchase --screenshot target/report.png

Exits 0 when every check passes, 1 otherwise (the last line reads "N passed, M failed").
"""
import argparse
import base64
import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

from playwright.sync_api import sync_playwright  # noqa: E402  (pinned in requirements.txt)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-default-apps", "--disable-extensions",
]
REPORT_URL = "http://amba-report.invalid/report.html"
ALPHA = 0.05
REL_TOL = 1e-12

# Columns of amba._results shown in the table, each in an element with data-col.
TABLE_COLS = ["assigned_count", "exposed_count", "converted_count", "conversion_rate", "lift",
              "lift_ci_low", "lift_ci_high", "p_value", "p_value_holm", "sequential_p_value",
              "chance_to_win"]
PCT_COLS = {"conversion_rate", "lift", "lift_ci_low", "lift_ci_high"}
P_COLS = {"p_value", "p_value_holm", "sequential_p_value"}
COUNT_COLS = {"assigned_count", "exposed_count", "converted_count"}

# Every element the page may contain (lower-case tag names); anything else was injected.
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "main", "section", "footer",
    "div", "span", "h1", "h2", "p", "b", "i", "code", "br", "time", "ul", "li",
    "table", "thead", "tbody", "tr", "th", "td",
    "svg", "g", "rect", "line", "circle", "text", "tspan", "path", "polygon", "clippath",
    "h3",
}


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   - {what}")
        else:
            self.failed += 1
            print(f"FAIL - {what}" + (f": {detail}" if detail else ""))
        return ok


def psql(url, sql, **variables):
    cmd = ["psql", "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"]
    for name, value in variables.items():
        cmd[1:1] = ["-v", f"{name}={value}"]
    out = subprocess.run(cmd, input="SET extra_float_digits = 3;\n" + sql, text=True,
                         capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return out.stdout


def fetch(url, key, event):
    """The page and, in the same way, the numbers it must show."""
    page_b64 = psql(url, "SELECT encode(convert_to(amba._report(:'key'::text, :'event'::text), 'UTF8'), 'base64');",
                    key=key, event=event)
    html = base64.b64decode(page_b64).decode("utf-8")
    experiment = json.loads(psql(url, "SELECT amba._get_experiment(:'key'::text);", key=key))
    results = json.loads(psql(
        url, "SELECT coalesce(json_agg(r ORDER BY o), '[]') FROM amba._results("
             ":'key'::text, :'event'::text, 0.05::double precision) WITH ORDINALITY r"
             "(variant, is_control, assigned_count, exposed_count, converted_count, conversion_rate,"
             " z_score, p_value, lift, lift_ci_low, lift_ci_high, chance_to_win, p_value_holm,"
             " sequential_p_value, srm_p_value, o);", key=key, event=event))
    daily = json.loads(psql(
        url, "SELECT coalesce(json_agg(d ORDER BY o), '[]') FROM amba._results_daily("
             ":'key'::text, :'event'::text, 0.05::double precision) WITH ORDINALITY d"
             "(day, variant, is_control, exposed_count, converted_count, conversion_rate, lift,"
             " lift_ci_low, lift_ci_high, p_value, sequential_p_value, lift_cs_low, lift_cs_high, o);",
        key=key, event=event))
    return html, experiment, results, daily


def state(url, key):
    """What rendering must not change: the experiment's row, its history, its weights."""
    return json.loads(psql(url, """
        SELECT json_build_object(
            'status', e.status, 'revision', e.revision, 'weight_version', e.weight_version,
            'updated_at', e.updated_at,
            'history', (SELECT json_agg(h.history_id ORDER BY h.history_id) FROM amba.experiment_history h
                         WHERE h.experiment_key = e.key),
            'versions', (SELECT count(*) FROM amba.weight_versions w WHERE w.experiment_id = e.id),
            'assignments', (SELECT count(*) FROM amba.assignments a WHERE a.experiment_id = e.id))
          FROM amba.experiments e WHERE e.key = :'key';""", key=key))


def fetch_v030(url, key, event, experiment):
    """The 0.3.0 sources of the page (guardrail status, auto_pause, results by segment,
    weight versions) and the raw rows to recount from."""
    out = {}
    out["guardrails"] = json.loads(psql(url, """
        SELECT coalesce(json_agg(g ORDER BY o), '[]') FROM amba._guardrail_status(:'key'::text)
          WITH ORDINALITY g(experiment_key, guardrail, variant, lift, cs_low, cs_high, tripped, paused, o);""",
        key=key)) if experiment.get("guardrails") else []
    out["auto_pause"] = json.loads(psql(url, """
        SELECT coalesce((SELECT json_build_object('at', to_char(h.changed_at AT TIME ZONE 'UTC',
                                                               'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                                  'tripped', h.after->'tripped')
                           FROM amba.experiment_history h
                          WHERE h.experiment_key = :'key' AND h.action = 'auto_pause'
                          ORDER BY h.history_id DESC LIMIT 1), 'null');""", key=key))
    out["by"] = {}
    for dim in experiment.get("dimensions") or []:
        out["by"][dim] = json.loads(psql(url, """
            SELECT coalesce(json_agg(b ORDER BY o), '[]') FROM amba._results_by(:'key'::text, :'event'::text,
                :'dim'::text, 0.05::double precision) WITH ORDINALITY b(dimension_value, variant, is_control,
                assigned_count, exposed_count, converted_count, conversion_rate, z_score, p_value, lift,
                lift_ci_low, lift_ci_high, chance_to_win, p_value_holm, sequential_p_value, srm_p_value, o);""",
            key=key, event=event, dim=dim))
    out["versions"] = json.loads(psql(url, """
        SELECT coalesce(json_agg(json_build_object('version', w.version, 'keys', w.variant_keys,
                   'weights', w.weights, 'at', to_char(w.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                   ORDER BY w.version), '[]')
          FROM amba.weight_versions w JOIN amba.experiments e ON e.id = w.experiment_id WHERE e.key = :'key';""",
        key=key))
    # Raw rows: every assignment with its exposure, override, segment values, and the times
    # and properties of the user's events (any name; filtered here).
    out["raw"] = json.loads(psql(url, """
        SELECT coalesce(json_agg(json_build_object(
                   'user', a.user_id, 'variant', a.variant, 'assigned_at', extract(epoch FROM a.assigned_at),
                   'exposed', x.user_id IS NOT NULL, 'overridden', o.user_id IS NOT NULL,
                   'dims', d.dimension_values,
                   'events', (SELECT json_agg(json_build_object('event', v.event,
                                  'at', extract(epoch FROM v.occurred_at), 'properties', v.properties))
                                FROM amba.events v WHERE v.user_id = a.user_id))), '[]')
          FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
          LEFT JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id
          LEFT JOIN amba.overrides o ON o.experiment_id = a.experiment_id AND o.user_id = a.user_id
          LEFT JOIN amba.assignment_dimensions d ON d.experiment_id = a.experiment_id AND d.user_id = a.user_id
         WHERE e.key = :'key';""", key=key))
    return out


def user_value(row, event, value_property=None):
    """A user's value by hand: did they have `event` at or after assignment (conversion), or
    the sum of its numeric `value_property` (mean, SPEC §3c), or the count without one."""
    evs = [e for e in (row["events"] or []) if e["event"] == event and e["at"] >= row["assigned_at"]]
    if value_property is None:
        return len(evs)
    total = 0.0
    for e in evs:
        v = (e["properties"] or {}).get(value_property)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            total += v
    return total


def parse_value(s):
    if s is None or s == "":
        return None
    return float(s)


def same(a, b):
    """Equal to REL_TOL relative (NULL only equals NULL)."""
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def number_in(text):
    t = text.replace("−", "-").replace(",", "").replace("%", "").strip()
    return float(t)


def shown_ok(col, value, text):
    """Is `text` the readable form of `value` for this column?"""
    text = text.strip()
    if value is None:
        return text == "—"
    if col in COUNT_COLS:
        return text == f"{int(value):,}"
    if col in P_COLS:
        if value < 0.0001:
            return text == "< 0.0001"
        digits = re.sub(r"^0\.0*", "", text).replace(".", "")
        if not re.fullmatch(r"\d+\.\d+", text) or len(digits) != 4:
            return False
        e = math.floor(math.log10(value))
        return abs(float(text) - value) <= 0.5 * 10 ** (e - 3) * (1 + 1e-9) + 1e-15
    if col in PCT_COLS:
        if not re.fullmatch(r"[+−]?\d+\.\d{2}%", text):
            return False
        if col != "conversion_rate" and value * 100 >= 0.005 and not text.startswith("+"):
            return False
        return abs(number_in(text) / 100 - value) <= 0.00005 * (1 + 1e-9) + 1e-15
    if col == "chance_to_win":
        if value > 0.9999:
            return text == "> 99.99%"
        if value < 0.0001:
            return text == "< 0.01%"
        return bool(re.fullmatch(r"\d+\.\d{2}%", text)) and \
            abs(number_in(text) / 100 - value) <= 0.00005 * (1 + 1e-9)
    return True


def coverage_shown_ok(value, text):
    """A coverage share as a percentage with at most 2 decimals ("80%", "12.5%"), "< 0.01%"
    for a positive share below that."""
    text = text.strip()
    if value is None:
        return text == "—"
    if 0 < value < 0.00005:
        return text == "< 0.01%"
    if not re.fullmatch(r"\d+(\.\d{1,2})?%", text) or re.fullmatch(r".*\.\d*0%", text):
        return False
    return abs(number_in(text) / 100 - value) <= 0.00005 * (1 + 1e-9) + 1e-15


def pos_shown_ok(value, text):
    """A position in a layer as 2 decimals ("0.30"), or up to 4 with no trailing zero
    ("0.125") when 2 would round it."""
    m = re.fullmatch(r"\d+\.(\d{2,4})", text)
    if not m or value is None:
        return False
    if len(m.group(1)) > 2 and (m.group(1).endswith("0") or abs(round(value, 2) - value) < 0.00005):
        return False
    return abs(float(text) - value) <= 0.00005 * (1 + 1e-9) + 1e-15


def run(args):
    c = Checks()
    before = state(args.database_url, args.experiment)
    html, experiment, results, daily = fetch(args.database_url, args.experiment, args.event)
    v030 = fetch_v030(args.database_url, args.experiment, args.event, experiment)
    if experiment.get("status") == "active" and experiment.get("guardrails"):
        c.check(any(g["tripped"] for g in v030["guardrails"]) or not args.expect_tripping,
                "a guardrail of this active experiment trips (rendering must still pause nothing)",
                repr(v030["guardrails"]))
    if args.save_html:
        os.makedirs(os.path.dirname(os.path.abspath(args.save_html)), exist_ok=True)
        with open(args.save_html, "w", encoding="utf-8") as f:
            f.write(html)
    c.check(html.startswith("<!DOCTYPE html>"), "the report is an HTML5 document")
    c.check(bool(results), "amba._results returned rows", f"{len(results)} rows")

    requests, blocked, console_errors, page_errors, dialogs = [], [], [], [], []
    served = []
    profile = tempfile.mkdtemp(prefix="amba-report-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900}, device_scale_factor=1,
                offline=False, java_script_enabled=True, service_workers="block")

            def route(r):
                req = r.request
                if req.url == REPORT_URL and req.resource_type == "document" and not served:
                    served.append(req.url)
                    r.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)
                else:
                    blocked.append(req.url)
                    r.abort()

            context.route("**/*", route)
            context.on("request", lambda req: requests.append(req.url))
            context.add_init_script(
                "window.__alerts = [];"
                "for (const f of ['alert', 'confirm', 'prompt', 'print']) {"
                "  window[f] = (...a) => { window.__alerts.push(f + ':' + a.join(' ')); };"
                "}")
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(REPORT_URL, wait_until="load")
            page.wait_for_timeout(400)

            check_page(c, page, experiment, results, daily, args)
            check_v030(c, page, experiment, v030, args)

            os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
            page.screenshot(path=args.screenshot, full_page=True)
            print(f"# screenshot: {args.screenshot}")
            alerts = page.evaluate("window.__alerts")
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    # Rendering is read-only: render once more in a transaction of its own and compare.
    psql(args.database_url, "SELECT length(amba._report(:'key'::text, :'event'::text)) > 0;",
         key=args.experiment, event=args.event)
    after = state(args.database_url, args.experiment)
    c.check(after == before, "rendering the report changed nothing (status, revision, weights, history)",
            f"before {before} after {after}")
    short = lambda msgs: f"{len(msgs)}: " + "; ".join(m[:160] for m in msgs[:4])
    c.check(not console_errors, "no console errors", short(console_errors))
    c.check(not page_errors, "no page errors", short(page_errors))
    c.check(not dialogs and not alerts, "no alert/confirm/prompt ever fired", f"{dialogs} {alerts}")
    c.check(requests == [REPORT_URL] and not blocked,
            "no network request besides the document itself",
            f"requests={requests[:6]} blocked={blocked[:6]}")
    print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


def check_page(c, page, experiment, results, daily, args):
    # --- Who and what: user texts appear as text, exactly.
    field = lambda name: page.evaluate(
        "n => { const e = document.querySelector(`[data-field=\"${n}\"]`); return e && e.textContent; }", name)
    name = experiment.get("name")
    if name and name.strip():
        c.check(field("name") == name, "experiment name shown as text", repr(field("name")))
        c.check(name in page.title(), "document title names the experiment", page.title())
    desc = experiment.get("description")
    if desc:
        c.check(field("description") == desc, "description shown as text", repr(field("description")))
    c.check(field("key") == experiment["key"], "experiment key shown", repr(field("key")))
    c.check(field("event") == args.event, "conversion event shown as text", repr(field("event")))
    c.check(field("status") == experiment.get("status"), "status shown", repr(field("status")))

    # --- Who may be enrolled (SPEC §10): the condition as JSON text (or "everyone"), the
    # coverage as a percentage with its exact value.
    targeting = experiment.get("targeting")
    shown = field("targeting")
    if targeting:
        try:
            parsed = json.loads(shown) if shown is not None else None
        except ValueError:
            parsed = None
        c.check(parsed == targeting, "targeting condition shown as JSON text, equal to the experiment's",
                f"{shown!r} vs {targeting!r}")
    else:
        c.check(shown == "everyone", "no targeting condition: shown as everyone", repr(shown))
    coverage = experiment.get("coverage", 1)
    cov = page.evaluate("(() => { const e = document.querySelector('[data-field=\"coverage\"]');"
                        " return e && [e.getAttribute('data-value'), e.textContent]; })()")
    c.check(cov is not None and same(parse_value(cov[0]), coverage), "coverage shown, exact value",
            f"{cov!r} vs {coverage!r}")
    c.check(cov is not None and coverage_shown_ok(coverage, cov[1]),
            "coverage shown as a percentage", f"{coverage!r} shown as {cov and cov[1]!r}")
    audience = page.evaluate("""() => { const a = document.getElementById('audience');
        const h = document.querySelector('.header-card'); return !!(a && h && h.contains(a)); }""")
    c.check(audience, "targeting and coverage are in the header")

    # --- Layer and holdout (SPEC §11), in the same line, after the targeting.
    order = page.evaluate("""() => { const a = document.getElementById('audience');
        return a && Array.from(a.querySelectorAll('[data-field]')).map(e => e.getAttribute('data-field'))
                     .filter(f => f !== 'layer-freed'); }""")
    c.check(order == ["targeting", "layer", "coverage", "holdout"],
            "who may be enrolled, in amba's order: targeting, layer, coverage, holdout", repr(order))
    layer = experiment.get("layer")
    lay = page.evaluate("""() => { const e = document.querySelector('[data-field="layer"]');
        const f = document.querySelector('[data-field="layer-freed"]');
        return e && {text: e.textContent, key: e.getAttribute('data-layer-key'),
                     start: e.getAttribute('data-start'), end: e.getAttribute('data-end'),
                     none: e.hasAttribute('data-none'), freed: f && f.textContent}; }""")
    if not layer:
        c.check(lay is not None and lay["none"] and lay["text"] == "none" and not lay["freed"],
                "no layer: shown as none", repr(lay))
    elif layer.get("start") is None or layer.get("end") is None:
        c.check(lay is not None and lay["key"] == layer["key"] and lay["text"] == layer["key"]
                and lay["start"] == "" and lay["end"] == "" and bool(lay["freed"])
                and "freed" in lay["freed"],
                "ended: the layer's key shown as text, its range freed", f"{lay!r} vs {layer!r}")
    else:
        m = re.fullmatch(r"(.*) \[(\S+), (\S+)\)", lay["text"] if lay else "", re.S)
        c.check(bool(m) and m.group(1) == layer["key"] and lay["key"] == layer["key"] and not lay["none"],
                "layer key shown as text, exactly (and in data-layer-key)", f"{lay!r} vs {layer!r}")
        c.check(lay is not None and same(parse_value(lay["start"]), layer["start"])
                and same(parse_value(lay["end"]), layer["end"]),
                "layer range: exact bounds in data-start / data-end", f"{lay!r} vs {layer!r}")
        c.check(bool(m) and pos_shown_ok(layer["start"], m.group(2)) and pos_shown_ok(layer["end"], m.group(3)),
                "layer range shown as [start, end) with 2 (up to 4) decimals",
                f"{layer['start']!r}, {layer['end']!r} shown as {lay and lay['text']!r}")
    holdout = experiment.get("holdout")
    hold = page.evaluate("""() => { const e = document.querySelector('[data-field="holdout"]');
        return e && {text: e.textContent, none: e.hasAttribute('data-none')}; }""")
    if holdout:
        c.check(hold is not None and not hold["none"] and hold["text"] == holdout,
                "holdout key shown as text, exactly", f"{hold!r} vs {holdout!r}")
    else:
        c.check(hold is not None and hold["none"] and hold["text"] == "none",
                "no holdout: shown as none", repr(hold))
    gen = page.evaluate("(() => { const t = document.querySelector('time[data-field=\"generated-at\"]');"
                        " return t && [t.getAttribute('datetime'), t.textContent]; })()")
    ok = False
    if gen:
        when = dt.datetime.strptime(gen[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        ok = abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 600 and gen[1].endswith("UTC")
    c.check(ok, "generation time shown (UTC, just now)", repr(gen))

    # --- Nothing injected.
    dom = page.evaluate("""() => {
        const all = Array.from(document.querySelectorAll('*'));
        return {
          tags: Array.from(new Set(all.map(e => e.tagName.toLowerCase()))),
          on: all.flatMap(e => Array.from(e.attributes).filter(a => /^on/i.test(a.name))
                                   .map(a => e.tagName + '@' + a.name)),
          hrefs: all.flatMap(e => Array.from(e.attributes)
                   .filter(a => /^(href|src|xlink:href|srcset|action|formaction|background|poster)$/i.test(a.name))
                   .map(a => e.tagName + '@' + a.name + '=' + a.value)),
          urls_in_style: Array.from(document.querySelectorAll('style')).map(s => s.textContent)
                   .filter(t => /url\\(|@import/i.test(t)).length,
          scripts: document.scripts.length,
          overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
          table_overflow: Array.from(document.querySelectorAll('.table-wrap'))
                   .map(w => w.scrollWidth - w.clientWidth).reduce((a, b) => Math.max(a, b), 0),
        };
    }""")
    unexpected = sorted(set(dom["tags"]) - ALLOWED_TAGS)
    c.check(not unexpected, "only expected elements (no injected <img>, <script>, ...)", str(unexpected))
    c.check(dom["scripts"] == 0, "no <script> element", str(dom["scripts"]))
    c.check(not dom["on"], "no event-handler attribute", str(dom["on"][:5]))
    c.check(not dom["hrefs"] and dom["urls_in_style"] == 0, "no external reference (href/src/url())",
            str(dom["hrefs"][:5]))
    c.check(dom["overflow"] <= 0 and dom["table_overflow"] <= 0,
            "no horizontal overflow at 1280 px (page and results table)",
            f"page {dom['overflow']} px, table {dom['table_overflow']} px")

    # --- The table: one row per variant, in order, numbers exact, shown readably.
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('#results-table tbody tr')).map(r => ({
        variant: r.getAttribute('data-variant'),
        key: (r.querySelector('[data-field="variant-key"]') || {}).textContent,
        cells: Array.from(r.querySelectorAll('[data-col]')).map(e => [e.getAttribute('data-col'),
               e.getAttribute('data-value'), e.firstChild && e.firstChild.nodeType === 3
               ? e.firstChild.textContent : e.textContent]),
    }))""")
    c.check([r["variant"] for r in rows] == [r["variant"] for r in results],
            "a table row per variant, in order (data-variant = raw key)",
            f"{[r['variant'] for r in rows]}")
    c.check([r["key"] for r in rows] == [r["variant"] for r in results],
            "variant keys shown as text, exactly", f"{[r['key'] for r in rows]}")
    weights = {v["key"]: v["weight"] for v in experiment.get("variants", [])}
    bad_values, bad_shown, missing = [], [], []
    for row, res in zip(rows, results):
        cells = {}
        for col, val, text in row["cells"]:
            if col in cells:
                missing.append(f"{row['variant']}: {col} twice")
            cells[col] = (val, text)
        for col in TABLE_COLS:
            if col not in cells:
                missing.append(f"{row['variant']}: {col}")
                continue
            val, text = cells[col]
            if not same(parse_value(val), res[col]):
                bad_values.append(f"{row['variant']}.{col}: page {val!r} vs results {res[col]!r}")
            if not shown_ok(col, res[col], text):
                bad_shown.append(f"{row['variant']}.{col}: {res[col]!r} shown as {text!r}")
        if "weight" in cells and not same(parse_value(cells["weight"][0]), weights.get(res["variant"])):
            bad_values.append(f"{row['variant']}.weight: {cells['weight'][0]!r} vs {weights.get(res['variant'])!r}")
    c.check(not missing, "every results column present once per row", "; ".join(missing[:6]))
    c.check(not bad_values, f"table values equal amba._results (rel. {REL_TOL:g})", "; ".join(bad_values[:6]))
    c.check(not bad_shown, "numbers formatted readably (%, 4 significant digits, '—' for NULL)",
            "; ".join(bad_shown[:6]))
    srm = results[0]["srm_p_value"] if results else None
    srm_shown = page.evaluate("(() => { const e = document.querySelector('[data-col=\"srm_p_value\"]');"
                              " return e && e.getAttribute('data-value'); })()")
    c.check(srm_shown is not None and same(parse_value(srm_shown), srm), "SRM p-value shown, exact",
            f"{srm_shown!r} vs {srm!r}")

    # --- The SRM warning: iff srm_p_value < 0.001, visible, above the results.
    warn = page.evaluate("""() => { const w = document.getElementById('srm-warning');
        if (!w) return null; const b = w.getBoundingClientRect();
        const t = document.getElementById('results-table').getBoundingClientRect();
        return {h: b.height, above: b.bottom <= t.top, text: w.textContent}; }""")
    expect_warn = srm is not None and srm < 0.001
    c.check((warn is not None) == expect_warn, f"SRM warning {'present' if expect_warn else 'absent'}"
            f" (srm_p_value = {srm!r})", repr(warn and warn["text"][:80]))
    if warn:
        c.check(warn["h"] > 40 and warn["above"] and "do not trust" in warn["text"].lower(),
                "SRM warning is prominent, above the table, and says not to trust the results")

    # --- Charts.
    non_control = [r for r in results if not r["is_control"]]
    exposed = sum(r["exposed_count"] or 0 for r in results)
    charts = page.evaluate("""() => ({
        svgs: document.querySelectorAll('svg.chart').length,
        forest: !!document.querySelector('svg.forest'),
        rows: Array.from(document.querySelectorAll('svg.forest g.forest-row')).map(g => g.getAttribute('data-variant')),
        markers: Array.from(document.querySelectorAll('svg.forest .lift-marker')).map(m =>
                 [m.getAttribute('data-variant'), m.getAttribute('data-value'), m.getBBox().width > 0]),
        zero: document.querySelectorAll('svg.forest line.zero').length,
        panels: Array.from(document.querySelectorAll('svg.timeseries')).map(s => ({
            variant: s.getAttribute('data-variant'),
            band: s.querySelectorAll('.cs-band').length,
            line: s.querySelectorAll('.lift-line').length,
            zero: s.querySelectorAll('line.zero').length,
            points: Array.from(s.querySelectorAll('.ts-point')).map(p => [p.getAttribute('data-day'),
                    p.getAttribute('data-value'), p.getAttribute('data-cs-low'), p.getAttribute('data-cs-high')]),
        })),
        notice: !!document.getElementById('no-exposures'),
    })""")
    if exposed == 0:
        c.check(charts["notice"], "nobody exposed: the page says so")
        c.check(charts["svgs"] == 0, "nobody exposed: no charts", f"{charts['svgs']} charts")
        return
    c.check(not charts["notice"], "no 'no exposures' notice when users are exposed")
    c.check(charts["forest"] and charts["zero"] == 1, "lift chart (forest plot) with a zero line")
    c.check(charts["rows"] == [r["variant"] for r in non_control],
            "lift chart has a row per non-control variant", str(charts["rows"]))
    with_lift = [r for r in non_control if r["lift"] is not None]
    c.check([m[0] for m in charts["markers"]] == [r["variant"] for r in with_lift],
            "one lift marker per non-control variant (with a lift)", str(charts["markers"]))
    c.check(all(m[2] for m in charts["markers"]), "lift markers are rendered")
    c.check(all(same(parse_value(m[1]), r["lift"]) for m, r in zip(charts["markers"], with_lift)),
            "lift markers carry the exact lift")
    c.check([p["variant"] for p in charts["panels"]] == [r["variant"] for r in non_control],
            "one lift-over-time chart per non-control variant", str([p["variant"] for p in charts["panels"]]))
    bad = []
    for panel in charts["panels"]:
        rows_d = [d for d in daily if d["variant"] == panel["variant"] and d["lift"] is not None]
        want = [(d["day"], d["lift"], d["lift_cs_low"], d["lift_cs_high"]) for d in rows_d]
        got = panel["points"]
        if len(got) != len(want):
            bad.append(f"{panel['variant']}: {len(got)} points, {len(want)} days with a lift")
            continue
        for g, w in zip(got, want):
            if g[0] != w[0] or not all(same(parse_value(a), b) for a, b in zip(g[1:], w[1:])):
                bad.append(f"{panel['variant']} {w[0]}: page {g} vs daily {w}")
                break
        if want and panel["line"] != 1:
            bad.append(f"{panel['variant']}: no lift line")
        if any(w[2] is not None for w in want) and panel["band"] < 1:
            bad.append(f"{panel['variant']}: no always-valid band")
        if want and panel["zero"] != 1:
            bad.append(f"{panel['variant']}: no zero line")
    c.check(not bad, "lift-over-time points equal amba._results_daily; line, band and zero line drawn",
            "; ".join(bad[:4]))


def check_v030(c, page, experiment, v030, args):
    """Guardrails, auto-pause banner, segments and bandit weights (SPEC §12-§14)."""
    raw = [r for r in v030["raw"] if r["exposed"] and not r["overridden"]]
    control = (experiment.get("variants") or [{}])[0].get("key")

    # --- Guardrails.
    guardrails = experiment.get("guardrails")
    section = page.evaluate("!!document.getElementById('guardrails')")
    if not guardrails:
        c.check(not section, "no guardrails: no guardrail section")
    else:
        rows = page.evaluate("""() => Array.from(document.querySelectorAll('#guardrails-table tbody tr[data-guardrail]'))
            .map(r => ({guardrail: +r.getAttribute('data-guardrail'), variant: r.getAttribute('data-variant'),
                        key: (r.querySelector('[data-field="variant-key"]') || {}).textContent,
                        tripped: r.getAttribute('data-tripped'),
                        status: (r.querySelector('[data-col="status"]') || {}).textContent,
                        vals: Object.fromEntries(Array.from(r.querySelectorAll('[data-value]'))
                              .map(e => [e.getAttribute('data-col'), e.getAttribute('data-value')]))}))""")
        want = v030["guardrails"]
        c.check([(r["guardrail"], r["variant"]) for r in rows] == [(g["guardrail"], g["variant"]) for g in want],
                "a guardrail row per guardrail and variant, in order", f"{rows!r} vs {want!r}")
        c.check(all(r["key"] == g["variant"] for r, g in zip(rows, want)), "guardrail variant keys shown as text")
        bad = [f"{g['guardrail']}/{g['variant']}.{col}: {r['vals'].get(col)!r} vs {g[col]!r}"
               for r, g in zip(rows, want) for col in ("lift", "cs_low", "cs_high")
               if not same(parse_value(r["vals"].get(col)), g[col])]
        c.check(not bad, "guardrail lift and always-valid interval equal amba._guardrail_status", "; ".join(bad[:4]))
        c.check(all((r["tripped"] == "true") == g["tripped"] and (("tripped" in r["status"]) == g["tripped"])
                    for r, g in zip(rows, want)),
                "tripped shown exactly where it trips", repr([(r["tripped"], r["status"]) for r in rows]))
        c.check(all(not g["paused"] for g in want), "amba._guardrail_status never reports a pause")
        # The lift by hand: each guardrail's per-user values over exposed users.
        bad = []
        for g in want:
            spec = guardrails[g["guardrail"]]
            prop = spec.get("value_property") if spec.get("kind") == "mean" else None

            def mean(variant):
                vals = [user_value(u, spec["event"], prop) for u in raw if u["variant"] == variant]
                if spec.get("kind") != "mean":
                    vals = [1 if v > 0 else 0 for v in vals]
                return sum(vals) / len(vals) if vals else None

            mc, mt = mean(control), mean(g["variant"])
            lift = mt / mc - 1 if mc and mt is not None else None
            if not (lift is None and g["lift"] is None) and (lift is None or g["lift"] is None
                                                             or abs(lift - g["lift"]) > 1e-9 * max(1, abs(lift))):
                bad.append(f"{g['guardrail']}/{g['variant']}: by hand {lift!r}, amba {g['lift']!r}")
        c.check(not bad, "guardrail lifts equal a computation by hand from the raw rows", "; ".join(bad))

    # --- The auto-pause banner (latest auto_pause history row).
    banner = page.evaluate("""() => { const b = document.getElementById('auto-pause'); if (!b) return null;
        const t = document.getElementById('results-table').getBoundingClientRect();
        return {at: b.getAttribute('data-paused-at'), text: b.textContent,
                above: b.getBoundingClientRect().bottom <= t.top,
                time: (b.querySelector('time[data-field="auto-paused-at"]') || {}).textContent,
                items: Array.from(b.querySelectorAll('.tripped-item')).map(i => ({
                    guardrail: +i.getAttribute('data-guardrail'), variant: i.getAttribute('data-variant'),
                    vals: Object.fromEntries(Array.from(i.querySelectorAll('[data-value]'))
                          .map(e => [e.getAttribute('data-col'), e.getAttribute('data-value')]))}))}; }""")
    ap = v030["auto_pause"]
    c.check((banner is not None) == (ap is not None),
            f"auto-pause banner {'present' if ap else 'absent'}", repr(banner and banner["text"][:100]))
    if ap and banner:
        c.check(banner["at"] == ap["at"] and banner["time"] == ap["at"].replace("T", " ").replace("Z", " UTC"),
                "the banner says when (the auto_pause row's time, UTC)", f"{banner['at']!r} {banner['time']!r} vs {ap['at']!r}")
        want = ap["tripped"] or []
        ok = [(i["guardrail"], i["variant"]) for i in banner["items"]] == [(t["guardrail"], t["variant"]) for t in want] \
            and all(same(parse_value(i["vals"].get(k)), t[k]) for i, t in zip(banner["items"], want)
                    for k in ("lift", "cs_low", "cs_high"))
        c.check(ok and bool(want), "the banner names each tripping guardrail and variant, with its numbers",
                f"{banner['items']!r} vs {want!r}")
        c.check(banner["above"] and ("paused automatically" in banner["text"].lower()),
                "the banner is above the results and says the experiment was paused automatically")

    # --- Segments: amba._results_by per dimension, and the counts by hand.
    dims = experiment.get("dimensions") or []
    if not dims:
        c.check(not page.evaluate("!!document.getElementById('segments')"), "no dimensions: no segment section")
    for dim in dims:
        rows = page.evaluate("""d => Array.from(document.querySelectorAll('table.segments-table')).filter(
                t => t.getAttribute('data-dimension') === d).flatMap(t => Array.from(t.querySelectorAll('tbody tr[data-variant]')))
            .map(r => ({value: r.hasAttribute('data-null') ? null : r.getAttribute('data-dimension-value'),
                        shown: (r.querySelector('[data-field="dimension-value"]') || {}).textContent,
                        variant: r.getAttribute('data-variant'),
                        vals: Object.fromEntries(Array.from(r.querySelectorAll('[data-col]'))
                              .map(e => [e.getAttribute('data-col'), [e.getAttribute('data-value'),
                                         e.firstChild && e.firstChild.nodeType === 3 ? e.firstChild.textContent : e.textContent]]))}))""",
            dim)
        want = v030["by"][dim]
        c.check([(r["value"], r["variant"]) for r in rows] == [(w["dimension_value"], w["variant"]) for w in want],
                f"by {dim}: a row per (value, variant), in amba._results_by's order",
                f"{[(r['value'], r['variant']) for r in rows]} vs {[(w['dimension_value'], w['variant']) for w in want]}")
        c.check(all((r["shown"] == w["dimension_value"]) if w["dimension_value"] is not None else r["shown"] == "(no value)"
                    for r, w in zip(rows, want)),
                f"by {dim}: values shown as text, exactly (NULL as '(no value)')", repr([r["shown"] for r in rows]))
        bad, bad_shown = [], []
        for r, w in zip(rows, want):
            for col in ("exposed_count", "converted_count", "conversion_rate", "lift", "lift_ci_low",
                        "lift_ci_high", "p_value_holm"):
                val, text = r["vals"].get(col, (None, None))
                if col not in r["vals"] or not same(parse_value(val), w[col]):
                    bad.append(f"{w['dimension_value']}/{w['variant']}.{col}: {val!r} vs {w[col]!r}")
                elif not shown_ok(col if col != "p_value_holm" else "p_value", w[col], text or ""):
                    bad_shown.append(f"{col}: {w[col]!r} shown as {text!r}")
        c.check(not bad, f"by {dim}: numbers equal amba._results_by", "; ".join(bad[:4]))
        c.check(not bad_shown, f"by {dim}: numbers formatted readably", "; ".join(bad_shown[:4]))
        # By hand: exposed users with the value, and those with the event at/after assignment.
        counts = {}
        for u in raw:
            v = (u["dims"] or {}).get(dim)
            k = (v, u["variant"])
            n, conv = counts.get(k, (0, 0))
            counts[k] = (n + 1, conv + (1 if user_value(u, args.event) > 0 else 0))
        got = {(r["value"], r["variant"]): (int(float(r["vals"]["exposed_count"][0])),
                                           int(float(r["vals"]["converted_count"][0]))) for r in rows
               if "exposed_count" in r["vals"]}
        hand = {k: v for k, v in counts.items()}
        c.check(bool(hand) and all(got.get(k, (0, 0)) == v for k, v in hand.items())
                and all(v == (0, 0) or k in hand for k, v in got.items()),
                f"by {dim}: exposed and converted equal a count by hand from the raw rows",
                f"page {sorted(got.items(), key=repr)[:6]} vs hand {sorted(hand.items(), key=repr)[:6]}")

    # --- Bandit weights over time.
    if not experiment.get("bandit"):
        c.check(not page.evaluate("!!document.getElementById('bandit')"), "not a bandit: no weights section")
        return
    shown = page.evaluate("""() => ({
        rows: Array.from(document.querySelectorAll('#weights-table tbody tr[data-version]')).map(r => ({
            version: +r.getAttribute('data-version'),
            at: (r.querySelector('time[data-field="version-created"]') || {getAttribute: () => null}).getAttribute('datetime'),
            weights: Object.fromEntries(Array.from(r.querySelectorAll('td[data-variant]'))
                     .map(e => [e.getAttribute('data-variant'), e.getAttribute('data-value')]))})),
        bars: Array.from(document.querySelectorAll('svg.weights g.wv-row')).map(g => ({
            version: +g.getAttribute('data-version'),
            segs: Array.from(g.querySelectorAll('rect.wv-seg')).map(s => [s.getAttribute('data-variant'),
                  +s.getAttribute('data-share'), s.getBBox().width])}))})""")
    want = v030["versions"]
    c.check(len(want) >= 2 and [r["version"] for r in shown["rows"]] == [w["version"] for w in want],
            "a row per weight version, in order", f"{[r['version'] for r in shown['rows']]} vs {[w['version'] for w in want]}")
    bad = []
    for r, w in zip(shown["rows"], want):
        if r["at"] != w["at"]:
            bad.append(f"v{w['version']} at {r['at']!r} vs {w['at']!r}")
        for k, wt in zip(w["keys"], w["weights"]):
            if not same(parse_value(r["weights"].get(k)), wt):
                bad.append(f"v{w['version']}.{k}: {r['weights'].get(k)!r} vs {wt!r}")
    c.check(not bad, "each version's time and weights equal amba.weight_versions", "; ".join(bad[:4]))
    bad = []
    for b, w in zip(shown["bars"], want):
        total = sum(w["weights"])
        exp_segs = [(k, wt / total) for k, wt in zip(w["keys"], w["weights"]) if wt > 0]
        if [s[0] for s in b["segs"]] != [k for k, _ in exp_segs] or \
                not all(abs(s[1] - f) < 1e-12 and s[2] > 0 for s, (_, f) in zip(b["segs"], exp_segs)):
            bad.append(f"v{w['version']}: {b['segs']} vs {exp_segs}")
    c.check(len(shown["bars"]) == len(want) and not bad,
            "weights chart: a stacked bar per version, each variant's share (w / sum), drawn", "; ".join(bad[:3]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgresql://postgres@localhost:28815/report_dev"))
    ap.add_argument("--experiment", required=True, help="experiment key")
    ap.add_argument("--event", required=True, help="conversion event")
    ap.add_argument("--screenshot", default="target/report.png", help="full-page PNG to write")
    ap.add_argument("--save-html", help="also write the HTML here")
    ap.add_argument("--expect-tripping", action="store_true",
                    help="the experiment is active and one of its guardrails must trip")
    args = ap.parse_args()
    if not os.path.exists(CHROMIUM):
        print(f"FAIL - {CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does)")
        print("0 passed, 1 failed")
        return 1
    try:
        return run(args)
    except Exception as e:  # a broken page or database is a failure, not a crash
        print(f"FAIL - {type(e).__name__}: {e}")
        print("0 passed, 1 failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
