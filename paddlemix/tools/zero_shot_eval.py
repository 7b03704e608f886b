"""`run_zero_shot_eval.py` of every family: ImageNet-style zero-shot classification and COCO retrieval.

    python paddlemix/examples/evaclip/run_zero_shot_eval.py --model paddlemix/EVA/EVA02-CLIP-B-16 \\
        --classification_eval IN_1K_DIR --retrieval_eval coco --per_device_eval_batch_size 64 --output_dir OUT

Prints `zero-shot classification task: <name>: top1: X, top5: Y` and retrieval recalls in percent,
and writes OUT/results.json (recalls as fractions). Under `paddle.distributed.launch` the images
and captions are split over the processes; the metrics equal one process's.
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

from .. import AutoModel
from ..data.coco import annotation_file, coco_root
from ..data.coco2017 import coco2017_files, image_folder_of
from ..evaluation.evaluate import classification, retrieval
from ..inference import load_model
from ..models.registry import resolve_model_name
from ..models.state_dict import load_state_dict_strict
from ..processors import get_tokenizer
from ..trainer.arguments import (CLIPTrainingArguments, DataArguments, ModelArguments, parse_arguments,
                                 with_default_model)
from ..utils.distributed import get_rank
from ..utils.platform import check_platform


@dataclass
class EvalArguments:
    retrieval_eval: Optional[str] = field(
        default=None, metadata={"help": "coco (Karpathy test split), coco2017 (val2017 of --data_dir), a COCO "
                                        "captions_*.json or a coco_karpathy-format JSON to retrieve on"}
    )
    classifier_cache: Optional[str] = field(
        default=None, metadata={"help": "directory of cached zero-shot classifiers (keyed by the weights' hash)"}
    )
    backend: str = field(
        default="eager", metadata={"help": "eager, or inference: --model is a `paddlemix.tools.export` directory"}
    )
    precision: str = field(default="fp32", metadata={"help": "inference backend: fp32 or bf16 (oneDNN on CPU)"})


def retrieval_set(spec: str, data_dir: Optional[str]):
    """(annotation file, image root) for `--retrieval_eval coco` (the Karpathy test split), `coco2017`
    (captions_val2017.json of the COCO 2017 root --data_dir), a COCO captions file or a coco_karpathy JSON."""
    if spec == "coco":
        root = coco_root(data_dir)
        return annotation_file(root, "test"), root / "images"
    if spec == "coco2017":
        return coco2017_files("val", data_dir)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--retrieval_eval {spec}: neither 'coco', 'coco2017' nor an existing JSON file")
    if data_dir:
        return path, Path(data_dir)
    if path.stem.startswith("captions_"):  # COCO's distributed layout: <split>2017/ beside annotations/
        return path, image_folder_of(path)
    image_root = path.parent.parent / "images"
    return path, image_root if image_root.is_dir() else path.parent


def run_zero_shot_eval(argv: Optional[Sequence[str]] = None, default_model: Optional[str] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = with_default_model(argv, default_model)
    model_args, data_args, args, eval_args = parse_arguments(
        argv, (ModelArguments, DataArguments, CLIPTrainingArguments, EvalArguments))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_platform(args)
    model = load_model(model_args.model, eval_args.backend, eval_args.precision)
    if model_args.pretrained_text_model:
        if eval_args.backend != "eager":
            raise ValueError("--pretrained_text_model needs --backend eager (an export holds its own text encoder)")
        donor = AutoModel.from_pretrained(resolve_model_name(model_args.pretrained_text_model)).text
        load_state_dict_strict(model.text, donor.state_dict(), source="--pretrained_text_model (text tower)")
    tokenizer = get_tokenizer(model, model_args.context_length)
    batch, workers = args.per_device_eval_batch_size, args.dataloader_num_workers
    results: Dict = {}
    if data_args.classification_eval:
        name = Path(data_args.classification_eval).name
        results[name] = classification(model, tokenizer, data_args.classification_eval, batch, workers,
                                       eval_args.classifier_cache)
    if eval_args.retrieval_eval:
        annotation, image_root = retrieval_set(eval_args.retrieval_eval, data_args.data_dir)
        results["retrieval"] = retrieval(model, tokenizer, annotation, image_root, batch, workers)
    if not results:
        raise ValueError("nothing to evaluate: give --classification_eval DIR and/or --retrieval_eval coco|FILE.json")
    if get_rank() == 0:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
