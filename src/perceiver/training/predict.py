"""`perceiver predict MODEL_DIR FILE...`: run a saved or converted model on files.

- classification over images (`task.json` has `image_shape`): prints the top-k labels of every image;
- classification over text (a model taking `input_ids`): every file is one text, UTF-8 bytes;
- classification over audio (`task.json` has `num_samples`, or the files are sound files): every file is decoded,
  mixed to mono, resampled to the training `sample_rate` and cut to `num_samples` as in validation (the centre of a
  longer file, a shorter one padded and masked);
- classification over video (`task.json` has `video_shape`, or the files are videos): `num_frames` frames spread
  over each video (the middle of equal segments, as in validation), resized to the training frame size;
- classification over point clouds: every `.off` mesh is sampled as `ModelNetDataModule` samples its clouds
  (`num_points` from task.json, a fixed seed);
- optical flow: FILEs are image pairs (frame 1, frame 2, frame 1', frame 2', ...); writes a colour-coded flow PNG
  per pair (`-o`, default `flow.png` / `flow-<i>.png`).

The model folder is a local folder `perceiver.from_pretrained` loads (not a Hub id); `task.json` (written by
`perceiver fit`) tells the task, input shape and class names. Without it the model's class tells the task (an
optical-flow model: flow), its config the image size where it has one; else pass `--task` and, for images,
`--image-size H W [--channels C]`.
Images are read as training reads them (resized to the image size, values in [0, 1]); a transformers folder with a
`preprocessor_config.json` (and no task.json `image_shape`, `--image-size` or `--channels`) is preprocessed as
transformers' pipeline does it instead (`perceiver.ImageProcessor.from_dict`: centre crop, bicubic resize, ImageNet
normalization), which is what DeepMind's classifiers were trained on. Texts are cut to the model's `max_seq_len`.
Files go through the model `BATCH_SIZE` (16) at a time, their lines printed as each batch is done.
Files of another kind than the model takes (by suffix: a text file for an image classifier, an image for a text
classifier) are an error naming both; so is a model predict does not run (a causal language model: use
`perceiver generate`; masked LMs, multimodal autoencoders, resamplers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceiver.data._common import IMAGE_EXTENSIONS
from perceiver.data.audio_folder import AUDIO_EXTENSIONS
from perceiver.data.text_files import read_text_file  # as training reads text files
from perceiver.data.video_folder import VIDEO_EXTENSIONS
from perceiver.image_processing import ImageProcessor
from perceiver.loading import DTYPE_NAMES
from perceiver.training.geometry import config_value
from perceiver.training.predict_inputs import (
    classify_audio,
    classify_images,
    classify_points,
    classify_texts,
    classify_videos,
    image_geometry,
    label_names,
    load_image,
    predict_flow,
    read_rgb,
    transformers_preprocessor,
)

__all__ = [
    "classify_audio",
    "classify_images",
    "classify_points",
    "classify_texts",
    "classify_videos",
    "image_geometry",
    "label_names",
    "load_image",
    "load_model_dir",
    "model_inputs",
    "predict_flow",
    "predict_main",
]

#: files per forward pass: `perceiver predict` on a folder of thousands of photos runs them a batch at a time
BATCH_SIZE = 16

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst", ".json", ".jsonl", ".csv", ".py")

#: the kind of files each kind of input is read from, by suffix (lower case); other suffixes are not judged
FILE_KINDS = {
    "image": IMAGE_EXTENSIONS,
    "text": TEXT_SUFFIXES,
    "audio": AUDIO_EXTENSIONS,
    "video": VIDEO_EXTENSIONS,
    "point cloud": (".off",),
}

#: `model_type` -> (what the model is, the kind of input it takes) for the models `perceiver predict` runs
PREDICTED = {
    "perceiver-image-classifier": ("an image classifier", "image"),
    "perceiver-text-classifier": ("a text classifier", "text"),
    "perceiver-audio-classifier": ("an audio classifier", "audio"),
    "perceiver-video-classifier": ("a video classifier", "video"),
    "perceiver-optical-flow": ("an optical-flow model", "image"),
    "perceiver-point-cloud-classifier": ("a point-cloud classifier", "point cloud"),
    "perceiver": ("a classic Perceiver", None),  # its input_axis tells (`model_inputs`)
}
#: the same for the models it does not run
NOT_PREDICTED = {
    "perceiver-ar": ("a causal language model", "text"),
    "perceiver-masked-lm": ("a masked language model", "text"),
    "perceiver-token-classifier": ("a token classifier", "text"),
    "perceiver-question-answering": ("a question-answering model", "text"),
    "lucidrains-perceiver-lm": ("a perceiver-pytorch language model", "text"),
    "perceiver_multimodal_autoencoding": ("a multimodal autoencoder", "video + audio + label"),
    "perceiver-resampler": ("a Perceiver Resampler", "media feature"),
    "lucidrains-perceiver-io": ("a perceiver-pytorch Perceiver IO", None),
    "lucidrains-perceiver-block": ("a perceiver-pytorch Perceiver block", None),
}


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (`--top-k`, `--image-size`, ...), else argparse's error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def model_inputs(model: torch.nn.Module) -> tuple[str, str | None, bool]:
    """`(what the model is, e.g. "an image classifier (PerceiverForImageClassification)", the kind of input it takes:
    "image", "text", "audio", "video", ... or None when its class does not tell, whether perceiver predict runs it)`.
    A classic `Perceiver` takes images when `input_axis == 2`; for other classic models task.json tells."""
    model_type = getattr(model, "model_type", "")  # "" for a model without one: in neither table
    what, kind = PREDICTED.get(model_type) or NOT_PREDICTED.get(model_type) or ("a model", None)
    if model_type == "perceiver" and config_value(getattr(model, "config", None), "input_axis") == 2:
        kind = "image"
    return f"{what} ({type(model).__name__})", kind, model_type not in NOT_PREDICTED


def file_kind(path: str | Path) -> str | None:
    """The kind of input a file holds by its suffix (`FILE_KINDS`): image, text, audio, video, or None."""
    suffix = Path(path).suffix.lower()
    return next((kind for kind, suffixes in FILE_KINDS.items() if suffix in suffixes), None)


def check_file_kinds(what: str, kind: str | None, files: list[str] | list[Path]) -> None:
    """`SystemExit("error: <what> takes <kind> files, got <file>")` for the first file whose suffix is of another
    known kind than `kind` (files of unknown suffixes are left to the decoder)."""
    if kind is None:
        return
    for f in files:
        got = file_kind(f)
        if got is not None and got != kind:
            article = "an" if got[0] in "aeiou" else "a"
            raise SystemExit(f"error: {what} takes {kind} files, got {f} ({article} {got} file)")


def load_model_dir(path: str | Path, dtype: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a folder (`perceiver.from_pretrained(path, dtype=dtype)`, eval mode: "auto" = the dtype it was
    saved in) and its `task.json` (empty dict if absent; `class_names` from the model's `id2label` where it has
    none, e.g. a converted transformers classifier)."""
    import perceiver
    from perceiver.labels import class_names

    path = Path(path)
    info_file = path / "task.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    from perceiver.lora import merge_lora

    model = perceiver.from_pretrained(path, dtype=dtype).eval()
    if not info.get("class_names") and (names := class_names(model)) is not None:
        info["class_names"] = names
    return merge_lora(model), info  # an adapter folder: with merged weights


