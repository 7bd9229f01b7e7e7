"""The ``gsva`` command: ``gsva train`` (:mod:`gsva.training.command`), ``gsva eval``
(:mod:`gsva.evaluation.command`), ``gsva synth`` (synthetic gRefCOCO-format data), ``gsva standins`` (tiny
stand-ins of every pre-training dataset in the official layout), ``gsva predict`` (one image, one query),
``gsva chat`` (a terminal conversation about one image, answers streamed),
``gsva score`` (metrics recomputed from a saved ``predictions.jsonl``), ``gsva export`` (a self-contained
checkpoint, LoRA optionally merged) and ``gsva convert`` (released weights into our format).

Bad input exits with status 2 and one ``error: ...`` line on stderr, no traceback (:mod:`gsva.errors`); anything
else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _synth(args: argparse.Namespace) -> int:
    from .data.synth import write_synthetic_grefcoco

    counts = write_synthetic_grefcoco(args.out, seed=args.seed, num_images=args.images,
                                      per_image=args.expressions_per_image, png_share=args.png_share)
    sys.stdout.write(f"wrote {sum(counts.values())} images to {args.out} "
                     f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})\n")
    return 0


def _standins(args: argparse.Namespace) -> int:
    from .data.standins import write_paper_standins

    counts = write_paper_standins(args.out, seed=args.seed, images=args.images, refer_images=args.refer_images)
    sys.stdout.write(f"wrote tiny stand-ins of {len(counts)} datasets to {args.out} "
                     f"({', '.join(f'{k}: {v}' for k, v in counts.items())} images)\n")
    return 0


def _print_targets(targets: list[dict]) -> None:
    for t in targets:
        sys.stdout.write(f"  {t['status']}  {t['score']:.3f}  {t['phrase']}  {t['mask'] or ''}\n")


def parse_points(text: str) -> tuple[list[tuple[float, float]], list[int]]:
    """``"x,y,1;x,y,0"`` -> ([(x, y), ...], [label, ...]): clicks in pixels of the original image, (x, y), label 1
    positive (the default when a click has only x,y) or 0 negative. Raises InputError."""
    from .errors import InputError

    points, labels = [], []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        fields = [f.strip() for f in part.split(",")]
        try:
            if len(fields) not in (2, 3):
                raise ValueError
            x, y = float(fields[0]), float(fields[1])
            label = int(fields[2]) if len(fields) == 3 else 1
        except ValueError:
            raise InputError(f"--points: click {i} is {part.strip()!r}; write x,y or x,y,label (label 1 positive, "
                             "0 negative), clicks separated by ';'") from None
        points.append((x, y))
        labels.append(label)
    if not points:
        raise InputError("--points holds no click; write e.g. \"120,80,1;40,30,0\"")
    return points, labels


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` pixels of the original image -> a tuple of 4 floats. Raises InputError."""
    from .errors import InputError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"--box must be x0,y0,x1,y1 in pixels, got {text!r}")
    return values


def refine_first_target(predictor, answer, points, labels, box):
    """``answer`` with its first target refined by the clicks/box (:meth:`GSVAPredictor.refine`); a first target
    the model rejected, or an answer without targets, starts a mask from the clicks alone. Returns a new Answer."""
    from dataclasses import replace

    from .inference import Answer

    if not answer.targets:
        refined = predictor.refine(None, points=points, point_labels=labels, box=box)
        return Answer(text=answer.text, targets=[replace(refined, phrase="(clicks)")])
    first = answer.targets[0]
    start = first if first.refine_state is not None else None
    refined = predictor.refine(start, points=points, point_labels=labels, box=box)
    return Answer(text=answer.text, targets=[replace(refined, phrase=first.phrase)] + list(answer.targets[1:]))


def _predict(args: argparse.Namespace) -> int:
    from .answer_files import write_answer
    from .errors import InputError
    from .images import load_image
    from .inference import Answer, GSVAPredictor

    points, labels = parse_points(args.points) if args.points is not None else (None, None)
    box = parse_box(args.box) if args.box is not None else None
    if args.query is None and points is None and box is None:
        raise InputError("give --query, or --points/--box to segment from clicks alone")
    image = load_image(args.image)
    predictor = GSVAPredictor.from_pretrained(args.model, dtype=_dtype(args.dtype), quantization=_quant(args))
    predictor.set_image(image)
    answer = predictor.ask(args.query) if args.query is not None else Answer(text="", targets=[])
    if points is not None or box is not None:
        answer = refine_first_target(predictor, answer, points, labels, box)
    record = write_answer(image, answer, Path(args.out))
    if answer.text:
        sys.stdout.write(answer.text + "\n")
    if points is not None or box is not None:
        clicks = len(points or ())
        sys.stdout.write(f"refined {answer.targets[0].phrase!r} with {clicks} click{'s' if clicks != 1 else ''}"
                         f"{' and a box' if box else ''}\n")
    _print_targets(record["targets"])
    return 0


