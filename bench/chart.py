#!/usr/bin/env python3
"""Draws bench results: throughput and p99 per workload, and GET latency
against store size. Usage: chart.py results.json chart.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

res = json.load(open(sys.argv[1]))
rows = res["workloads"]
names = [r["workload"] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))

ax = axes[0]
bars = ax.bar(names, [r["rps"] for r in rows], color=["#999999"] + ["#3b6ea8"] * (len(rows) - 1))
for b, r in zip(bars, rows):
    ax.annotate(f'{r["ratio_to_ceiling"]:.2f}x', (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center", va="bottom", fontsize=8)
ax.set_title("Throughput (req/s; label: ratio to ceiling)")
ax.tick_params(axis="x", rotation=30)

ax = axes[1]
ax.bar(names, [r["p99_ms"] for r in rows], color="#c0504d")
ax.set_title("p99 latency (ms)")
ax.tick_params(axis="x", rotation=30)

ax = axes[2]
sizes = res.get("by_store_size", [])
if sizes:
    xs = [s["secrets"] for s in sizes]
    ax.plot(xs, [s["p50_ms"] for s in sizes], marker="o", label="p50")
    ax.plot(xs, [s["p99_ms"] for s in sizes], marker="o", label="p99")
    ax.set_xscale("log")
    ax.legend()
ax.set_title("GET latest latency against store size (ms)")
ax.set_xlabel("secrets")

fig.suptitle(
    f'secretd on {res["backend"]}: {res["secrets"]} secrets, concurrency {res["concurrency"]}, '
    f'{res["cores"]} cores, encryption and audit on'
)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
