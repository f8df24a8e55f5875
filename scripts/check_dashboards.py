#!/usr/bin/env python3
"""The helper of scripts/check-dashboards (standard library only): fetches /metrics, lists
metric families, finds a free port, writes the Prometheus config, waits for scrapes and runs
every dashboard query against the real Prometheus. Called by the shell script, one
sub-command per call; see that script for the whole check."""
import json, os, re, socket, sys, time
import urllib.error, urllib.parse, urllib.request

FAMILIES = {
    "switchyard_streams_started_total": "counter",
    "switchyard_streams_finished_total": "counter",
    "switchyard_events_total": "counter",
    "switchyard_active_streams": "gauge",
    "switchyard_first_event_seconds": "histogram",
    "switchyard_stream_duration_seconds": "histogram",
    "switchyard_socketio_connections": "gauge",
    "switchyard_flag_mode": "gauge",
    "switchyard_flag_percent": "gauge",
    "switchyard_flag_evaluations_total": "counter",
    "switchyard_misrouted_total": "counter",
    "switchyard_flag_changes_total": "counter",
    "switchyard_flag_reload_errors_total": "counter",
    "switchyard_flags_version": "gauge",
    "switchyard_engine_errors_total": "counter",
}
# Grafana's built-in variables, as the check substitutes them.
BUILTINS = {
    "__rate_interval": "1m", "__rate_interval_ms": "60000",
    "__interval": "15s", "__interval_ms": "15000",
    "__range": "5m", "__range_s": "300", "__range_ms": "300000",
}
# Dashboard variables the check substitutes itself: every instance, and each transport in
# turn (as a repeated panel shows one per transport).
INSTANCE_ALL = ".*"
TRANSPORTS = ["socketio", "ndjson", "sse"]
VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def die(msg):
    print(f"check-dashboards: {msg}", file=sys.stderr)
    sys.exit(1)


