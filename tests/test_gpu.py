"""GPU correctness (bf16 kernels): runs on a CUDA machine, skips cleanly elsewhere."""

from types import SimpleNamespace

import pytest
import torch

import lipar
from lipar.attention import choose_attention, flash_attn_version
from lipar.clips import ClipSpec, make_clip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("backend", ["sdpa", "cudnn", "auto", "flash_attn"])
def test_bf16_cuda_sampling_matches_float64_cpu(backend):
    if backend == "flash_attn" and flash_attn_version(torch.device("cuda")) is None:
        pytest.skip("no FlashAttention installed")
    clip = make_clip(ClipSpec(latent_frames=6, height=16, width=24, objects=1, object_size=0.4))
    ctx = 0.1 * torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(0))
    plan = lipar.build_plan(clip)
    assert plan.prune_ratio() > 0.1
    m64 = lipar.build_model(lipar.TINY, seed=3, dtype=torch.float64)
    m16 = lipar.build_model(lipar.TINY, seed=3, dtype=torch.bfloat16, device="cuda")
    for p in (None, plan):
        for form in ("exact", "compressed"):
            cfg64 = lipar.SamplerConfig(seed=1, dtype=torch.float64, recovery_form=form)
            cfg16 = lipar.SamplerConfig(seed=1, backend=backend, recovery_form=form)
            ref = lipar.sample(m64, ctx.double(), clip.double(), plan=p, config=cfg64).latent
            out = lipar.sample(m16, ctx.cuda(), clip.cuda(), plan=p, config=cfg16).latent.cpu()
            assert torch.isfinite(out).all()
            err = _rel(out, ref)
            assert err < 3e-2, (p is not None, form, err)


def _strategies():
    """Every attention strategy this machine can run: mask, split over cuDNN, split over FlashAttention
    (4 or 2.x) when installed."""
    from lipar.attention import MaskAttention, SplitAttention, flash_attn_version

    out = [MaskAttention(cudnn_first=True), SplitAttention("cudnn")]
    version = flash_attn_version(torch.device("cuda"))
    if version:
        out.append(SplitAttention(version))
    return out


