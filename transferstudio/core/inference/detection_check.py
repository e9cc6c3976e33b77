"""Checking an exported detector box by box against the detector it came from: the matching
rules and tolerances the exports of :mod:`transferstudio.core.inference.detection_export` are
held to (see its docstring)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from transferstudio.core.models.detector import detection_heads

Detections = list[dict[str, torch.Tensor]]
"""A detector's output: per image, ``boxes`` [N, 4], ``labels`` [N], ``scores`` [N]."""

MIN_IOU = 0.99
"""A matched detection's box overlaps the detector's by at least this IoU..."""
SCORE_TOLERANCE = 1e-3
"""...and its score is within this of the detector's."""
EXTRA_MARGIN = 0.01
"""An exported detection the detector does not have may score up to threshold + this."""
UNVERIFIED_SHARE = 0.05
"""Of the compared detections, the share (at least one) that may be swapped for a near-equal
box the detector did not propose: rounding among an undertrained detector's tied proposals does
that; a defect moves most boxes."""
IOU_SLACK = 0.01
"""How far below the suppression IoU an overlap may be measured for a box suppressed in the
export (its IoU there is computed from boxes that differ by rounding)."""
BOX_TOLERANCE = 0.01
"""Corners of two empty (zero-area) boxes within this many pixels count as the same box."""
MIN_SCORE = 0.05
"""Detections scoring below this are not compared even if the recipe keeps them: their order
among near-equal scores is decided by float rounding, which differs between runtimes."""


@dataclass
class BoxCheck:
    """The box-by-box comparison of an exported detector with the detector."""

    images: int = 0
    boxes_compared: int = 0
    min_iou: float | None = None
    max_score_diff: float | None = None
    max_box_diff: float | None = None
    """The largest difference of a matched box's coordinates, in pixels."""
    excused: int = 0
    """Detections without a counterpart in the export that rounding explains: scored within
    the tolerance of the threshold, or swapped for a genuine near-equal one (see
    :func:`compare_image`)."""
    unverified: list[str] = field(default_factory=list)
    """Swaps with a box the detector's candidates do not hold (see :func:`compare_image`), as
    ``"image: what"``; at most :data:`UNVERIFIED_SHARE` of the compared detections pass."""
    problem: str = ""
    """Empty when the export reproduces the detector; else the first image that it does not,
    and why."""

    def add(self, iou: float, score_diff: float, box_diff: float) -> None:
        self.boxes_compared += 1
        self.min_iou = iou if self.min_iou is None else min(self.min_iou, iou)
        self.max_score_diff = max(self.max_score_diff or 0.0, score_diff)
        self.max_box_diff = max(self.max_box_diff or 0.0, box_diff)

    def figures(self) -> str:
        """The figures in words, for messages."""
        text = (
            f"{self.images} image{'' if self.images == 1 else 's'} checked, "
            f"{self.boxes_compared} detections matched"
        )
        if self.boxes_compared:
            text += f", min IoU {self.min_iou:.4f}, max score difference {self.max_score_diff:.2g}"
        return text


def compare_image(
    reference: dict[str, torch.Tensor],
    exported: dict[str, torch.Tensor],
    threshold: float,
    full: int,
    check: BoxCheck,
    candidates: dict[str, torch.Tensor] | None = None,
    nms_iou: float = 0.5,
) -> str:
    """Match ``exported`` detections of one image to ``reference`` (see the module docstring),
    adding the matched pairs to ``check``; a non-empty result says what does not match.
    ``full`` is the most detections the detector keeps per image; ``candidates`` are the
    detector's detections of the image before non-maximum suppression (IoU ``nms_iou``) and
    the top-``full`` cut, which explain a detection the export swapped for a near-equal one."""
    ref = {k: v.detach().cpu() for k, v in reference.items()}
    out = {k: v.detach().cpu() for k, v in exported.items()}
    ref_scores, out_scores = ref["scores"].float(), out["scores"].float()
    ious = _label_ious(ref, out)
    used = torch.zeros(len(out_scores), dtype=torch.bool)
    missing: list[tuple[int, float]] = []
    for i in torch.argsort(ref_scores, descending=True).tolist():
        if float(ref_scores[i]) < threshold:
            continue
        row = ious[i].masked_fill(used, -1.0)
        j = int(row.argmax()) if len(row) else -1
        if j < 0 or float(row[j]) < MIN_IOU:
            missing.append((i, float(row[j]) if j >= 0 else -1.0))
            continue
        used[j] = True
        score_diff = abs(float(ref_scores[i]) - float(out_scores[j]))
        box_diff = float((ref["boxes"][i].float() - out["boxes"][j].float()).abs().max())
        check.add(float(row[j]), score_diff, box_diff)
        if score_diff > SCORE_TOLERANCE:
            return (
                f"detection of label {int(ref['labels'][i])} scores {float(ref_scores[i]):.4f}, "
                f"its counterpart {float(out_scores[j]):.4f} (difference {score_diff:.2g} > "
                f"{SCORE_TOLERANCE:g})"
            )
    # An exported detection is genuine when the detector produced that box too, before its
    # suppression and its cut: only a genuine one may stand in for a missing one.
    genuine = _genuine(out, candidates)
    spare = int((genuine & ~used).sum())  # genuine ones that can fill a full list's last places
    swapped_in = torch.zeros(len(out_scores), dtype=torch.bool)
    out_full = len(out_scores) >= full > 0
    for i, best in missing:
        score = float(ref_scores[i])
        if score < threshold + SCORE_TOLERANCE:
            check.excused += 1  # rounded under the threshold
            continue
        # Suppressed in the export by a detection of the same label that overlaps it as much as
        # suppression needs and outranks it by rounding (near-equal scores). A genuine one is a
        # swap in the final suppression; another comes from a swap among the proposals, which
        # the candidates do not show: a few are counted (check.unverified), not excused blindly.
        tied = (
            (ious[i] > nms_iou - IOU_SLACK)
            & ((out_scores - score).abs() <= 2 * SCORE_TOLERANCE)
            & ~used
        )
        if bool((tied & genuine).any()):
            swapped_in |= tied & genuine
            check.excused += 1
            continue
        if bool(tied.any()):
            swapped_in |= tied
            check.excused += 1
            check.unverified.append(
                f"label {int(ref['labels'][i])} score {score:.4f} swapped for a box of IoU "
                f"{float(ious[i][tied].max()):.3f} the detector did not propose"
            )
            continue
        # Cut from a full list in the export, where a genuine detection took its place.
        if out_full and score < float(out_scores.min()) + SCORE_TOLERANCE and spare > 0:
            spare -= 1
            check.excused += 1
            continue
        box = ", ".join(f"{c:.1f}" for c in ref["boxes"][i].tolist())
        found = f"best IoU {best:.4f}" if best >= 0 else "no detection of that label"
        return (
            f"detection of label {int(ref['labels'][i])} score {score:.4f} at [{box}] has no "
            f"counterpart in the export ({found})"
        )
    ref_full = len(ref_scores) >= full > 0
    ref_floor = float(ref_scores.min()) + SCORE_TOLERANCE if ref_full else float("inf")
    extra = [
        j
        for j in range(len(out_scores))
        if not used[j]
        and not swapped_in[j]
        and float(out_scores[j]) > threshold + EXTRA_MARGIN
        and not (genuine[j] and float(out_scores[j]) < ref_floor)  # the detector cut it
    ]
    if extra:
        j = extra[0]
        box = ", ".join(f"{c:.1f}" for c in out["boxes"][j].tolist())
        return (
            f"the export finds {len(extra)} detection(s) the detector does not, e.g. label "
            f"{int(out['labels'][j])} score {float(out_scores[j]):.4f} at [{box}]"
        )
    return ""


