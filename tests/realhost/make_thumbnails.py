"""Make the template thumbnails workflows/<title>.jpg and the pack icon icon.png (run with ComfyUI's Python).

usage: COMFY_PY tests/realhost/make_thumbnails.py COMFY_DIR [OUT_DIR]   (OUT_DIR: default the repository)

The LIPAR thumbnail is a still of the Latent Inter-Frame Pruner's own mask preview: a real
ComfyUI server (CPU, the tiny VAEs of make_fixtures.py, the pack linked into custom_nodes)
runs Load Video -> VAE Encode -> Latent Inter-Frame Pruner (default settings) on a synthetic
480x480 clip with a static landscape and a moving ball, and a frame of the pruner's
animated preview is saved: pruned (static) patches tinted blue, the moving ball's patches not.
The baseline thumbnail is the same source frame without the tint (the unpruned run computes
every patch). The fast workflow's thumbnail is the preview of the same graph with the tiny
VAE of the lighttaew2_1 architecture (Load VAE reading models/vae_approx/), with a
lightning badge. ComfyUI frontend 1.35.9 shows a custom-node template's thumbnail from
/api/workflow_templates/<pack>/<name>.jpg, i.e. workflows/<name>.jpg next to the .json
(named by the workflow's title: see build_workflows.py).
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tiny_models as tm  # noqa: E402
from build_workflows import TINY_VAE_FILE, VAE_FILE, WORKFLOWS  # noqa: E402
from comfy_host import PACK_LINK_NAME, ComfyServer, execution_error  # noqa: E402

SIZE, FRAMES, FPS = 480, 21, 16
CLIP = "lipar_thumbnail_clip.mp4"


def ball(i: int) -> tuple[float, float, float]:
    """Centre and radius of the ball in frame i (pixels)."""
    import math
    t = i / (FRAMES - 1)
    return 70 + 330 * t, 250 - 150 * math.sin(math.pi * t), 30.0


def scene_frames():
    """uint8 [FRAMES, SIZE, SIZE, 3]: a static sunset landscape and a ball flying across it."""
    import numpy as np
    from PIL import Image, ImageDraw

    s = 2                                   # drawn at twice the size, then downsampled (smooth edges)
    w = h = SIZE * s
    y = np.linspace(0, 1, h)[:, None, None]
    top, horizon = np.array([28, 52, 128]), np.array([250, 168, 92])
    sky = (top + (horizon - top) * np.clip(y / 0.62, 0, 1)).repeat(w, 1).astype(np.uint8)
    bg = Image.fromarray(sky)
    d = ImageDraw.Draw(bg)
    d.ellipse([330 * s, 190 * s, 410 * s, 270 * s], fill=(255, 226, 140))
    xs = np.arange(0, w + 1, 8)
    far = [(x, int((300 + 22 * np.sin(x / w * 7.0 + 1.0)) * s)) for x in xs]
    near = [(x, int((350 + 30 * np.sin(x / w * 4.5 + 2.2)) * s)) for x in xs]
    d.polygon(far + [(w, h), (0, h)], fill=(96, 70, 120))
    d.polygon(near + [(w, h), (0, h)], fill=(40, 58, 62))
    out = []
    for i in range(FRAMES):
        f = bg.copy()
        fd = ImageDraw.Draw(f)
        cx, cy, r = (v * s for v in ball(i))
        fd.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(232, 64, 52))
        fd.ellipse([cx - r * 0.55, cy - r * 0.6, cx - r * 0.05, cy - r * 0.1], fill=(255, 190, 170))
        out.append(np.asarray(f.resize((SIZE, SIZE), Image.LANCZOS)))
    return np.stack(out)


def write_clip(path: str, frames) -> None:
    import av
    c = av.open(path, mode="w")
    st = c.add_stream("libx264", rate=FPS)
    st.width, st.height, st.pix_fmt = SIZE, SIZE, "yuv420p"
    st.options = {"crf": "12"}
    for a in frames:
        for p in st.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in st.encode():
        c.mux(p)
    c.close()


def pruner_prompt(info: dict, vae_name: str) -> dict:
    """Load Video -> VAE Encode -> Latent Inter-Frame Pruner with the pruner's declared defaults
    (read from the server's /object_info, so new inputs need no change here)."""
    spec = info["LIPAR_LatentInterFramePruner"]["input"]
    settings = {name: opts[1]["default"] for section in ("required", "optional")
                for name, opts in spec.get(section, {}).items()
                if len(opts) > 1 and isinstance(opts[1], dict) and "default" in opts[1]}
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": CLIP}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["3", 0]}},
        "5": {"class_type": "LIPAR_LatentInterFramePruner",
              "inputs": {**settings, "latent": ["4", 0], "images": ["2", 0]}},
    }


