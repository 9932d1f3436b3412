"""The fast VCRA path (folded vectors, one `A · x` per input, K/V update once) against the SPEC equation.

Each attention block is run twice on the same inputs: as prepared, and with its wrappers swapped for `Reference`
modules that compute `y = W0 x + b0 + s · Λb ⊙ (B · (Λa ⊙ (A · x)))` per chunk term by term from the same
parameters. Outputs and the gradients of every input and adapter parameter must agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from unitrans_ds.adapters import VCRALinear, get_state, merge_adapters, prepare_model
from unitrans_ds.config import MethodConfig


class Reference(nn.Module):
    """The SPEC equation for one wrapped Linear, computed without folding or sharing."""

    def __init__(self, layer: VCRALinear):
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a submodule: the block's parameters stay the same objects

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        y = nn.functional.linear(x, lay.base_layer.weight, lay.base_layer.bias)
        A, B, s = lay._bank.A[:, : lay.in_features], lay._bank.B, lay._scales[lay.modality]
        ax = torch.einsum("rd,...d->...r", A, x)
        parts = []
        for c in lay.chunks:
            a, b = lay._vectors(c)
            parts.append(s * b * torch.einsum("or,...r->...o", B[: c.end - c.start], a * ax))
        return y + torch.cat(parts, dim=-1)


def _randomize(model, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and ("vcra_" in n or ".scales." in n or ".banks." in n):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _model(share_kv: bool):
    model = make_tiny("retrieval", vision_width=48, vision_heads=4)  # cross-attention keys read a narrower input
    prepare_model(model, MethodConfig(name="vcra", rank=4, share_kv=share_kv))
    _randomize(model)
    return model


BLOCKS = {
    "vit_qkv": lambda m: m.vision_model.encoder.layers[1].self_attn,
    "bert_self": lambda m: m.text_encoder.encoder.layer[1].attention.self,
    "bert_cross": lambda m: m.text_encoder.encoder.layer[0].crossattention.self,
}


def _inputs(block_name: str, model) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    width = model.config.text_config.hidden_size
    if block_name == "vit_qkv":
        return (torch.randn(2, 5, model.config.vision_config.hidden_size, generator=g).requires_grad_(),), {}
    text = torch.randn(2, 6, width, generator=g).requires_grad_()
    if block_name == "bert_self":
        return (text,), {}
    image = torch.randn(2, 5, model.config.vision_config.hidden_size, generator=g).requires_grad_()
    return (text,), {"encoder_hidden_states": image}


def _run(block, args, kwargs, params) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = block(*args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    leaves = [*args, *kwargs.values(), *params]
    grads = torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]


def _with_reference(block):
    ref = copy.copy(block)  # a shallow copy: same parameters, its own submodule table, no shared-down hooks
    ref._modules = dict(block._modules)
    ref._forward_pre_hooks, ref._forward_hooks = type(block._forward_hooks)(), type(block._forward_hooks)()
    for name, mod in block.named_children():
        if isinstance(mod, VCRALinear):
            ref._modules[name] = Reference(mod)
    return ref


@pytest.mark.parametrize("share_kv", [True, False], ids=["share_kv", "separate_kv"])
@pytest.mark.parametrize("block_name", list(BLOCKS))
def test_fast_path_matches_equation_forward_and_gradients(block_name, share_kv):
    model = _model(share_kv)
    block = BLOCKS[block_name](model)
    assert any(isinstance(m, VCRALinear) for m in block.children())
    state = get_state(model)
    params = [*state.banks["enc"].parameters(), *state.scales.values()]
    params += [p for m in block.children() if isinstance(m, VCRALinear) for p in m.parameters() if p.requires_grad]
    args, kwargs = _inputs(block_name, model)
    got, got_grads = _run(block, args, kwargs, params)
    want, want_grads = _run(_with_reference(block), args, kwargs, params)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for i, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
        # fp32 sums in a different order: absolute tolerance relative to the gradient's largest entry
        atol = 1e-5 * (1 + w.abs().max().item())
        torch.testing.assert_close(g, w, rtol=1e-4, atol=atol, msg=lambda m, i=i: f"gradient {i}: {m}")
    assert any(g.abs().sum() > 0 for g in got_grads[len(args) + len(kwargs) :]), "no adapter gradient flowed"

    # Merged: the same forward (and input gradients) from the folded weights alone.
    want_inputs = want_grads[: len(args) + len(kwargs)]
    merge_adapters(model)
    merged, merged_grads = _run(block, args, kwargs, [])
    # (the folded weight is rounded once to fp32, so sums cancel differently: a looser tolerance)
    torch.testing.assert_close(merged, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(merged_grads, want_inputs, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4)


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("block_name", "share_kv", "adapter_matmuls"),
    [
        # self-attention: one A·x for q, k, v; updates q and kv (shared) or q, k, v
        ("bert_self", True, 1 + 2),
        ("bert_self", False, 1 + 3),
        # cross-attention: A·text for q, one A·image for k and v
        ("bert_cross", True, 2 + 2),
        ("bert_cross", False, 2 + 3),
        # fused ViT qkv: one A·x; updates q and kv (the kv update once, added to both slices) or one stacked GEMM
        ("vit_qkv", True, 1 + 2),
        ("vit_qkv", False, 1 + 1),
    ],
)
def test_down_projection_once_per_input(block_name, share_kv, adapter_matmuls):
    model = _model(share_kv)
    block = BLOCKS[block_name](model)
    args, kwargs = _inputs(block_name, model)
    with torch.no_grad():
        with _CountMatmuls() as base_count:
            _base_only(block)(*args, **kwargs)
        with _CountMatmuls() as fast:
            block(*args, **kwargs)
    assert fast.count - base_count.count == adapter_matmuls


def _base_only(block):
    plain = copy.copy(block)
    plain._modules = {n: m.base_layer if isinstance(m, VCRALinear) else m for n, m in block._modules.items()}
    plain._forward_pre_hooks, plain._forward_hooks = type(block._forward_hooks)(), type(block._forward_hooks)()
    return plain


def test_projection_called_alone_computes_its_own_update():
    # Outside its block's forward (or fed a tensor the block did not route to it) a wrapper shares nothing.
    model = _model(share_kv=True)
    block = BLOCKS["bert_self"](model)
    x = torch.randn(2, 3, block.key.in_features)
    with torch.no_grad():
        for lin in (block.query, block.key, block.value):
            torch.testing.assert_close(lin(x), Reference(lin)(x), rtol=1e-5, atol=1e-5)


def _qasn_layer(model):
    from unitrans_ds.adapters.qasn import QASNLayer

    layer = model.text_encoder.encoder.layer[1]
    assert isinstance(layer, QASNLayer) and layer._self_attention_scope() is not None
    return layer


def _qasn_model():
    model = make_tiny("retrieval", vision_width=48, vision_heads=4)
    prepare_model(model, MethodConfig(name="unitrans", rank=4))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and n != "unitrans.temp":
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def test_qasn_reuses_the_self_attention_down_projection():
    """QASN's `A · x` is the fusion layer's self-attention `A · x`: computed once, same output and gradients as
    the side network computing its own (the SPEC equation, written out here)."""
    model = _qasn_model()
    layer = _qasn_layer(model)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 6, model.config.text_config.hidden_size, generator=g).requires_grad_()
    image = torch.randn(2, 5, model.config.vision_config.hidden_size, generator=g).requires_grad_()
    kwargs = {"encoder_hidden_states": image}
    params = [*get_state(model).banks["enc"].parameters(), *(p for p in layer.parameters() if p.requires_grad)]

    def reference(x, **kw):  # block i = 0 of its stack's state is irrelevant here: layer 1 with h_1 = 0
        out = layer.base_layer(x, **kw)
        out = out[0] if isinstance(out, tuple) else out
        return out + torch.tanh(layer.qasn_alpha * layer.side_update(x) + layer.qasn_beta)

    layer._side.h = None
    got, got_grads = _run(layer, (text,), kwargs, params)
    want, want_grads = _run(reference, (text,), kwargs, params)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g_, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g_, w, rtol=1e-4, atol=1e-5 * (1 + w.abs().max().item()))
    with torch.no_grad():
        with _CountMatmuls() as plain:
            layer.base_layer(text, **kwargs)
        with _CountMatmuls() as side:
            layer(text, **kwargs)
    assert side.count - plain.count == 1  # only the side network's B; its A · x is the attention's
