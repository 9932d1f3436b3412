"""The HF processor files of a BLIP folder, so `BlipProcessor.from_pretrained(folder)` works on what we write.

`save_pretrained` of a model writes weights and config only; HF users expect `preprocessor_config.json` (image
size, resize, normalisation) and the tokenizer files beside them. Who calls it: `save_merged_pretrained`, the
`.pth` converter CLI and the demo pretraining, i.e. everything that writes a plain BLIP folder.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PretrainedConfig, PreTrainedTokenizerBase
from transformers.image_utils import PILImageResampling

try:  # transformers 5: the PIL backend, which needs no torchvision; it saves itself as "BlipImageProcessor"
    from transformers import BlipImageProcessorPil as BlipImageProcessor
except ImportError:  # transformers 4
    from transformers import BlipImageProcessor

from ..cli import ArgumentParser
from ..data.transforms import CLIP_MEAN, CLIP_STD

PREPROCESSOR_NAME = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")


def blip_image_processor(image_size: int) -> BlipImageProcessor:
    """BLIP's evaluation preprocessing at `image_size`: bicubic resize to a square, /255, CLIP mean/std.

    The same normalisation as our loaders (`data.transforms`); BLIP's checkpoints on the hub use these values.
    """
    return BlipImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


def has_tokenizer_files(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def save_processor(folder: str | Path, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase | None) -> Path:
    """Write `preprocessor_config.json` for the model `config`'s image size into `folder`, and the tokenizer files.

    With `tokenizer=None` the folder must already hold tokenizer files (e.g. a folder written before); the
    processor is then completed around them. Raises ValueError when neither is there, since a processor without a
    tokenizer cannot be loaded.
    """
    folder = Path(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    elif not has_tokenizer_files(folder):
        raise ValueError(
            f"{folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}): pass the tokenizer so that "
            "BlipProcessor.from_pretrained can load the folder"
        )
    # The image processor's own file, not BlipProcessor.save_pretrained: transformers 5 folds it into
    # processor_config.json, which transformers 4 and other tools (AutoImageProcessor users) do not read.
    blip_image_processor(int(config.vision_config.image_size)).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    """CLI: complete BLIP folders written before processor files were written (`config.json` + tokenizer files)."""

    from transformers import BlipConfig

    p = ArgumentParser(
        prog="python -m unitrans_ds.models.processor",
        description="Write preprocessor_config.json (image size from config.json, BLIP's mean/std) into BLIP folders.",
    )
    p.add_argument("folders", nargs="+", help="save_pretrained folders holding config.json and tokenizer files")
    args = p.parse_args(argv)
    for folder in args.folders:
        if not (Path(folder) / "config.json").is_file():
            p.exit(2, f"error: {folder} holds no config.json; give a save_pretrained folder\n")
        try:
            save_processor(folder, BlipConfig.from_pretrained(folder), None)
        except ValueError as err:
            p.exit(2, f"error: {err}\n")
        print(f"wrote {Path(folder) / PREPROCESSOR_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
