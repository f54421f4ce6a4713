"""clipcore.fused: values and gradients equal the materialised reference; memory (and its law up to B = 1M);
distributed form; one precision per call under autocast; fp16; the --loss-kernel route.

Run: ``pytest tests/test_fused.py`` (35-55 s on 2 busy CPU cores; one test compiles with inductor).
"""
from __future__ import annotations

import contextlib
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from clipcore.fused import KEEP_MIB, TILE, fused_contrastive_loss
from clipcore.losses import contrastive_loss, make_loss

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# Absolute floor per dtype, for outputs whose exact value is 0 or tiny (a batch of one has loss 0 exactly):
# a few ulps of 1.0, since losses and logits are O(1)-O(100) quantities whatever their value. Intel and AMD
# round the same fp32 sum differently by ~2 ulps (2.4e-7 seen on a Xeon for B = 1); 1e-6 is 8 ulps.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}  # bf16: ~3 ulps of 1.0


@contextlib.contextmanager
def default_dtype(dtype):
    # losses.positive_targets builds the soft targets in the default dtype: in fp64 tests it must be
    # fp64 too, else the reference's 1/n_i carries fp32 rounding (~1e-8) and is itself off by 1e-8.
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype == torch.float64 else old)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def make_inputs(b, d, dtype, scale, *, normalize=True, seed=0, bias=None):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y + 0.5 * x, dim=1)  # correlated pairs, as in training
    x, y = x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
    s = torch.tensor(scale, dtype=dtype, requires_grad=True)
    bt = None if bias is None else torch.tensor(bias, dtype=dtype, requires_grad=True)
    return x, y, s, bt


def loss_and_grads(fn, x, y, s, bias=None, **kw):
    leaves = [t for t in (x, y, s, bias) if t is not None]
    for t in leaves:
        t.grad = None
    loss = fn(x, y, s, logit_bias=bias, **kw)
    loss.backward()
    return [loss.detach()] + [t.grad.clone() for t in leaves]


def assert_match(got, want, dtype):
    """Each tensor: max |got - want| <= max(tol * max |want|, atol): relative to the tensor's scale, with an
    absolute floor suited to the dtype (never a bound that shrinks to 0 with the value)."""
    tol, atol = TOL[dtype], ATOL[dtype]
    for i, (g, w) in enumerate(zip(got, want)):
        scale = w.abs().max().item()
        err = (g.double() - w.double()).abs().max().item()
        assert err <= max(tol * scale, atol), f"output {i}: max error {err:.3g} vs scale {scale:.3g} (tol {tol}, atol {atol})"


