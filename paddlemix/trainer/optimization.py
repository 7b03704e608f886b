"""Optimizer parameter groups (per-tower lr/wd, layer-wise lr decay), the warm-up + cosine
schedule, and gradient clipping by one global norm, for Paddle's AdamW and Lamb.

Paddle semantics this module relies on (paddle 3.x, read from optimizer/{optimizer,adamw,lamb}.py
and the phi adamw/lamb kernels):
- A group's `learning_rate` is a multiplier: the kernel's lr is the scheduled lr times it.
- AdamW reads a group's `weight_decay` and decays decoupled, p *= 1 - lr * multiplier * wd,
  before the Adam update (the same as torch.optim.AdamW with the group's lr).
- Lamb reads `lamb_weight_decay`. A `weight_decay` key in a Lamb group is turned by the base
  Optimizer into an L2Decay regulariser stored on the parameter, which adds wd * p to the
  gradient: a different algorithm, silently. With lamb_weight_decay == 0 (and the default
  always_adapt=False) Lamb skips the trust ratio, as apex's FusedLAMB does without use_nvlamb.
- With parameter groups the optimizer calls grad_clip once per group, so
  ClipGradByGlobalNorm clips each group by its own norm; GlobalNormClip fixes that.
"""

import math
from typing import Dict, Iterable, List, Optional, Tuple, Union

import paddle
import paddle.distributed as dist
from paddle import _C_ops
from paddle.nn.clip import ClipGradBase
from paddle.optimizer.lr import LRScheduler

from ..external_ops import fused_adamw, fused_ops
from ..models.layers.parallel import tensor_parallel_layout

TOWERS = ("visual", "text")
OPTIMIZERS = ("adamw", "lamb")
# torch.nn.utils.clip_grad_norm_'s guard against a zero norm.
_CLIP_EPS = 1e-6


