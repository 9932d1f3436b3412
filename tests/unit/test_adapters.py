"""VCRA and QASN on tiny BLIP models: identity at init, the SPEC equations, gradients, counts, merge."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny, tiny_inputs
from helpers.adapters import _randomize_adapters
from helpers.model_io import outputs
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering

from unitrans_ds.adapters import (
    QASNLayer,
    TargetError,
    VCRALinear,
    get_state,
    merge_adapters,
    prepare_model,
    unmerge_adapters,
)
from unitrans_ds.config import METHODS, MethodConfig

TASKS = ("retrieval", "captioning", "vqa")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_identity_at_init(task, method):
    base = make_tiny(task)
    adapted = copy.deepcopy(base)
    prepare_model(adapted, MethodConfig(name=method, rank=4, qasn_decoder=task != "retrieval"))
    want, got = outputs(base, task), outputs(adapted, task)
    for k in want:
        assert torch.equal(want[k], got[k]), f"{method}/{task}: output {k} changed at init"


def test_vcra_layer_matches_spec_equation_bert():
    model = make_tiny("retrieval")
    prepare_model(model, MethodConfig(name="vcra", rank=4))
    _randomize_adapters(model)
    attn = model.text_encoder.encoder.layer[1].attention.self
    q, k, v = attn.query, attn.key, attn.value
    assert isinstance(q, VCRALinear) and isinstance(v, VCRALinear)
    state = get_state(model)
    A, B, s = state.banks["enc"].A, state.banks["enc"].B, state.scales["T"]
    x = torch.randn(3, 5, q.in_features)
    d = q.in_features
    with torch.no_grad():
        # y = W0 x + b0 + s · Λb ⊙ (B · (Λa ⊙ (A · x)))
        for layer, a, b in ((q, q.vcra_a["q"], q.vcra_b["q"]), (v, k.vcra_a["kv"], k.vcra_b["kv"])):
            W0, b0 = layer.base_layer.weight, layer.base_layer.bias
            ax = torch.einsum("rd,btd->btr", A[:, :d], x)
            by = torch.einsum("or,btr->bto", B[: layer.out_features], a * ax)
            want = x @ W0.T + b0 + s * b * by
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
    # Key and value share one vector pair: value owns none.
    assert len(v.vcra_a) == 0 and set(k.vcra_a) == {"kv"}


def test_vcra_fused_qkv_chunks():
    model = make_tiny("retrieval")
    prepare_model(model, MethodConfig(name="vcra", rank=4))
    _randomize_adapters(model)
    qkv = model.vision_model.encoder.layers[0].self_attn.qkv
    state = get_state(model)
    A, B, s = state.banks["enc"].A, state.banks["enc"].B, state.scales["V"]
    d = qkv.in_features
    x = torch.randn(2, 4, d)
    with torch.no_grad():
        y0 = qkv.base_layer(x)
        dq = s * qkv.vcra_b["q"] * ((qkv.vcra_a["q"] * (x @ A[:, :d].T)) @ B[:d].T)
        dkv = s * qkv.vcra_b["kv"] * ((qkv.vcra_a["kv"] * (x @ A[:, :d].T)) @ B[:d].T)
        torch.testing.assert_close(qkv(x), y0 + torch.cat([dq, dkv, dkv], -1), rtol=1e-5, atol=1e-6)


def test_bank_slicing_for_different_widths():
    # Cross-attention keys read the vision width (48) while the text width is 64: the bank is allocated at the
    # largest width and each layer takes its slice.
    model = make_tiny("retrieval", vision_width=48, vision_heads=4)
    prepare_model(model, MethodConfig(name="unitrans", rank=4))
    bank = get_state(model).banks["enc"]
    assert bank.A.shape == (4, 64) and bank.B.shape == (64, 4)
    key = model.text_encoder.encoder.layer[0].crossattention.self.key
    assert key.in_features == 48
    _randomize_adapters(model)
    x = torch.randn(1, 3, 48)
    assert key(x).shape == (1, 3, 64)
    torch.testing.assert_close(key.delta(x), x @ key.delta_weight().T, rtol=1e-5, atol=1e-6)


def test_qasn_recurrence_over_two_blocks():
    model = make_tiny("retrieval")
    prepare_model(model, MethodConfig(name="vcra+qasn", rank=4))
    _randomize_adapters(model)
    layers = model.text_encoder.encoder.layer
    assert all(isinstance(layer, QASNLayer) for layer in layers) and len(layers) == 2
    bank = get_state(model).banks["enc"]
    A, B = bank.A, bank.B
    x0 = torch.randn(2, 5, 64)
    img = torch.randn(2, 7, 64)

    def w(layer, x):  # w_i(x) = Λb ⊙ (B · (Λa ⊙ (A · x)))
        return layer.qasn_b * ((layer.qasn_a * (x @ A.T)) @ B.T)

    def f(layer, z):  # f_i(z) = tanh(α ⊙ z + β)
        return torch.tanh(layer.qasn_alpha * z + layer.qasn_beta)

    with torch.no_grad():
        h1 = 0 + w(layers[0], x0)
        x1 = layers[0].base_layer(x0, img) + f(layers[0], h1)
        h2 = h1 + w(layers[1], x1)
        x2 = layers[1].base_layer(x1, img) + f(layers[1], h2)
        got = layers[1](layers[0](x0, img), img)
    torch.testing.assert_close(got, x2, rtol=1e-5, atol=1e-6)
    # Without cross-attention input (the unimodal ITC pass) the side network stays out of the way.
    with torch.no_grad():
        torch.testing.assert_close(layers[0](x0), layers[0].base_layer(x0))


def test_sigmoid_qasn_breaks_identity_as_documented():
    base = make_tiny("retrieval")
    adapted = copy.deepcopy(base)
    prepare_model(adapted, MethodConfig(name="vcra+qasn", rank=4, qasn_activation="sigmoid"))
    assert not torch.equal(outputs(base, "retrieval")["itm"], outputs(adapted, "retrieval")["itm"])


@pytest.mark.parametrize("method", ["unitrans", "lora", "scaling-vectors"])
def test_only_adapter_parameters_train(method):
    model = make_tiny("retrieval").train()
    report = prepare_model(model, MethodConfig(name=method, rank=4))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == report.trainable
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    x = tiny_inputs(model)
    for _ in range(2):
        loss = model(**x, use_itm_head=True).itm_score.sum() + model(**x, use_itm_head=False).itm_score.sum()
        (loss + get_state(model).temperature()).backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"{n} is frozen but got a gradient"
            assert torch.equal(p.detach(), frozen[n]), f"frozen weight {n} changed"
    moved = [n for n, p in model.named_parameters() if p.requires_grad]
    assert moved, "nothing trains"


def _spec_count(cfg: BlipConfig, task: str, r: int) -> int:
    """Θ = 2·d·r per bank + N_tuned·(d + r) + |M| (+ QASN N·(d + r) + N·2d, + temperature)."""
    d = cfg.text_config.hidden_size  # BLIP-base: every width is 768
    nv, nt = cfg.vision_config.num_hidden_layers, cfg.text_config.num_hidden_layers
    blocks = {"retrieval": nv + 2 * nt, "captioning": nv + 2 * nt, "vqa": nv + 2 * nt + 2 * nt}[task]
    n_tuned = 2 * blocks  # a Q pair and a shared KV pair per attention block
    banks = {"retrieval": 1, "captioning": 2, "vqa": 2}[task]
    modalities = {"retrieval": 3, "captioning": 2, "vqa": 4}[task]
    count = banks * 2 * d * r + n_tuned * (d + r) + modalities
    if task in ("retrieval", "vqa"):  # QASN on the fusion stack
        count += nt * (d + r) + nt * 2 * d
    if task == "retrieval":
        count += 1  # ITC temperature
    return count


@pytest.mark.parametrize("task", TASKS)
def test_trainable_count_matches_formula_on_blip_base(task):
    cfg = BlipConfig()
    cls = {
        "retrieval": BlipForImageTextRetrieval,
        "captioning": BlipForConditionalGeneration,
        "vqa": BlipForQuestionAnswering,
    }
    with torch.device("meta"):
        model = cls[task](cfg)
    r = 64
    report = prepare_model(model, MethodConfig(name="unitrans", rank=r))
    assert report.trainable == _spec_count(cfg, task, r)
    assert report.total > 200_000_000
    # LoRA on the same targets: r·(d_in + d_out) per wrapped Linear = 2·N·d·r counting a fused d->3d qkv as 2.
    with torch.device("meta"):
        lora_model = cls[task](cfg)
    lora = prepare_model(lora_model, MethodConfig(name="lora", rank=r))
    d = 768
    nv, nt = 12, 12
    n_square = {"retrieval": 2 * nv + 6 * nt, "captioning": 2 * nv + 6 * nt, "vqa": 2 * nv + 12 * nt}[task]
    assert lora.parts["lora"] == 2 * n_square * d * r
    temp = 1 if task == "retrieval" else 0
    assert lora.trainable == lora.parts["lora"] + temp


def test_target_pattern_matching_nothing_names_it():
    model = make_tiny("retrieval")
    with pytest.raises(TargetError, match=r"no_such_block"):
        prepare_model(model, MethodConfig(name="vcra", rank=4, targets={"V": r"no_such_block\.\d+"}))
    model = make_tiny("retrieval")
    with pytest.raises(TargetError, match="not an attention block"):
        prepare_model(model, MethodConfig(name="vcra", rank=4, targets={"V": r"vision_model\.encoder\.layers\.0\.mlp"}))
    model = make_tiny("retrieval")
    with pytest.raises(TargetError, match="itm_hed"):
        prepare_model(model, MethodConfig(name="vcra", rank=4, unfreeze=["itm_hed"]))


def test_restricted_targets_and_unfreeze():
    model = make_tiny("retrieval")
    report = prepare_model(
        model,
        MethodConfig(
            name="vcra", rank=4, targets={"V": r"vision_model\.encoder\.layers\.1\.self_attn"}, unfreeze=["itm_head"]
        ),
    )
    assert isinstance(model.vision_model.encoder.layers[1].self_attn.qkv, VCRALinear)
    assert not isinstance(model.vision_model.encoder.layers[0].self_attn.qkv, VCRALinear)
    assert report.parts["backbone"] == sum(p.numel() for p in model.itm_head.parameters())


def test_full_training_with_a_locked_vit_trains_everything_but_the_frozen_modules():
    model = make_tiny("captioning")
    prepare_model(
        model, MethodConfig(name="full", freeze=[r"vision_model\.encoder\.layers\.[01]", "vision_model.embeddings"])
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("vision_model.embeddings", "vision_model.encoder.layers.")) for n in trainable)
    assert "vision_model.post_layernorm.weight" in trainable
    assert any(n.startswith("text_decoder.") for n in trainable)
    model = make_tiny("captioning")
    with pytest.raises(TargetError, match="method.freeze pattern 'vision_modle'"):
        prepare_model(model, MethodConfig(name="full", freeze=["vision_modle"]))


@pytest.mark.parametrize("task", TASKS)
def test_merge_unmerge(task):
    model = make_tiny(task)
    prepare_model(model, MethodConfig(name="vcra", rank=4))
    _randomize_adapters(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    unmerged = outputs(model, task, generate=False)
    assert merge_adapters(model) > 0
    changed = [n for n, p in model.named_parameters() if "base_layer.weight" in n and not torch.equal(p, before[n])]
    assert changed, "merge did not touch the weights"
    merged = outputs(model, task, generate=False)
    for k in unmerged:
        torch.testing.assert_close(merged[k], unmerged[k], rtol=1e-4, atol=1e-5)
    unmerge_adapters(model)
    for n, p in model.named_parameters():
        if n in before:
            torch.testing.assert_close(p, before[n], rtol=0, atol=1e-6)


def test_frozen_bank_is_buffer_and_recreated_from_seed():
    a, b = make_tiny("retrieval"), make_tiny("retrieval")
    prepare_model(a, MethodConfig(name="vcra", rank=4, train_shared=False, seed=7))
    prepare_model(b, MethodConfig(name="vcra", rank=4, train_shared=False, seed=7))
    ba, bb = get_state(a).banks["enc"], get_state(b).banks["enc"]
    assert not isinstance(ba.A, torch.nn.Parameter)
    assert torch.equal(ba.A, bb.A) and torch.equal(ba.B, bb.B)
    assert "unitrans.banks.enc.A" not in a.state_dict()


class _PositionalBertLayer(torch.nn.Module):
    """A real BLIP text layer behind transformers 4.x's signature, which its encoder calls positionally as
    `(hidden, attention_mask, head_mask, encoder_hidden_states, encoder_attention_mask, ...)`."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_value=None,
        output_attentions=False,
    ):
        return self.layer(hidden_states, encoder_hidden_states, attention_mask=attention_mask)


def test_qasn_binds_block_arguments_by_name_not_position():
    from unitrans_ds.adapters.bank import SharedBank
    from unitrans_ds.adapters.qasn import SideState

    model = make_tiny("retrieval")
    base = _PositionalBertLayer(model.text_encoder.encoder.layer[0])
    bank = SharedBank(4, 64, 64, seed=0, trainable=False)
    side = SideState()
    layer = QASNLayer(base, 0, False, 64, bank, side, "tanh")
    with torch.no_grad():
        layer.qasn_b.fill_(0.5)  # a non-zero side update, so running it would show in the output
    x, img = torch.randn(2, 5, 64), torch.randn(2, 7, 64)
    mask = torch.zeros(2, 1, 1, 5)
    with torch.no_grad():
        # A text-only call as 4.x makes it: the mask sits where 5.x has encoder_hidden_states.
        torch.testing.assert_close(layer(x, mask, None, None, None), base(x, mask))
        assert side.h is None, "the side network ran in a text-only pass"
        fused = layer(x, mask, None, img, None)
        assert side.h is not None and not torch.allclose(fused, base(x, mask, None, img))