def _segment_like(args: argparse.Namespace) -> int:
    from .answer_files import write_segment_like
    from .errors import InputError
    from .images import load_image
    from .inference import GSVAPredictor

    if len(args.example) != len(args.example_mask):
        raise InputError(f"{len(args.example)} --example images but {len(args.example_mask)} --example-mask files: "
                         "give one mask per example, in the same order")
    examples = [(load_image(image), str(mask)) for image, mask in zip(args.example, args.example_mask)]
    target = load_image(args.image)
    predictor = GSVAPredictor.from_pretrained(args.model, dtype=_dtype(args.dtype))
    result = predictor.segment_like(examples, target, method=args.method)
    names = [{"image": str(i), "mask": str(m)} for i, m in zip(args.example, args.example_mask)]
    write_segment_like(target, result, Path(args.out), names)
    area = int(result.mask.sum())
    sys.stdout.write(f"{result.method}: {len(result.prompts)} part{'s' if len(result.prompts) != 1 else ''}, "
                     f"{area} pixels ({100 * area / result.mask.size:.1f} % of the image), score {result.score:.2f}; "
                     f"wrote {Path(args.out) / 'result.json'}\n")
    return 0


def _chat(args: argparse.Namespace) -> int:
    """Questions from standard input about one image; each answer streams to standard output and its masks go to
    ``out``/turn_NNN/. ``/new`` starts a new conversation, ``/quit`` (or end of input) ends."""
    from .answer_files import write_answer
    from .images import load_image
    from .inference import GSVAPredictor, QuestionError

    image = load_image(args.image)
    predictor = GSVAPredictor.from_pretrained(args.model, dtype=_dtype(args.dtype), quantization=_quant(args))
    predictor.set_image(image)
    interactive = sys.stdin.isatty()
    if interactive:
        sys.stdout.write("Ask about the image (several targets at once: 'What are A, B, C in this image?'); "
                         "/new starts over, /quit ends.\n")
    turn = 0
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        question = line.strip()
        if not question:
            continue
        if question == "/new":
            predictor.reset()
            sys.stdout.write("(new conversation)\n")
            continue
        shown = [""]

        def stream(text: str) -> None:  # print what the text added (a rewritten start is printed again whole)
            new = text[len(shown[0]):] if text.startswith(shown[0]) else "\n" + text
            shown[0] = text
            sys.stdout.write(new)
            sys.stdout.flush()

        try:
            answer = predictor.ask(question, on_text=stream)
        except QuestionError as exc:  # the session goes on
            sys.stderr.write(f"error: {exc}\n")
            continue
        sys.stdout.write("\n")
        turn += 1
        out = Path(args.out) / f"turn_{turn:03d}"
        _print_targets(write_answer(image, answer, out)["targets"])
        sys.stdout.write(f"  (masks in {out})\n")
        sys.stdout.flush()