def http_get(url, timeout=10):
    req = urllib.request.Request(url, headers={"Accept": "*/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def prom_api(prom, path, **params):
    query = urllib.parse.urlencode(params, doseq=True)
    status, body = http_get(f"{prom}{path}?{query}")
    try:
        doc = json.loads(body)
    except ValueError:
        return {"status": "error", "error": f"HTTP {status}: {body[:200]}"}
    return doc


# ------------------------------------------------------------------ metrics text
def cmd_fetch(url, out):
    try:
        status, body = http_get(url)
    except OSError as e:
        die(f"GET {url} failed: {e}")
    if status != 200:
        die(f"GET {url} answered HTTP {status}")
    with open(out, "w") as f:
        f.write(body)
    print(f"fetched {url}: {len(body.splitlines())} lines")


def cmd_families(path):
    types, seen, dups, problems = {}, set(), [], []
    sample_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+\S+(\s+-?\d+)?$")
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            m = sample_re.match(line)
            if m:
                key = (m.group(1), m.group(2) or "")
                if key in seen:
                    dups.append(line)
                seen.add(key)
    for name, typ in FAMILIES.items():
        if name not in types:
            problems.append(f"family {name} ({typ}) is not exported (no # TYPE line)")
        elif types[name] != typ:
            problems.append(f"family {name} has type {types[name]}, SPEC says {typ}")
    for line in dups[:10]:
        problems.append(f"duplicate sample: {line}")
    for p in problems:
        print(f"  FAIL {p}")
    if problems:
        sys.exit(1)
    print(f"all {len(FAMILIES)} SPEC families exported with the right type, no duplicate samples")


# ------------------------------------------------------------------ prometheus
def cmd_freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def cmd_config(bridge, out):
    u = urllib.parse.urlsplit(bridge)
    port = u.port or (443 if u.scheme == "https" else 80)
    target = f"{u.hostname}:{port}" if ":" not in (u.hostname or "") else f"[{u.hostname}]:{port}"
    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "switchyard",
            "scheme": u.scheme,
            "metrics_path": (u.path.rstrip("/") + "/metrics"),
            "static_configs": [{"targets": [target]}],
        }],
    }
    with open(out, "w") as f:
        json.dump(cfg, f, indent=2)  # JSON is YAML
    print(f"scraping {u.scheme}://{target}{cfg['scrape_configs'][0]['metrics_path']} every 1s")


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def cmd_wait(prom, pid, timeout):
    pid, deadline = int(pid), time.monotonic() + float(timeout)
    while True:  # ready
        if not alive(pid):
            die("prometheus exited")
        try:
            if http_get(f"{prom}/-/ready", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            die(f"prometheus not ready after {timeout}s")
        time.sleep(0.25)
    want, got, last_err = 5, 0, ""
    while True:  # >= 5 successful scrapes
        doc = prom_api(prom, "/api/v1/query", query='sum_over_time(up{job="switchyard"}[5m])')
        res = doc.get("data", {}).get("result", []) if doc.get("status") == "success" else []
        got = int(float(res[0]["value"][1])) if res else 0
        if got >= want:
            print(f"prometheus scraped the bridge {got} times")
            return
        targets = prom_api(prom, "/api/v1/targets").get("data", {}).get("activeTargets", [])
        last_err = "; ".join(t.get("lastError", "") for t in targets if t.get("lastError")) or last_err
        if not alive(pid):
            die("prometheus exited")
        if time.monotonic() > deadline:
            die(f"only {got} successful scrapes after {timeout}s" + (f"; last scrape error: {last_err}" if last_err else ""))
        time.sleep(0.5)


# ------------------------------------------------------------------ dashboards
def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def collect(dash_path):
    """[(where, expr)] for every panel target and annotation, plus the dashboard's query variables."""
    d = json.load(open(dash_path))
    board = os.path.basename(dash_path).removesuffix(".json")
    exprs = []
    for p in walk_panels(d.get("panels")):
        # A panel with `noValue` shows it when its query is empty (latency quantiles before
        # any sample, SPEC 9): an empty answer is then what it should get.
        may_be_empty = bool(((p.get("fieldConfig") or {}).get("defaults") or {}).get("noValue"))
        for t in p.get("targets") or []:
            if t.get("expr"):
                exprs.append((f"{board}: {p.get('title', '?')} [{t.get('refId', '?')}]", t["expr"], may_be_empty))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("builtIn"):
            continue
        found = {e for e in ((a.get("target") or {}).get("expr"), a.get("expr")) if e}
        if not found:
            exprs.append((f"{board}: annotation {a.get('name')}", "", False))
        for e in sorted(found):
            exprs.append((f"{board}: annotation {a.get('name')}", e, False))
    variables = [v for v in d.get("templating", {}).get("list", []) if v.get("type") == "query"]
    return board, exprs, variables


def var_query(v):
    q = v.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or v.get("definition", ""))


def label_values(prom, q):
    m = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", q)
    if not m:
        return None, f"unsupported variable query {q!r} (only label_values)"
    params = {"match[]": m.group(1)} if m.group(1) else {}
    doc = prom_api(prom, f"/api/v1/label/{m.group(2)}/values", **params)
    if doc.get("status") != "success":
        return None, doc.get("error", "query failed")
    return doc.get("data", []), None


def substitute(expr, route, transport=""):
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name == "route":
            return route
        if name == "instance":
            return INSTANCE_ALL
        if name == "transport":
            return transport
        if name in BUILTINS:
            return BUILTINS[name]
        unknown.append(name)
        return m.group(0)

    out = VAR_RE.sub(repl, expr)
    return out, unknown


def one_line(expr):
    return re.sub(r"\s+", " ", expr).strip()


