"""`run_pretrain_dist.py` of every family: parse flags, build model and data, train, save.

    python -m paddle.distributed.launch --nproc_per_node 8 paddlemix/examples/evaclip/run_pretrain_dist.py \\
        --model paddlemix/EVA/EVA02-CLIP-B-16 --optimizer lamb --visual_lr 2e-4 --text_lr 2e-5 ...
"""

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import paddle

from .. import AutoConfig, AutoModel
from ..data.datasets import build_dataset, validation_set
from ..models.hub import WEIGHTS_NAME
from ..models.registry import resolve_model_name
from ..models.state_dict import load_state_dict_strict
from ..models.loss_registry import build_loss, switch_loss
from ..processors import get_tokenizer
from ..processors.image_transforms import image_transform_for
from ..utils.log import logger, warn_once
from ..utils.platform import check_platform, cpu_bf16_gemms
from .arguments import CLIPTrainingArguments, DataArguments, ModelArguments, parse_arguments, with_default_model
from .checkpoints import remove_previous_run, resolve_resume
from .evaluation import TrainingEvaluation
from .trainer import CLIPTrainer


def build_model(model_args: ModelArguments, args: CLIPTrainingArguments):
    config = AutoConfig.from_pretrained(model_args.model)
    config.tensor_parallel_degree = max(1, args.requested_tensor_parallel_degree)
    model = AutoModel.from_config(config)
    if model_args.pretrained:  # through load_weights: under tensor parallelism each rank takes its shard
        model.load_weights(*AutoModel.weights_of(resolve_model_name(model_args.pretrained)))
    if model_args.pretrained_text_model:
        # the whole model loads (converted from PaddleMIX's layout if need be); its text tower is kept
        donor = AutoModel.from_pretrained(resolve_model_name(model_args.pretrained_text_model)).text
        load_state_dict_strict(model.text, donor.state_dict(),
                               source=f"--pretrained_text_model {model_args.pretrained_text_model} (text tower)")
    if model_args.loss:
        switch_loss(model, model_args.loss)
    if model_args.lock_image:
        model.visual.lock(model_args.lock_image_unlocked_groups)
    if model_args.lock_text:
        model.text.lock(model_args.lock_text_unlocked_layers, model_args.lock_text_freeze_layer_norm)
    model.set_recompute(args.recompute)
    return model


def loss_of(model, model_args: ModelArguments, args: CLIPTrainingArguments):
    """The loss the model's config names, with the loss flags that were given."""
    options = {name: getattr(model_args, name) for name in ("coca_caption_loss_weight", "coca_contrastive_loss_weight",
                                                            "siglip_exchange", "siglip_chunk")
               if getattr(model_args, name) is not None}
    return build_loss(model.config, args.local_loss, args.gather_with_grad, options)


def run_pretrain(argv: Optional[Sequence[str]] = None, default_model: Optional[str] = None) -> CLIPTrainer:
    """Train as the flags in `argv` (default sys.argv) say; `default_model` when --model is not given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = with_default_model(argv, default_model)
    model_args, data_args, args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bf16_gemms = cpu_bf16_gemms(args)  # before check_platform, which turns Paddle's (GPU-only) AMP off on CPU
    check_platform(args)
    paddle.seed(args.seed)
    model = build_model(model_args, args)
    dataset = train_dataset(data_args, model, args)
    tokenizer = get_tokenizer(model, model_args.context_length)
    loss_fn = loss_of(model, model_args, args)
    retrieval = validation_split(data_args) if args.do_eval else None
    evaluation = None
    if data_args.classification_eval or retrieval:
        evaluation = TrainingEvaluation(data_args.classification_eval, retrieval, args.per_device_eval_batch_size,
                                        args.dataloader_num_workers, tokenizer, validation_pairs(retrieval, model),
                                        loss_fn)
    trainer = CLIPTrainer(model, args, dataset, tokenizer, loss_fn, evaluation, bf16_gemms=bf16_gemms)
    resume = resume_point(args)
    if resume:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    if trainer.preemption.requested:
        return trainer
    final = Path(args.output_dir) / WEIGHTS_NAME
    if trainer.finished_before and final.is_file():
        logger.info("%s is the final model of this complete run: left as it is", final)
        return trainer
    metrics = trainer.evaluate()  # the final model (once: a step already evaluated is not evaluated again)
    if args.should_save:
        model.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
    trainer.save_metrics("train", result.metrics)  # train_results.json and all_results.json, as HF's run_clip.py
    if metrics:
        trainer.save_metrics("eval", metrics)
    return trainer


def resume_point(args: CLIPTrainingArguments) -> Optional[str]:
    """The checkpoint to resume from, by the rule of HF's run_clip.py: --resume_from_checkpoint if given
    (see checkpoints.resolve_resume); else, unless --overwrite_output_dir, the latest complete
    checkpoint in --output_dir. --overwrite_output_dir starts over, removing the old run's checkpoints
    and log so that nothing of it is mistaken for this run's."""
    if args.overwrite_output_dir:
        if args.resume_from_checkpoint:
            raise ValueError(f"--overwrite_output_dir starts over and --resume_from_checkpoint "
                             f"{args.resume_from_checkpoint} continues: give one of them")
        if args.should_save:
            remove_previous_run(args.output_dir)
        return None
    if args.resume_from_checkpoint:
        return resolve_resume(args.resume_from_checkpoint, args.output_dir)
    resume = resolve_resume("auto", args.output_dir)
    if resume:
        logger.info("%s holds checkpoints of an earlier run: continuing it (pass --overwrite_output_dir to start "
                    "over)", args.output_dir)
    return resume


def validation_pairs(split, model):
    """The val split (annotation, image folder) as (image, caption) pairs for eval_loss; None without one."""
    if split is None:
        return None
    annotation, image_folder = split
    return build_dataset(str(annotation), image_transform_for(model.config, is_train=False), data_dir=str(image_folder))


def validation_split(data_args: DataArguments):
    """(annotation, image root) of the val split for --do_eval retrieval (data.datasets.validation_set):
    coco_clip, coco2017 and captions_<split>2017.json have one, other sets none."""
    split = validation_set(data_args.task_name, data_args.data_dir)
    if split is None:
        warn_once(f"--do_eval: retrieval needs a val split, which --task_name {data_args.task_name} does not have")
    return split


def train_dataset(data_args: DataArguments, model, args: CLIPTrainingArguments):
    transform = image_transform_for(model.config, is_train=True)
    return build_dataset(
        data_args.task_name, transform, data_dir=data_args.data_dir, image_column=data_args.image_column,
        caption_column=data_args.caption_column, csv_separator=data_args.csv_separator, seed=args.seed,
    )
