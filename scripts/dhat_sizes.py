#!/usr/bin/env python3
"""Itemises the heap of an idle persistent connection: the blocks live at the heap's peak
(DHAT's t-gmax), grouped by where they were allocated, for the allocation sites that hold
about one block per connection. The example `idle_memory` peaks with its 10,000 idle
connections alive, so each line is one allocation every connection keeps.

    cargo build --release -p persistent-connection --example idle_memory
    valgrind --tool=dhat --dhat-out-file=dhat.json target/release/examples/idle_memory
    python3 scripts/dhat_sizes.py dhat.json [connections, default 10000]

Prints: blocks at the peak, bytes per block, and the first frames of this project's code
(the allocation site).
"""
import json
import sys

path = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
d = json.load(open(path))
frames = d["ftbl"]
rows = [p for p in d["pps"] if p.get("gbk", 0) >= n // 2]
rows.sort(key=lambda p: -p["gb"])
for p in rows:
    names = [frames[i].split(": ", 1)[-1] for i in p["fs"]]
    ours = [f for f in names if "persistent_connection" in f or "idle_memory" in f][:3]
    print(f'{p["gbk"]:>7} blocks {p["gb"] / p["gbk"]:>7.0f} B  ' + " <- ".join(f[:100] for f in ours))
