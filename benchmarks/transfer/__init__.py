"""The transfer suite on the synthetic `scenes` world (experiments, not library).

- `pretrain`: full training of a tiny BLIP per task class on domain A, saved as plain HF folders in
  `pretrained/scenes/tiny-blip-{retrieval,captioning,vqa}/` (the backbones the demo and the benchmark adapt).
- `run` (`python -m benchmarks.transfer`): the transfer benchmark: every method on every task, learning rates
  chosen on domain B val, several seeds on domain B test, paired statistics, a rank sweep.
- `zero_shot`: evaluation of a backbone without training (the `frozen` row, and the pretraining sanity check).

Run `python -m benchmarks.transfer.pretrain --help` and `python -m benchmarks.transfer --help` from the repository
root.
"""
