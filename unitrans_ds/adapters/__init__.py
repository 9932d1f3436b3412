"""UniTrans adapters for HuggingFace BLIP: VCRA, QASN, and the entry point that prepares a model for a method."""

from .bank import SharedBank
from .export import AdapterMismatchError, load_adapter, read_adapter_config, save_adapter, save_merged_pretrained
from .prepare import (
    ParamReport,
    adapter_layers,
    has_side_network,
    merge_adapters,
    mergeable_layers,
    parameter_report,
    prepare_model,
    task_of,
    trainable_state_dict,
    unmerge_adapters,
    zero3_register_external,
)
from .qasn import QASNLayer
from .state import UniTransState, get_state
from .targets import DEFAULT_PATTERNS, TargetError, find_targets
from .vcra_layer import VCRALinear

__all__ = [
    "DEFAULT_PATTERNS",
    "AdapterMismatchError",
    "ParamReport",
    "QASNLayer",
    "SharedBank",
    "TargetError",
    "UniTransState",
    "VCRALinear",
    "adapter_layers",
    "find_targets",
    "get_state",
    "has_side_network",
    "load_adapter",
    "merge_adapters",
    "mergeable_layers",
    "parameter_report",
    "prepare_model",
    "read_adapter_config",
    "save_adapter",
    "save_merged_pretrained",
    "task_of",
    "trainable_state_dict",
    "unmerge_adapters",
    "zero3_register_external",
]
