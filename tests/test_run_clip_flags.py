"""The flags of HF transformers' run_clip.py (the CLIP-on-COCO-2017 guide) are accepted and mean here
what they mean there."""

import pytest

from paddlemix.trainer.arguments import parse_arguments, with_default_model

GUIDE = ["--model_name_or_path", "./clip-roberta", "--data_dir", "/data/coco", "--dataset_name",
         "ydshieh/coco_dataset_script", "--dataset_config_name", "2017", "--image_column", "image_path",
         "--caption_column", "caption", "--remove_unused_columns", "False", "--do_train", "--do_eval",
         "--per_device_train_batch_size", "64", "--learning_rate", "5e-5", "--warmup_steps", "0",
         "--weight_decay", "0.1", "--overwrite_output_dir", "--fp16_opt_level", "O2", "--max_seq_length", "64",
         "--output_dir", "./clip-roberta-finetuned"]


def test_the_guides_command_line_parses_to_our_settings():
    model_args, data_args, args = parse_arguments(GUIDE)
    assert model_args.model == "./clip-roberta" and model_args.context_length == 64
    assert (data_args.task_name, data_args.data_dir) == ("coco2017", "/data/coco")
    assert (data_args.image_column, data_args.caption_column) == ("image_path", "caption")
    assert args.do_train and args.do_eval and args.overwrite_output_dir and args.fp16_opt_level == "O2"
    assert (args.per_device_train_batch_size, args.learning_rate, args.weight_decay) == (64, 5e-5, 0.1)


def test_an_alias_and_its_flag_may_agree_but_not_differ():
    model_args, _, _ = parse_arguments(["--model", "a", "--model_name_or_path", "a", "--output_dir", "o"])
    assert model_args.model == "a"
    with pytest.raises(SystemExit, match="--model 'a' and --model_name_or_path 'b' are two spellings"):
        parse_arguments(["--model", "a", "--model_name_or_path=b", "--output_dir", "o"])


def test_the_scripts_default_model_gives_way_to_either_spelling():
    assert with_default_model(["--model_name_or_path", "x"], "paddlemix/CLIP/ViT-B-32") == ["--model_name_or_path", "x"]
    assert with_default_model(["--do_train"], "paddlemix/CLIP/ViT-B-32")[:2] == ["--model", "paddlemix/CLIP/ViT-B-32"]


@pytest.mark.parametrize("dataset", [["--dataset_name", "ydshieh/coco_dataset_script", "--dataset_config_name", "2014"],
                                     ["--dataset_name", "laion/laion400m"]])
def test_a_hub_dataset_other_than_coco_2017_is_refused_with_the_way_to_give_files(dataset):
    with pytest.raises(ValueError, match="reads datasets from files.*Give --task_name instead"):
        parse_arguments([*dataset, "--output_dir", "o"])


def test_a_hub_dataset_and_another_task_name_are_refused():
    with pytest.raises(ValueError, match="name two datasets"):
        parse_arguments(["--dataset_name", "ydshieh/coco_dataset_script", "--dataset_config_name", "2017",
                         "--task_name", "x.csv", "--output_dir", "o"])