def unit_pairs_and_fp64_reference(b: int, d: int, scale: float, seed: int = 0):
    """Independent unit-norm fp64 embeddings x, y (B, D) and the materialised loss's fp64 [loss, dx, dy, dscale]:
    the reference for the low-precision tests."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    want = loss_and_grads(contrastive_loss, x.clone().requires_grad_(), y.clone().requires_grad_(),
                          torch.tensor(scale, dtype=torch.float64, requires_grad=True))
    return x, y, want


def check(b=50, d=16, dtype=torch.float64, scale=2.0, labels=None, bias=None, normalize=True, **kw):
    with default_dtype(dtype):
        x, y, s, bt = make_inputs(b, d, dtype, scale, normalize=normalize, bias=bias)
        ref_kw = {k: v for k, v in kw.items() if k in ("reg_lambda", "reg_pairs", "reg_over_tau")}
        want = loss_and_grads(contrastive_loss, x, y, s, bt, labels=labels, **ref_kw)
        got = loss_and_grads(fused_contrastive_loss, x, y, s, bt, labels=labels, **kw)
    assert got[0].dtype == want[0].dtype
    if bias is not None:  # softmax CE ignores a constant shift: ours is exactly 0, the reference ~eps
        assert got[-1].item() == 0.0 and abs(want[-1].item()) < TOL[dtype]
        got, want = got[:-1], want[:-1]
    assert_match(got, want, dtype)


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("keep_mib", [0, 0.002, None])  # recompute all / keep a few tiles / default
def test_random_inputs_tiles_not_dividing_b(dtype, keep_mib):
    check(b=50, dtype=dtype, normalize=False, scale=1.0, tile=16, col_tile=7, keep_mib=keep_mib, compile=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scale_100(dtype):
    check(b=64, d=32, dtype=dtype, scale=100.0, tile=24, compile=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_of_one(dtype):
    check(b=1, dtype=dtype, scale=10.0, compile=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_labels_with_many_duplicates(dtype):
    labels = torch.tensor([0, 1, 2] * 20 + [7, 7, 9, 3])  # 64 rows, 5 classes, one singleton
    check(b=64, dtype=dtype, scale=30.0, labels=labels, tile=16, col_tile=40, compile=False)


def test_all_rows_one_label():
    check(b=20, scale=5.0, labels=torch.zeros(20, dtype=torch.long), tile=8, compile=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logit_bias_tensor(dtype):
    check(b=33, dtype=dtype, scale=10.0, bias=-4.5, tile=8, compile=False)


@pytest.mark.parametrize("pairs", ["pos", "neg", "both"])
@pytest.mark.parametrize("over_tau", [False, True])
def test_regulariser(pairs, over_tau):
    check(b=40, scale=10.0, tile=16, reg_lambda=0.7, reg_pairs=pairs, reg_over_tau=over_tau, compile=False)


def test_float_scale_and_make_loss():
    x, y, s, _ = make_inputs(30, 8, torch.float32, 10.0)
    labels = torch.arange(30) % 4
    for name in ("clip", "multipos", "reg"):
        want = make_loss(name, impl="naive")(x, y, s, labels=labels)
        got = make_loss(name, impl="fused")(x, y, s, labels=labels)
        assert_match([got], [want], torch.float32)
    assert_match([fused_contrastive_loss(x, y, 10.0)], [contrastive_loss(x, y, 10.0)], torch.float32)


def test_second_backward_recomputes_kept_tiles():
    x, y, s, _ = make_inputs(40, 8, torch.float64, 5.0)
    loss = fused_contrastive_loss(x, y, s, tile=16, compile=False)  # default keep: every tile kept
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    assert_match([x.grad], [2 * first], torch.float64)


def test_bfloat16_close_to_fp32():
    x, y, s, _ = make_inputs(64, 32, torch.float32, 20.0)
    want = contrastive_loss(x, y, s)
    got = fused_contrastive_loss(x.bfloat16(), y.bfloat16(), s, tile=16, compile=False)
    assert got.dtype == torch.bfloat16 and abs(got.float() - want).item() <= max(0.05 * want.item(), ATOL[torch.bfloat16])


def test_bad_input_errors():
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="both be"):
        fused_contrastive_loss(x, torch.randn(7, 4), 1.0)
    with pytest.raises(ValueError, match="labels must be"):
        fused_contrastive_loss(x, x, 1.0, labels=torch.zeros(3))
    with pytest.raises(ValueError, match="rank_offset"):
        fused_contrastive_loss(x, x, 1.0, labels=torch.zeros(16), gathered_text=torch.randn(16, 4), gathered_image=torch.randn(16, 4))
    with pytest.raises(ValueError, match="gathered_text and gathered_image"):
        fused_contrastive_loss(x, x, 1.0, gathered_text=torch.randn(16, 4))
    with pytest.raises(ValueError, match="reg_pairs"):
        fused_contrastive_loss(x, x, 1.0, reg_lambda=1.0, reg_pairs="all")


# ---------------------------------------------------------------- distributed form, R ranks simulated
def simulate_ranks(x, y, s, r, compile=False, **kw):
    """Mean over R ranks of the per-rank loss; the 'gathered' tensors are the full leaves, so autograd
    sums the gathered part's gradients over ranks, as all_gather's backward (reduce-scatter) does, and
    the mean is DDP's gradient average."""
    b = x.shape[0] // r
    losses = [fused_contrastive_loss(x[k * b:(k + 1) * b], y[k * b:(k + 1) * b], s, gathered_text=y, gathered_image=x,
                                     rank_offset=k * b, tile=5, compile=compile, **kw) for k in range(r)]
    return losses, torch.stack(losses).mean()


@pytest.mark.parametrize("case", ["plain", "labels", "reg_both", "reg_pos_over_tau"])
def test_distributed_matches_full_batch(case):
    r, b = 3, 48
    labels = torch.arange(b) % 5 if case == "labels" else None
    reg = {"plain": {}, "labels": {}, "reg_both": dict(reg_lambda=0.5, reg_pairs="both"),
           "reg_pos_over_tau": dict(reg_lambda=0.5, reg_pairs="pos", reg_over_tau=True)}[case]
    with default_dtype(torch.float64):
        x, y, s, _ = make_inputs(b, 8, torch.float64, 20.0)
        want = loss_and_grads(contrastive_loss, x, y, s, labels=labels, **reg)
        got = loss_and_grads(lambda x, y, s, logit_bias: simulate_ranks(x, y, s, r, labels=labels, **reg)[1], x, y, s)
    assert_match(got, want, torch.float64)