def _score(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .evaluation.report import format_table, write_calibration
    from .scoring import DEFAULT_SCORERS, SCORERS, read_predictions, score_samples

    metrics_path = args.predictions.parent / "metrics.json"  # written next to it by `gsva eval`
    try:
        saved = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    except (ValueError, OSError) as exc:  # truncated or not UTF-8
        raise InputError(f"{metrics_path}: not a readable metrics.json ({exc}); pass --dataset and --scorer, or remove "
                         "it") from None
    dataset = args.dataset or saved.get("dataset")
    dmmi_resize = args.dmmi_resize if args.dmmi_resize is not None else saved.get("dmmi_resize")
    if args.scorer:
        names = tuple(args.scorer.split(","))
    elif saved.get("scorers"):
        names = tuple(saved["scorers"])
    else:
        names = DEFAULT_SCORERS.get(dataset or "grefcoco", ("rela",))
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise InputError(f"unknown scorer(s) {', '.join(unknown)}; known: {', '.join(SCORERS)}")
    samples = (sample for _, sample in read_predictions(args.predictions))  # streamed: masks are decoded one by one
    result = score_samples(samples, names, dataset, dmmi_resize)
    sys.stdout.write(format_table(result) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if args.calibrate is not None:
        args.calibrate.mkdir(parents=True, exist_ok=True)
        table = write_calibration((sample for _, sample in read_predictions(args.predictions)), args.calibrate,
                                  str(args.predictions))
        sys.stdout.write(f"reject threshold maximising gIoU (rela): {table['best']['threshold']:.2f} "
                         f"(gIoU {100 * table['best']['gIoU']:.2f}); wrote {args.calibrate}/calibration.json, "
                         "calibration.png\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .convert.export import export_model, parse_size

    shard = parse_size(args.max_shard_size) if args.max_shard_size else None
    summary = export_model(args.model, args.out, merge=args.merge_lora, max_shard_bytes=shard,
                           dtype=_dtype(args.dtype) if args.dtype else None, replace=args.replace_weights)
    sys.stdout.write(f"wrote {summary['out']}: {len(summary['weight_files'])} weight file(s)"
                     + (f", {summary['replaced_tensors']} tensors replaced" if args.replace_weights else "")
                     + (f", {summary['merged_lora_layers']} LoRA layers merged" if args.merge_lora else "") + "\n")
    return 0


def _convert_llava(args: argparse.Namespace) -> int:
    from .convert.llava import convert_llava_v1

    summary = convert_llava_v1(args.src, args.vision_tower, args.out)
    sys.stdout.write(f"wrote {args.out}: {summary['tensors']} tensors ({summary['vision'].projector_type} projector, "
                     f"{summary['text'].num_hidden_layers} LLaMA layers); dropped knowingly: "
                     f"{len(summary['dropped'])} keys (listed in {args.out}/gsva_llava.json)\n")
    return 0


def _convert_gsva(args: argparse.Namespace) -> int:
    from .convert.gsva_release import convert_gsva_release

    report = convert_gsva_release(args.weights, args.llava, args.sam, args.out, args.config, args.vision_tower)
    sys.stdout.write(f"wrote {args.out}: LoRA rank {report['lora_rank']}, {report['mapped']} tensors from the release, "
                     f"{len(report['from_base'])} from the base, {len(report['knowingly_dropped'])} dropped knowingly "
                     f"(report: {args.out}/conversion.json)\n")
    return 0


def _quant(args: argparse.Namespace) -> str | None:
    return "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None


def add_quantization_flags(parser: argparse.ArgumentParser) -> None:
    """``--load-in-8bit`` / ``--load-in-4bit`` (mutually exclusive, off by default)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--load-in-8bit", action="store_true", help="language model in 8 bit (bitsandbytes LLM.int8)")
    group.add_argument("--load-in-4bit", action="store_true", help="language model in 4 bit (bitsandbytes NF4, "
                       "double quantisation)")


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsva", description="GSVA: generalized segmentation via multimodal LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("train", "train from a YAML recipe (gsva train --help)"),
                       ("eval", "evaluate on a benchmark (gsva eval --help)")):
        p = sub.add_parser(name, help=what, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("synth", help="write a synthetic GRES dataset in gRefCOCO format")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--expressions-per-image", type=int, default=8)
    p.add_argument("--png-share", type=float, default=0.5,
                   help="share of images written as PNG (the rest JPEG, quality 70-95); default 0.5")
    p.set_defaults(func=_synth)
    p = sub.add_parser("standins", help="write tiny stand-ins of every pre-training dataset in the official layout")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=24, help="images per semseg/VQA/ReasonSeg dataset")
    p.add_argument("--refer-images", type=int, default=120, help="gRefCOCO images (10 %% are val)")
    p.set_defaults(func=_standins)
    p = sub.add_parser("predict", help="segment the targets a query names in one image")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--query", default=None, help="the question (optional with --points/--box: a mask from clicks)")
    p.add_argument("--points", default=None, metavar='"x,y,1;x,y,0"',
                   help="clicks that refine the first target, pixels of the image, label 1 positive / 0 negative")
    p.add_argument("--box", default=None, metavar="x0,y0,x1,y1", help="a box that refines the first target, pixels")
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the shipped gsva-smol)")
    p.add_argument("--out", type=Path, default=Path("gsva_out"))
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    add_quantization_flags(p)
    p.set_defaults(func=_predict)
    p = sub.add_parser("segment-like", help="segment in an image the things like those example masks mark")
    p.add_argument("--example", action="append", required=True, type=Path, help="an example image (repeatable)")
    p.add_argument("--example-mask", action="append", required=True, type=Path,
                   help="its mask (PNG, white or opaque = the object), one per --example, in order")
    p.add_argument("--image", required=True, type=Path, help="the image to segment")
    p.add_argument("--method", choices=["trained", "training_free"], default=None,
                   help="default: trained when the model has the prompt generator, else training_free")
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the shipped gsva-smol)")
    p.add_argument("--out", type=Path, default=Path("gsva_like"))
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.set_defaults(func=_segment_like)
    p = sub.add_parser("chat", help="a terminal chat about one image: questions from standard input, streamed "
                       "answers, masks written after each")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the shipped gsva-smol)")
    p.add_argument("--out", type=Path, default=Path("gsva_chat"), help="masks go to OUT/turn_NNN/")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    add_quantization_flags(p)
    p.set_defaults(func=_chat)
    p = sub.add_parser("convert", help="convert released checkpoints into GSVA's format")
    conv = p.add_subparsers(dest="what", required=True)
    c = conv.add_parser("llava", help="an original LLaVA-v1 (haotian-liu LlavaLlamaForCausalLM) checkpoint + CLIP")
    c.add_argument("--src", required=True, type=Path, help="the LLaVA-v1 folder (config.json, weights, tokenizer)")
    c.add_argument("--vision-tower", required=True, type=Path, help="HF CLIP folder (openai/clip-vit-large-patch14)")
    c.add_argument("--out", required=True, type=Path)
    c.set_defaults(func=_convert_llava)
    c = conv.add_parser("gsva", help="released GSVA/LISA weights (.bin) into a GSVA checkpoint")
    c.add_argument("--weights", required=True, type=Path, help="e.g. gsva-7b-ft-gres.bin")
    c.add_argument("--llava", required=True, type=Path, help="the LLaVA base it was trained from: HF format, "
                   "converted by `gsva convert llava`, or an original LLaVA-v1 folder (with --vision-tower)")
    c.add_argument("--vision-tower", type=Path, default=None, help="HF CLIP folder, for an original LLaVA-v1 --llava")
    c.add_argument("--sam", required=True, type=Path, help="e.g. sam_vit_h_4b8939.pth")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--config", default="gsva-vicuna-7b", help="named architecture (gsva-vicuna-7b, gsva-vicuna-13b, "
                   "gsva-llama2-13b) or a GSVA config.json; the LoRA rank is read from the file")
    c.set_defaults(func=_convert_gsva)
    p = sub.add_parser("export", help="write a self-contained checkpoint (optionally with LoRA merged)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--merge-lora", action="store_true", help="fold LoRA into the base weights (default: keep it)")
    p.add_argument("--max-shard-size", default=None, help="split the weights into shards of at most this size "
                   "(e.g. 5GB); default: one file")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast the weights (default: keep)")
    p.add_argument("--replace-weights", action="append", type=Path, default=[], metavar="FILE",
                   help="a safetensors file (e.g. stage (a2)'s crop_reader.safetensors) whose tensors overwrite the "
                   "model's: same keys, same shapes; repeatable")
    p.set_defaults(func=_export)
    p = sub.add_parser("score", help="recompute metrics from a predictions.jsonl written by gsva eval")
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--scorer", default=None, help="comma-separated: rela, gsva, dmmi, lisa, rec "
                   "(default: the dataset's scorers)")
    p.add_argument("--dataset", default=None, help="dataset the file is from (gsva scorer: refzom adds no union "
                   "for false negatives; picks the default scorers). Default: read from the metrics.json beside it")
    p.add_argument("--dmmi-resize", type=int, default=None, help="DMMI scoring size (official Ref-ZOM: 480)")
    p.add_argument("--calibrate", type=Path, default=None, metavar="DIR",
                   help="also sweep the reject threshold and write calibration.json/.png to DIR")
    p.add_argument("--json", action="store_true", help="also print the full results as JSON")
    p.set_defaults(func=_score)
    return parser


def run_stage_cli(description: str, make_trainer, argv: list[str] | None = None) -> int:
    """Entry of the stage scripts (``train/pretrain_vision.py``, ``train/pretrain_sam.py``): ``--config FILE
    [key=value ...]`` -> ``make_trainer(config_path, overrides).run()`` (a
    :class:`gsva.training.stage_loop.StageTrainer`).
    User errors (:mod:`gsva.errors`: bad recipe, annotations, missing files) exit 2 with one ``error:`` line;
    anything else shows its traceback."""
    from .errors import report_user_errors

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def run() -> int:
        sys.stdout.write(f"wrote {make_trainer(args.config, args.overrides).run()}\n")
        return 0

    return report_user_errors(run)


#: subcommands whose arguments go unparsed to the ``main(argv)`` of a module
FORWARDED = {"train": "gsva.training.command", "eval": "gsva.evaluation.command"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub, which reads it once
    if argv and argv[0] in FORWARDED:
        import importlib

        return importlib.import_module(FORWARDED[argv[0]]).main(argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a harmless notice about optional kernels
    args = build_parser().parse_args(argv)
    from .errors import report_user_errors

    return report_user_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
