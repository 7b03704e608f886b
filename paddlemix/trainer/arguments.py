"""Command-line arguments of the shared trainer: PdArgumentParser dataclasses (model / data / training).

PaddleNLP's TrainingArguments already carry most of PaddleMIX's flags (learning_rate, warmup_steps,
weight_decay, adam_*, max_grad_norm, sharding, tensor_parallel_degree, bf16/fp16, recompute,
save_steps, ...); `CLIPTrainingArguments` adds the CLIP-specific ones.
"""

import difflib
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from paddlenlp.trainer import PdArgumentParser, TrainingArguments


@dataclass
class ModelArguments:
    model: str = field(
        default="paddlemix/CLIP/ViT-B-32",
        metadata={"help": "registry name (paddlemix/EVA/EVA02-CLIP-B-16), model directory, or config JSON"},
    )
    pretrained: Optional[str] = field(
        default=None, metadata={"help": "initial weights: a model directory or registry name (random init if unset)"}
    )
    pretrained_text_model: Optional[str] = field(
        default=None,
        metadata={"help": "take the text tower's weights from this model directory or registry name"},
    )
    context_length: Optional[int] = field(default=None, metadata={"help": "text tokens (default: the model's)"})
    lock_image: bool = field(default=False, metadata={"help": "freeze the image tower (LiT)"})
    lock_image_unlocked_groups: int = field(
        default=0, metadata={"help": "--lock_image: leave the last N layer groups trainable (open_clip's groups)"}
    )
    lock_text: bool = field(default=False, metadata={"help": "freeze the text tower"})
    lock_text_unlocked_layers: int = field(
        default=0, metadata={"help": "--lock_text: leave the last N layers trainable (open_clip's)"}
    )
    lock_text_freeze_layer_norm: bool = field(
        default=True, metadata={"help": "--lock_text: freeze the LayerNorms of locked layers too"}
    )
    loss: Optional[str] = field(
        default=None,
        metadata={"help": "train with this loss instead of the one the model's config names: clip (softmax) or siglip "
                          "(sigmoid; adds a logit_bias, init -10, to a model without one). A SigLIP model trained with "
                          "clip keeps its logit_bias frozen"},
    )
    siglip_exchange: Optional[str] = field(
        default=None, metadata={"help": "siglip: how texts reach every rank: bidir (default), shift or gather"}
    )
    siglip_chunk: Optional[int] = field(
        default=None, metadata={"help": "siglip: texts per chunk of logits (default 1024): memory ~ local batch x this"}
    )
    coca_caption_loss_weight: Optional[float] = field(
        default=None, metadata={"help": "CoCa: weight of the captioning loss (default 2.0; CoCa models only)"}
    )
    coca_contrastive_loss_weight: Optional[float] = field(
        default=None, metadata={"help": "CoCa: weight of the contrastive loss (default 1.0; CoCa models only)"}
    )


DEFAULT_TASK = "coco_clip"
HF_COCO_SCRIPT = "coco_dataset_script"  # the hub script HF's contrastive-image-text example loads COCO with


@dataclass
class DataArguments:
    task_name: str = field(
        default=DEFAULT_TASK,
        metadata={"help": "coco_clip, coco2017, a captions_<split>2017.json, a .json/.jsonl of records, a .csv/.tsv, "
                          "'shards-{000..009}.tar' or a LAION .filelist (data.datasets.TASK_NAME_FORMS)"},
    )
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "dataset root (coco_clip, coco2017) or image folder (a .json, .jsonl or .csv)"}
    )
    image_column: Optional[str] = field(
        default=None, metadata={"help": "CSV column / JSON key of image paths (default: filepath in CSV, image in "
                                        "JSON)"}
    )
    caption_column: Optional[str] = field(
        default=None, metadata={"help": "CSV column / JSON key of captions (default: title in CSV, caption in JSON)"}
    )
    csv_separator: str = field(default="\t", metadata={"help": "CSV field separator"})
    classification_eval: Optional[str] = field(
        default=None, metadata={"help": "ImageFolder-style directory for zero-shot classification every --eval_steps"}
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "HF run_clip.py's dataset: ydshieh/coco_dataset_script with "
                                        "--dataset_config_name 2017 reads COCO 2017 from --data_dir (= --task_name coco2017)"}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "see --dataset_name"})

    def __post_init__(self):
        if self.dataset_name is None:
            return
        if self.dataset_name.rstrip("/").split("/")[-1] != HF_COCO_SCRIPT or self.dataset_config_name != "2017":
            raise ValueError(
                f"--dataset_name {self.dataset_name} --dataset_config_name {self.dataset_config_name}: paddlemix reads "
                f"datasets from files, not from the Hugging Face hub; of run_clip.py's datasets it knows "
                f"ydshieh/{HF_COCO_SCRIPT} 2017 (COCO 2017 under --data_dir). Give --task_name instead "
                f"(coco2017, a captions json, a .csv or .json of records, ...)"
            )
        if self.task_name not in (DEFAULT_TASK, "coco2017"):
            raise ValueError(f"--dataset_name {self.dataset_name} and --task_name {self.task_name} name two datasets: "
                             "give one of them")
        self.task_name = "coco2017"


