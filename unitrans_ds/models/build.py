"""Build the frozen BLIP backbone of a task from `model.init_from`: tiny, a hub name, a local folder or a `.pth`.

Who calls it: the task classes and the trainer (`load_backbone`), adapter export/import (`config_hash`), and the
text pipelines (`enc_token_id`, `bos_token_id`). Freezing and adapter injection happen elsewhere.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer, BertTokenizer, BlipConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..config.schema import ModelConfig
from .convert_blip import (
    ModelLoadError,
    blip_config_from_state_dict,
    convert_with_report,
    load_original_checkpoint,
    summarize_keys,
)
from .known_checkpoints import (
    KNOWN_CHECKPOINTS,
    RANDOM_PREFIX,
    architecture,
    known_checkpoint,
    missing_checkpoint_message,
)
from .signature import config_hash  # the one definition, shared with the adapter export
from .tiny import demo_tokenizer, tiny_blip_config

logger = logging.getLogger(__name__)

ORIGINAL_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
BLIP_BERT_VOCAB = 30524  # bert-base-uncased (30522) + [DEC] + [ENC]
_TRUE = {"1", "on", "yes", "true"}


@dataclass
class Backbone:
    """A loaded backbone. `source` is the name to record as the base model; `config_hash` identifies its shapes.

    `needs_interpolation`: the checkpoint's image size differs from `model.image_size`, so HF forwards must get
    `interpolate_pos_encoding=True`. `newly_initialized`: weights of the task class the source did not hold.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    config_hash: str
    task: str
    needs_interpolation: bool = False
    newly_initialized: list[str] = field(default_factory=list)


def _special_id(tokenizer: PreTrainedTokenizerBase, token: str, role: str) -> int:
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise ModelLoadError(
            f"the tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) has no {token} token, which BLIP "
            f"uses as {role}. Use BLIP's tokenizer (bert-base-uncased + [DEC] + [ENC]), or call "
            "`ensure_blip_tokens(tokenizer, vocab_size)` after loading it."
        )
    return vocab[token]


def enc_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of `[ENC]`, which replaces `[CLS]` as the first token of ITM / VQA encoder inputs (as in BLIP)."""
    return _special_id(tokenizer, "[ENC]", "the first token of image-grounded encoder inputs")


def bos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of `[DEC]`, the decoder's beginning-of-sequence token (replaces `[CLS]` in captions and answers)."""
    return _special_id(tokenizer, "[DEC]", "the decoder's beginning-of-sequence token")


def ensure_blip_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> PreTrainedTokenizerBase:
    """Add BLIP's `[DEC]` (as bos) and `[ENC]` where missing, as BLIP's `init_tokenizer` does, in place.

    The HF BLIP tokenizers ship plain bert-base-uncased; added in this order the two tokens get ids 30522 and
    30523, the rows BLIP trained for them. Raises when the tokenizer then has more ids than the model has rows.
    """
    vocab = tokenizer.get_vocab()
    if "[DEC]" not in vocab or tokenizer.bos_token != "[DEC]":
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} tokens (with [DEC]/[ENC]) but the model's embedding has only "
            f"{vocab_size} rows; set `model.tokenizer` to the tokenizer the checkpoint was trained with"
        )
    return tokenizer


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _cache_dir() -> str | None:
    # Read at call time: huggingface_hub fixes its cache path at import, but users often set HF_HOME later.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def _hub_reachable() -> tuple[bool, str]:
    """Quick TCP probe of the hub endpoint, so an offline machine fails in seconds instead of minutes of retries."""
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True, endpoint  # a proxy may reach what a direct connection cannot; let the library try
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "10"))
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False, endpoint
    return True, endpoint