def test_distributed_rank_value_is_open_clip_local_loss():
    """Per rank: open_clip ClipLoss(local_loss=True) = 0.5 * (CE(s x_r Y^T) + CE(s y_r X^T)), labels = offset + arange."""
    x, y, s, _ = make_inputs(24, 8, torch.float64, 20.0)
    losses, _ = simulate_ranks(x, y, s, 4)
    for k, got in enumerate(losses):
        xr, yr, target = x[6 * k:6 * k + 6], y[6 * k:6 * k + 6], torch.arange(6) + 6 * k
        want = 0.5 * (F.cross_entropy(s * xr @ y.T, target) + F.cross_entropy(s * yr @ x.T, target))
        assert abs(got.item() - want.item()) < 1e-12


# ---------------------------------------------------------------- the torch.compile path
def test_compiled_aot_eager_matches_reference():
    """The functional tile kernels through torch.compile (aot_eager: fast), edge tiles and distributed form."""
    with default_dtype(torch.float64):
        check(b=37, d=8, scale=10.0, labels=torch.arange(37) % 6, tile=16, compile="aot_eager")
        x, y, s, _ = make_inputs(30, 8, torch.float64, 10.0)
        want = loss_and_grads(contrastive_loss, x, y, s)
        got = loss_and_grads(lambda x, y, s, logit_bias: simulate_ranks(x, y, s, 3, compile="aot_eager")[1], x, y, s)
    assert_match(got, want, torch.float64)


def test_compiled_inductor_matches_reference():
    """One inductor compile (C++ on CPU): B a multiple of the tile, so each kernel compiles once; no kept
    tiles (keep_mib=0), i.e. the configuration the CUDA default runs, with Triton there."""
    check(b=64, d=16, dtype=torch.float32, scale=50.0, tile=32, keep_mib=0, compile=True)


# ---------------------------------------------------------------- memory
class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created inside the mode (freed when the storage dies).

    Storages of ``existing`` tensors (the inputs) are known, so views of them (slices, ``.T``) count 0.
    """

    def __init__(self, existing=()):
        super().__init__()
        self.cur = self.peak = 0
        self.refs = {id(t.untyped_storage()): weakref.ref(t.untyped_storage()) for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ref = self.refs.get(id(st))
                if ref is None or ref() is not st:
                    nbytes = st.nbytes()
                    self.cur += nbytes
                    self.peak = max(self.peak, self.cur)
                    self.refs[id(st)] = weakref.ref(st, lambda _, n=nbytes, k=id(st): self._free(n, k))
        return out

    def _free(self, nbytes, key):
        self.cur -= nbytes
        self.refs.pop(key, None)


def tracked_peak_mib(fn, b, d, fake: bool) -> float:
    mode = torch._subclasses.fake_tensor.FakeTensorMode() if fake else contextlib.nullcontext()
    with mode:
        x, y = torch.randn(b, d).requires_grad_(), torch.randn(b, d).requires_grad_()
        s = torch.tensor(100.0, requires_grad=True)
        with LiveTensorBytes(existing=(x, y, s)) as live:
            fn(x, y, s).backward()
    return live.peak / 2**20


def profiler_peak_mib(fn, b, d) -> float:
    """Peak of the running sum of torch's CPU allocator events (as benchmarks/loss.py measures)."""
    from torch.profiler import ProfilerActivity, profile

    x, y = torch.randn(b, d).requires_grad_(), torch.randn(b, d).requires_grad_()
    s = torch.tensor(100.0, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x, y, s).backward()
    cur = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"):
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2**20


def fused_eager(x, y, s):
    return fused_contrastive_loss(x, y, s, compile=False)


def fused_small_tiles(x, y, s):  # at B = 2048: 16 tiles, 2 kept, 14 recomputed
    return fused_contrastive_loss(x, y, s, tile=512, keep_mib=2, compile=False)


