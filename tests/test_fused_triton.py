"""clipcore.fused_triton (``fused_contrastive_loss(kernel="triton")``) under the Triton interpreter.

The kernels run on CPU with ``TRITON_INTERPRET=1``, which must be set before triton is imported: so
every check runs in ONE child process (``python tests/test_fused_triton.py [case ...]`` with that
variable set; it prints a JSON line of results) and this pytest process only reads the results, one
test per case. The pytest process never imports triton. Values and gradients (embeddings and logit
scale) are compared with the materialised ``clipcore.losses.contrastive_loss`` by test_fused.check
(fp32: max error <= max(1e-5 x max |reference|, 1e-6) per tensor); bf16/fp16 cases, autocast and the memory
per row are checked too. Two children run without the interpreter: one traces the two custom ops on fake CUDA
tensors (no GPU needed) as torch.compile's AOTAutograd does; one compiles every default launch configuration
for sm_80/sm_90 as a launch would and checks its shared memory. Sizes are tiny (B <= 512, D <= 64, blocks of
16/32) because the interpreter is slow. GPU speed is not tested here (benchmarks/loss.py).

Run: ``pytest tests/test_fused_triton.py`` (about 30-45 s on 2 busy CPU cores, mostly the children's imports).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
CASES = ["not_multiple_of_block", "two_pass_backward", "batch_of_one", "labels_with_duplicates", "scale_100",
         "regulariser", "logit_bias", "distributed_rows_only", "bf16_close_to_fp32", "bf16_autocast", "fp16_batch_of_one",
         "memory_per_row", "fp64_uses_torch_tiles", "errors"]


def _cases() -> dict:
    """Child process only (TRITON_INTERPRET=1 already set): name -> check function."""
    import torch

    sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]
    import clipcore.fused_triton as ft
    from clipcore.fused import fused_contrastive_loss
    from clipcore.losses import contrastive_loss
    from test_fused import ATOL, LiveTensorBytes, assert_match, check, loss_and_grads, make_inputs

    f32, tri = torch.float32, dict(kernel="triton")

    def two_pass_backward():
        ft.ATOMIC = False
        try:
            check(b=50, d=16, dtype=f32, normalize=False, scale=1.0, tile=32, col_tile=16, **tri)
            check(b=37, dtype=f32, scale=20.0, labels=torch.arange(37) % 4, tile=16, **tri)
        finally:
            ft.ATOMIC = True

    def distributed_rows_only():
        r, b = 3, 48
        labels = torch.arange(b) % 5
        x, y, s, _ = make_inputs(b, 8, f32, 20.0)

        def ranks(x, y, s, logit_bias=None):
            k = b // r
            return torch.stack([fused_contrastive_loss(x[i * k:(i + 1) * k], y[i * k:(i + 1) * k], s, labels=labels,
                                                       gathered_text=y, gathered_image=x, rank_offset=i * k,
                                                       tile=16, **tri) for i in range(r)]).mean()
        for atomic in (True, False):
            ft.ATOMIC = atomic
            try:
                assert_match(loss_and_grads(ranks, x, y, s), loss_and_grads(contrastive_loss, x, y, s, labels=labels), f32)
            finally:
                ft.ATOMIC = True

    def bf16_close_to_fp32():
        x, y, s, _ = make_inputs(64, 32, f32, 20.0)
        want = loss_and_grads(contrastive_loss, x, y, s)
        xb, yb = x.detach().bfloat16().requires_grad_(), y.detach().bfloat16().requires_grad_()
        got = loss_and_grads(fused_contrastive_loss, xb, yb, s, tile=16, **tri)
        assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16
        for i, (g, w) in enumerate(zip(got, want)):
            err = (g.float() - w).abs().max().item()
            assert err <= max(0.05 * w.abs().max().item(), ATOL[torch.bfloat16]), f"output {i}: bf16 error {err:.3g}"

    def bf16_autocast():
        """Under bf16 autocast the Triton path runs in bf16 (inputs cast once), gradients come back in fp32 and are no
        less accurate than the materialised loss's under the same autocast (against fp64)."""
        b, d = 96, 32
        x, y, _, _ = make_inputs(b, d, torch.float64, 1.0)
        x, y = x.detach(), y.detach()
        want = loss_and_grads(contrastive_loss, x.clone().requires_grad_(), y.clone().requires_grad_(),
                              torch.tensor(50.0, dtype=torch.float64, requires_grad=True))
        errs = {}
        for name, fn in (("triton", lambda *a, **k: fused_contrastive_loss(*a, tile=16, **tri, **k)),
                         ("materialised", contrastive_loss)):
            xf, yf, s = x.float().requires_grad_(), y.float().requires_grad_(), torch.tensor(50.0, requires_grad=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = fn(xf, yf, s)
            loss.backward()
            assert xf.grad.dtype == torch.float32
            errs[name] = max(((g.double() - w).abs().max() / w.abs().max()).item()
                             for g, w in zip((xf.grad, yf.grad), want[1:3]))
        assert errs["triton"] <= errs["materialised"], errs

    def fp16_batch_of_one():
        """A batch of one: loss and every gradient exactly 0 in fp16 and bf16 (the target is the kernel's own score)."""
        for dt in (torch.float16, torch.bfloat16):
            x, y, s, _ = make_inputs(1, 64, dt, 100.0, normalize=False)
            got = loss_and_grads(fused_contrastive_loss, x, y, s, **tri)
            assert all(float(t.abs().max()) == 0.0 for t in got), (dt, got)

    def memory_per_row():
        """Peak extra tensor memory of forward + backward, bf16, d = 32, B = 128/256/512: exactly linear, 6 d + 8 bytes
        per row = dX (2 d) + the fp32 dY atomics buffer (4 d, scaled in the kernel, narrowed to bf16 in place) + the
        (B,) statistics. (A dY copy to bf16 would add 2 d, a separate dY * s another 4 d.)"""
        d, peaks = 32, {}
        for b in (128, 256, 512):
            x, y, s, _ = make_inputs(b, d, torch.bfloat16, 10.0, normalize=False)
            with LiveTensorBytes(existing=(x, y, s)) as live:
                fused_contrastive_loss(x, y, s, **tri).backward()
            peaks[b] = live.peak
        assert peaks[512] - peaks[256] == 2 * (peaks[256] - peaks[128]) == 256 * (6 * d + 8), peaks

    def errors():
        x = torch.randn(8, 4)
        for bad in (8, 24, 512):
            try:
                fused_contrastive_loss(x, x, 1.0, tile=bad, **tri)
            except ValueError as err:
                assert "power of two" in str(err)
            else:
                raise AssertionError(f"tile={bad} accepted")
        os.environ["TRITON_INTERPRET"] = "0"  # read at call time: as on a CPU-only machine
        try:
            fused_contrastive_loss(x, x, 1.0, **tri)
        except RuntimeError as err:
            assert "kernel='triton'" in str(err)
        else:
            raise AssertionError("kernel='triton' on CPU without the interpreter did not raise")
        finally:
            os.environ["TRITON_INTERPRET"] = "1"
        assert not ft.triton_available("cpu") or os.environ["TRITON_INTERPRET"] == "1"

    return {
        "not_multiple_of_block": lambda: check(b=50, d=16, dtype=f32, normalize=False, scale=1.0, tile=16, col_tile=16, **tri),
        "two_pass_backward": two_pass_backward,
        "batch_of_one": lambda: check(b=1, dtype=f32, scale=10.0, **tri),
        "labels_with_duplicates": lambda: check(b=64, dtype=f32, scale=30.0, labels=torch.tensor([0, 1, 2] * 20 + [7, 7, 9, 3]),
                                                tile=16, col_tile=32, **tri),
        "scale_100": lambda: check(b=70, d=32, dtype=f32, scale=100.0, tile=16, **tri),
        "regulariser": lambda: check(b=40, dtype=f32, scale=10.0, tile=16, reg_lambda=0.7, reg_pairs="both",
                                     reg_over_tau=True, **tri),
        "logit_bias": lambda: check(b=33, dtype=f32, scale=10.0, bias=-4.5, tile=16, **tri),
        "distributed_rows_only": distributed_rows_only,
        "bf16_close_to_fp32": bf16_close_to_fp32,
        "bf16_autocast": bf16_autocast,
        "fp16_batch_of_one": fp16_batch_of_one,
        "memory_per_row": memory_per_row,
        "fp64_uses_torch_tiles": lambda: check(b=20, dtype=torch.float64, scale=5.0, tile=16, compile=False, **tri),
        "errors": errors,
    }


def _trace() -> dict:
    """Child process WITHOUT the interpreter (there wrap_triton returns the interpreted function, which
    cannot be traced): make_fx with functionalization, as AOTAutograd under torch.compile, traces the
    two custom ops on fake CUDA tensors (no GPU needed) into triton_kernel_wrapper_functional nodes
    (Triton kernels inductor can schedule), not opaque calls. Returns {graph: number of such nodes}."""
    import logging

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    sys.path[:0] = [str(HERE.parents[1])]
    import clipcore.fused_triton as ft

    # Without a GPU the kernels' mutation analysis cannot compile TTIR; torch then assumes every
    # argument mutated (a warning with a traceback): irrelevant to what is checked here.
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # (that module logs as torch._dynamo)
    with FakeTensorMode():
        x, y = torch.empty(40, 16, device="cuda"), torch.empty(40, 16, device="cuda")
        s, v = torch.empty((), device="cuda"), torch.empty(40, device="cuda")
    graphs = {
        "fwd": make_fx(dispatch_functionalize(lambda x, y, s: ft.contrastive_lse_fwd(x, y, s, True, 0, True, 16, 16, 3)),
                       tracing_mode="fake")(x, y, s),
        "bwd_atomic": make_fx(dispatch_functionalize(lambda x, y, s, v: ft.contrastive_lse_bwd(
            x, y, s, v, v, [1.0, 1.0, 2.0], s, 0, True, 16, 16, True)), tracing_mode="fake")(x, y, s, v),
        "bwd_two_pass": make_fx(dispatch_functionalize(lambda x, y, s, v: ft.contrastive_lse_bwd(
            x, y, s, v, v, [1.0, 1.0, 2.0], s, 0, True, 16, 16, False)), tracing_mode="fake")(x, y, s, v),
    }
    return {k: g.code.count("triton_kernel_wrapper_functional(") for k, g in graphs.items()}


SMEM = {80: 166912, 90: 232448}  # bytes of shared memory one block may use: A100 (163 KiB), H100/H200 (227 KiB)


def _shared() -> dict:
    """Child process without the interpreter (which never compiles): the shared memory of every default launch
    configuration, D in {128, 256, 512, 768, 1024} x {fp32, bf16, fp16} x sm_80/sm_90, as a launch compiles the kernels
    (clipcore.fused_triton_aot.shared_memory_for: triton's own binder and stages up to shared-memory allocation; no GPU),
    and one full compile to PTX + cubin (compile_for, bf16, D = 512, sm_90) whose metadata.shared must agree."""
    import torch

    sys.path[:0] = [str(HERE.parents[1])]
    import clipcore.fused_triton_aot as aot

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    rows = {f"{arch} {d} {name} {kind}": shared for arch in SMEM for d in (128, 256, 512, 768, 1024)
            for name, dt in dtypes.items() for kind, shared in aot.shared_memory_for(arch, d, dt).items()}
    # A width and a batch not divisible by 16 specialise differently (no tt.divisibility: other copies, other
    # pipelining): one such launch per dtype and arch.
    rows.update({f"{arch} 1000 {name} {kind} B=4097": shared for arch in SMEM for name, dt in dtypes.items()
                 for kind, shared in aot.shared_memory_for(arch, 1000, dt, m=4097, n=4097).items()})
    full = aot.compile_for(90, 512, torch.bfloat16)
    return {"rows": rows, "full": {k: v.metadata.shared for k, v in full.items()},
            "fast": aot.shared_memory_for(90, 512, torch.bfloat16)}


def _child(names: list[str]) -> None:
    if names == ["--trace"]:
        print("RESULTS " + json.dumps(_trace()))
        return
    if names == ["--shared"]:
        print("RESULTS " + json.dumps(_shared()))
        return
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    cases, results = _cases(), {}
    for name in names or CASES:
        t0 = time.perf_counter()
        try:
            cases[name]()
            results[name] = {"ok": True}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
        results[name]["s"] = round(time.perf_counter() - t0, 2)
    print("RESULTS " + json.dumps(results))


def _run_child(args: list[str], interpret: bool) -> dict:
    if importlib.util.find_spec("triton") is None:  # find_spec: no triton import in this process
        pytest.skip("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONWARNINGS="ignore", **({"TRITON_INTERPRET": "1"} if interpret else {}))
    proc = subprocess.run([sys.executable, str(HERE), *args], env=env, capture_output=True, text=True, timeout=600,
                          cwd=HERE.parents[1])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert lines, f"child failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.fixture(scope="module")
def results():
    return _run_child([], interpret=True)


@pytest.mark.parametrize("case", CASES)
def test_triton_interpreted(results, case):
    res = results[case]
    assert res["ok"], res.get("error")


def test_ops_trace_into_triton_kernel_nodes():
    """What torch.compile needs: the custom ops decompose into traceable Triton kernel calls (fwd: one
    launch at parts=3 >= 3 row blocks; bwd: one launch with atomics, two without)."""
    import torch  # the pytest process already has torch; triton is imported only in the child

    if torch.version.cuda is None:
        pytest.skip("fake CUDA tensors need a CUDA build of torch")
    assert _run_child(["--trace"], interpret=False) == {"fwd": 1, "bwd_atomic": 1, "bwd_two_pass": 2}


def test_default_launch_configs_fit_shared_memory():
    """Every default configuration (clipcore.fused_triton.CONFIGS) fits sm_80 and sm_90 shared memory as a launch
    compiles it (same specialisation, num_warps, num_stages; D = 128..1024 and an unaligned D = 1000 at B = 4097),
    and the fast shared-memory path agrees with a full compile. Without the launch's num_stages (triton's default 3) the old 64 x 32 blocks needed 262-271 KB at D = 512."""
    res = _run_child(["--shared"], interpret=False)
    assert res["full"] == res["fast"], res
    over = {k: v for k, v in res["rows"].items() if not 0 < v <= SMEM[int(k.split()[0])]}
    assert len(res["rows"]) == 2 * 6 * 3 * 2 and not over, over


if __name__ == "__main__":
    _child(sys.argv[1:])