def _hub_kwargs(name: str, what: str) -> dict:
    """`from_pretrained` kwargs for a hub name: the local cache when it has the files, else the network if up."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = _cache_dir()
    if isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir), str):
        return {"cache_dir": cache_dir, "local_files_only": True}
    if _hub_offline():
        reason = "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and the cache does not hold it"
    else:
        ok, endpoint = _hub_reachable()
        if ok:
            return {"cache_dir": cache_dir}
        reason = f"the hub ({endpoint}) cannot be reached and the cache does not hold it"
    raise ModelLoadError(
        f"cannot load {what} {name!r} from the HuggingFace hub (it is not a local folder): {reason} "
        f"(cache: {cache_dir or 'default HF cache'}).\n"
        f"On a machine with internet run `huggingface-cli download {name} --local-dir DIR`, copy DIR here and set "
        "`model.init_from` (or `model.tokenizer`) to that folder; or copy a full HF cache here and set HF_HOME to it."
    )


def _is_hub_name(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def _load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a folder or hub name (the Salesforce BLIP repos hold their BertTokenizer files)."""
    kwargs = {} if Path(source).is_dir() else _hub_kwargs(source, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {source!r}: {err}\nSet `model.tokenizer`.") from err


def resolve_tokenizer(model_cfg: ModelConfig, vocab_size: int, folder: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer for a checkpoint without a bundled one (or a folder that may hold one).

    Order: `model.tokenizer`; the tokenizer files in `folder`; bert-base-uncased + [DEC]/[ENC] when the vocabulary
    is BLIP's 30524; the demo tokenizer when the vocabulary is its size; else an error asking for `model.tokenizer`.
    """
    if model_cfg.tokenizer:
        tok = _load_tokenizer(model_cfg.tokenizer)
    elif folder is not None and any((folder / f).is_file() for f in ("tokenizer_config.json", "vocab.txt")):
        tok = _load_tokenizer(str(folder))
    elif vocab_size == BLIP_BERT_VOCAB:
        kwargs = _hub_kwargs("bert-base-uncased", "tokenizer")
        try:
            tok = BertTokenizer.from_pretrained("bert-base-uncased", **kwargs)
        except OSError as err:
            raise ModelLoadError(f"cannot load bert-base-uncased: {err}\nSet `model.tokenizer`.") from err
    elif vocab_size == len(demo := demo_tokenizer()):
        return demo
    else:
        raise ModelLoadError(
            f"no tokenizer is known for a vocabulary of {vocab_size} tokens (BLIP's is {BLIP_BERT_VOCAB}, the demo "
            f"tokenizer's {len(demo_tokenizer())}); set `model.tokenizer` to the tokenizer the checkpoint used"
        )
    return ensure_blip_tokens(tok, vocab_size)


def task_model_class(task: str) -> type[PreTrainedModel]:
    """The HF BLIP class of `task`, as its task class declares it (`Task.hf_model`); unknown tasks are an error."""
    from ..tasks.registry import task_class  # the task classes build on this module: asked at call time

    return task_class(task).hf_model


def _build_tiny(model_cfg: ModelConfig, task: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = tiny_blip_config(model_cfg.tiny, image_size=model_cfg.image_size)
    # HF initialises from the global RNG; fork it so the build is seeded without disturbing the caller's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task_model_class(task)(config)
    return model, demo_tokenizer()


def random_init_config(config: BlipConfig) -> BlipConfig:
    """`config` set up to be built with random weights: the ViT initialised like its text side.

    HF's BlipVisionConfig defaults to initializer_range 1e-10 (BLIP's ViT always loads pretrained weights), so a
    random ViT-B/16 started with every weight near 1e-10: its activations were subnormal floats, which x86 CPUs
    compute on several times slower, and no image reached the text. Random weights serve dry runs and benchmarks,
    so the ViT gets its text side's std (0.02, as ViT/timm's init), like the tiny models.
    """
    config.vision_config.initializer_range = config.text_config.initializer_range
    return config


def _build_random(model_cfg: ModelConfig, task: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`random:<checkpoint>`: the named original checkpoint's architecture with seeded random weights."""
    name = model_cfg.init_from.removeprefix(RANDOM_PREFIX)
    ckpt = known_checkpoint(name)
    if ckpt is None:
        raise ModelLoadError(
            f"model.init_from={model_cfg.init_from!r}: no stored architecture for {name!r}; `random:` takes one of "
            f"{', '.join(sorted(KNOWN_CHECKPOINTS))} (a path ending in one works too)"
        )
    if task not in ckpt.tasks:
        raise ModelLoadError(
            f"model.init_from={model_cfg.init_from!r}: {ckpt.name} ({ckpt.lineage}) holds no {task} weights; "
            f"it serves {', '.join(ckpt.tasks)}"
        )
    config = random_init_config(architecture(name))
    with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the caller's stream
        torch.manual_seed(seed)
        model = task_model_class(task)(config)
    return model, resolve_tokenizer(model_cfg, config.text_config.vocab_size)


