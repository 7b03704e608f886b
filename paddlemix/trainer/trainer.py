"""The one trainer of every family: PaddleNLP's Trainer with paddlemix's loader, optimizer groups,
atomic and resumable checkpoints, preemption handling, a non-finite step guard and CLIP-specific logs."""

import contextlib
import json
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import paddle
import paddle.distributed as dist
from paddlenlp.trainer import IntervalStrategy, Trainer, TrainerCallback
from paddlenlp.trainer.integrations import VisualDLCallback

from ..data.loader import ImageTextLoader
from ..data.pair_keys import pair_keys_of
from ..models.hub import WEIGHTS_NAME
from ..models.layers.kernels import bf16_gemm_scope
from ..models.loss_registry import training_loss
from ..models.state_dict import load_state_dict_strict
from ..models.weights_file import read_pdparams
from ..utils.distributed import get_world_size
from ..utils.log import logger
from .checkpoints import (
    CHECKPOINT_PREFIX, COMPLETE_MARKER, RESULTS_LOG, TRAINER_STATE, check_same_batch, checkpoint_step,
    complete_checkpoints, remove_old_checkpoints,
)
from .optimization import build_optimizer, cosine_schedule, group_learning_rates, squared_norm

# checked for NaN/inf every step
WATCHED_OUTPUTS = ("image_features", "text_features", "logit_scale", "logit_bias", "logits")
SCALAR_OUTPUTS = ("logit_scale", "logit_bias")  # the model's learned scalars, which the contrastive losses take


def json_record(logs: Dict) -> str:
    """One line of results.jsonl: strict JSON. A NaN or infinite number is written as null and its
    key listed under "nonfinite" with the value as a string ("nan", "inf", "-inf")."""
    record, nonfinite = {}, {}
    for key, value in logs.items():
        if isinstance(value, float) and not math.isfinite(value):
            record[key], nonfinite[key] = None, str(value)
        else:
            record[key] = value
    if nonfinite:
        record["nonfinite"] = nonfinite
    return json.dumps(record, allow_nan=False)


class PreemptionCallback(TrainerCallback):
    """On SIGTERM/SIGINT: finish the current step, save a checkpoint, stop cleanly.

    With several processes a signal reaches them at different moments (a scheduler signals each
    node on its own), but the save is collective: after every step the ranks agree (an all-reduce
    of the flag), so all of them stop at the same step when any one was signalled.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = None
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS}
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():  # the host program's own handling again
            signal.signal(sig, handler)
        return control

    def _request(self, signum, frame):
        self.requested = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint after this step, then stopping", self.requested)

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested is not None
        if get_world_size() > 1:
            flag = paddle.to_tensor([int(requested)], dtype="int32")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag.item()) and not requested:
                logger.warning("another process received a stop signal: saving a checkpoint after this step, then stopping")
            requested = bool(int(flag.item()))
        if requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class SaveFinalStep(TrainerCallback):
    """Save a checkpoint at the last step too, whatever --save_steps: a relaunch with
    `--resume_from_checkpoint auto` then finds the run complete instead of retraining its tail."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control


def watched(outputs: Dict) -> List[paddle.Tensor]:
    """The model outputs checked for NaN/inf every step (WATCHED_OUTPUTS, where present)."""
    return [outputs[key] for key in WATCHED_OUTPUTS if outputs.get(key) is not None]


class LogitScaleClamp(TrainerCallback):
    """Clamp logit_scale to [0, ln 100] after every update, as open_clip's training loop does: the
    forward clamp alone would let the parameter drift where it gets no gradient."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with paddle.no_grad():
            model.logit_scale.set_value(model.logit_scale.clip(0.0, model.config.max_logit_scale))
        return control


class ScalarVisualDLCallback(VisualDLCallback):
    """PaddleNLP's VisualDL logging without its hyper-parameter table, which fails on boolean
    arguments with today's visualdl/protobuf ("Expected an int, got a boolean")."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.vdl_writer is None:
            self._init_summary_writer(args)
        return control


