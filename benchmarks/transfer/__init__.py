"""The offline demo suite on the synthetic `shapes` data set.

- `pretrain`: full training of a tiny BLIP per task class on domain A, saved as plain HF folders in
  `pretrained/tiny-blip-{retrieval,captioning,vqa}/` (the "pretrained" backbones the demos adapt).
- `transfer`: the transfer benchmark: every method of SPEC section 7 on every demo task, several seeds, on
  domain B; a Markdown/CSV table, one MLflow run per run, and a rank sweep plot.
- `zero_shot`: evaluation of a backbone without training (the `frozen` row, and the pretraining sanity check).

Run `python -m unitrans_ds.demo.pretrain --help` and `python -m unitrans_ds.demo.transfer --help`.
"""