def pick_frame(preview, frames):
    """The preview frame that shows pruning best: most of the picture tinted (pruned) while the
    moving ball lies on kept (untinted) patches. Returns (video frame index, RGB image).

    The pruner's in-node animation shows either every video frame or one frame per latent
    frame, the video frame each latent frame ends on (0, 4, 8, ...)."""
    import numpy as np
    from PIL import Image
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    step = 4 if preview.n_frames == (len(frames) - 1) // 4 + 1 else 1
    best = None
    for k in range(preview.n_frames):
        i = k * step
        if i >= len(frames):
            break
        preview.seek(k)
        im = preview.convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
        tinted = np.abs(np.asarray(im, np.float32) - frames[i].astype(np.float32)).mean(-1) > 24
        cx, cy, r = ball(i)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= (0.8 * r) ** 2
        score = (tinted.mean() > 0.3, round(1 - tinted[inside].mean(), 2), tinted.mean())
        if best is None or score > best[0]:
            best = (score, i, im)
    return best[1], best[2]


def icon(mask_still):
    """400x400 icon: the pruned still under a rounded mask with a thin token grid."""
    from PIL import Image, ImageDraw
    im = mask_still.resize((400, 400), Image.LANCZOS).convert("RGBA")
    grid = Image.new("RGBA", im.size, (0, 0, 0, 0))
    g = ImageDraw.Draw(grid)
    step = 400 / (SIZE / 16) * 3            # every third token boundary, so the grid stays readable
    k = step
    while k < 400:
        g.line([(k, 0), (k, 400)], fill=(255, 255, 255, 60), width=2)
        g.line([(0, k), (400, k)], fill=(255, 255, 255, 60), width=2)
        k += step
    im = Image.alpha_composite(im, grid)
    mask = Image.new("L", im.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, 399, 399], radius=64, fill=255)
    im.putalpha(mask)
    return im


def badge(im):
    """The still with a lightning badge in its top-right corner (the fast workflow's card)."""
    from PIL import Image, ImageDraw
    im = im.convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    r, cx, cy = 46, SIZE - 62, 62
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(24, 28, 40, 220), outline=(255, 214, 64, 255), width=4)
    bolt = [(8, -34), (-16, 4), (-2, 4), (-10, 34), (16, -6), (2, -6), (12, -34)]
    d.polygon([(cx + x, cy + y) for x, y in bolt], fill=(255, 214, 64, 255))
    return Image.alpha_composite(im, layer).convert("RGB")


def main(comfy_dir: str, out_dir: str) -> None:
    from PIL import Image

    frames = scene_frames()
    previews, stats = {}, {}
    with tempfile.TemporaryDirectory(prefix="lipar_thumbs_") as base:
        for d in ("models/vae", "models/vae_approx", "input", "output", "temp", "user", "custom_nodes"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        tm.write_tiny_wan_vae(os.path.join(base, "models", "vae", VAE_FILE), dim=8)
        tm.write_tiny_taehv(os.path.join(base, "models", "vae_approx", TINY_VAE_FILE))
        write_clip(os.path.join(base, "input", CLIP), frames)
        os.symlink(ROOT, os.path.join(base, "custom_nodes", PACK_LINK_NAME))
        srv = ComfyServer(comfy_dir, sys.executable, base)
        srv.start()
        try:
            info = srv.get("/object_info")
            if "LIPAR_LatentInterFramePruner" not in info:
                raise SystemExit("the pack did not load:\n" + srv.log()[-4000:])
            for key, vae in (("lipar", VAE_FILE), ("fast", TINY_VAE_FILE)):
                h = srv.run(pruner_prompt(info, vae))
                if h["status"]["status_str"] != "success":
                    raise SystemExit(execution_error(h))
                out = h["outputs"]["5"]
                previews[key] = Image.open(io.BytesIO(srv.view_bytes(out["images"][0])))
                stats[key] = out["lipar_stats"][0]["prune_ratio"]
        finally:
            srv.stop()
    best, pruned = pick_frame(previews["lipar"], frames)
    best_fast, pruned_fast = pick_frame(previews["fast"], frames)
    source = Image.fromarray(frames[best])
    os.makedirs(os.path.join(out_dir, "workflows"), exist_ok=True)
    stills = {WORKFLOWS["lipar"].title: pruned, WORKFLOWS["baseline"].title: source,
              WORKFLOWS["fast"].title: badge(pruned_fast)}
    for name, im in stills.items():
        im.save(os.path.join(out_dir, "workflows", f"{name}.jpg"), quality=90, optimize=True)
    icon(pruned).save(os.path.join(out_dir, "icon.png"), optimize=True)
    print(json.dumps({"frame": best, "frame_fast": best_fast, "prune_ratio": stats,
                      "written": [f"workflows/{n}.jpg" for n in stills] + ["icon.png"]}))


if __name__ == "__main__":
    args = sys.argv[1:]
    tm.comfy_preamble(args[0])             # (replaces sys.argv)
    main(args[0], args[1] if len(args) > 1 else ROOT)
