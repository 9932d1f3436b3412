"""The typed config tree. Every field has a default and help text; `validate()` runs cross-field checks.

The tree is plain dataclasses so that it can be built from a YAML file plus dotted overrides
(`unitrans_ds.config.load`), flattened into MLflow params, and saved with a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

METHODS = ("frozen", "full", "lora", "scaling-vectors", "vcra", "vcra+qasn", "vcra+mcam", "unitrans")
QASN_ACTIVATIONS = ("tanh", "gelu", "silu", "identity", "sigmoid")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ITM_SCORES = ("logit", "prob")
VQA_EVALUATORS = ("lavis-2017", "official-2021")
VQA_LOSSES = ("blip", "soft-score")
EVAL_PRECISIONS = ("fp32", "train")


def _help(text: str, default=None, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TinyModelConfig:
    """Sizes of the tiny BLIP built from `BlipConfig` when `model.init_from` is `tiny`."""

    vision_width: int = _help("ViT hidden width.", 64)
    vision_layers: int = _help("ViT layers.", 2)
    vision_heads: int = _help("ViT attention heads.", 4)
    patch_size: int = _help("ViT patch size in pixels.", 16)
    text_width: int = _help("BERT hidden width (text encoder and decoder).", 64)
    text_layers: int = _help("BERT layers.", 2)
    text_heads: int = _help("BERT attention heads.", 4)
    intermediate_mult: int = _help("FFN width as a multiple of the hidden width.", 4)
    embed_dim: int = _help("Width of the ITC projection space.", 32)
    max_position_embeddings: int = _help("Longest text, in tokens.", 64)


@dataclass
class ModelConfig:
    init_from: str = _help(
        "Where the backbone comes from: `tiny` (built from `model.tiny`, random weights), a HF hub name such as "
        "`Salesforce/blip-itm-base-coco`, a local `save_pretrained` folder, or an original BLIP/LAVIS `.pth`. "
        "The embedded default is the committed tiny BLIP pretrained on scenes domain A (pretrained/README.md).",
        "pretrained/scenes/tiny-blip-retrieval",
    )
    tokenizer: str | None = _help(
        "Tokenizer name or folder. Default: the `init_from` folder/hub name, or the bundled demo vocabulary for "
        "`tiny` and `.pth` inits without one.",
        None,
    )
    image_size: int = _help(
        "Input image size in pixels (square). 384 for BLIP retrieval, 480 for VQA; 64 for the demo.", 64
    )
    tiny: TinyModelConfig = _help("Sizes for `init_from: tiny`.", factory=TinyModelConfig)
    gradient_checkpointing: bool = _help("Recompute activations in the backward pass to save memory.", False)


@dataclass
class MethodConfig:
    name: str = _help(f"Adaptation method, one of {', '.join(METHODS)}.", "unitrans")
    rank: int = _help(
        "Bottleneck rank r of VCRA / LoRA / scaling vectors. 64 gives ~0.19M trainable parameters on BLIP-base "
        "retrieval (the paper's ~0.2M); the demo's tiny model uses 16.",
        16,
    )
    seed: int = _help("Seed of the shared random matrices A and B (they are re-created from it).", 1234)
    train_shared: bool = _help(
        "Train the shared matrices A and B (the paper's parameter formula counts them). False = VeRA-style: "
        "frozen, not saved, re-created from the seed.",
        True,
    )
    share_kv: bool = _help("Key and value projections of one attention block share their scaling vectors.", True)
    learn_scale: bool = _help("Learn the per-modality scalar s_M (init 1); False keeps it fixed at 1.", True)
    targets: dict[str, str] = _help(
        "Regex per modality (V, T, C, D) matched against full module names of attention blocks to adapt. "
        "Empty uses the defaults of `unitrans_ds.adapters.targets`.",
        factory=dict,
    )
    qasn_activation: str = _help(
        f"QASN filter activation sigma, one of {', '.join(QASN_ACTIVATIONS)}. sigmoid gives f(0)=0.5 and so "
        "breaks the identity at init.",
        "tanh",
    )
    qasn_decoder: bool = _help("Also run a QASN beside the text decoder (captioning / VQA).", False)
    mcam_weight: float = _help("lambda_mcam, weight of the MCAM rank-consistency loss.", 1.0)
    mcam_tau: float | None = _help("MCAM softmax temperature; null uses the ITC temperature, detached.", None)
    unfreeze: list[str] = _help("Extra module-name regexes to train (e.g. `itm_head`).", factory=list)
    freeze: list[str] = _help(
        "Module-name regexes kept frozen, applied after `unfreeze`: with `full`, trains all but these "
        "(e.g. `vision_model` for locked-image tuning).",
        factory=list,
    )
    lora_alpha: float = _help("LoRA alpha (scaling alpha/r) for the `lora` baseline.", 16.0)
    lora_dropout: float = _help("LoRA dropout for the `lora` baseline.", 0.0)
    train_temperature: bool = _help(
        "Train the ITC temperature (retrieval), at `optim.temperature_lr`, clamped to [0.001, 0.5] after each step. "
        "It starts from an original checkpoint's learned `temp`, else 0.07.",
        True,
    )

    @property
    def uses_vcra(self) -> bool:
        return self.name in ("vcra", "vcra+qasn", "vcra+mcam", "unitrans", "scaling-vectors")

    @property
    def uses_qasn(self) -> bool:
        return self.name in ("vcra+qasn", "unitrans")

    @property
    def uses_mcam(self) -> bool:
        return self.name in ("vcra+mcam", "unitrans")


@dataclass
class DataConfig:
    train_shards: str = _help(
        "Training shards with their manifest.json: a folder, or an http(s)://, s3:// or pipe: location "
        "(unitrans_ds/data/remote.py).",
        "shards/demo/image_b/train",
    )
    val_shards: str | None = _help(
        "Validation shards (as train_shards); null skips validation.", "shards/demo/image_b/val"
    )
    test_shards: str | None = _help(
        "Test shards (as train_shards); null skips the final test.", "shards/demo/image_b/test"
    )
    num_workers: int = _help("DataLoader workers per rank.", 0)
    shuffle_buffer: int = _help("Samples in the WebDataset shuffle buffer.", 256)
    resampled: bool = _help("Sample shards with replacement (infinite stream cut by with_epoch).", False)
    max_words: int = _help("Captions are cut to this many words (30 image, 40 video; questions 50).", 30)
    num_frames: int = _help("Frames per video clip fed to the model.", 8)
    randaugment: bool = _help(
        "RandAugment(2, 5) in training, as BLIP (the paper configs set true). Off in the embedded demo default: "
        "its colour operations change the colours the scenes captions name.",
        False,
    )
    hflip: bool = _help(
        "Random horizontal flip in training. BLIP flips (the paper configs set true); the demo's captions say "
        "left/right, so the embedded default does not.",
        False,
    )
    min_scale: float = _help(
        "Smallest area fraction of the training random resized crop; BLIP (and LAVIS' `min_scale`): 0.5, which "
        "the paper configs set. 1 = no crop (the embedded demo's default): the scenes texts name positions and "
        "counts, which a crop moves or cuts away.",
        1.0,
    )
    answer_list: str | None = _help("VQA answer list (JSON list) for rank inference; null builds it from train.", None)
    dataset: str = _help("Data set name, used for the MLflow tag.", "scenes-b")
    max_skip_fraction: float = _help(
        "Training stops with an error once more than this fraction of the training samples (in the manifest) "
        "could not be read or decoded; the end-of-run summary lists every bad shard either way.",
        0.01,
    )

    def __post_init__(self) -> None:
        problems = []
        if self.num_workers < 0:
            problems.append(
                f"`data.num_workers` must be >= 0 (0 loads in the training process), got {self.num_workers}"
            )
        if not 0 < self.min_scale <= 1:
            problems.append(f"`data.min_scale` must be in (0, 1] (BLIP: 0.5; 1 = no crop), got {self.min_scale}")
        if not 0 <= self.max_skip_fraction <= 1:
            problems.append(f"`data.max_skip_fraction` must be in [0, 1], got {self.max_skip_fraction}")
        if problems:
            raise ValueError("\n".join(problems))


@dataclass
class OptimConfig:
    lr: float = _help(
        "Peak learning rate (1e-2 suits the VCRA vectors of the demo; the paper configs set their own).", 1e-2
    )
    weight_decay: float = _help("AdamW weight decay (not applied to vectors, scalars and the temperature).", 0.05)
    betas: list[float] = _help("AdamW betas.", factory=lambda: [0.9, 0.999])
    eps: float = _help("AdamW epsilon.", 1e-8)
    warmup_steps: int = _help("Linear warmup steps before the cosine decay.", 10)
    min_lr_ratio: float = _help("Cosine floor as a fraction of the peak lr.", 0.0)
    clip_grad: float = _help("Gradient-norm clipping; 0 disables.", 1.0)
    temperature_lr: float = _help(
        "Peak lr of the ITC temperature, its own parameter group (no weight decay, same warmup/cosine schedule). "
        "BLIP fine-tunes `temp` with its backbone lr (init_lr 1e-5 for ViT-B COCO/Flickr retrieval), not at an "
        "adapter's lr; after every step it is clamped to [0.001, 0.5] in place.",
        1e-5,
    )
    qasn_lr: float | None = _help(
        "Peak lr of QASN's vectors (their own group, no weight decay, same schedule); null = `optim.lr`.", None
    )

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"`optim.lr` must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"`optim.betas` must be two numbers in [0, 1), e.g. [0.9, 0.999], got {self.betas}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            problems.append(f"`optim.eps` must be a positive number, got {self.eps}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"`optim.weight_decay` must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            problems.append(f"`optim.warmup_steps` must be >= 0 (0 = no warmup), got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"`optim.min_lr_ratio` must be in [0, 1], got {self.min_lr_ratio}")
        if not (math.isfinite(self.clip_grad) and self.clip_grad >= 0):
            problems.append(f"`optim.clip_grad` must be >= 0 (0 disables), got {self.clip_grad}")
        if self.qasn_lr is not None and not (math.isfinite(self.qasn_lr) and self.qasn_lr > 0):
            problems.append(f"`optim.qasn_lr` must be a positive number or null (= optim.lr), got {self.qasn_lr}")
        if problems:
            raise ValueError("\n".join(problems))


@dataclass
class TrainConfig:
    epochs: int = _help(
        "Passes over the training set (1 for the embedded demo: 150 steps of 16 over 600 images x 4 captions).", 1
    )
    max_steps: int | None = _help("Stop after this many optimizer steps (overrides epochs when smaller).", None)
    global_batch_size: int = _help("Samples per optimizer step over all ranks.", 16)
    micro_batch_size: int = _help(
        "Samples per forward pass on one rank; global = micro x accumulation x ranks (8 suits 1 or 2 ranks).", 8
    )
    precision: str = _help(f"One of {', '.join(PRECISIONS)}; auto = bf16 where supported, else fp32.", "auto")
    seed: int = _help("Seed for data order, dropout and initialisation.", 42)
    cpu_threads: int = _help(
        "Torch CPU threads per rank for the math. Fixed (default 1) so a run gives the same numbers and "
        "bit-identical adapters whatever the core count or OMP_NUM_THREADS; 0 = split the cores between the "
        "local ranks (faster on a big CPU, reproducible only on the same machine). CUDA kernels ignore it.",
        1,
    )
    output_dir: str = _help("Run folder: resolved config, checkpoints, adapter exports, metrics fallback.", "runs/demo")
    eval_every: int = _help("Evaluate on the validation split every N steps; 0 = only at the end.", 0)
    save_every: int = _help(
        "Write a resume checkpoint every N steps; 0 = only at the end (and on SIGTERM, at the next step).", 0
    )
    keep_last: int = _help("Resume checkpoints to keep.", 2)
    best_metric: str | None = _help(
        "Validation metric that selects the best adapter (higher is better), one the task's evaluation returns "
        "(any case); null takes the task's default (`r_mean`, `CIDEr`, `overall`: `default_best_metric` of its "
        "class in unitrans_ds/tasks/).",
        None,
    )
    resume: str | None = _help("`auto` resumes from the latest checkpoint in output_dir; or a checkpoint folder.", None)
    log_every: int = _help("Log training metrics every N steps.", 5)
    grad_norms: bool = _help(
        "At every log step also log each loss part's gradient norm over the trainable parameters "
        "(train/grad_norm_itc, _itm, _mcam, ...): one extra backward per part at those steps; ZeRO stage < 3.",
        False,
    )
    zero_shot_eval: bool = _help("Evaluate before training, to report the before/after gain.", True)
    vqa_loss: str = _help(
        f"VQA answer loss, one of {', '.join(VQA_LOSSES)}. `blip` (BLIP's recipe): each unique answer weighted by "
        "count / number of answers (weights sum to 1), decoder loss with label smoothing 0.1. `soft-score`: "
        "weight min(1, count/3) (the VQA soft score), no label smoothing.",
        "blip",
    )
    label_smoothing: float = _help("Captioning: label smoothing of the LM loss.", 0.1)

    def __post_init__(self) -> None:
        if self.cpu_threads < 0:
            raise ValueError(
                f"`train.cpu_threads` must be >= 0 (1 = reproducible anywhere, 0 = all cores), got {self.cpu_threads}"
            )


@dataclass
class EvalConfig:
    k_test: int = _help("Retrieval: ITC candidates per query re-scored by ITM (256 COCO, 128 Flickr).", 16)
    itm_beta: float = _help("Retrieval: final score = ITM + beta * ITC.", 1.0)
    itm_score: str = _help(
        f"Retrieval: the ITM term of the final score, one of {', '.join(ITM_SCORES)}. `logit` (BLIP/LAVIS): the raw "
        "`itm_head(...)[:, 1]`; `prob`: softmax(itm_head(...))[:, 1].",
        "logit",
    )
    batch_size: int = _help("Evaluation batch size per rank.", 32)
    feature_chunk: int = _help("Retrieval: images whose token features are kept per chunk (half precision).", 256)
    num_beams: int = _help("Captioning: beams.", 3)
    max_length: int = _help("Captioning: longest caption in tokens.", 20)
    min_length: int = _help("Captioning: shortest caption in tokens.", 5)
    prompt: str = _help("Captioning prompt.", "a picture of ")
    vqa_inference: str = _help("VQA inference: `rank` over the answer list or `generate`.", "rank")
    vqa_k_test: int = _help("VQA rank inference: candidates re-scored by full-answer likelihood.", 128)
    vqa_evaluator: str = _help(
        f"VQA accuracy, one of {', '.join(VQA_EVALUATORS)}. `lavis-2017`: the v2.0 release's vqaEval.py that LAVIS "
        "runs (published BLIP numbers): the prediction is always normalized, the ground-truth answers get "
        "punctuation processing only when they differ. `official-2021`: the 2021 GT-Vision-Lab update: both are "
        "fully normalized, only when the answers differ.",
        "lavis-2017",
    )
    precision: str = _help(
        f"Weights evaluation runs on, one of {', '.join(EVAL_PRECISIONS)}, the same for every ZeRO stage. `fp32`: a "
        "full-precision model (the training model itself when it trains in fp32, else a copy refreshed with the "
        "trained tensors), as BLIP evaluates; `train`: the training precision (bf16/fp16 weights).",
        "fp32",
    )


@dataclass
class TrackingConfig:
    experiment: str = _help("MLflow experiment name.", "unitrans-demo")
    run_name: str | None = _help("MLflow run name; default `<task>-<method>-<dataset>`.", None)
    tracking_uri: str | None = _help(
        "MLflow tracking URI; null honours MLFLOW_TRACKING_URI, else MLflow's own default (where `mlflow ui` looks).",
        None,
    )
    enabled: bool = _help("Log to MLflow at all.", True)
    system_metrics_interval_s: float | None = _help(
        "Seconds between system metric samples (CPU, memory, disk, network, GPU: `system/*`); null for none.", 10.0
    )
    finish_timeout_s: float = _help(
        "At the end of a run, how long to keep retrying an unreachable MLflow before leaving the rest to "
        "`python -m unitrans_ds.tracking.sync RUN_DIR`.",
        120.0,
    )


@dataclass
class Config:
    task: str = _help("Task: a name in the task registry (unitrans_ds/tasks/registry.py).", "retrieval")
    video: bool = _help("Video mode of retrieval / VQA: clips of `data.num_frames` frames.", False)
    model: ModelConfig = _help("Backbone.", factory=ModelConfig)
    method: MethodConfig = _help("Adaptation method.", factory=MethodConfig)
    data: DataConfig = _help("Shards and loading.", factory=DataConfig)
    optim: OptimConfig = _help("Optimizer and schedule.", factory=OptimConfig)
    train: TrainConfig = _help("Training loop.", factory=TrainConfig)
    eval: EvalConfig = _help("Evaluation protocols.", factory=EvalConfig)
    tracking: TrackingConfig = _help("MLflow tracking.", factory=TrackingConfig)