@dataclass
class CLIPTrainingArguments(TrainingArguments):
    optimizer: str = field(default="adamw", metadata={"help": "lamb or adamw"})
    min_lr: float = field(default=0.0, metadata={"help": "learning rate at the end of the cosine decay"})
    visual_lr: Optional[float] = field(default=None, metadata={"help": "image tower lr (default --learning_rate)"})
    text_lr: Optional[float] = field(default=None, metadata={"help": "text tower lr (default --learning_rate)"})
    visual_wd: Optional[float] = field(default=None, metadata={"help": "image tower weight decay (default --weight_decay)"})
    text_wd: Optional[float] = field(default=None, metadata={"help": "text tower weight decay (default --weight_decay)"})
    layer_decay: float = field(default=1.0, metadata={"help": "layer-wise lr decay of both towers"})
    visual_ld: Optional[float] = field(default=None, metadata={"help": "image tower layer decay (default --layer_decay)"})
    text_ld: Optional[float] = field(default=None, metadata={"help": "text tower layer decay (default --layer_decay)"})
    local_loss: bool = field(default=False, metadata={"help": "each rank computes only its rows of the logits"})
    gather_with_grad: bool = field(default=False, metadata={"help": "all-reduce the gradients of gathered features"})
    max_nonfinite_steps: int = field(
        default=10, metadata={"help": "stop after this many NaN/inf losses in a row (each one skips its update)"}
    )
    # PaddleNLP zeroes the gradients after each step and keeps them through the next forward; open_clip's loop
    # frees them (zero_grad(set_to_none=True)): one copy of the parameters less at the peak (CoCa-B-32,
    # 253M parameters, batch 8: 5,868 -> 5,109 MiB peak RSS, open_clip 5,451-5,596)
    release_grads: bool = field(
        default=True, metadata={"help": "free the gradients after each optimizer step, as open_clip does"}
    )

    def __post_init__(self):
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1 (samples per device and step), got {getattr(self, flag)}")
        # PaddleNLP resets `sharding` and `tensor_parallel_degree` in a single process; keep what
        # was asked for, so that a request this machine cannot serve is refused rather than dropped.
        self.requested_sharding = str(self.sharding or "")
        self.requested_tensor_parallel_degree = self.tensor_parallel_degree
        super().__post_init__()


PARSER_CLASSES = (ModelArguments, DataArguments, CLIPTrainingArguments)
# Other projects' spellings of our flags: HF transformers' run_clip.py (the CLIP-on-COCO guide), open_clip.
FLAG_ALIASES = {"--model_name_or_path": "--model", "--max_seq_length": "--context_length",
                "--csv_img_key": "--image_column", "--csv_caption_key": "--caption_column"}


def with_default_model(argv: Sequence[str], default_model: Optional[str]) -> List[str]:
    """argv with `--model default_model` first when no spelling of --model is given."""
    argv = list(argv)
    spellings = [flag for flag, target in [("--model", "--model"), *FLAG_ALIASES.items()] if target == "--model"]
    if default_model and not any(token.partition("=")[0] in spellings for token in argv):
        argv = ["--model", default_model, *argv]
    return argv


def _resolve_aliases(argv: List[str]) -> List[str]:
    """argv with each alias spelled as its flag; one setting given under two spellings must have one value."""
    resolved, seen = [], {}
    for position, token in enumerate(argv):
        flag, equals, value = token.partition("=")
        if token.startswith("--"):
            canonical = FLAG_ALIASES.get(flag, flag)
            if not equals:
                following = argv[position + 1] if position + 1 < len(argv) else ""
                value = "" if following.startswith("--") else following
            earlier = seen.setdefault(canonical, (flag, value))
            if earlier[0] != flag and earlier[1] != value:
                raise SystemExit(f"error: {earlier[0]} {earlier[1]!r} and {flag} {value!r} are two spellings of one "
                                 "setting with different values: give one of them")
            token = canonical + equals + (value if equals else "")
        resolved.append(token)
    return resolved


def parse_arguments(argv: Optional[Sequence[str]] = None, classes: Tuple = PARSER_CLASSES) -> Tuple:
    """Parse flags into `classes` (default: the trainer's model / data / training arguments); an
    unknown flag fails naming the closest valid ones."""
    argv = _resolve_aliases(list(sys.argv[1:] if argv is None else argv))
    parser = PdArgumentParser(classes)
    known = [option for action in parser._actions for option in action.option_strings]
    unknown = [token.split("=")[0] for token in argv if token.startswith("--") and token.split("=")[0] not in known]
    if unknown:
        lines: List[str] = []
        for flag in unknown:
            close = difflib.get_close_matches(flag, known, n=3, cutoff=0.6)
            lines.append(f"{flag}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        parser.error("unknown flag(s): " + "; ".join(lines))
    return parser.parse_args_into_dataclasses(args=argv)