def parameter_groups(
    model: paddle.nn.Layer,
    learning_rate: float,
    weight_decay: float,
    visual_lr: Optional[float] = None,
    text_lr: Optional[float] = None,
    visual_wd: Optional[float] = None,
    text_wd: Optional[float] = None,
    layer_decay: float = 1.0,
    visual_ld: Optional[float] = None,
    text_ld: Optional[float] = None,
) -> List[dict]:
    """Trainable parameters grouped by (tower, layer id, decays?), EVA-CLIP style.

    A parameter of tower T at layer id i (T.layer_id(name): 0 for the stem, i for block i - 1, L_T + 1
    after the blocks) gets lr = T_lr * T_ld ** (L_T + 1 - i), L_T being T.num_layers; T_lr, T_wd, T_ld fall back to learning_rate, weight_decay,
    layer_decay. Parameters outside both towers (logit_scale) get learning_rate. Each group is
    {"params", "param_names", "learning_rate": lr / learning_rate (Paddle's multiplier),
    "weight_decay": T_wd or 0.0, "name": e.g. "visual.layer3.decay"}. The model declares which
    parameters do not decay (`model.no_weight_decay()`, from its towers): nothing here reads names.
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0 (group lrs are multipliers of it), got {learning_rate}")
    # DataParallel / fleet wrappers prefix every name with "_layers."; group the inner model.
    model = getattr(model, "_layers", model)
    settings = {
        "visual": (visual_lr, visual_wd, visual_ld),
        "text": (text_lr, text_wd, text_ld),
    }
    groups: Dict[str, dict] = {}
    exempt = model.no_weight_decay()
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        tower, _, rest = name.partition(".")
        decays = name not in exempt
        if tower in TOWERS:
            lr, wd, ld = settings[tower]
            lr = learning_rate if lr is None else lr
            wd = weight_decay if wd is None else wd
            ld = layer_decay if ld is None else ld
            depth = getattr(model, tower).num_layers
            layer = getattr(model, tower).layer_id(rest)
            lr *= ld ** (depth + 1 - layer)
            key = f"{tower}.layer{layer}"
        else:
            lr, wd, key = learning_rate, weight_decay, "other"
        key += ".decay" if decays else ".no_decay"
        group = groups.setdefault(key, {
            "params": [], "param_names": [], "learning_rate": lr / learning_rate,
            "weight_decay": wd if decays else 0.0, "name": key,
        })
        group["params"].append(param)
        group["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameter (every parameter has stop_gradient=True)")
    return list(groups.values())


def parameter_settings(groups: Iterable[dict]) -> Dict[str, Tuple[float, float]]:
    """{parameter name: (lr multiplier, weight decay)} of groups from parameter_groups."""
    return {
        name: (group["learning_rate"], group.get("lamb_weight_decay", group.get("weight_decay")))
        for group in groups
        for name in group["param_names"]
    }


def group_learning_rates(optimizer: paddle.optimizer.Optimizer, current_lr: float) -> Dict[str, float]:
    """{"lr/<tower>.layer<i>": effective lr} for logging; decay and no-decay groups of a layer
    share their lr, so they share one entry. A flat optimizer (sharding, or one wrapped by fleet)
    reports its single schedule value as "lr"."""
    groups = getattr(optimizer, "_param_groups", None) or []
    if not all(isinstance(group, dict) and "name" in group for group in groups) or not groups:
        return {"lr": current_lr}
    return {"lr/" + group["name"].rsplit(".", 1)[0]: current_lr * group["learning_rate"] for group in groups}


class WarmupCosine(LRScheduler):
    """open_clip's cosine_lr with a floor: base * (step + 1) / warmup for step < warmup, then
    min_lr + (base - min_lr) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2, and
    min_lr from total_steps on. `step` is the number of scheduler.step() calls made so far."""

    def __init__(self, learning_rate: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        if warmup_steps < 0 or total_steps <= warmup_steps:
            raise ValueError(
                f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = min_lr
        super().__init__(learning_rate)

    def get_lr(self) -> float:
        step = self.last_epoch
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = (min(step, self.total_steps) - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (self.base_lr - self.min_lr)


def cosine_schedule(learning_rate: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> WarmupCosine:
    """Linear warm-up then cosine decay to min_lr at total_steps; see WarmupCosine."""
    return WarmupCosine(learning_rate, warmup_steps, total_steps, min_lr)


def squared_norm(tensor: paddle.Tensor) -> paddle.Tensor:
    """sum(tensor ** 2) in float32, a scalar: the kernel of Paddle's own clip, one pass with no squared
    copy (on the README demo's 7.2 M gradients, 1-2 ms where square + sum took 9)."""
    return _C_ops.squared_l2_norm(tensor.astype("float32")).reshape([])


class GlobalNormClip(ClipGradBase):
    """Scale every gradient by min(1, max_norm / (global_norm + 1e-6)), global_norm being the L2
    norm over the gradients of all `named_parameters` (torch's clip_grad_norm_ over the model).

    Paddle calls grad_clip once per parameter group. The first call of a step computes the norm
    over all parameters' gradients (the optimizer hands clipped copies to the update and leaves
    param.grad untouched, so later calls would see the same gradients) and every group of that
    step reuses its scale. A call holding a parameter already clipped in the current step, or
    one that was not counted, starts a new step. The last norm is kept in `last_global_norm`.

    named_parameters: (unsharded name, parameter) pairs; split_names: those of tensor-parallel shards
    (tensor_parallel_layout). With a model_parallel_group the squared norms of the shards are summed
    over that group and replicated parameters counted once, so every rank clips by the same norm: Paddle's hybrid
    optimizer only makes ClipGradByGlobalNorm parallel-aware, and it knows nothing of our split
    LayerNorm and q/v biases.

    partition_group (sharding stage1): each rank's optimizer holds only its partition of the
    parameters, and only their gradients are reduced there; the clip then sums the squared norm
    of the gradients it is given over that group (a flat optimizer calls it once a step).
    """

    def __init__(self, max_norm: float, named_parameters: Iterable[Tuple[str, paddle.Tensor]],
                 model_parallel_group=None, partition_group=None, split_names: Iterable[str] = ()):
        super().__init__()
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)
        self._named_parameters = list(named_parameters)
        self._group = model_parallel_group
        self._split_names = set(split_names)
        self._partition_group = partition_group
        self._names = {p.name: name for name, p in self._named_parameters}
        self._pending: set = set()
        self._scale: Optional[paddle.Tensor] = None
        self.last_global_norm: Optional[paddle.Tensor] = None

    def __str__(self) -> str:
        return f"GlobalNormClip(max_norm={self.max_norm})"

    def _set_scale(self, named_grads: List[Tuple[str, paddle.Tensor]]) -> None:
        squares = {True: [paddle.zeros([], "float32")], False: [paddle.zeros([], "float32")]}  # sharded or not
        for name, grad in named_grads:
            squares[self._group is not None and name in self._split_names].append(squared_norm(grad))
        sharded, replicated = paddle.add_n(squares[True]), paddle.add_n(squares[False])
        if self._group is not None:
            # Each rank holds a different slice of a sharded tensor; replicated ones are alike.
            dist.all_reduce(sharded, group=self._group)
        total = sharded + replicated
        if self._partition_group is not None:
            dist.all_reduce(total, group=self._partition_group)
        self.last_global_norm = paddle.sqrt(total)
        self._scale = paddle.clip(self.max_norm / (self.last_global_norm + _CLIP_EPS), max=1.0)

    def _start_step(self) -> None:
        counted = [(name, p) for name, p in self._named_parameters if not p.stop_gradient and p.grad is not None]
        self._set_scale([(name, p.grad) for name, p in counted])
        self._pending = {p.name for _, p in counted}

    @paddle.no_grad()
    def scale(self, params_grads) -> Optional[paddle.Tensor]:
        """The factor (a float32 scalar tensor) that clips the gradients of `params_grads`; None when none is set."""
        names = {p.name for p, g in params_grads if g is not None}
        if not names:
            return None
        if self._partition_group is not None:
            self._set_scale([(self._names.get(p.name, p.name), g) for p, g in params_grads if g is not None])
            return self._scale
        if not names <= self._pending:
            self._start_step()
        self._pending -= names
        return self._scale

    @paddle.no_grad()
    def _dygraph_clip(self, params_grads):
        scale = self.scale(params_grads)
        if scale is None:
            return params_grads
        return [(p, g if g is None else g * scale.astype(g.dtype)) for p, g in params_grads]


