"""Custom operators, built on first use with Paddle's C++ extension toolchain (JIT) and cached.

The models use them wherever they build and can take the tensors, with no config key:
`PPMIX_FUSED_OPS=0` in the environment turns them off (Paddle's own ops then run everywhere).
`fused_ops()` returns the compiled module, or None where it is switched off or cannot be built here;
the models then use Paddle's ops, and one warning per process says why. Its ops, forward and backward:
- `onednn_linear`: act(x W + b), act none, exact GELU or QuickGELU, its GEMMs by oneDNN's matmul
  primitive (Paddle's own libdnnl) with the bias and activation as epilogues (CPU, float32);
- `onednn_mlp`: act(x W1 + b1) W2 + b2 with the same GEMMs, keeping z = x W1 + b1 but not act(z) for
  its backward (CPU, float32);
- `onednn_swiglu`: silu(x W1 + b1) * (x W2 + b2) with the same GEMMs, silu and the product as their
  post-ops without gradients; with them it keeps both pre-activations, not the product (CPU, float32);
- `cpu_attention`: softmax(scale q k^T + mask) v on token-major [batch, tokens, heads, head_dim]
  tensors in one pass, its backward recomputing the probabilities from the row log-sum-exps (CPU,
  float32);
- `cpu_rope`: per-token rotary embedding of [batch, tokens, heads, head_dim] tensors from the
  block-diagonal rotation matrices of layers.rope, reading only their 2x2 blocks (CPU, float32);
- `fused_ln`: layer norm over the last dimension, with its float32 row statistics;
- `fused_bias_gelu`: exact GELU or QuickGELU of x + bias (the GPU MLPs' epilogue);
- `token_embedding`: rows of a table by id, with its dense gradient (CPU, float32);
- `cpu_adamw`: one AdamW step of many parameters in place, their gradients scaled by a clip factor
  (CPU, float32; no gradient).
CPU kernels take float32 (fused_ln and fused_bias_gelu float64 too); where Paddle has CUDA the CUDA
kernels of fused_ln and fused_bias_gelu are built too (float32, float16, bfloat16). `python setup.py
install` in this directory installs the same module instead. Several processes that start together
(paddle.distributed.launch) build once: the first takes a file lock on the build directory, the
others wait for it and load the result.
"""

import fcntl
import hashlib
import importlib
import os
from pathlib import Path
from typing import Optional

import paddle

from ..utils.cpu_process import cpu_signature
from ..utils.hub import ppmix_home
from ..utils.log import logger
from .build_flags import CXX_FLAGS, MODULE_NAME, NVCC_FLAGS, SOURCE_DIRECTORY, link_flags, source_paths

OPS = ("onednn_linear", "onednn_mlp", "onednn_swiglu", "cpu_attention", "cpu_rope", "fused_ln", "fused_bias_gelu",
       "token_embedding", "cpu_adamw")
SWITCH = "PPMIX_FUSED_OPS"  # "0": the models use Paddle's own ops only
ACTIVATIONS = {None: 0, "gelu": 1, "quick_gelu": 2}  # onednn_linear's `activation` attribute
_state = {"module": None, "tried": False}
BUILT_MARK = "built"  # in a build directory: its library is complete


def build_directory() -> Path:
    """$PPMIX_HOME/external_ops/<hash of the sources, flags, Paddle version and CPU>. The ops are built
    with -march=native: a build is reused only on a CPU of the same model and instruction-set flags, so a
    $PPMIX_HOME shared between machines never hands one CPU another's instructions (SIGILL)."""
    digest = hashlib.sha256(paddle.__version__.encode() + " ".join(CXX_FLAGS + NVCC_FLAGS + link_flags()).encode())
    digest.update(cpu_signature().encode())
    for source in sorted(SOURCE_DIRECTORY.iterdir()):
        digest.update(source.name.encode() + source.read_bytes())
    return ppmix_home() / "external_ops" / digest.hexdigest()[:16]


def _build():
    """The module built in build_directory(): compiled there once, then loaded straight from its library.

    Paddle's `load` runs its setup step in a subprocess even when nothing changed (2 s at every process
    start). The directory's name already says which sources, flags, Paddle and CPU it was built for, so a
    finished build (marked by BUILT_MARK, written only after `load` succeeded: a build killed halfway
    leaves no mark) is loaded directly."""
    from paddle.utils.cpp_extension import load
    from paddle.utils.cpp_extension.extension_utils import _import_module_from_library

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others load what it built
        try:
            if (directory / BUILT_MARK).is_file():
                return _import_module_from_library(MODULE_NAME, str(directory / MODULE_NAME))
            module = load(name=MODULE_NAME, sources=source_paths(paddle.is_compiled_with_cuda()),
                          build_directory=str(directory), extra_cxx_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS,
                          extra_ldflags=link_flags(), extra_include_paths=[str(SOURCE_DIRECTORY)], verbose=False)
            (directory / BUILT_MARK).touch()
            return module
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _installed():
    """The module `python setup.py install` put on the path, if it has both ops; else None."""
    try:
        module = importlib.import_module(MODULE_NAME)
    except ImportError:
        return None
    if all(hasattr(module, op) for op in OPS):
        return module
    logger.warning("the installed %s (%s) lacks an op; building the current sources instead", MODULE_NAME,
                   getattr(module, "__file__", "?"))
    return None


