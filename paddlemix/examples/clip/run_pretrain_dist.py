"""CLIP pretraining and fine-tuning: the shared trainer (paddlemix.trainer.run) with paddlemix/CLIP/ViT-B-32 by default.

    python -m paddle.distributed.launch --nproc_per_node 8 paddlemix/examples/clip/run_pretrain_dist.py \\
        --model paddlemix/CLIP/ViT-B-32 --task_name coco_clip --output_dir ./output --do_train ...
"""

from paddlemix.trainer.run import run_pretrain
from paddlemix.utils.distributed import run_script
from paddlemix.utils.cpu_process import prepare_cpu_process

if __name__ == "__main__":
    prepare_cpu_process()
    run_script(run_pretrain, default_model="paddlemix/CLIP/ViT-B-32")