class CLIPTrainer(Trainer):
    """PaddleNLP Trainer over paddlemix's ImageTextLoader and optimizer; see module docstring."""

    def __init__(self, model, args, train_dataset, tokenizer, loss_fn, evaluation=None, bf16_gemms: bool = False):
        self.bf16_gemms = bf16_gemms  # the Linears' GEMMs in bfloat16 (--bf16 on a CPU with bf16 instructions)
        self.preemption = PreemptionCallback()
        super().__init__(model=model, args=args, train_dataset=train_dataset, tokenizer=tokenizer,
                         callbacks=[self.preemption, LogitScaleClamp(), SaveFinalStep()])
        if self.pop_callback(VisualDLCallback) is not None:
            self.add_callback(ScalarVisualDLCallback())
        self.train_loader = ImageTextLoader(
            train_dataset, batch_size=args.per_device_train_batch_size, tokenizer=tokenizer,
            num_workers=args.dataloader_num_workers, seed=args.seed, log_every=max(1, args.logging_steps),
        )
        self.loss_fn = loss_fn  # models.loss_registry.build_loss(model.config, ...)
        self.evaluation = evaluation  # a TrainingEvaluation, run every --eval_steps
        self._evaluated: Dict = {}
        if evaluation is not None and args.eval_steps:
            args.evaluation_strategy = IntervalStrategy.STEPS
        self.nonfinite_in_a_row = 0
        self.nonfinite_skipped = 0
        self._resume_rng_from = None
        self.resumed_from: Optional[str] = None
        self.finished_before = False  # set when a relaunch finds the run already at its last step
        self._micro_batches = []

    # ---- data, optimizer, loss
    def get_train_dataloader(self):
        return self.train_loader

    def create_optimizer_and_scheduler(self, num_training_steps: int):
        args = self.args
        self.lr_scheduler = cosine_schedule(args.learning_rate, args.warmup_steps, num_training_steps, args.min_lr)
        self.optimizer = build_optimizer(
            args.optimizer, self.model, self.lr_scheduler, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, visual_lr=args.visual_lr, text_lr=args.text_lr, visual_wd=args.visual_wd,
            text_wd=args.text_wd, layer_decay=args.layer_decay, visual_ld=args.visual_ld, text_ld=args.text_ld,
            beta1=args.adam_beta1, beta2=args.adam_beta2, epsilon=args.adam_epsilon, max_grad_norm=args.max_grad_norm,
            flat=bool(args.sharding),  # sharding stage1 refuses parameter groups
        )

    def autocast_smart_context_manager(self):
        """Around every forward pass: PaddleNLP's AMP context (GPUs), and the Linears' bfloat16 GEMMs
        with --bf16 on a CPU with bf16 instructions (their backward passes keep that precision)."""
        scope = contextlib.ExitStack()
        scope.enter_context(super().autocast_smart_context_manager())
        scope.enter_context(bf16_gemm_scope(self.bf16_gemms))
        return scope

    def compute_loss(self, model, inputs, return_outputs=False):
        outputs = model(image=inputs["image"], input_ids=inputs["input_ids"])  # the pair keys go to the loss alone
        outputs["loss"] = training_loss(self.loss_fn, outputs, **pair_keys_of(inputs))
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def training_step(self, model, inputs, step_control=0):
        """One micro-batch. With --gradient_accumulation_steps N the micro-batches are kept until the
        N-th, and the update then equals one batch N times larger (see _accumulated_backward)."""
        model.train()
        self._micro_batches.append(inputs)
        if len(self._micro_batches) < self.args.gradient_accumulation_steps:
            return paddle.zeros([])
        batches, self._micro_batches = self._micro_batches, []
        if len(batches) == 1:
            with self.autocast_smart_context_manager():
                loss, outputs = self.compute_loss(model, batches[0], return_outputs=True)
            if self._skip_nonfinite("loss or features", [loss, *watched(outputs)]):
                return paddle.zeros([])
            self._backward(loss)
        else:
            loss = self._accumulated_backward(model, batches)
            if loss is None:
                return paddle.zeros([])
        if not self.do_grad_scaling and self._skip_nonfinite("gradient norm", [self._gradient_square_sum()]):
            return paddle.zeros([])  # (under --fp16 the GradScaler skips steps with inf/NaN gradients itself)
        return loss.detach()

    def _backward(self, loss) -> None:
        """Backward of `loss`, through the GradScaler under --fp16: PaddleNLP's loop then calls
        scaler.step, which divides the gradients by the loss scale again."""
        if self.do_grad_scaling:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _accumulated_backward(self, model, batches):
        """The loss of all micro-batches as one batch (open_clip's accum_freq): every micro-batch's
        features first without gradient, then each micro-batch recomputed with gradient in turn among
        the others' cached features. The contrastive negatives are those of the large batch, and the
        gradients sum to its gradient; logit_scale keeps its gradient in one pass only (open_clip
        counts it N times). Per-token losses (CoCa's captions) are averaged over the large batch's
        tokens, so the micro-batches' shares add up to it exactly. The micro-batches' pair keys are joined
        as their features are, so pairs that share an image or caption across micro-batches are no
        negatives either."""
        batch_input_ids = paddle.concat([b["input_ids"] for b in batches])
        joined_keys = pair_keys_of(*batches)
        cached, token_losses = [], []
        with paddle.no_grad(), self.autocast_smart_context_manager():
            for batch in batches:
                out = model(image=batch["image"], input_ids=batch["input_ids"])
                parts = self.loss_fn.loss_parts(out, batch_input_ids, **pair_keys_of(batch))
                token_losses.extend(value for name, value in parts.items() if name != "contrastive_loss")
                cached.append({key: out[key] for key in ("image_features", "text_features", *SCALAR_OUTPUTS)
                               if key in out})
            watched_outputs = [value for c in cached for value in watched(c)]
            contrastive = self.loss_fn.contrastive_loss(*self._joined(cached, None, None), cached[0], **joined_keys)
            loss = paddle.add_n([part for part in (contrastive, *token_losses) if part is not None])
        if self._skip_nonfinite("loss or features", [loss, *watched_outputs]):
            return None
        last = len(batches) - 1
        for index, batch in enumerate(batches):
            # DataParallel reduces the gradients once, after the last pass. no_sync must hold over the
            # forward pass too: DataParallel's forward readies its reducer for the backward that follows.
            sync = model.no_sync() if index < last and hasattr(model, "no_sync") else contextlib.nullcontext()
            with sync, self.autocast_smart_context_manager():
                fresh = model(image=batch["image"], input_ids=batch["input_ids"])
                scalars = {key: fresh[key] if index == last else fresh[key].detach()
                           for key in SCALAR_OUTPUTS if key in fresh}
                image_features, text_features = self._joined(cached, index, fresh)
                joined = dict(fresh, image_features=image_features, text_features=text_features, **scalars)
                micro_loss = training_loss(self.loss_fn, joined, batch_input_ids, **joined_keys)
                self._backward(micro_loss)
        return loss.detach()

    @staticmethod
    def _joined(cached, index, fresh):
        """(image, text) features of all micro-batches, the index-th replaced by `fresh`."""
        parts = [fresh if i == index else c for i, c in enumerate(cached)]
        return (paddle.concat([p["image_features"] for p in parts]), paddle.concat([p["text_features"] for p in parts]))

    def _gradient_square_sum(self) -> paddle.Tensor:
        """Sum of the squared gradients (the squared global norm; inf when it passes float32's range)."""
        with paddle.no_grad():
            squares = [squared_norm(p.grad) for p in self.model.parameters() if p.grad is not None]
            return paddle.add_n(squares) if squares else paddle.zeros([])

    def _skip_nonfinite(self, what: str, values: Sequence[paddle.Tensor]) -> bool:
        """True (and a warning) when any of `values` holds NaN/inf on any rank: the step's gradients
        are dropped, so the optimizer leaves every parameter as it is; too many in a row stop the run.

        One sum per tensor and one all-reduce: cheap beside a training step. The loss alone is not
        enough: Paddle's CPU cross_entropy returns a finite ln(batch) for NaN logits at batch sizes
        that are multiples of 8, so weights gone NaN must show in the features or gradients."""
        with paddle.no_grad():
            sums = paddle.stack([value.detach().astype("float32").sum() for value in values])
            finite = paddle.isfinite(sums).all().astype("int32").reshape([1])
        if get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):
            self.nonfinite_in_a_row = 0
            return False
        for param in self.model.parameters():  # no gradient: the optimizer skips the parameter
            param.clear_gradient(False)
        self.nonfinite_in_a_row += 1
        self.nonfinite_skipped += 1
        logger.warning("step %d: non-finite %s (loss %s), update skipped (%d in a row)", self.state.global_step + 1,
                       what, float(values[0]), self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.args.max_nonfinite_steps:
            raise FloatingPointError(
                f"{self.nonfinite_in_a_row} non-finite steps in a row (last: {what}): stopping "
                f"(--max_nonfinite_steps {self.args.max_nonfinite_steps}). Lower --learning_rate, raise "
                "--warmup_steps, set --max_grad_norm, or check the data; then resume from the last complete "
                "checkpoint (--resume_from_checkpoint auto)"
            )
        return True

    def _nonfinite_parameters(self) -> List[str]:
        with paddle.no_grad():
            names, params = zip(*self.model.named_parameters())
            sums = paddle.stack([param.astype("float32").sum() for param in params])
            finite = paddle.isfinite(sums).numpy()
        return [name for name, ok in zip(names, finite) if not ok]

    # ---- checkpoints
    def total_steps(self) -> int:
        """The run's last step: --max_steps, or the epochs' worth of optimizer steps."""
        args = self.args
        if args.max_steps > 0:
            return args.max_steps
        per_epoch = max(len(self.train_loader) // args.gradient_accumulation_steps, 1)
        return int(per_epoch * args.num_train_epochs)

    def train(self, resume_from_checkpoint: Optional[str] = None, **kwargs):
        """Train from scratch, or resume from `resume_from_checkpoint` (a complete checkpoint in the
        output directory; see checkpoints.resolve_resume). A checkpoint already at the last step
        trains nothing: its weights are loaded and `finished_before` is set."""
        self.resumed_from = resume_from_checkpoint
        if resume_from_checkpoint:
            state = json.loads((Path(resume_from_checkpoint) / TRAINER_STATE).read_text())
            check_same_batch(state, resume_from_checkpoint, self.args.per_device_train_batch_size,
                             self.args.world_size)
            step, last = checkpoint_step(resume_from_checkpoint), self.total_steps()
            if step >= last:
                logger.warning("%s is at step %d of %d: the run is complete, nothing to train (raise --max_steps "
                               "to train further)", resume_from_checkpoint, step, last)
                self.finished_before = True
                self._load_from_checkpoint(resume_from_checkpoint)
                return None
            self.train_loader.load_state_dict(state["loader"])
            # the loader resumes its own position: PaddleNLP must not also skip batches
            self.args.ignore_data_skip = True
            self._resume_rng_from = resume_from_checkpoint
            self.nonfinite_skipped = state.get("nonfinite_skipped", 0)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _inner_training_loop(self, *args, **kwargs):
        if self._resume_rng_from:  # PaddleNLP restores RNG only while skipping batches itself
            self._load_rng_state(self._resume_rng_from)
        return super()._inner_training_loop(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        """The checkpoint's weights, read without running code (PaddleNLP's own loader unpickles
        anything); sharded layouts PaddleNLP wrote (tensor parallel, sharding) go through it."""
        weights = Path(resume_from_checkpoint or "") / WEIGHTS_NAME
        if not resume_from_checkpoint or not weights.is_file() or self.args.should_load_sharding_stage1_model:
            return super()._load_from_checkpoint(resume_from_checkpoint)
        load_state_dict_strict(self.model, read_pdparams(weights), source=str(weights))
        return None

    def _load_rng_state(self, checkpoint):
        names = ("rng_state.pth", f"rng_state_{self.args.world_size}.pth")
        if checkpoint and not any((Path(checkpoint) / name).is_file() for name in names):
            logger.warning("%s has no %s: the random augmentation and dropout after this resume will differ from "
                           "an uninterrupted run's", checkpoint, " or ".join(names))
        return super()._load_rng_state(checkpoint)

    def _rotate_checkpoints(self, use_mtime=False, output_dir=None) -> None:
        """Nothing: PaddleNLP's rotation runs before a checkpoint is complete (and in a single process
        never); _save_checkpoint applies --save_total_limit once the new checkpoint is complete."""

    def _check_weights_before_saving(self) -> None:
        """Refuse to save weights that are NaN/inf, or that gave NaN/inf on the latest step (a skipped
        step left them unchanged, so they are what produced it): such a checkpoint would be resumed
        from, and a final model would look trained."""
        bad = self._nonfinite_parameters()
        if not bad and not self.nonfinite_in_a_row:
            return
        what = (f"{len(bad)} parameters hold NaN/inf ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})" if bad
                else f"the weights gave non-finite values in the last {self.nonfinite_in_a_row} step(s)")
        latest = complete_checkpoints(self.args.output_dir)
        raise FloatingPointError(
            f"step {self.state.global_step}: {what}; not saving them. Lower --learning_rate, raise --warmup_steps "
            f"or set --max_grad_norm, then resume from the last good checkpoint "
            f"({latest[-1] if latest else 'none: start again'}) with --resume_from_checkpoint auto"
        )

    def _save_checkpoint(self, model, metrics=None):
        self._check_weights_before_saving()
        folder = Path(self.args.output_dir) / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        if self.args.should_save and folder.exists():  # a partial save of the same step from a killed run
            shutil.rmtree(folder)
        super()._save_checkpoint(model, metrics)
        loader_state = self.train_loader.state_dict()  # on every rank: a stream's gathers all ranks' readers
        if self.args.should_save:
            state = {"loader": loader_state, "nonfinite_skipped": self.nonfinite_skipped,
                     "per_device_train_batch_size": self.args.per_device_train_batch_size,
                     "world_size": self.args.world_size}
            (folder / TRAINER_STATE).write_text(json.dumps(state))
        if get_world_size() > 1:
            dist.barrier()
        if self.args.should_save:
            marker = folder / COMPLETE_MARKER
            marker.with_suffix(".tmp").write_text(str(self.state.global_step))
            os.replace(marker.with_suffix(".tmp"), marker)
            self._remove_partial_checkpoints(keep=folder)
            remove_old_checkpoints(self.args.output_dir, self.args.save_total_limit, keep=[self.resumed_from])

    def _remove_partial_checkpoints(self, keep: Path):
        for path in Path(self.args.output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
            if path != keep and path.is_dir() and not (path / COMPLETE_MARKER).is_file():
                logger.warning("removing %s: an interrupted save", path)
                shutil.rmtree(path)

    def evaluate(self, *args, **kwargs) -> Dict[str, float]:
        """Zero-shot classification / retrieval with the current model (PaddleNLP calls this every
        --eval_steps); nothing when no evaluation was asked for."""
        if self.evaluation is None:
            return {}
        if self._evaluated.get("step") != self.state.global_step:  # PaddleNLP may ask twice at the last step
            self._evaluated = {"step": self.state.global_step, "metrics": self.evaluation.evaluate(self.model)}
            self.log(dict(self._evaluated["metrics"]))
        return self._evaluated["metrics"]

    # ---- logs
    def log(self, logs: Dict[str, float], **kwargs) -> None:
        if "loss" in logs:
            logs.update(self._training_figures(logs))
        super().log(logs, **kwargs)
        if self.args.should_save:
            with open(Path(self.args.output_dir) / RESULTS_LOG, "a", encoding="utf-8") as handle:
                handle.write(json_record(dict(logs, step=self.state.global_step)) + "\n")

    def _training_figures(self, logs: Dict[str, float]) -> Dict[str, float]:
        """logit scale (and bias), lr of each parameter group, skipped samples by reason, samples/s per device."""
        figures = {"logit_scale": round(float(self.model.scale()), 4)}
        if self.model.logit_bias is not None:
            figures["logit_bias"] = round(float(self.model.logit_bias), 4)
        figures.update(group_learning_rates(self.optimizer, self.lr_scheduler.get_lr()))
        for reason, count in sorted(self.train_loader.report.epoch_bad.items()):
            figures[f"skipped/{reason}"] = count
        if self.nonfinite_skipped:
            figures["skipped/nonfinite_loss"] = self.nonfinite_skipped
        if "interval_samples_per_second" in logs:
            figures["interval_samples_per_second_per_device"] = round(
                logs["interval_samples_per_second"] / get_world_size(), 4)
        if "interval_runtime" in logs:  # of the interval's wall time, the part spent waiting for data
            figures["interval_data_seconds"] = round(self.train_loader.take_wait_seconds(), 4)
        return figures
