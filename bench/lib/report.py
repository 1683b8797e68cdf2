#!/usr/bin/env python3
"""Summarise an interleaved mirror-bench.sh run (runs/<proxy>/<scenario>-<rep>/):
per-scenario means for every proxy, mirrorctl/nginx ratios, the performance targets of
issue 4 checked one by one, CPU per 100k requests, and chart.png (throughput and p99).

Usage: report.py RESULTS_DIR      writes summary.txt, results.json, chart.png into it."""
import json, os, re, statistics, sys

SC_DESC = {
    "A": "direct -> primary (no proxy)",
    "B": "proxy, mirroring off",
    "C": "100% mirror -> fast shadow",
    "D": "100% mirror -> slow shadow (200 ms)",
    "E": "100% mirror -> shadow port closed",
    "F": "100% mirror -> blackhole shadow",
    "P": "POST 64 KiB, 100% mirror -> fast shadow",
    "N": "100% mirror, new connection per request",
}
ORDER = "ABCDEFPN"
SHORT = {"A": "direct", "B": "no mirror", "C": "fast shadow", "D": "slow shadow", "E": "port closed",
         "F": "blackhole", "P": "POST 64 KiB", "N": "conn/request"}
MIB = 32  # memory target, MiB


def read_env(path):
    d = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            if k:
                d[k] = v
    return d


def num(v, default=0.0):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def parse_wrk(rundir):
    txt = open(os.path.join(rundir, "load.out"), errors="replace").read()
    m = re.search(r"^WRKJSON (\{.*\})$", txt, re.M)
    if not m:
        return None
    w = json.loads(m.group(1))
    dur = w["duration_us"] / 1e6 or 1
    errs = sum(v for k, v in w.items() if k.startswith("err_"))
    return {
        "requests": w["requests"],
        "rps": w["requests"] / dur,
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "p999_ms": w["p999_us"] / 1000,
        "errors": errs,
    }


def log_lines(rundir):
    """Lines the proxy wrote during its life (nginx: error log; mirrorctl: stderr)."""
    n = 0
    for name in ("proxy.error.log", "proxy.out"):
        p = os.path.join(rundir, name)
        if not os.path.exists(p):
            continue
        txt = open(p, errors="replace").read()
        m = re.search(r"truncated, (\d+) lines in total", txt)
        n += int(m.group(1)) if m else txt.count("\n")
    return n


def collect(outdir):
    rows = []
    runs = os.path.join(outdir, "runs")
    for proxy in sorted(os.listdir(runs)):
        for rd in sorted(os.listdir(os.path.join(runs, proxy))):
            path = os.path.join(runs, proxy, rd)
            if not os.path.exists(os.path.join(path, "metrics.env")):
                continue
            env = read_env(os.path.join(path, "metrics.env"))
            load = parse_wrk(path)
            if load is None:
                continue
            tck = num(env.get("clk_tck"), 100) or 100
            cpu_s = num(env.get("proxy_cpu_ticks")) / tck
            rows.append({
                "proxy": proxy, "scenario": env["scenario"], "rep": int(env["rep"]),
                **load,
                "primary_rx": int(num(env.get("primary_received"))),
                "shadow_rx": int(num(env.get("shadow_received"))),
                "rss_mb": num(env.get("proxy_hwm_kb")) / 1024,
                "cpu_s": cpu_s,
                "cpu_s_per_100k": cpu_s / load["requests"] * 1e5 if load["requests"] else 0,
                "loadgen_cpu_s": num(env.get("loadgen_cpu_s")),
                "primary_cpu_s": num(env.get("primary_cpu_ticks")) / tck,
                "shadow_cpu_s": num(env.get("shadow_cpu_ticks")) / tck,
                "log_lines": log_lines(path),
            })
    return rows