def _build_pretrained(model_cfg: ModelConfig, task: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[str]]:
    source = model_cfg.init_from
    folder = Path(source).expanduser()
    kwargs = {} if folder.is_dir() else _hub_kwargs(source, "model")
    cls = task_model_class(task)
    try:
        model, info = cls.from_pretrained(
            str(folder) if folder.is_dir() else source, output_loading_info=True, dtype=torch.float32, **kwargs
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {cls.__name__} from {source!r}: {err}") from err
    except SafetensorError as err:  # a truncated or corrupted weights file
        files = ", ".join(str(f) for f in sorted(folder.glob("*.safetensors"))) if folder.is_dir() else source
        raise ModelLoadError(
            f"cannot read the weights of model.init_from={source!r} ({files}): {err}; the file is corrupted or "
            "cut short, copy or download it again"
        ) from None
    new = sorted(info.get("missing_keys", []))
    if new:
        logger.warning(
            "%s from %s: %d weights were not in the checkpoint and are NEWLY INITIALISED (random): %s",
            cls.__name__,
            source,
            len(new),
            summarize_keys(new),
        )
    if info.get("unexpected_keys"):
        logger.info("%s from %s: ignored %s", cls.__name__, source, summarize_keys(info["unexpected_keys"]))
    vocab = model.config.text_config.vocab_size
    if model_cfg.tokenizer or not folder.is_dir():
        tok = ensure_blip_tokens(_load_tokenizer(model_cfg.tokenizer or source), vocab)
    else:
        tok = resolve_tokenizer(model_cfg, vocab, folder)
    return model, tok, new


def build_from_original(
    path: str | Path,
    task: str,
    model_cfg: ModelConfig | None = None,
    require_tokenizer: bool = True,
    progress: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load an original BLIP/LAVIS `.pth` into the `task`'s HF class (config inferred from the tensor shapes).

    Every weight of the target class must come from the checkpoint (else `ModelLoadError` listing the missing
    ones); keys the class has no slot for are dropped and counted in an info log. With `require_tokenizer=False`
    a BLIP-vocabulary checkpoint whose tokenizer cannot be loaded (offline) still converts, with BLIP's ids.
    """
    cls = task_model_class(task)
    conv = convert_with_report(load_original_checkpoint(path), task, progress=progress)
    sd = conv.state_dict
    # Sizes come from every BLIP part present, so a checkpoint lacking this task's part still reaches the clear
    # "lacks N weights" error below instead of failing on the config.
    every_part = {**conv.other_tasks, **sd}
    words = next((v for k, v in every_part.items() if k.endswith("embeddings.word_embeddings.weight")), None)
    if words is None:
        raise ModelLoadError(f"{path} has no text encoder nor decoder (text_encoder.*, text_decoder.*)")
    vocab = words.shape[0]
    try:
        tok = resolve_tokenizer(model_cfg or ModelConfig(init_from=str(path)), vocab)
        ids = (tok.pad_token_id, bos_token_id(tok), tok.sep_token_id)
    except ModelLoadError:
        if require_tokenizer or vocab != BLIP_BERT_VOCAB:
            raise
        logger.warning("no tokenizer for %s; using BLIP's bert-base-uncased ids (pad 0, [DEC] 30522, [SEP] 102)", path)
        tok, ids = None, (0, 30522, 102)
    config = blip_config_from_state_dict(every_part, pad_token_id=ids[0], bos_token_id=ids[1], sep_token_id=ids[2])
    if conv.temperature is not None:  # BLIP's learned ITC temperature: the start of ours (adapters.state)
        config.itc_temperature = conv.temperature
    model = cls(config)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shape mismatches inside one checkpoint
        raise ModelLoadError(f"{path}: tensors do not fit the inferred {cls.__name__}: {err}") from err
    tied = getattr(model, "_tied_weights_keys", None) or {}
    missing = [k for k in result.missing_keys if not (k in tied and tied[k] in sd)]
    if missing:
        raise ModelLoadError(
            f"{path} lacks {len(missing)} weights that {cls.__name__} ({task}) needs, by module: "
            f"{summarize_keys(missing)}; first ones: {', '.join(missing[:20])}"
            + (" ..." if len(missing) > 20 else "")
            + "\nIs it a checkpoint for another task? A pretraining checkpoint (model_base.pth) serves every task."
        )
    if result.unexpected_keys:  # the converter only keeps the class's own modules, so this is a converter bug
        raise ModelLoadError(f"{path}: converted keys {result.unexpected_keys[:10]} have no slot in {cls.__name__}")
    if conv.dropped:
        logger.info(
            "%s: dropped %d keys %s has no slot for: %s",
            path,
            len(conv.dropped),
            cls.__name__,
            summarize_keys(conv.dropped),
        )
    return model.eval(), tok


def load_backbone(model_cfg: ModelConfig, task: str, seed: int = 0) -> Backbone:
    """Build the `task`'s BLIP class from `model_cfg.init_from` (see the module docstring) with its tokenizer.

    `seed` only matters for `tiny` (random init; the same seed gives bit-identical weights). The model is returned
    in eval mode, in fp32, with nothing frozen yet. Raises `ModelLoadError` with what was tried and what to do.
    """
    task_model_class(task)  # an unknown task fails before anything loads
    source = model_cfg.init_from
    path = Path(source).expanduser()
    new: list[str] = []
    if source == "tiny":
        model, tok = _build_tiny(model_cfg, task, seed)
        model.eval()
    elif source.startswith(RANDOM_PREFIX):
        model, tok = _build_random(model_cfg, task, seed)
        model.eval()
    elif not path.exists() and known_checkpoint(source) is not None:
        raise ModelLoadError(missing_checkpoint_message(source))
    elif path.is_file() or source.endswith(ORIGINAL_SUFFIXES):
        model, tok = build_from_original(path, task, model_cfg)
        source = str(path.resolve())
    elif path.is_dir():
        model, tok, new = _build_pretrained(model_cfg, task)
        source = str(path.resolve())
    elif _is_hub_name(source):
        model, tok, new = _build_pretrained(model_cfg, task)
    else:
        raise ModelLoadError(
            f"model.init_from={source!r} is not `tiny`, an existing folder or .pth file, nor a hub name (org/name)"
        )
    if model_cfg.gradient_checkpointing:
        # transformers 5 renamed it; 4.x only has the old name
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # HF then hooks the word embeddings so their output requires grad (needed only by reentrant
        # checkpointing); BLIP adds position embeddings to that tensor in place, which autograd refuses.
        model.disable_input_require_grads()
    return Backbone(
        model=model,
        tokenizer=tok,
        source=source,
        config_hash=config_hash(model.config),
        task=task,
        needs_interpolation=model.config.vision_config.image_size != model_cfg.image_size,
        newly_initialized=new,
    )
