"""The vision stage of the scenes backbones (benchmarks/transfer/vision_stage.py): its targets, its probe windows,
that it trains, and that its ViT replaces exactly the ViT of the backbone it starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks.transfer import pretrain, vision_stage
from unitrans_ds.data.scenes import make_sample

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained"


def test_cell_targets_name_each_object_in_its_cell_and_keep_empty_cells_apart_from_unmarked_objects():
    scene = {
        "objects": [
            {"row": 0, "col": 2, "shape": "star", "color": "cyan", "size": "large", "mark": "none"},
            {"row": 2, "col": 1, "shape": "circle", "color": "red", "size": "small", "mark": "cross"},
        ]
    }
    t = vision_stage.cell_targets(scene)
    names = {k: v for k, v in vision_stage.ATTRIBUTES.items()}
    assert [names[k][i] for k, i in zip(names, t[2])] == ["star", "cyan", "large", "none"]
    assert [names[k][i] for k, i in zip(names, t[7])] == ["circle", "red", "small", "cross"]
    empty = [c for c in range(9) if c not in (2, 7)]
    assert (t[empty] == 0).all() and (t[2] != 0).all()  # an unmarked object's mark is not "empty"


def test_each_cell_window_covers_the_patches_where_its_objects_are_drawn():
    # every object centre of 200 generated scenes falls inside its cell's window (patch coordinates)
    side = 8
    windows = vision_stage.cell_windows(side)
    for i in range(200):
        for obj in make_sample(0, "a", "train", "image", i, 64, 8, "t").scene["objects"]:
            r0, c0 = windows[obj["row"] * 3 + obj["col"]]
            px, py = obj["x"] * side, obj["y"] * side
            assert c0 <= px < c0 + vision_stage.WINDOW and r0 <= py < r0 + vision_stage.WINDOW, (obj, (r0, c0))


def test_the_scene_head_reads_the_cls_token_only():
    torch.manual_seed(0)
    head = vision_stage.SceneHead(16)
    hidden = torch.randn(2, 65, 16)
    out = head(hidden)
    assert [tuple(x.shape) for x in out] == [(2, 9, len(v)) for v in vision_stage.ATTRIBUTES.values()]
    patches_changed = hidden.clone()
    patches_changed[:, 1:] += 1.0
    assert all(torch.equal(a, b) for a, b in zip(out, head(patches_changed)))
    cls_changed = hidden.clone()
    cls_changed[:, 0] += 1.0
    assert not any(torch.equal(a, b) for a, b in zip(out, head(cls_changed)))


def test_a_few_epochs_train_the_vit_and_its_probe():
    pixels, targets = vision_stage.scene_images(0, "train", 256)
    test = vision_stage.scene_images(0, "test", 100)
    vision = vision_stage.tiny_vision_model(0)
    torch.manual_seed(0)
    probe = vision_stage.CellProbe(vision.config.hidden_size, 8)

    def train_loss() -> float:
        with torch.no_grad():
            return vision_stage.loss_of(probe(vision(pixel_values=pixels).last_hidden_state), targets).item()

    loss0, before = train_loss(), vision_stage.accuracy(vision, probe, *test)
    recipe = vision_stage.VisionRecipe(images=256, epochs=4, lr=2e-3, batch=32)
    after = vision_stage.fit(vision, probe, (pixels, targets), test, recipe, seed=0)
    assert train_loss() < 0.6 * loss0
    assert after["size"] > before["size"] + 20, (before, after)  # at least where the objects are, and how big


def test_fit_trains_the_scene_head_with_the_cell_head_and_reports_both():
    pixels, targets = vision_stage.scene_images(0, "train", 64)
    vision = vision_stage.tiny_vision_model(0)
    torch.manual_seed(0)
    probe, scene = (
        vision_stage.CellProbe(vision.config.hidden_size, 8),
        vision_stage.SceneHead(vision.config.hidden_size),
    )
    start = [p.detach().clone() for p in scene.parameters()]
    recipe = vision_stage.VisionRecipe(images=64, epochs=1, lr=1e-3, batch=32)
    acc = vision_stage.fit(vision, probe, (pixels, targets), (pixels[:16], targets[:16]), recipe, seed=0, scene=scene)
    assert set(acc) == {*vision_stage.ATTRIBUTES, *(f"cls_{k}" for k in vision_stage.ATTRIBUTES)}
    assert all(not torch.equal(a, b) for a, b in zip(start, scene.parameters()))


def test_with_vision_replaces_the_vit_and_keeps_everything_else(tmp_path):
    from safetensors.torch import load_file, save_file

    from unitrans_ds.config.schema import ModelConfig
    from unitrans_ds.models.build import load_backbone

    vit = {k: v.contiguous() for k, v in vision_stage.tiny_vision_model(seed=5).state_dict().items()}
    save_file(vit, str(tmp_path / "vit.safetensors"))
    init = PRETRAINED / "shapes" / pretrain.folder_name("retrieval")
    out = vision_stage.with_vision(str(init), "retrieval", tmp_path / "vit.safetensors", tmp_path / "model")
    made = load_backbone(ModelConfig(init_from=str(out)), "retrieval")
    assert made.newly_initialized == []
    sd = made.model.state_dict()
    for k, v in vit.items():
        torch.testing.assert_close(sd[f"vision_model.{k}"], v, rtol=0, atol=0)
    src = {k: v.float() for k, v in load_file(str(init / "model.safetensors")).items()}
    text = "text_encoder.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(sd[text], src[text], rtol=0, atol=0)
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()


def test_a_vision_recipe_without_the_stage_is_refused(tmp_path):
    recipe = pretrain.Recipe(epochs=1, lr=1e-3, batch=4, vision=True)
    with pytest.raises(ValueError, match="vision stage"):
        pretrain.pretrain_task("captioning", tmp_path / "out", recipe, run_root=tmp_path / "runs")


def test_data_seed_is_read_from_the_manifest_and_a_missing_one_is_one_line(tmp_path):
    split = tmp_path / "image_a" / "train"
    split.mkdir(parents=True)
    with pytest.raises(SystemExit, match="make_scenes.sh"):
        pretrain.data_seed(tmp_path)
    (split / "manifest.json").write_text(json.dumps({"args": {"seed": 7}}))
    assert pretrain.data_seed(tmp_path) == 7


def test_a_finished_stage_with_a_locked_vit_is_recognised_for_reuse(tmp_path):
    # the record is JSON, so the recipe's `freeze` tuple comes back as a list: still the same recipe
    recipe = pretrain.stages(pretrain.RECIPES["retrieval"])[0]
    assert recipe.freeze
    (tmp_path / "pretrain.json").write_text(json.dumps({"recipe": dataclasses.asdict(recipe)}))
    assert pretrain._finished(tmp_path, recipe)
    assert not pretrain._finished(tmp_path, dataclasses.replace(recipe, freeze=()))


def test_the_command_without_the_scene_head_records_it_and_writes_the_vit(tmp_path):
    out = tmp_path / "vision"
    argv = ["--no_scene_head", "--images", "64", "--epochs", "1", "--out", str(out)]
    assert vision_stage.main(argv) == 0
    record = json.loads((out / "vision_stage.json").read_text())
    assert record["recipe"]["scene_head"] is False and record["recipe"]["images"] == 64
    assert not any(k.startswith("cls_") for k in record["test_accuracy"])
    assert (out / "vision_model.safetensors").is_file()