class AdamW(paddle.optimizer.AdamW):
    """Paddle's AdamW whose step updates every parameter in one call of the cpu_adamw op (external_ops)
    where all of them and their gradients are float32 on CPU.

    Paddle's step runs its kernel once per parameter from Python, after the clip has written a scaled
    copy of every gradient: ~45 ms of the README demo's ~240 ms step (62 tensors, 7.2 M values), where
    the op takes a few. The op keeps Paddle's state (the moment and beta-power accumulators, so
    checkpoints are Paddle's) and its arithmetic (tests/test_optimization.py compares them step by
    step). With an option the op lacks (per-group betas or epsilon, lr_ratio, amsgrad, lazy mode, a clip
    other than GlobalNormClip, sparse or non-float32 gradients) or with the ops off, Paddle's step runs.
    """

    @paddle.no_grad()
    def step(self) -> None:
        plan = self._fused_plan()
        if plan is None or not self._fused_step(*plan):
            super().step()

    def _fused_plan(self):
        """(updates, (beta1, beta2, epsilon)), each update (parameter, gradient, lr multiplier, decay
        coefficient), or None where the op cannot do what Paddle's step would."""
        clip = self._grad_clip
        # ops off: decided before the clip's norm and the accumulators, which Paddle's step would redo
        if fused_ops() is None or not paddle.in_dynamic_mode() or self._lr_ratio is not None or self._amsgrad or (
                clip is not None and not isinstance(clip, GlobalNormClip)):
            return None
        if isinstance(self._parameter_list[0], dict):
            groups = self._param_groups
        else:
            groups = [{"params": self._parameter_list, "weight_decay": self._weight_decay, "beta1": self._beta1,
                       "beta2": self._beta2, "epsilon": self._epsilon, "lazy_mode": self._lazy_mode}]
        settings = {(group["beta1"], group["beta2"], group["epsilon"], group["lazy_mode"]) for group in groups}
        numbers = [value for group in groups for value in (group["beta1"], group["beta2"], group["epsilon"],
                                                             group["weight_decay"])]
        if len(settings) != 1 or not all(isinstance(value, (int, float)) for value in numbers):
            return None
        (beta1, beta2, epsilon, lazy_mode), = settings
        if lazy_mode:
            return None
        updates = []
        for group in groups:
            for param in group["params"]:
                grad = None if param.stop_gradient else param._grad_ivar()
                if grad is None:
                    continue
                multiplier = param.optimize_attr.get("learning_rate", 1.0)
                if grad.is_selected_rows() or not isinstance(multiplier, (int, float)):
                    return None
                decays = self._apply_decay_param_fun is None or self._apply_decay_param_fun(param.name)
                updates.append((param, grad, float(multiplier), float(group["weight_decay"]) if decays else 0.0))
        return (updates, (float(beta1), float(beta2), float(epsilon))) if updates else None

    def _fused_step(self, updates, betas_epsilon) -> bool:
        params = [param for param, _, _, _ in updates]
        self._create_accumulators(paddle.static.default_main_program().global_block(), params)
        clip_scale = None
        if self._grad_clip is not None:
            clip_scale = self._grad_clip.scale([(param, grad) for param, grad, _, _ in updates])
        lr = self.get_lr()
        beta1, beta2, epsilon = betas_epsilon
        moment1, moment2, beta1_pows, beta2_pows = (
            [self._get_accumulator_master(name, param) for param in params]
            for name in (self._moment1_acc_str, self._moment2_acc_str, self._beta1_pow_acc_str, self._beta2_pow_acc_str))
        return fused_adamw(params, [grad for _, grad, _, _ in updates], moment1, moment2, beta1_pows, beta2_pows,
                           clip_scale, learning_rates=[lr * multiplier for _, _, multiplier, _ in updates],
                           decay_coeffs=[coeff for _, _, _, coeff in updates], beta1=beta1, beta2=beta2,
                           epsilon=epsilon)


