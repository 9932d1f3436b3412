"""unitrans_ds: UniTrans parameter-efficient transfer learning for BLIP, trained with DeepSpeed."""

__version__ = "0.1.0"