def open_model_dir(path: str | Path, dtype: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """`load_model_dir` for the commands: a folder that holds no model (a run directory instead of its `model`
    folder) or a broken config is `SystemExit("error: ...")`, not a traceback."""
    try:
        return load_model_dir(path, dtype)
    except (ValueError, FileNotFoundError) as e:
        hint = ""
        if (Path(path) / "model" / "config.json").is_file():
            hint = f"; a run directory keeps its model in {Path(path) / 'model'}"
        raise SystemExit(f"error: {e}{hint}") from e


def predict_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="perceiver predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", help="model folder (save_pretrained / perceiver fit's RUN_DIR/model)")
    parser.add_argument("files", nargs="*", help="images, videos, sound files, text files, or image pairs for flow")
    parser.add_argument("--text", action="append", default=[], help="a text to classify (text classifiers; repeat it)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="labels per file (>= 1, default 5)")
    parser.add_argument("--task", choices=["classification", "optical-flow"], help="override task.json")
    parser.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), help="resize images to H x W")
    parser.add_argument("--channels", type=int, choices=[1, 3], help="1 = greyscale, 3 = RGB")
    parser.add_argument("--sample-rate", type=positive_int, help="audio: resample to HZ (default: task.json's)")
    parser.add_argument("--num-samples", type=positive_int, help="audio: clip length in samples (default: task.json's)")
    parser.add_argument("-o", "--output", help="flow PNG path (optical flow)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="auto", help="weights' dtype (default auto: as the model was saved)"
    )
    args = parser.parse_args(argv)
    if not args.files and not args.text:
        parser.error("expected files to predict (or --text TEXT for a text classifier), got none")

    model, info = open_model_dir(args.model_dir, args.dtype)
    what, kind, predicted = model_inputs(model)
    if not predicted:
        hint = ""
        if getattr(model, "model_type", None) == "perceiver-ar":
            hint = f"; continue a text with it: perceiver generate {args.model_dir} --prompt TEXT"
        elif getattr(model, "fill_mask", None) is not None:  # the masked LM: one [MASK] per byte to fill in
            hint = f'; fill in [MASK]s in Python: perceiver.from_pretrained("{args.model_dir}").fill_mask(text)'
        raise SystemExit(
            f"error: perceiver predict runs image, text, audio and video classifiers and optical-flow models; "
            f"{args.model_dir} holds {what}, which takes {kind or 'other'} inputs{hint}"
        )
    flow_model = getattr(model, "model_type", None) == "perceiver-optical-flow"
    task = args.task or info.get("task") or ("optical-flow" if flow_model else "classification")
    if task not in ("classification", "optical-flow"):
        raise SystemExit(f"error: perceiver predict supports classification and optical-flow models, got {task!r}")
    if (task == "optical-flow") != flow_model and getattr(model, "model_type", None) in PREDICTED:
        raise SystemExit(f"error: task {task!r} does not fit {what} in {args.model_dir}; leave out --task")
    files = [Path(f) for f in args.files]
    for f in files:
        if f.is_dir():
            raise SystemExit(f"error: expected files to predict, got the folder {f} (list its files: {f}/*)")
        if not f.is_file():
            raise SystemExit(f"error: file not found: {f}")
    check_file_kinds(what, kind, files)
    if args.text and kind != "text":
        raise SystemExit(
            f"error: --text is for text classifiers; {args.model_dir} holds {what}, which takes {kind or 'other'} inputs"
        )
    for text, top in zip(args.text, classify_texts(model, args.text, info, args.top_k) if args.text else []):
        print_top({"text": text}, top, args.json)
    if task == "optical-flow":
        try:
            _predict_flow_files(model, args, info)
        except (ValueError, FileNotFoundError) as e:  # an undecodable image, frames of another size
            raise SystemExit(f"error: {e}") from e
        return

    def takes(key: str | None, suffixes: tuple[str, ...]) -> bool:
        """task.json names this kind of input (`key`), or it names no image shape and every file has a suffix of it."""
        named = key is not None and key in info
        return named or ("image_shape" not in info and all(f.suffix.lower() in suffixes for f in files))

    # the model's kind of input decides where it tells (a text classifier reads `review` or `notes.log` as text)
    route = "image"
    if kind == "video" or takes("video_shape", VIDEO_EXTENSIONS):
        route = "video"
    elif kind == "audio" or takes("num_samples", AUDIO_EXTENSIONS):
        route = "audio"
    elif kind == "text" or takes(None, TEXT_SUFFIXES):
        route = "text"
    elif kind == "point cloud":
        route = "points"
    processor: ImageProcessor | None = None
    geometry: tuple[tuple[int, int], int] | None = None
    if route == "image":
        try:
            processor = transformers_preprocessor(args, info)
        except ValueError as e:  # a broken preprocessor_config.json
            raise SystemExit(f"error: {e}") from e
        if processor is None:
            geometry = image_geometry(info, model, args.image_size, args.channels)
    for start in range(0, len(files), BATCH_SIZE):  # bounded memory for a folder of files; printed as they come
        chunk = files[start : start + BATCH_SIZE]
        try:
            results = _classify(model, chunk, route, args, info, processor, geometry)
        except (ValueError, FileNotFoundError) as e:  # an undecodable file, names that do not fit the head
            raise SystemExit(f"error: {e}") from e
        for f, top in zip(chunk, results):
            print_top({"file": str(f)}, top, args.json)


