"""The committed tiny BLIPs (`pretrained/`): within the weight budget, and plain HF BLIP folders that load whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.transfer import pretrain

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained"
TASKS = ("retrieval", "captioning", "vqa")


def test_committed_weights_fit_the_25_mb_budget():
    total = sum(f.stat().st_size for f in PRETRAINED.rglob("*") if f.is_file())
    assert total < 25 * 2**20, f"pretrained/ holds {total / 2**20:.1f} MiB, over the 25 MB budget (issue 10)"


# the demo's and the benchmark's (scenes A), and the first stage of the scenes retrieval recipe (shapes A)
FOLDERS = [(task, PRETRAINED / "scenes" / pretrain.folder_name(task)) for task in TASKS] + [
    ("retrieval", PRETRAINED / "shapes" / pretrain.folder_name("retrieval"))
]


@pytest.mark.parametrize(("task", "folder"), FOLDERS, ids=[str(f.relative_to(PRETRAINED)) for _, f in FOLDERS])
def test_each_backbone_loads_as_plain_blip_with_its_record(task, folder):
    from unitrans_ds.config.schema import ModelConfig
    from unitrans_ds.models.build import load_backbone

    backbone = load_backbone(ModelConfig(init_from=str(folder)), task)
    assert backbone.newly_initialized == [], f"{folder} lacks weights: {backbone.newly_initialized[:5]}"
    assert not any(n.startswith("unitrans") for n, _ in backbone.model.named_parameters())
    record = json.loads((folder / "pretrain.json").read_text())
    assert record["task"] == task and record["steps"] > 0


def test_vqa_from_captioning_fills_every_vqa_weight_from_the_captioning_model(tmp_path):
    import torch
    from safetensors.torch import load_file

    from unitrans_ds.config.schema import ModelConfig
    from unitrans_ds.models.build import load_backbone

    caption = PRETRAINED / "scenes" / pretrain.folder_name("captioning")
    out = pretrain.vqa_from_captioning(caption, tmp_path / "vqa")
    backbone = load_backbone(ModelConfig(init_from=str(out)), "vqa")
    assert backbone.newly_initialized == []
    src = {k: v.float() for k, v in load_file(str(caption / "model.safetensors")).items()}
    sd = backbone.model.state_dict()
    layer = "encoder.layer.0.crossattention.self.query.weight"  # the question encoder reads the image from the start
    torch.testing.assert_close(sd[f"text_encoder.{layer}"], src[f"text_decoder.bert.{layer}"], rtol=0, atol=0)
    torch.testing.assert_close(sd["vision_model.embeddings.patch_embedding.weight"],
                               src["vision_model.embeddings.patch_embedding.weight"], rtol=0, atol=0)  # fmt: skip
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()


def test_recipe_stages_chain_from_the_previous_stage():
    chain = pretrain.stages(pretrain.RECIPES["retrieval"])
    assert len(chain) > 2 and all(r.init_from == "{prev}" and r.then is None for r in chain[1:])
    assert chain[0].init_from == "pretrained/shapes/tiny-blip-retrieval" and chain[0].vision
    # the ViT stays locked in the first stages; the later ones train its top layers (never its patch embedding)
    assert chain[0].freeze == ("vision_model",) and chain[-1].freeze[0] == r"vision_model\.embeddings"
    vqa = pretrain.stages(pretrain.RECIPES["vqa"])  # from the captioning model, then each stage from the one before
    assert vqa[0].init_from == "{out}/tiny-blip-captioning" and vqa[0].init_class == "captioning"
    assert len(vqa) > 2 and all(r.init_from == "{prev}" and r.then is None for r in vqa[1:])


def test_more_stages_repeat_the_last_stage_from_a_saved_backbone():
    last = pretrain.stages(pretrain.RECIPES["vqa"])[-1]
    chain = pretrain.more_stages("vqa", "pretrained/scenes/tiny-blip-vqa", 3)
    assert [r.init_from for r in chain] == ["pretrained/scenes/tiny-blip-vqa", "{prev}", "{prev}"]
    # the same training as the recipe's last stage; no conversion and no ViT swap on a saved backbone
    for r in chain:
        assert (r.epochs, r.lr, r.batch, r.warmup_steps, r.freeze) == (
            last.epochs, last.lr, last.batch, last.warmup_steps, last.freeze
        )  # fmt: skip
        assert r.init_class is None and not r.vision and r.then is None
    with pytest.raises(ValueError, match="n >= 1"):
        pretrain.more_stages("vqa", "x", 0)


def test_chain_from_runs_the_rest_of_a_recipe_from_a_saved_backbone():
    full = pretrain.stages(pretrain.RECIPES["vqa"])
    rest = pretrain.chain_from("vqa", "some/released/folder", 3)
    assert len(rest) == len(full) - 2  # stages 3.. of the chain
    assert rest[0].init_from == "some/released/folder" and all(r.init_from == "{prev}" for r in rest[1:])
    assert rest[1:] == full[3:]  # the later stages exactly as the chain has them
    first = full[2]
    assert (rest[0].epochs, rest[0].lr, rest[0].batch, rest[0].freeze) == (
        first.epochs,
        first.lr,
        first.batch,
        first.freeze,
    )
    assert rest[0].init_class is None and not rest[0].vision
    for bad in (1, len(full) + 1):
        with pytest.raises(ValueError, match="--from_stage must be in 2.."):
            pretrain.chain_from("vqa", "x", bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "vqa", "retrieval", "--continue_from", str(PRETRAINED / "scenes" / "tiny-blip-vqa")], "one task"),
        (["--tasks", "vqa", "--continue_from", "no/such/folder"], "no config.json"),
        (
            ["--tasks", "vqa", "--continue_from", str(PRETRAINED / "scenes" / "tiny-blip-vqa"), "--more_stages", "0"],
            ">= 1",
        ),
        (
            ["--tasks", "vqa", "--continue_from", str(PRETRAINED / "scenes" / "tiny-blip-vqa"), "--from_stage", "1"],
            "--from_stage must be in 2..",
        ),
        (
            [
                "--tasks",
                "vqa",
                "--continue_from",
                str(PRETRAINED / "scenes" / "tiny-blip-vqa"),
                "--from_stage",
                "3",
                "--more_stages",
                "2",
            ],
            "not both",
        ),  # fmt: skip
        (["--tasks", "vqa", "--from_stage", "3"], "give --continue_from FOLDER"),
    ],
)
def test_continue_from_refuses_bad_arguments_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        pretrain.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1], err


def test_retrieval_top_stages_lock_the_vit_below_their_top_layers():
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from unitrans_ds.adapters import prepare_model
    from unitrans_ds.config.schema import MethodConfig

    folder = PRETRAINED / "scenes" / pretrain.folder_name("retrieval")
    trained_layers = []
    for recipe in pretrain.stages(pretrain.RECIPES["retrieval"]):
        model = BlipForImageTextRetrieval(BlipConfig.from_pretrained(folder))
        prepare_model(model, MethodConfig(name="full", freeze=list(recipe.freeze)))
        vit = {n.split(".")[1] for n, p in model.vision_model.encoder.named_parameters() if p.requires_grad}
        assert not any(p.requires_grad for p in model.vision_model.embeddings.parameters())
        assert all(p.requires_grad for p in model.text_encoder.parameters())
        trained_layers.append(sorted(int(k) for k in vit))
    # the tiny ViT's 4 layers: locked in stages 1-4, then its top one, two and three layers train
    assert model.config.vision_config.num_hidden_layers == 4
    assert trained_layers == [[], [], [], [], [3], [2, 3], [1, 2, 3]]
