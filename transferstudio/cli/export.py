"""A run's model out of the workspace: ``export`` (a verified file) and ``predict`` (labels of
new images)."""

from __future__ import annotations

import sys
from pathlib import Path

from transferstudio.api import TASK_DETECTION
from transferstudio.cli.common import UsageError, load_host, workspace_of


def cmd_export(args) -> int:
    from transferstudio.core.inference.export import export_run

    host = load_host()
    fmt = args.format
    target = Path(
        args.output or f"model{host.exporters[fmt].suffix if fmt in host.exporters else ''}"
    )
    result = export_run(
        args.run, fmt, target, host, workspace_of(args), args.module or "", force=args.force
    )
    diff = f"{result.max_abs_diff:.3g}" if result.max_abs_diff is not None else "not checked"
    if result.boxes_compared is not None:  # a detector: its detections compared one by one
        iou, score = (
            (f"{result.min_iou:.4f}", f"{result.max_score_diff:.2g}")
            if result.boxes_compared
            else ("-", "-")
        )
        print(
            f"wrote {result.path} ({result.format}); verified box by box on "
            f"{result.val_images} validation images: {result.boxes_compared} detections "
            f"matched, min IoU {iou}, max score difference {score}, max box difference "
            f"{diff if result.boxes_compared else '-'} px"
        )
    else:
        print(f"wrote {result.path} ({result.format}); verified: max abs difference {diff}")
    if result.val_top1_agreement is not None:
        print(
            f"top-1 agreement with the run's model on {result.val_images} validation images: "
            f"{result.val_top1_agreement:.4f}"
        )
    if result.note:
        print(result.note)
    return 0


def cmd_predict(args) -> int:
    from transferstudio.console import ProgressLine, bar
    from transferstudio.core.files.safe_text import display_path, printable
    from transferstudio.core.inference.predict import gather_images, open_predictor, predict

    predictor = open_predictor(args.model, load_host(), workspace_of(args), support=args.support)
    for path, reason in predictor.support_skipped:
        print(f"support: skipped {path}: {reason}", file=sys.stderr)
    paths, skipped = gather_images(args.inputs)
    line = ProgressLine(sys.stderr)
    if predictor.task == TASK_DETECTION:
        return _predict_boxes(args, predictor, paths, skipped, line)
    if args.json or args.draw or args.score_threshold is not None:
        raise UsageError(
            f"--json, --draw and --score-threshold apply to detectors; {predictor.source} is a "
            "classifier (use --csv for its labels)"
        )

    def progress(done: int, total: int) -> None:
        line.draw(f"[{bar(done, total, 30, ' ')}] {done}/{total} images", done >= total)

    report = predict(predictor, paths, args.top_k, args.batch_size, progress)
    line.end()
    # Paths and class names come from files: shown with their control characters escaped,
    # and written to the CSV so that a spreadsheet never runs one as a formula.
    for item in report.predictions:
        labels = ", ".join(f"{label} {p:.3f}" for label, p in item.top)
        print(printable(f"{display_path(item.path)}\t{labels}"))
    for path, reason in skipped + report.skipped:
        print(printable(f"skipped {display_path(path)}: {reason}"), file=sys.stderr)
    if args.csv:
        _write_csv(args.csv, report)
        print(f"wrote {args.csv}", file=sys.stderr)
    print(
        f"{len(report.predictions)} predicted, {len(skipped) + len(report.skipped)} skipped "
        f"({predictor.source})",
        file=sys.stderr,
    )
    return 0 if report.predictions or not (skipped or report.skipped) else 1


def _predict_boxes(args, predictor, paths, skipped, line) -> int:
    """``predict`` with a detector: boxes per image on the console, and the files asked for."""
    from transferstudio.console import bar
    from transferstudio.core.files.safe_text import display_path, printable
    from transferstudio.core.inference import detection_predict as P

    threshold = P.DEFAULT_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--score-threshold must be between 0 and 1, not {threshold:g}")

    def progress(done: int, total: int) -> None:
        line.draw(f"[{bar(done, total, 30, ' ')}] {done}/{total} images", done >= total)

    batch = min(args.batch_size, 8)  # detectors hold full-size images: a few per batch
    names = predictor.class_names
    report = P.detect(predictor.model, names, paths, threshold, batch, progress)
    line.end()
    for image in report.images:
        found = ", ".join(
            f"{d.label} {d.score:.3f} [{d.xmin:.0f},{d.ymin:.0f},{d.xmax:.0f},{d.ymax:.0f}]"
            for d in image.detections
        )
        print(printable(f"{display_path(image.path)}\t{len(image.detections)}\t{found}"))
    for path, reason in skipped + report.skipped:
        print(printable(f"skipped {display_path(path)}: {reason}"), file=sys.stderr)
    if args.csv:
        P.write_detections_csv(args.csv, report, threshold)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.json:
        P.write_coco_json(args.json, report, names, threshold)
        print(f"wrote {args.json} (COCO results)", file=sys.stderr)
    if args.draw:
        written = P.write_drawn_images(args.draw, report, names, threshold)
        print(f"wrote {len(written)} image(s) with boxes to {args.draw}", file=sys.stderr)
    boxes = sum(len(i.detections) for i in report.images)
    print(
        f"{len(report.images)} images, {boxes} boxes at score >= {threshold:g}, "
        f"{len(skipped) + len(report.skipped)} skipped ({predictor.source})",
        file=sys.stderr,
    )
    return 0 if report.images or not (skipped or report.skipped) else 1


def _write_csv(path: str, report) -> None:
    """``path,label1,p1,...`` rows, one per predicted image."""
    import csv

    from transferstudio.core.files.safe_text import csv_row, display_path

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        k = max((len(p.top) for p in report.predictions), default=0)
        header = ["path"] + [f"{kind}{i + 1}" for i in range(k) for kind in ("label", "p")]
        writer.writerow(header)
        for item in report.predictions:
            writer.writerow(
                csv_row(
                    [display_path(item.path)]
                    + [x for label, p in item.top for x in (label, f"{p:.6f}")]
                )
            )