def print_top(source: dict[str, str], top: list[tuple[str, float]], as_json: bool) -> None:
    """One line of labels and probabilities for `source` (`{"file": path}` or `{"text": text}`), or a JSON object."""
    if as_json:
        print(json.dumps({**source, "top": [{"label": n, "prob": round(p, 6)} for n, p in top]}))
    else:
        name = source.get("file") or repr(source["text"])
        print(f"{name}: " + "  ".join(f"{n} ({p:.3f})" for n, p in top))
    sys.stdout.flush()


def _classify(
    model: torch.nn.Module,
    files: list[Path],
    route: str,
    args: argparse.Namespace,
    info: dict[str, Any],
    processor: ImageProcessor | None,
    geometry: tuple[tuple[int, int], int] | None,
) -> list[list[tuple[str, float]]]:
    """The top-k labels of `files`, read as `route` says ("video", "audio", "text", "image": with `processor`, else
    resized to `geometry` `((H, W), C)`)."""
    if route == "video":
        return classify_videos(model, files, info, args.top_k, args.image_size)
    if route == "audio":
        return classify_audio(model, files, info, args.top_k, args.sample_rate, args.num_samples)
    if route == "text":
        return classify_texts(model, [read_text_file(f) for f in files], info, args.top_k)
    if route == "points":
        return classify_points(model, files, info, args.top_k)
    if processor is not None:
        pixels = processor([read_rgb(f, processor) for f in files])  # (B, 3, H, W)
        return classify_images(model, pixels.permute(0, 2, 3, 1), info.get("class_names"), args.top_k)
    assert geometry is not None
    hw, channels = geometry
    images = torch.from_numpy(np.stack([load_image(f, hw, channels) for f in files]))  # (B, H, W, C)
    return classify_images(model, images, info.get("class_names"), args.top_k)