def means(rows):
    out = {}
    keys = ["rps", "p50_ms", "p99_ms", "p999_ms", "errors", "primary_rx", "shadow_rx",
            "cpu_s", "cpu_s_per_100k", "loadgen_cpu_s", "primary_cpu_s", "shadow_cpu_s", "log_lines"]
    groups = {}
    for r in rows:
        groups.setdefault((r["proxy"], r["scenario"]), []).append(r)
    for (p, s), rs in groups.items():
        m = {k: statistics.mean(r[k] for r in rs) for k in keys}
        m["rss_mb"] = max(r["rss_mb"] for r in rs)  # peak over runs
        m["runs"] = len(rs)
        out.setdefault(p, {})[s] = m
    return out


def check_targets(M):
    """Issue 4's targets. Returns [(name, value_text, ok)]."""
    ng, mc = M.get("nginx", {}), M.get("mirrorctl", {})
    res = []

    def ratio(a, b):
        return a / b if b else float("nan")

    if "B" in ng and "B" in mc:
        r = ratio(mc["B"]["rps"], ng["B"]["rps"])
        res.append(("B rps >= 1.0x nginx B", f"x{r:.2f}", r >= 1.0))
        res.append(("B p99 <= nginx B", f"{mc['B']['p99_ms']:.2f} vs {ng['B']['p99_ms']:.2f} ms",
                    mc["B"]["p99_ms"] <= ng["B"]["p99_ms"]))
    if "C" in ng and "C" in mc:
        r = ratio(mc["C"]["rps"], ng["C"]["rps"])
        res.append(("C rps >= 2.5x nginx C", f"x{r:.2f}", r >= 2.5))
        share = ratio(mc["C"]["shadow_rx"], mc["C"]["primary_rx"])
        res.append(("C shadow receives >= 99% of primary", f"{share * 100:.2f}%", share >= 0.99))
    for s in "DEF":
        if s in mc and "C" in mc:
            r = ratio(mc[s]["rps"], mc["C"]["rps"])
            res.append((f"{s} rps >= 0.9x mirrorctl C", f"x{r:.2f}", r >= 0.9))
    if "D" in mc and "C" in mc:
        r = ratio(mc["D"]["p99_ms"], mc["C"]["p99_ms"])
        res.append(("D p99 <= 1.2x mirrorctl C", f"x{r:.2f}", r <= 1.2))
    if "E" in mc:
        res.append(("E no log line per request", f"{mc['E']['log_lines']:.0f} lines",
                    mc["E"]["log_lines"] < 20))
    if "F" in mc:
        res.append(("F RSS bounded", f"{mc['F']['rss_mb']:.1f} MiB", mc["F"]["rss_mb"] <= MIB))
    if "P" in ng and "P" in mc:
        r = ratio(mc["P"]["rps"], ng["P"]["rps"])
        res.append(("P (POST 64 KiB) rps >= 2x nginx", f"x{r:.2f}", r >= 2.0))
    if "N" in ng and "N" in mc:
        r = ratio(mc["N"]["rps"], ng["N"]["rps"])
        res.append(("N (conn per request) rps >= 1.0x nginx", f"x{r:.2f}", r >= 1.0))
    if mc:
        peak = max(m["rss_mb"] for m in mc.values())
        res.append((f"peak RSS <= {MIB} MiB in every scenario", f"{peak:.1f} MiB", peak <= MIB))
    return res


def table(M, proxies, scenarios):
    lines = ["scen  proxy          rps   p50_ms   p99_ms  p99.9_ms  errors  primary_rx  shadow_rx"
             "  rss_mb  cpu_s  cpu_s/100k  log_lines  runs"]
    for s in scenarios:
        for p in proxies:
            m = M.get(p, {}).get(s)
            if not m:
                continue
            lines.append(
                f"{s:>4}  {p:<10} {m['rps']:>8.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['p999_ms']:>9.2f}"
                f" {m['errors']:>7.0f} {m['primary_rx']:>11.0f} {m['shadow_rx']:>10.0f}"
                f" {m['rss_mb']:>7.1f} {m['cpu_s']:>6.2f} {m['cpu_s_per_100k']:>11.2f} {m['log_lines']:>10.0f} {m['runs']:>5}")
    return lines


