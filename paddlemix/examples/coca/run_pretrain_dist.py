"""CoCa pretraining and fine-tuning: the shared trainer (paddlemix.trainer.run) with
paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k by default; the loss is CoCaLoss, weighted by
--coca_contrastive_loss_weight (default 1) and --coca_caption_loss_weight (default 2).

    python -m paddle.distributed.launch --nproc_per_node 8 paddlemix/examples/coca/run_pretrain_dist.py \\
        --model paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k --task_name coco_clip --output_dir ./output \\
        --do_train --coca_caption_loss_weight 2.0 --coca_contrastive_loss_weight 1.0 ...
"""

from paddlemix.trainer.run import run_pretrain
from paddlemix.utils.distributed import run_script
from paddlemix.utils.cpu_process import prepare_cpu_process

if __name__ == "__main__":
    prepare_cpu_process()
    run_script(run_pretrain, default_model="paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k")