@pytest.mark.parametrize("lq,lk,nb", [(300, 300, 120), (4680 // 8, 2000, 0), (77, 517, 516), (5, 700, 1)])
def test_attention_strategies_match_sdpa(lq, lk, nb):
    """Each strategy equals float64 attention with the bias; its error is within 3x of bf16 SDPA's
    own error against the same float64 reference (biased keys first, as the cache lays them out)."""
    from types import SimpleNamespace

    from lipar.attention import reference_attention

    g = torch.Generator(device="cuda").manual_seed(lq + lk)
    q = torch.randn(1, lq, 12, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, lk, 12, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    bias = torch.zeros(lk, device="cuda")
    bias[:nb] = torch.log1p(torch.randint(0, 6, (nb,), device="cuda", generator=g).float())
    lay = SimpleNamespace(key_bias=bias if nb else None, num_biased=nb)
    ref = reference_attention(q.double(), k.double(), v.double(), bias.double())
    own = _rel(reference_attention(q, k, v, bias), ref)       # bf16 SDPA's own error
    for attn in _strategies():
        attn = attn.prepare(torch.bfloat16, 12, 128)
        attn.begin_chunk(lay)
        with attn.context():
            err = _rel(attn(q, k, v, lay), ref)
        assert err < 3 * own + 1e-4, (attn.name, err, own)


@pytest.mark.parametrize("form,bias_mode", [("exact", None), ("compressed", "split"), ("compressed", "mask")])
def test_cuda_graph_passes_equal_eager_passes(form, bias_mode):
    clip = make_clip(ClipSpec(latent_frames=9, height=32, width=48, objects=2, object_size=0.3))
    ctx = 0.1 * torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(1))
    model = lipar.build_model(lipar.TINY, seed=4, dtype=torch.bfloat16, device="cuda")
    plan = lipar.build_plan(clip.cuda())
    assert plan.prune_ratio() > 0.1
    from lipar.graphs import _CACHE, clear_graph_cache

    clear_graph_cache()
    # pruned first (small buckets), then unpruned (the static buffers grow: graphs recaptured),
    # then pruned again on the grown buffers
    for p in (plan, None, plan):
        outs = []
        for graphs in (False, True):
            cfg = lipar.SamplerConfig(seed=2, recovery_form=form, cuda_graphs=graphs)
            attn = choose_attention("cuda", bias_mode=bias_mode)
            outs.append(lipar.sample(model, ctx.cuda(), clip.cuda(), plan=p, config=cfg, attention=attn))
        assert outs[1].info["cuda_graphs"] and not outs[0].info["cuda_graphs"]
        err = _rel(outs[1].latent, outs[0].latent)
        assert err < 1e-2, (p is not None, err)
    sets = _CACHE[model].sets
    assert len(sets) >= 2, list(sets)
    # every bucket's graphs use the same static buffers
    assert len({gs.q.untyped_storage().data_ptr() for gs in sets.values()}) == 1


def test_fused_feed_forward_equals_the_module():
    """GELU in the GEMM epilogue (cuBLASLt) is Wan's tanh GELU: the FFN module's result
    (float32: to 1e-5, where the erf GELU differs by more; bf16: to bf16 precision); weights
    that ComfyUI casts on the fly take the module's own path."""
    from lipar.causal import feed_forward

    torch.manual_seed(0)
    ffn = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(approximate="tanh"),
                              torch.nn.Linear(1024, 256)).cuda()
    erf = torch.nn.Sequential(ffn[0], torch.nn.GELU(), ffn[2])
    y = torch.randn(1, 300, 256, device="cuda")
    calls = []
    hook = ffn[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            ref = ffn(y)
            calls.clear()
            out = feed_forward(ffn, y)
            assert not calls                                   # the fused path ran
            assert _rel(out, ref) < 1e-5 < _rel(out, erf(y)), (_rel(out, ref), _rel(out, erf(y)))
            ffn.bfloat16()
            assert _rel(feed_forward(ffn, y.bfloat16()), ref) < 1e-2
            assert feed_forward(ffn, y[:, :0].bfloat16()).shape == (1, 0, 256)
            ffn[0].comfy_cast_weights = True                   # ComfyUI low-VRAM: weights cast per call
            calls.clear()
            feed_forward(ffn, y.bfloat16())
            assert calls == [1]
    finally:
        hook.remove()


def test_graph_captures_leak_no_memory():
    """Capturing graphs for new token buckets, run after run, leaves nothing allocated once
    the graphs are dropped (each capture once left a cuBLAS workspace of ~35 MB behind)."""
    import gc

    from lipar.graphs import clear_graph_cache

    clip = make_clip(ClipSpec(latent_frames=6, height=32, width=48, objects=2, object_size=0.3)).cuda()
    ctx = 0.1 * torch.randn(1, 9, 4096, device="cuda")
    model = lipar.build_model(lipar.TINY, seed=4, dtype=torch.bfloat16, device="cuda")

    def settle():
        clear_graph_cache()
        gc.collect()
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    lipar.sample(model, ctx, clip, config=lipar.SamplerConfig(cuda_graphs=True))
    base = settle()
    buckets = set()
    for th in (0.05, 0.1, 0.2, 0.4):     # different prune ratios: new buckets, new captures
        plan = lipar.build_plan(clip, lipar.PlanConfig(threshold=th, anchor_threshold=2 * th))
        lipar.sample(model, ctx, clip, plan=plan, config=lipar.SamplerConfig(cuda_graphs=True))
        buckets.update(plan.kept_per_chunk()[0])
        assert settle() - base < 1 << 20, (th, settle() - base)
    assert len(buckets) > 2


@pytest.mark.parametrize("b,h,d", [(1, 12, 128), (2, 5, 128), (1, 16, 64)])
def test_triton_rope_matches_torch_rope(b, h, d):
    """The fused kernel (tiles of tokens x heads, ragged last tile, odd head counts, batch)
    equals the complex-number RoPE, returned or written into a given buffer."""
    from lipar.kernels import rope_supported, rope_triton
    from lipar.rope import rope_angles, rope_table, token_positions

    cfg = lipar.WanConfig(dim=h * d, num_heads=h)
    pos = token_positions(3, 5, 7)
    table = rope_table(rope_angles(pos, cfg)).cuda()
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(b, pos.shape[0], h, d, device="cuda", dtype=dtype)
        assert rope_supported(x, table)
        ref = torch.view_as_real(torch.view_as_complex(x.float().reshape(b, -1, h, d // 2, 2))
                                 * table.view(1, -1, 1, d // 2)).flatten(-2)
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
        assert _rel(rope_triton(x, table), ref) < tol, dtype
        buf = torch.full_like(x, float("nan"))
        assert rope_triton(x, table, out=buf) is buf
        assert _rel(buf, ref) < tol, dtype


@pytest.mark.parametrize("lq,lp,lf", [(300, 517, 130), (77, 0, 64), (128, 200, 1), (5, 33, 700)])
def test_flash_bias_kernel_continues_cudnn_attention(lq, lp, lf):
    """lipar.flash_bias over biased keys, continuing cuDNN's result over plain keys (or
    alone), equals float64 attention over all keys; ragged lengths, cache-like strides."""
    from lipar.attention import SplitAttention, cudnn_lse
    from lipar.flash_bias import attention_key_bias, to_log2

    g = torch.Generator(device="cuda").manual_seed(lq + lp + lf)
    h, d, lk = 12, 128, lp + lf
    q = torch.randn(1, lq, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    kc, vc = (torch.randn(1, lk + 40, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    k, v = kc[:, :lk], vc[:, :lk]
    bias = torch.zeros(lk, device="cuda")
    bias[:lf] = torch.log1p(torch.randint(0, 6, (lf,), device="cuda", generator=g).float())
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / d**0.5 + bias.double()
    ref = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double())
    b2 = to_log2(bias[:lf])
    prev = cudnn_lse(q, k[:, lf:], v[:, lf:]) if lp else None
    out = attention_key_bias(q, k[:, :lf], v[:, :lf], b2, prev=prev)
    assert _rel(out, ref) < 1e-2
    lay = SimpleNamespace(key_bias=bias, num_biased=lf)
    split = SplitAttention("cudnn")
    split.begin_chunk(lay)
    assert _rel(split(q, k, v, lay), ref) < 1e-2
    if lp:   # the continuation is not a no-op: without the plain part the result differs
        assert _rel(attention_key_bias(q, k[:, :lf], v[:, :lf], b2), ref) > 5e-2


def test_auto_attention_is_split_on_cuda():
    from lipar.attention import MaskAttention, SplitAttention, flash_attn_version
    from lipar.causal import CausalWan

    model = lipar.build_model(lipar.TINY, seed=0, dtype=torch.bfloat16, device="cuda")
    auto = CausalWan(model, device="cuda", dtype=torch.bfloat16).attn
    assert isinstance(auto, SplitAttention)
    fa4_auto = flash_attn_version(torch.device("cuda")) == "flash_attn_4" and torch.cuda.get_device_capability()[0] == 9
    assert auto.plain == ("flash_attn_4" if fa4_auto else "cudnn"), auto.name
    assert isinstance(CausalWan(model, device="cuda", dtype=torch.bfloat16, backend="sdpa").attn, MaskAttention)
    assert CausalWan(model, device="cuda", dtype=torch.bfloat16, backend="cudnn").attn.plain == "cudnn"


def test_split_attention_with_no_queries_and_an_all_pruned_clip():
    """A static clip prunes whole chunks (no query tokens): the split path returns empty
    outputs there and the sampled video matches the mask path."""
    k = torch.randn(1, 40, 12, 128, device="cuda", dtype=torch.bfloat16)
    q = k[:, :0]
    lay = SimpleNamespace(key_bias=torch.zeros(40, device="cuda"), num_biased=10)
    for attn in _strategies():
        attn.begin_chunk(lay)
        assert attn(q, k, k, lay).shape == (1, 0, 12, 128), attn.name
    clip = make_clip(ClipSpec(kind="static", latent_frames=9, height=32, width=48))
    plan = lipar.build_plan(clip.cuda())
    assert plan.prune_ratio() > 0.5
    ctx = 0.1 * torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(1))
    model = lipar.build_model(lipar.TINY, seed=4, dtype=torch.bfloat16, device="cuda")
    outs = [lipar.sample(model, ctx.cuda(), clip.cuda(), plan=plan, attention=choose_attention("cuda", bias_mode=m),
                         config=lipar.SamplerConfig(seed=2, recovery_form="compressed")).latent
            for m in ("split", "mask")]
    assert torch.isfinite(outs[0]).all() and _rel(outs[0], outs[1]) < 1e-2


@pytest.mark.parametrize("pruned", [False, True])
def test_graph_runs_follow_weights_swapped_as_comfyui_does(pruned):
    """ComfyUI's ModelPatcher applies a LoRA by putting new Parameters into the module
    (``comfy.utils.set_attr_param``) and undoes it the same way. A graph run after the swap
    must compute with the new weights (it once replayed graphs holding the old addresses and
    returned the first run's video bit for bit), and after the swap back with the old ones.
    Tolerance: the graph-vs-eager difference of the unchanged model (bf16 rounding of the same
    computation), which the swap's effect must dwarf."""
    clip = make_clip(ClipSpec(latent_frames=6, height=32, width=48, objects=2, object_size=0.3)).cuda()
    ctx = 0.1 * torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(1)).cuda()
    model = lipar.build_model(lipar.TINY, seed=4, dtype=torch.bfloat16, device="cuda")
    plan = lipar.build_plan(clip) if pruned else None

    def run(graphs):
        return lipar.sample(model, ctx, clip, plan=plan, config=lipar.SamplerConfig(seed=2, cuda_graphs=graphs)).latent

    first, first_eager = run(True), run(False)
    floor = max(_rel(first, first_eager), 1e-4)
    backup = {}
    g = torch.Generator(device="cuda").manual_seed(7)
    for blk in model.blocks:
        for name in ("self_attn.q.weight", "self_attn.k.weight", "self_attn.v.weight", "self_attn.o.weight",
                     "ffn.0.weight", "ffn.2.weight"):
            path, leaf = name.rsplit(".", 1)
            mod = blk.get_submodule(path)
            w = getattr(mod, leaf)
            backup[(mod, leaf)] = w
            delta = 2.0 * w.std() * torch.randn(w.shape, device="cuda", generator=g, dtype=w.dtype)
            setattr(mod, leaf, torch.nn.Parameter(w.data + delta, requires_grad=False))
    swapped_graph, swapped_eager = run(True), run(False)
    change = _rel(swapped_eager, first)
    assert change > 20 * floor, (change, floor)
    assert _rel(swapped_graph, swapped_eager) < 2 * floor, (_rel(swapped_graph, swapped_eager), floor, change)
    for (mod, leaf), w in backup.items():
        setattr(mod, leaf, w)
    assert _rel(run(True), first_eager) < 2 * floor


def test_graphs_under_comfyui_allocator_cuda_malloc_async():
    """ComfyUI's main.py selects PyTorch's cudaMallocAsync allocator. Tensors allocated while a
    graph is captured then have no mapping yet and Triton refuses them; the RoPE kernel works in
    place on the graphs' static buffers there. A fresh process (the allocator is chosen at start):
    graph runs equal eager runs, pruned and unpruned."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch, lipar
        from lipar.clips import ClipSpec, make_clip
        assert torch.cuda.get_allocator_backend() == "cudaMallocAsync"
        clip = make_clip(ClipSpec(latent_frames=6, height=32, width=48, objects=2, object_size=0.3))
        ctx = 0.1 * torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(1))
        model = lipar.build_model(lipar.TINY, seed=4, dtype=torch.bfloat16, device="cuda")
        for plan in (None, lipar.build_plan(clip)):
            runs = [lipar.sample(model, ctx.cuda(), clip, plan=plan, config=lipar.SamplerConfig(seed=2, cuda_graphs=g))
                    for g in (False, True)]
            assert runs[1].info["cuda_graphs"] and runs[1].info["kernels"] == "triton"
            err = ((runs[1].latent - runs[0].latent).norm() / runs[0].latent.norm()).item()
            assert err < 1e-2, err
        print("ok")
    """)
    import os
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


@pytest.mark.parametrize("pruned", [False, True])
def test_fp8_compute_close_to_bf16_and_graphs_equal_eager(pruned):
    """fp8 linears ('on': bf16 weights quantised per output channel) stay close to the bf16 run
    (relative to the float64 reference, within a few times bf16's own error); CUDA-graph runs equal
    eager runs; a second graph run reuses graphs and fp8 weights (refreshed in place) and repeats
    the first exactly."""
    from lipar.fp8 import fp8_supported

    if not fp8_supported(torch.device("cuda")):
        pytest.skip("no fp8 tensor cores")
    clip = make_clip(ClipSpec(latent_frames=9, height=32, width=48, objects=2, object_size=0.3))
    ctx = 0.1 * torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(1))
    model = lipar.build_model(lipar.TINY, seed=4, dtype=torch.bfloat16, device="cuda")
    plan = lipar.build_plan(clip.cuda()) if pruned else None
    run = lambda **kw: lipar.sample(model, ctx.cuda(), clip.cuda(), plan=plan,   # noqa: E731
                                    config=lipar.SamplerConfig(seed=2, **kw))
    bf16, eager8, graph8 = run(fp8="off"), run(fp8="on", cuda_graphs=False), run(fp8="on", cuda_graphs=True)
    assert eager8.info["fp8"] == graph8.info["fp8"] == "all" and graph8.info["fp8_linears"] > 0
    assert torch.isfinite(graph8.latent).all()
    assert _rel(graph8.latent, eager8.latent) < 1e-2
    assert _rel(graph8.latent, bf16.latent) < 0.1, _rel(graph8.latent, bf16.latent)
    assert _rel(graph8.latent, bf16.latent) > 1e-4          # fp8 really ran
    m64 = lipar.build_model(lipar.TINY, seed=4, dtype=torch.float64)
    ref = lipar.sample(m64, ctx.double(), clip.double(), plan=None if plan is None else plan.to("cpu"),
                       config=lipar.SamplerConfig(seed=2, dtype=torch.float64)).latent
    assert _rel(eager8.latent.cpu(), ref) < 5 * _rel(bf16.latent.cpu(), ref) + 0.02
    # a second graph run reuses the graphs and the fp8 weights, refreshed in place
    again = run(fp8="on", cuda_graphs=True)
    assert torch.equal(again.latent, graph8.latent)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_sampling_on_a_gpu_that_is_not_the_current_one():
    """A model on the second GPU while the first is current (``python -m lipar bench --device cuda:1``): the
    run makes the model's GPU current for its Triton kernels (which otherwise refuse its tensors: "cannot be
    accessed from Triton"), eagerly and with CUDA graphs, and leaves the caller's current device as it was.
    A fresh process, as the CLI is: after graphs were captured on the first GPU, PyTorch's process-wide
    default capture stream belongs to that GPU (a known limit, see README "What works today")."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch, lipar
        from lipar.clips import ClipSpec, make_clip
        clip = make_clip(ClipSpec(latent_frames=6, height=16, width=24, objects=1, object_size=0.4))
        ctx = 0.1 * torch.randn(1, 9, 4096, generator=torch.Generator().manual_seed(0))
        for graphs in (False, True):
            model = lipar.build_model(lipar.TINY, seed=3, dtype=torch.bfloat16, device="cuda:1")
            r = lipar.sample(model, ctx.to("cuda:1"), clip.to("cuda:1"),
                             config=lipar.SamplerConfig(seed=1, cuda_graphs=graphs))
            assert r.info["cuda_graphs"] == graphs and torch.isfinite(r.latent).all()
            assert torch.cuda.current_device() == 0 and r.latent.device == torch.device("cuda:1")
        print("ok")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]
