"""The Triton kernels of :mod:`clipcore.fused_triton` compiled ahead of time, exactly as a launch compiles them, on
a machine without a GPU: :func:`compile_for` (PTX and cubin, for ptxas' register and spill figures) and
:func:`shared_memory_for` (shared memory only, ~0.3 s a kernel). tests/test_fused_triton.py checks with them that
every default launch configuration fits sm_80 and sm_90; benchmarks/triton_static.py prints their figures.

"Exactly": the arguments go through triton's own launch binder (``runtime.jit.create_function_from_signature`` and
``JITFunction._pack_args``, triton 3.8), built from the same argument lists the ops launch with
(``fused_triton._fwd_args`` / ``_bwd_args``), so a kernel gets the specialisation a launch gives (16-aligned
pointers and integers divisible by 16 marked ``tt.divisibility = 16``, integers equal to 1 made constant) and the
launch's options (``launch_config``: blocks, num_warps, num_stages).
"""
from __future__ import annotations

import torch
import triton
from torch import Tensor

from clipcore.fused_triton import _bwd_args, _bwd_kernel, _fwd_args, _fwd_kernel, launch_config


def _launch_source(arch: int, d: int, dtype: torch.dtype, kind: str, m: int, n: int, overrides: dict):
    """(target, backend, ASTSource, options) of one kernel as a launch on (m, D) x (n, D) inputs compiles it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    # Placeholders: only the dtype, the row stride and a 16-aligned address of an argument matter to the binder.
    x, f = _Strided(torch.empty(0, dtype=dtype), d), torch.empty(0)
    cfg = launch_config(kind, d, dtype, overrides.get("block_m"), overrides.get("block_n"))
    cfg.update({k: overrides[k] for k in ("num_warps", "num_stages") if overrides.get(k) is not None})
    if kind == "forward":
        fn, (args, kw) = _fwd_kernel, _fwd_args(x, x, f, f, f, f, m, n, d, 0, 0, True, True, cfg, False)
    else:
        fn, (args, kw) = _bwd_kernel, _bwd_args(x, x, f, f, f, x, f, f, (1.0, 1.0, 1.0), torch.ones(1), m, n, d, 0,
                                                True, True, True, cfg, False)
    args = tuple(a.t if isinstance(a, _Strided) else a for a in args)
    binder = create_function_from_signature(fn.signature, fn.params, backend)  # the launch's own binder
    bound, spec, opts = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    return target, backend, ASTSource(fn, signature, constexprs, attrs), options


def compile_for(arch: int, d: int, dtype: torch.dtype = torch.bfloat16, *, m: int = 65536, n: int = 65536,
                kernels: tuple[str, ...] = ("forward", "backward"), **overrides) -> dict:
    """Compile the forward and the (atomic) backward kernel for ``sm_<arch>`` exactly as a launch on (m, D) x (n, D)
    inputs of ``dtype`` compiles them (module docstring) -> {"forward": kernel, "backward": kernel}. Needs no GPU
    (PTX, then the ptxas shipped with triton). ``overrides``: block_m, block_n, num_warps, num_stages instead of
    ``launch_config``'s. benchmarks/triton_static.py reads shared memory and register use from the result."""
    out = {}
    for kind in kernels:
        target, _, src, options = _launch_source(arch, d, dtype, kind, m, n, overrides)
        out[kind] = triton.compile(src, target=target, options=options.__dict__)
    return out


def shared_memory_for(arch: int, d: int, dtype: torch.dtype = torch.bfloat16, *, m: int = 65536, n: int = 65536,
                      kernels: tuple[str, ...] = ("forward", "backward"), **overrides) -> dict:
    """{kernel: bytes of shared memory} as :func:`compile_for`'s kernels have it, in ~0.3 s instead of 1-70 s: the
    same source and options through triton's ttir and ttgir stages (software pipelining, layouts), then the first
    passes of its make_llir up to and including shared-memory allocation (triton 3.8's nvidia backend order), without
    the LLVM and ptxas work. tests/test_fused_triton.py checks it equals compile_for's metadata.shared."""
    from triton._C.libtriton import ir, nvidia, passes
    from triton.backends.nvidia.compiler import get_ptx_version_from_options

    out = {}
    for kind in kernels:
        target, backend, src, options = _launch_source(arch, d, dtype, kind, m, n, overrides)
        stages: dict = {}
        backend.add_stages(stages, options, src.language)
        ctx = ir.context()
        ir.load_dialects(ctx)
        backend.load_dialects(ctx)
        mod = src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(), ctx)
        meta = {"target": target, **options.__dict__}
        mod = stages["ttgir"](stages["ttir"](mod, meta), meta)
        pm = ir.pass_manager(mod.context)
        passes.ttgpuir.add_combine_tensor_select_and_if(pm)
        passes.ttgpuir.add_allocate_warp_groups(pm, False)
        passes.convert.add_scf_to_cf(pm)
        passes.gluon.add_inliner(pm)
        nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(pm, arch, get_ptx_version_from_options(options, arch))
        pm.run(mod, "shared_memory_for")
        out[kind] = mod.get_int_attr("ttg.shared")
    return out


class _Strided:
    """A placeholder (m, D) row-major input for compile_for: its tensor ``t`` (empty: dtype and address) and stride."""

    def __init__(self, t: Tensor, d: int):
        self.t, self._d = t, d

    def stride(self, i: int) -> int:
        return self._d

    @property
    def dtype(self):
        return self.t.dtype
