#!/usr/bin/env python3
"""Paired A/B latency of two PromQL HTTP endpoints over the bench-query query set.

Usage: scripts/ab-query.py URLS_FILE NAME_A=URL_A,NAME_B=URL_B REPS

URLS_FILE is the `urls` file `HOLD=s KEEP=1 scripts/bench-query` writes (for `end_ms`; its
`rf3`/`rf1` URLs are the usual pair). Every query of ../shared/bench/queries.txt runs as a range
query (3300 s, step 60 s, as bench-query does) REPS times against both endpoints, back to back,
the order swapped every repetition; per query the median of the A/B ratios of those pairs is
printed, then their geometric mean. Pairing each run with one of the other endpoint made
moments apart cancels the machine's drifts, which on this 2-core VM move unpaired medians by
several percent between runs. Extra queriers over the same receivers (other builds or flags)
can be started by hand and compared the same way.
"""
import http.client
import math
import os
import statistics
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
QUERIES = os.environ.get("QUERIES", os.path.join(HERE, "..", "..", "shared", "bench", "queries.txt"))


def main():
    urls_file, pair, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    urls = dict(line.strip().split("=", 1) for line in open(urls_file) if "=" in line)
    end = int(urls["end_ms"]) / 1000
    targets = [t.split("=", 1) for t in pair.split(",")]
    queries = [q.strip() for q in open(QUERIES) if q.strip() and not q.startswith("#")]
    conns = {}

    def run(base, q):
        hostport = base.split("//")[1]
        if hostport not in conns:
            host, port = hostport.split(":")
            conns[hostport] = http.client.HTTPConnection(host, int(port))
        c = conns[hostport]
        q = q.removeprefix("range:").removeprefix("instant:").strip()
        body = urllib.parse.urlencode(dict(query=q, start=end - 3300, end=end, step=60))
        t = time.perf_counter()
        c.request("POST", "/api/v1/query_range", body, {"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"{base}: {q}: HTTP {r.status}")
        return (time.perf_counter() - t) * 1000

    (a, _), (b, _) = targets
    logs = []
    for q in queries:
        ratios, times = [], {n: [] for n, _ in targets}
        for i in range(reps):
            got = {n: run(u, q) for n, u in (targets if i % 2 == 0 else targets[::-1])}
            for n, ms in got.items():
                times[n].append(ms)
            ratios.append(got[a] / got[b])
        r = statistics.median(ratios)
        logs.append(math.log(r))
        cols = " ".join(f"{n} {statistics.median(v):8.2f} ms" for n, v in times.items())
        print(f"{q[:60]:60s} {cols}  paired {r:.3f}")
    print(f"geometric mean of paired medians {a}/{b}: {math.exp(sum(logs) / len(logs)):.3f}")


if __name__ == "__main__":
    main()