def test_memory_16k_at_least_10x_below_materialised():
    """Peak extra memory of one forward + backward at B = 16384, D = 256 (fp32), fused vs materialised.

    Method: a TorchDispatchMode records every tensor storage that an op creates and subtracts it when the
    storage is freed (weakref); its peak is the loss's peak extra tensor memory (gradients included,
    inputs not). The 16k runs use FakeTensorMode: same ops, same shapes and lifetimes, no data, so they
    take ~2 s instead of ~60 s of CPU matmuls. The second half calibrates the method on real tensors:
    at B = 2048, D = 64 (16 tiles, some kept, some recomputed) the tracker agrees with torch's
    profiler (every CPU allocator event, which also sees allocations inside kernels) to 2% for both
    implementations (measured: equal to 0.1 MiB). benchmarks/loss.py measures the real 16k peaks
    with that profiler. (ru_maxrss in a subprocess would need the full 16k run too, and also counts
    allocator caching and library buffers.)
    """
    fused = tracked_peak_mib(fused_eager, 16384, 256, fake=True)
    materialised = tracked_peak_mib(contrastive_loss, 16384, 256, fake=True)
    assert materialised >= 4 * 16384**2 * 4 / 2**20  # at least four B x B fp32 matrices
    assert materialised / fused >= 10, f"fused {fused:.0f} MiB vs materialised {materialised:.0f} MiB"

    for fn in (fused_small_tiles, contrastive_loss):
        fake, real, prof = (tracked_peak_mib(fn, 2048, 64, True), tracked_peak_mib(fn, 2048, 64, False),
                            profiler_peak_mib(fn, 2048, 64))
        assert fake == real
        assert abs(real - prof) <= 0.02 * prof, f"{fn.__name__}: tracker {real:.1f} MiB vs profiler {prof:.1f} MiB"


# ---------------------------------------------------------------- one precision per call (autocast)
class MatmulOperands(TorchDispatchMode):
    """Records, per matrix product, whether both operands hold only bf16 values (bf16 tensors, or fp32 tensors
    that are exact bf16 roundings: the CPU computes 16-bit scores as an fp32 GEMM of the 16-bit values)."""

    MM = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.MM:
            ops = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2][-2:]
            self.calls.append(all(o.dtype == torch.bfloat16 or bool((o == o.bfloat16().float()).all()) for o in ops))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("keep_mib", [0, None])  # recompute every tile / keep them (CPU default)
def test_bf16_autocast_one_precision_forward_and_backward(keep_mib):
    """Under bf16 autocast every matmul of the forward AND the backward runs on bf16 values (the old _TiledLSE ran
    the backward's GEMMs in fp32), and the input gradients are no less accurate than the materialised loss's."""
    x, y, want = unit_pairs_and_fp64_reference(512, 128, 100.0)

    def run(fn, **kw):
        xf, yf, s = x.float().requires_grad_(), y.float().requires_grad_(), torch.tensor(100.0, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), MatmulOperands() as fwd:
            loss = fn(xf, yf, s, **kw)
        with MatmulOperands() as bwd:
            loss.backward()
        err = max(((gr.double() - w).abs().max() / w.abs().max()).item() for gr, w in zip((xf.grad, yf.grad), want[1:3]))
        return fwd.calls, bwd.calls, err

    fwd, bwd, err = run(fused_contrastive_loss, tile=128, keep_mib=keep_mib, compile=False)
    assert fwd and bwd and all(fwd) and all(bwd), (fwd, bwd)
    _, _, err_materialised = run(contrastive_loss)
    assert err <= err_materialised, f"fused {err:.3g} vs materialised {err_materialised:.3g}"  # measured 0.9e-2 vs 1.7e-2


# ---------------------------------------------------------------- memory law up to B = 1M
def test_memory_linear_in_batch_and_under_4gib_at_1m():
    """Peak extra memory of one forward + backward, bf16, d = 512, with the CUDA defaults (8192^2 tiles, no kept
    tiles; the eager tile code, whose temporaries inductor's fused tiles do not exceed), at B = 64k, 96k, 128k (FakeTensorMode: no data; ~9 s): exactly linear in B (the tiles are a constant,
    every other buffer is O(B d)), and the line extrapolated to B = 1,048,576 is <= 4 GiB. On CPU the 16-bit scores
    are an fp32 GEMM of the 16-bit values, fp32 tiles as CUDA's 16-bit GEMM with fp32 output gives (plus two
    (8192, 512) fp32 operand copies). What scales with B: dX (bf16, 2 B d bytes), the fp32 dY accumulator (4 B d,
    narrowed to bf16 in place, not copied) and the (B,) lse vectors; the inputs themselves are not counted.
    Measured: 849 / 946 / 1042 MiB, 3088 bytes per row (6 d + 16), 3.66 GiB at 1M (benchmarks/README.md); at
    B = 32k (4 row tiles) the peak is 16 MiB above the line, so the fit starts at 64k."""
    peaks = {}
    for b in (65536, 98304, 131072):
        with torch._subclasses.fake_tensor.FakeTensorMode():
            x = torch.empty(b, 512, dtype=torch.bfloat16).requires_grad_()
            y = torch.empty(b, 512, dtype=torch.bfloat16).requires_grad_()
            s = torch.tensor(100.0, requires_grad=True)
            with LiveTensorBytes(existing=(x, y, s)) as live:
                fused_contrastive_loss(x, y, s, tile=TILE["cuda"], keep_mib=KEEP_MIB["cuda"], compile=False).backward()
        peaks[b] = live.peak
    slope = (peaks[131072] - peaks[98304]) / 32768
    assert abs(peaks[98304] - peaks[65536] - slope * 32768) <= 1e-3 * peaks[131072], peaks  # linear
    at_1m = peaks[131072] + slope * (2**20 - 131072)
    assert slope <= 6 * 512 + 64, f"{slope:.0f} bytes per row"  # dX bf16 + dY fp32 (narrowed in place) + O(1)
    assert at_1m <= 4 * 2**30, f"extrapolated peak at B = 1M: {at_1m / 2**30:.2f} GiB"