def ratios(M, scenarios):
    ng, mc = M.get("nginx", {}), M.get("mirrorctl", {})
    lines = ["scen  mirrorctl/nginx:   rps      p50      p99   cpu/100k   (scenario)"]
    for s in scenarios:
        if s in ng and s in mc:
            a, b = mc[s], ng[s]
            f = lambda k: f"x{a[k] / b[k]:.2f}" if b[k] else "   -"
            lines.append(f"{s:>4}  {'':17}{f('rps'):>7}  {f('p50_ms'):>7}  {f('p99_ms'):>7}  {f('cpu_s_per_100k'):>9}   {SC_DESC.get(s, '')}")
    return lines


def chart(M, proxies, scenarios, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart (bench/setup installs it)"
    sc = [s for s in scenarios if s != "A"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(proxies))
    for i, p in enumerate(proxies):
        xs = [j + (i - (len(proxies) - 1) / 2) * width for j in range(len(sc))]
        rps = [M.get(p, {}).get(s, {}).get("rps", 0) for s in sc]
        p99 = [M.get(p, {}).get(s, {}).get("p99_ms", 0) for s in sc]
        axes[0].bar(xs, rps, width, label=p)
        axes[1].bar(xs, p99, width, label=p)
    for ax, title, ylabel in ((axes[0], "Throughput (higher is better)", "requests/s"),
                              (axes[1], "p99 latency (lower is better, log scale)", "ms")):
        ax.set_xticks(range(len(sc)))
        ax.set_xticklabels([f"{s}\n{SHORT[s]}" for s in sc], fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend()
    axes[1].set_yscale("log")
    for j, s in enumerate(sc):  # label throughput bars too small to see
        for i, p in enumerate(proxies):
            v = M.get(p, {}).get(s, {}).get("rps")
            if v is not None and v < 1000:
                x = j + (i - (len(proxies) - 1) / 2) * width
                axes[0].annotate(f"{v:.0f}", (x, v), ha="center", va="bottom", fontsize=7)
    fig.suptitle("mirrorctl vs nginx 1.22 mirror, wrk 32 connections, loopback, 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


def main():
    outdir = sys.argv[1]
    rows = collect(outdir)
    M = means(rows)
    proxies = [p for p in ("direct", "nginx", "mirrorctl") if p in M] + \
              sorted(p for p in M if p not in ("direct", "nginx", "mirrorctl"))
    scenarios = [s for s in ORDER if any(s in M[p] for p in M)]
    meta = read_env(os.path.join(outdir, "meta.env")) if os.path.exists(os.path.join(outdir, "meta.env")) else {}
    out = [f"# mirror-bench: proxies={meta.get('proxies', '?')} runs={meta.get('runs', '?')} "
           f"duration={meta.get('duration_s', '?')}s conns={meta.get('connections', '?')} "
           f"post_bytes={meta.get('post_bytes', '?')} {meta.get('host', '')}",
           f"# mirrorctl: {meta.get('mirrorctl_cmd', '')}", ""]
    out += table(M, proxies, scenarios) + [""] + ratios(M, scenarios) + [""]
    out.append("targets (issue 4):")
    for name, val, ok in check_targets(M):
        out.append(f"  [{'ok' if ok else 'MISS'}] {name}: {val}")
    out.append("")
    out.append(chart(M, [p for p in proxies if p != "direct"], scenarios, os.path.join(outdir, "chart.png")))
    text = "\n".join(out) + "\n"
    open(os.path.join(outdir, "summary.txt"), "w").write(text)
    json.dump({"meta": meta, "runs": rows, "means": M,
               "targets": [{"target": n, "value": v, "ok": ok} for n, v, ok in check_targets(M)]},
              open(os.path.join(outdir, "results.json"), "w"), indent=1)
    print(text, end="")


if __name__ == "__main__":
    main()