def cmd_queries(prom, *dash_paths):
    boards = [collect(p) for p in dash_paths]
    failures = 0

    # Routes to substitute: CHECK_ROUTES, else what the route variable's own query lists.
    routes = [r for r in re.split(r"[\s,]+", os.environ.get("CHECK_ROUTES", "")) if r]
    print("\nTemplate variables")
    for board, _, variables in boards:
        for v in variables:
            q, _ = substitute(var_query(v), "")
            vals, err = label_values(prom, q)
            if err or not vals:
                failures += 1
                print(f"  FAIL  {board}: ${v['name']} = {q}: {err or 'no values'}")
            else:
                print(f"  ok    {board}: ${v['name']} = {q} -> {', '.join(vals)}")
                if v["name"] == "route" and not os.environ.get("CHECK_ROUTES"):
                    routes += [r for r in vals if r not in routes]
    if not routes:
        die("no route to substitute for $route: the bridge exports no route label on "
            "switchyard_streams_started_total (SPEC 9: series are pre-initialised); set CHECK_ROUTES to override")

    # Unique expressions, in order, with every place each one is used.
    uses = {}
    may_be_empty = {}
    for _, exprs, _ in boards:
        for where, expr, empty_ok in exprs:
            uses.setdefault(expr, []).append(where)
            may_be_empty[expr] = may_be_empty.get(expr, True) and empty_ok

    print(f"\nPromQL expressions ({len(uses)} unique; $route = {', '.join(routes)}; "
          f"$__rate_interval={BUILTINS['__rate_interval']}, $__interval={BUILTINS['__interval']}, "
          f"$__range={BUILTINS['__range']})")
    print(f"  {'#':>3}  {'result':<6}  {'series per route':<46}  expression  (used in)")
    for i, (expr, wheres) in enumerate(uses.items(), start=1):
        per_route = routes if re.search(r"\$\{?route\b|\[\[route", expr) else [None]
        per_transport = TRANSPORTS if re.search(r"\$\{?transport\b|\[\[transport", expr) else [None]
        cells, ok = [], bool(expr)
        if not expr:
            cells.append("no expr")
        for route, transport in ((r, t) for r in per_route for t in per_transport):
            q, unknown = substitute(expr, route or "", transport or "")
            tag = ":".join(x for x in (route, transport) if x)
            tag = f"{tag}:" if tag else ""
            if unknown:
                ok = False
                cells.append(f"{tag}unknown ${','.join(unknown)}")
                continue
            doc = prom_api(prom, "/api/v1/query", query=q)
            if doc.get("status") != "success":
                ok = False
                cells.append(f"{tag}ERROR")
                print(f"         {doc.get('errorType', 'error')}: {doc.get('error')}  [{tag or 'query'} {one_line(q)}]")
                continue
            data = doc["data"]
            result = data.get("result")
            if data.get("resultType") in ("scalar", "string"):
                n, nan = 1, str(result[1]).lower() == "nan"
            else:
                n = len(result or [])
                nan = sum(1 for s in result or [] if str((s.get("value") or [0, ""])[1]).lower() == "nan")
            if n == 0 and may_be_empty.get(expr):
                cells.append(f"{tag}no data")
            elif n == 0:
                ok = False
                cells.append(f"{tag}EMPTY")
            else:
                cells.append(f"{tag}{n}" + (f"({nan} NaN)" if nan else ""))
        failures += 0 if ok else 1
        print(f"  {i:>3}  {'ok' if ok else 'FAIL':<6}  {' '.join(cells):<46}  {one_line(expr)}")
        print(f"  {'':>3}  {'':<6}  {'':<46}    ↳ {'; '.join(dict.fromkeys(wheres))}")

    if failures:
        print(f"\n{failures} check(s) FAILED")
    else:
        print(f"\nall {len(uses)} expressions ok")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    try:
        {
            "fetch": cmd_fetch, "families": cmd_families, "freeport": cmd_freeport,
            "config": cmd_config, "wait": cmd_wait, "queries": cmd_queries,
        }[cmd](*args)
    except KeyboardInterrupt:
        sys.exit(130)