def test_loss_kernel_flag_reaches_the_loss(monkeypatch):
    """--loss-kernel (TrainConfig.loss_kernel) -> make_loss(kernel=...) -> fused_contrastive_loss(kernel=...): on a CPU
    without the Triton interpreter the Triton kernel refuses with its own message, which proves the routing."""
    from clipcore.errors import UserError
    from clipcore.train import TrainConfig, parse_args

    assert TrainConfig().loss_kernel == "torch" and parse_args(["--loss-kernel", "triton"]).loss_kernel == "triton"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, y, s, _ = make_inputs(8, 4, torch.float32, 10.0)
    with pytest.raises(RuntimeError, match="kernel='triton' needs triton"):
        make_loss("clip", impl="fused", kernel="triton")(x, y, s)
    assert_match([make_loss("clip", impl="fused", kernel="torch")(x, y, s)], [contrastive_loss(x, y, s)], torch.float32)
    with pytest.raises(UserError, match="--loss-impl fused"):
        make_loss("clip", impl="naive", kernel="triton")


def test_loss_options_reach_the_fused_loss_from_train_config(monkeypatch):
    """TrainConfig -> clip_task.loss_for_run -> make_loss -> fused_contrastive_loss: kernel and tiles arrive as set
    (the spec is decoded once, in make_loss); tiles with the naive loss are refused with the flag to add."""
    from clipcore import losses
    from clipcore.clip_task import loss_for_run
    from clipcore.errors import UserError
    from clipcore.train import TrainConfig, parse_args

    seen = []
    real = losses.fused_contrastive_loss
    monkeypatch.setattr(losses, "fused_contrastive_loss", lambda *a, **k: seen.append(k) or real(*a, **k))
    cfg = parse_args(["--loss", "reg", "--loss-tile", "3", "--loss-col-tile", "5", "--reg-lambda", "0.2"])
    x, y, s, _ = make_inputs(8, 4, torch.float32, 10.0)
    labels = torch.tensor([0, 1, 0, 2, 3, 1, 4, 5])
    got = loss_for_run(cfg)(x, y, s, labels=labels)
    assert seen[0]["tile"] == 3 and seen[0]["col_tile"] == 5 and seen[0]["kernel"] == "torch" and seen[0]["reg_lambda"] == 0.2
    want = contrastive_loss(x, y, s, labels=labels, reg_lambda=0.2)
    assert_match([got], [want], torch.float32)
    with pytest.raises(UserError, match="--loss-impl fused"):
        loss_for_run(TrainConfig(loss_impl="naive", loss_tile=8))
    with pytest.raises(UserError, match="--loss-impl fused"):    # the CLI refuses it before any data are read
        parse_args(["--loss-impl", "naive", "--loss-col-tile", "8"])


def test_fp16_gradients_do_not_underflow():
    """fp16 at B = 4096: the loss weight 0.5/B times a probability ~1/B is ~3e-8, below fp16's smallest subnormal;
    the backward casts the O(1) G/W to fp16 and applies W in fp32 after the matmul. Measured input-gradient error
    against fp64: 7e-4 (the weight applied before the cast, as before: 6e-3)."""
    x, y, want = unit_pairs_and_fp64_reference(4096, 16, 2.0)
    got = loss_and_grads(fused_contrastive_loss, x.half().requires_grad_(), y.half().requires_grad_(),
                         torch.tensor(2.0, requires_grad=True), compile=False)
    for i in (1, 2):
        err = ((got[i].double() - want[i]).abs().max() / want[i].abs().max()).item()
        assert err <= 2e-3, f"gradient {i}: fp16 error {err:.2g}"