def _label_ious(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """IoU of every box of ``a`` with every box of ``b``; -1 where the labels differ."""
    from torchvision.ops import box_iou

    boxes_a, boxes_b = a["boxes"].float(), b["boxes"].float()
    ious = box_iou(boxes_a, boxes_b)
    # Two empty boxes (an untrained detector's) have no IoU (0 / 0): they overlap fully when
    # their corners agree, else not at all. A NaN would pass every comparison.
    undefined = ious.isnan()
    if bool(undefined.any()):
        corners = (boxes_a[:, None, :] - boxes_b[None, :, :]).abs().amax(dim=-1)
        ious = torch.where(undefined, (corners <= BOX_TOLERANCE).float(), ious)
    same = a["labels"].view(-1, 1) == b["labels"].view(1, -1)
    return torch.where(same, ious, torch.full_like(ious, -1.0))


def _genuine(out: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor] | None):
    """Which exported detections match one of the detector's candidates (same label, IoU >=
    MIN_IOU, score within tolerance); none without candidates."""
    if candidates is None or not len(candidates["scores"]) or not len(out["scores"]):
        return torch.zeros(len(out["scores"]), dtype=torch.bool)
    cand = {k: v.detach().cpu() for k, v in candidates.items()}
    ious = _label_ious(out, cand)
    close = (out["scores"].float().view(-1, 1) - cand["scores"].float().view(1, -1)).abs()
    return ((ious >= MIN_IOU) & (close <= SCORE_TOLERANCE)).any(dim=1)


@contextlib.contextmanager
def _all_candidates(detector: nn.Module) -> Iterator[bool]:
    """``detector`` returning every detection above its score threshold, before non-maximum
    suppression and the per-image cut (Faster R-CNN's RoI heads, a one-stage detector's own
    settings); False, unchanged, for a detector without them."""
    heads = detection_heads(detector)
    if heads is None:
        yield False
        return
    saved = heads.nms_thresh, heads.detections_per_img
    # IoU never exceeds 1: nothing is suppressed.
    heads.nms_thresh, heads.detections_per_img = 1.0, 1_000_000
    try:
        yield True
    finally:
        heads.nms_thresh, heads.detections_per_img = saved


def check_detections(
    detector: nn.Module,
    reloaded: Callable[[list[torch.Tensor]], Detections],
    images: list[tuple[str, torch.Tensor]],
    threshold: float,
    full: int,
) -> BoxCheck:
    """Run ``detector`` and ``reloaded`` on each named image and compare them box by box; stops
    at the first image that differs (its name and the reason in ``problem``)."""
    check = BoxCheck()
    nms_iou = float(getattr(detection_heads(detector), "nms_thresh", 0.5))
    with torch.no_grad():
        for name, image in images:
            reference = detector([image])[0]
            with _all_candidates(detector) as available:
                candidates = detector([image])[0] if available else None
            exported = reloaded([image])[0]
            check.images += 1
            before = len(check.unverified)
            problem = compare_image(
                reference, exported, threshold, full, check, candidates, nms_iou
            )
            check.unverified[before:] = [f"{name}: {u}" for u in check.unverified[before:]]
            if problem:
                check.problem = f"on {name}: {problem}"
                return check
    allowed = max(1, int(UNVERIFIED_SHARE * check.boxes_compared))
    if len(check.unverified) > allowed:
        check.problem = (
            f"{len(check.unverified)} detections are swapped for boxes the detector did not "
            f"propose (at most {allowed} may be, for rounding among tied proposals), e.g. on "
            f"{check.unverified[0]}"
        )
    return check
