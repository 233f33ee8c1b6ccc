"""Print frame count, size, codec and a hash of the decoded frames of a video (run with ComfyUI's Python).

usage: COMFY_PY probe_video.py VIDEO [VIDEO ...]  -> one JSON list
"""
from __future__ import annotations

import hashlib
import json
import sys


def probe(path: str) -> dict:
    import av
    h = hashlib.sha256()
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        for frame in c.decode(s):
            h.update(frame.to_ndarray(format="rgb24").tobytes())
            n += 1
        return {"path": path, "frames": n, "width": s.codec_context.width, "height": s.codec_context.height,
                "codec": s.codec_context.name, "fps": float(s.average_rate or 0), "sha256": h.hexdigest()}


if __name__ == "__main__":
    print(json.dumps([probe(p) for p in sys.argv[1:]]))