def _predict_flow_files(model: torch.nn.Module, args: argparse.Namespace, info: dict[str, Any]) -> None:
    from perceiver.training.plots import save_flow_comparison

    if len(args.files) % 2:
        n = len(args.files)
        raise SystemExit(
            f"error: an optical-flow model takes image pairs (frame 1, frame 2, frame 1', frame 2', ...), got {n} "
            f"file{'s' if n > 1 else ''} ({' '.join(args.files)})"
        )
    size = (
        tuple(args.image_size) if args.image_size else None
    )  # the flow of the frames as they are (not the training crop)
    pairs = list(zip(args.files[0::2], args.files[1::2]))
    for i, (a, b) in enumerate(pairs):
        f1 = load_image(a, size, 3)
        f2 = load_image(b, f1.shape[:2], 3)
        flow = predict_flow(model, f1, f2)
        out = Path(args.output or "flow.png")
        if len(pairs) > 1:
            out = out.with_name(f"{out.stem}-{i}{out.suffix}")
        save_flow_comparison(torch.from_numpy(f1)[None], None, flow[None], out, titles=[f"{Path(a).name}"])
        speed = flow.norm(dim=-1)
        print(f"{a} -> {b}: flow {tuple(flow.shape[:2])}, mean {speed.mean():.2f} px, max {speed.max():.2f} px; {out}")