def _model_parallel_group(model: paddle.nn.Layer):
    """Fleet's tensor-parallel group when the model is split over ranks, else None."""
    config = getattr(getattr(model, "_layers", model), "config", None)
    if getattr(config, "tensor_parallel_degree", 1) <= 1:
        return None
    from paddle.distributed import fleet

    return fleet.get_hybrid_communicate_group().get_model_parallel_group()


def _sharding_group():
    """Fleet's sharding group when the optimizer is partitioned over ranks (stage1), else None."""
    from paddle.distributed import fleet

    hcg = fleet.get_hybrid_communicate_group()
    if hcg is None or hcg.get_sharding_parallel_world_size() <= 1:
        return None
    return hcg.get_sharding_parallel_group()


def build_optimizer(
    name: str,
    model: paddle.nn.Layer,
    schedule: Union[LRScheduler, float],
    *,
    learning_rate: float,
    weight_decay: float,
    beta1: float,
    beta2: float,
    epsilon: float,
    max_grad_norm: float = 0.0,
    flat: bool = False,
    **tower_settings: Optional[float],
) -> paddle.optimizer.Optimizer:
    """Paddle AdamW or Lamb over parameter_groups(model, learning_rate, weight_decay, **tower_settings)
    (visual_lr, text_lr, visual_wd, text_wd, layer_decay, visual_ld, text_ld), stepping with
    `schedule`, whose peak must be `learning_rate` (the groups' multipliers are relative to it).
    max_grad_norm > 0 clips by the global norm over all groups (GlobalNormClip); <= 0 does not clip.

    `flat`: one plain parameter list, for optimizers that refuse groups (sharding stage1). Each
    parameter then carries its group's lr multiplier itself (Paddle's `optimize_attr`), and the
    decay exemptions go through the optimizer's name filter; one weight decay must then serve
    every decaying parameter, else this refuses.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    peak = schedule.base_lr if isinstance(schedule, LRScheduler) else schedule
    if not math.isclose(peak, learning_rate):
        raise ValueError(
            f"the schedule peaks at {peak} but learning_rate is {learning_rate}; group lrs are "
            "multipliers of the schedule, so build the schedule from the same learning_rate"
        )
    groups = parameter_groups(model, learning_rate, weight_decay, **tower_settings)
    clip = None
    if max_grad_norm > 0:
        named = [pair for group in groups for pair in zip(group["param_names"], group["params"])]
        clip = GlobalNormClip(max_grad_norm, named, model_parallel_group=_model_parallel_group(model),
                              partition_group=_sharding_group() if flat else None,
                              split_names=tensor_parallel_layout(getattr(model, "_layers", model)))
    if flat:
        return _flat_optimizer(name, groups, schedule, clip, beta1=beta1, beta2=beta2, epsilon=epsilon)
    if name == "lamb":
        lamb_groups = []
        for group in groups:
            lamb_group = {key: value for key, value in group.items() if key != "weight_decay"}
            lamb_group["lamb_weight_decay"] = group["weight_decay"]
            lamb_groups.append(lamb_group)
        return paddle.optimizer.Lamb(
            learning_rate=schedule, lamb_weight_decay=weight_decay, beta1=beta1, beta2=beta2,
            epsilon=epsilon, parameters=lamb_groups, grad_clip=clip,
        )
    return AdamW(
        learning_rate=schedule, beta1=beta1, beta2=beta2, epsilon=epsilon, parameters=groups,
        weight_decay=weight_decay, grad_clip=clip,
    )


def _flat_optimizer(name, groups, schedule, clip, **adam):
    decays = {group["weight_decay"] for group in groups if group["weight_decay"] > 0}
    if len(decays) > 1:
        raise ValueError(
            f"--sharding stage1 takes no parameter groups, so one weight decay must serve both towers; got "
            f"{sorted(decays)} (--visual_wd/--text_wd/--weight_decay). Make them equal, or train without --sharding"
        )
    decay = decays.pop() if decays else 0.0
    exempt = {param.name for group in groups if group["weight_decay"] == 0 for param in group["params"]}
    params = []
    for group in groups:
        for param in group["params"]:
            param.optimize_attr["learning_rate"] = group["learning_rate"]
            params.append(param)
    if name == "lamb":
        return paddle.optimizer.Lamb(
            learning_rate=schedule, lamb_weight_decay=decay, parameters=params, grad_clip=clip,
            exclude_from_weight_decay_fn=lambda param: param.name in exempt, **adam,
        )
    return AdamW(
        learning_rate=schedule, parameters=params, weight_decay=decay, grad_clip=clip,
        apply_decay_param_fun=lambda param_name: param_name not in exempt, **adam,
    )