def fused_ops(required: bool = False):
    """The compiled custom-op module: the installed one, else built once per process (and cached);
    None when PPMIX_FUSED_OPS=0 or (after one warning) when it cannot be built. `required`: the
    module whatever the switch says, or an error where it cannot be built."""
    if not required and os.environ.get(SWITCH, "1") == "0":
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = _installed() or _build()
        except (OSError, RuntimeError, ValueError, ImportError) as err:  # no compiler, headers, disk...
            _state["error"] = err
            logger.warning("paddlemix fused ops unavailable (%s: %s); using Paddle's own ops (%s=0 silences this)",
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "", SWITCH)
    if _state["module"] is None and required:
        raise RuntimeError(f"paddlemix fused ops could not be built: {_state.get('error')}")
    return _state["module"]


def cpu_threads() -> int:
    """The most threads the CPU kernels may use: the cores this process may run on. The ops use no more
    than OpenMP is set to in the calling thread, i.e. paddle.base.core.set_num_threads's value for
    Paddle's own kernels (Paddle's default is 1; paddlemix's entry scripts share the cores among the
    processes)."""
    return len(os.sched_getaffinity(0))


def fused_layer_norm(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, epsilon: float,
                     ops=None) -> Optional[paddle.Tensor]:
    """y of the fused_ln op over x's last dimension, or None where the op cannot run x (a GPU tensor
    with this CPU build, a half-precision dtype)."""
    ops = ops or fused_ops()
    if not _can_run(ops, x) or weight.dtype != x.dtype or bias.dtype != x.dtype:
        return None
    return ops.fused_ln(x, weight, bias, epsilon, cpu_threads())[0]


def _float32_on_cpu(*tensors: paddle.Tensor) -> bool:
    return all(t.place.is_cpu_place() and t.dtype == paddle.float32 for t in tensors)


def _backward_can_follow(*tensors: paddle.Tensor) -> bool:
    """Whether an op's result may be differentiated: then it keeps what its backward pass needs."""
    return paddle.is_grad_enabled() and not all(t.stop_gradient for t in tensors)


def fused_linear(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor], activation: Optional[str] = None,
                 bf16: bool = False, ops=None) -> Optional[paddle.Tensor]:
    """act(x @ weight + bias) by the onednn_linear op (`activation`: None, "gelu" or "quick_gelu"), or
    None where it cannot run these tensors (not all float32 on CPU). `bf16`: the GEMMs may multiply
    in bfloat16 (float32 tensors and sums) where the CPU has bf16 instructions."""
    ops = ops or fused_ops()
    if ops is None or not _float32_on_cpu(x, weight, *([] if bias is None else [bias])):
        return None
    if bias is None:
        bias = paddle.zeros([weight.shape[-1]], dtype=weight.dtype)
    keep = _backward_can_follow(x, weight, bias)  # the pre-activation, for the backward pass
    return ops.onednn_linear(x, weight, bias, ACTIVATIONS[activation], keep, bf16, cpu_threads())[0]


def fused_mlp(x: paddle.Tensor, w1: paddle.Tensor, b1: paddle.Tensor, w2: paddle.Tensor, b2: paddle.Tensor,
              activation: str, bf16: bool = False, ops=None) -> Optional[paddle.Tensor]:
    """act(x @ w1 + b1) @ w2 + b2 by the onednn_mlp op (`activation`: "gelu" or "quick_gelu"), or None
    where it cannot run these tensors (not all float32 on CPU, or empty)."""
    ops = ops or fused_ops()
    tensors = (x, w1, b1, w2, b2)
    if ops is None or not _float32_on_cpu(*tensors) or 0 in [*x.shape, *w1.shape, *w2.shape]:
        return None
    keep = _backward_can_follow(*tensors)
    return ops.onednn_mlp(x, w1, b1, w2, b2, ACTIVATIONS[activation], keep, bf16, cpu_threads())[0]


def fused_swiglu(x: paddle.Tensor, w1: paddle.Tensor, b1: paddle.Tensor, w2: paddle.Tensor, b2: paddle.Tensor,
                 bf16: bool = False, ops=None) -> Optional[paddle.Tensor]:
    """silu(x @ w1 + b1) * (x @ w2 + b2) [..., hidden] by the onednn_swiglu op, or None where it cannot run
    these tensors (not all float32 on CPU, or empty)."""
    ops = ops or fused_ops()
    tensors = (x, w1, b1, w2, b2)
    if ops is None or not _float32_on_cpu(*tensors) or 0 in [*x.shape, *w1.shape]:
        return None
    keep = _backward_can_follow(*tensors)
    return ops.onednn_swiglu(x, w1, b1, w2, b2, keep, bf16, cpu_threads())[0]


