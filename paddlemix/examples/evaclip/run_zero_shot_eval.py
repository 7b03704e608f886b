"""EVA-CLIP zero-shot evaluation: the shared evaluator (paddlemix.evaluation.evaluate), paddlemix/EVA/EVA02-CLIP-B-16 by default.

    python paddlemix/examples/evaclip/run_zero_shot_eval.py --model paddlemix/EVA/EVA02-CLIP-B-16 \\
        --classification_eval IN_1K_DIR --retrieval_eval coco --per_device_eval_batch_size 64 --output_dir OUT
"""

from paddlemix.tools.zero_shot_eval import run_zero_shot_eval
from paddlemix.utils.distributed import run_script
from paddlemix.utils.cpu_process import prepare_cpu_process

if __name__ == "__main__":
    prepare_cpu_process()
    run_script(run_zero_shot_eval, default_model="paddlemix/EVA/EVA02-CLIP-B-16")
