import json, sys
for f in sys.argv[1:]:
    d = json.load(open(f))
    print(f.split('/')[-1], "base", d["seconds"], "peak GiB", round(d["peak_memory_bytes"]/2**30, 2), "prune", d.get("prune_ratio"))
    for m, r in d.get("modes", {}).items():
        print("  ", m, r.get("seconds"), "x", r.get("speedup"), "fps", r.get("fps"), "mem", r.get("memory_ratio"), r.get("peak_memory_bytes"), {k: v for k, v in r.items() if "err" in k})