def fused_rope(x: paddle.Tensor, rotations: paddle.Tensor, ops=None) -> Optional[paddle.Tensor]:
    """x [batch, tokens, heads, head_dim] rotated by rotations [(batch,) tokens, head_dim, head_dim] (block-
    diagonal with 2x2 blocks: layers.rope.rope_rotations) by the cpu_rope op, or None where it cannot run
    these tensors (not float32 on CPU, or rotations that would need a gradient)."""
    ops = ops or fused_ops()
    if ops is None or not _float32_on_cpu(x, rotations) or not rotations.stop_gradient:
        return None
    return ops.cpu_rope(x, rotations, cpu_threads())


def fused_attention(query: paddle.Tensor, key: paddle.Tensor, value: paddle.Tensor, attn_mask: Optional[paddle.Tensor],
                    scale: float, ops=None) -> Optional[paddle.Tensor]:
    """softmax(scale query key^T + attn_mask) value by the cpu_attention op ([batch, tokens, heads,
    head_dim] tensors; attn_mask None or additive, broadcastable to [batch, heads, queries, keys]), or
    None where it cannot run these tensors: not all float32 on CPU, a mask that varies per head (the op
    broadcasts it over heads), or one that needs a gradient (the op gives the mask none)."""
    ops = ops or fused_ops()
    tensors = (query, key, value) + (() if attn_mask is None else (attn_mask,))
    if ops is None or not _float32_on_cpu(*tensors):
        return None
    if attn_mask is None:
        mask = paddle.empty([0], dtype=paddle.float32)
    else:
        mask = _mask_for_op(attn_mask, query.shape[0], query.shape[1], key.shape[1])
    if mask is None:
        return None
    return ops.cpu_attention(query, key, value, mask, scale, cpu_threads())[0]


def _mask_for_op(mask: paddle.Tensor, batch: int, queries: int, keys: int) -> Optional[paddle.Tensor]:
    """A mask broadcastable to [batch, heads, queries, keys] as cpu_attention takes it: [queries, keys]
    where every batch row shares it, else [batch, queries, keys]; None where it varies per head or needs
    a gradient. A mask of one row per batch row ([batch, 1, 1, keys], key padding) is expanded over the
    queries: batch x queries x keys floats, 0.2 MB for a text tower at batch 8."""
    shape = [1] * (4 - len(mask.shape)) + list(mask.shape)
    if not mask.stop_gradient or len(shape) > 4 or shape[1] != 1 or shape[0] not in (1, batch) \
            or shape[2] not in (1, queries) or shape[3] != keys:
        return None
    target = [queries, keys] if shape[0] == 1 else [batch, queries, keys]
    mask = mask.reshape(target[:-2] + shape[2:])
    return mask if shape[2] == queries else mask.expand(target)


def fused_embedding(ids: paddle.Tensor, weight: paddle.Tensor, ops=None) -> Optional[paddle.Tensor]:
    """weight[ids] by the token_embedding op, or None where it cannot run these tensors."""
    ops = ops or fused_ops()
    if ops is None or not _float32_on_cpu(weight) or ids.dtype not in (paddle.int64, paddle.int32):
        return None
    return ops.token_embedding(ids, weight, cpu_threads())


def fused_bias_gelu(x: paddle.Tensor, bias: paddle.Tensor, quick: bool, ops=None) -> Optional[paddle.Tensor]:
    """gelu(x + bias) (QuickGELU with `quick`) by the fused_bias_gelu op, or None where it cannot run x."""
    ops = ops or fused_ops()
    if not _can_run(ops, x):
        return None
    return ops.fused_bias_gelu(x, bias, quick, cpu_threads())


def _can_run(ops, x: paddle.Tensor) -> bool:
    """Whether the built ops have a kernel for x's device and dtype."""
    if ops is None:
        return False
    if x.place.is_gpu_place():
        return paddle.is_compiled_with_cuda() and x.dtype in (paddle.float32, paddle.float16, paddle.bfloat16)
    return x.place.is_cpu_place() and x.dtype in (paddle.float32, paddle.float64)


def fused_adamw(params, grads, moment1, moment2, beta1_pows, beta2_pows, grad_scale: Optional[paddle.Tensor], *,
                learning_rates, decay_coeffs, beta1: float, beta2: float, epsilon: float, ops=None) -> bool:
    """One AdamW step of every parameter in `params` by the cpu_adamw op, in place (Paddle's AdamW kernel's
    arithmetic and accumulators; per-parameter `learning_rates` and decoupled `decay_coeffs`), the gradients
    multiplied by `grad_scale` (a clip factor; None: 1). False, with nothing changed, where the op cannot
    run these tensors (not all float32 on CPU)."""
    ops = ops or fused_ops()
    grad_scale = paddle.ones([], "float32") if grad_scale is None else grad_scale
    tensors = [*params, *grads, *moment1, *moment2, *beta1_pows, *beta2_pows, grad_scale]
    if ops is None or not _float32_on_cpu(*tensors):
        return False
    # detached views share the parameters' memory; Paddle refuses in-place ops on leaves that take gradients
    ops.cpu_adamw([param.detach() for param in params], grads, moment1, moment2, beta1_pows, beta2_pows, grad_scale,
                  list(learning_rates), list(decay_coeffs), beta1, beta2, epsilon, cpu_threads())
    return True
