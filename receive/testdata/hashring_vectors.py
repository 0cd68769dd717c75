# Independent reference (from shared/spec/hashring.md) used to generate Norn's placement vectors.
import xxhash
def shash(tenant, labels):
    b = tenant.encode() + b'\xff'
    for n, v in labels:
        b += n.encode() + b'\xff' + v.encode() + b'\xff'
    return xxhash.xxh64_intdigest(b, 0)
eps = ["recv-2.recv:10901", "recv-0.recv:10901", "recv-1.recv:10901", "recv-3.recv:10901"]
azs = ["a", "b", "a", "c"]
series = [("default-tenant", [("__name__", "up"), ("job", "node"), ("instance", "h%d" % i)]) for i in range(6)]
series = [(t, sorted(ls)) for t, ls in series]
series.append(("team-a", [("__name__", "up"), ("instance", "h0"), ("job", "node")]))
print("hashes:")
for t, ls in series:
    print(t, ls, hex(shash(t, ls)))
srt = sorted(eps)
print("hashmod:")
for t, ls in series:
    h = shash(t, ls)
    print([srt[(h + n) % len(srt)] for n in range(3)])
def ketama(eps, azs, rf):
    secs = []
    for i, e in enumerate(eps):
        for s in range(1, 1001):
            secs.append((xxhash.xxh64_intdigest(("%s:%d" % (e, s)).encode(), 0), i))
    secs.sort()
    zones = set(azs)
    reps = []
    for i in range(len(secs)):
        picked = []; spread = {z: 0 for z in zones}; j = i - 1
        while len(picked) < rf:
            j = (j + 1) % len(secs)
            e = secs[j][1]
            if e in picked: continue
            if len(spread) > 1 and spread[azs[e]] > 0 and spread[azs[e]] > min(spread.values()): continue
            picked.append(e); spread[azs[e]] += 1
        reps.append(picked)
    return secs, reps
import bisect
for name, az in [("ketama", [""] * 4), ("ketama-az", azs)]:
    secs, reps = ketama(eps, az, 3)
    hs = [s[0] for s in secs]
    print(name + ":")
    for t, ls in series:
        h = shash(t, ls)
        i = bisect.bisect_left(hs, h)
        if i == len(hs): i = 0
        print([eps[r] for r in reps[i]])
