"""Accuracy on the labeled target set (``data.target_eval_path``), the figure domain adaptation
is judged by. Methods that accept the optional ``labeled_target`` role report it as the epoch
diagnostic ``target_accuracy``; for ``fine-tune`` and ``feature-extract`` that is the
source-only baseline."""

from __future__ import annotations

from transferstudio.api import ROLE_LABELED_TARGET


def labeled_target_accuracy(ctx, model) -> float:
    """Top-1 accuracy of ``model`` (images -> logits over the source classes) on the labeled
    target evaluation set. Called from ``epoch_diagnostics``, which the engine runs right after
    validation, so the model is already in eval mode."""
    import torch

    correct = seen = 0
    with torch.no_grad():
        for images, targets in ctx.loader("eval", role=ROLE_LABELED_TARGET):
            logits = model(images.to(ctx.device))
            correct += int((logits.argmax(1).cpu() == targets).sum())
            seen += len(targets)
    return correct / max(seen, 1)


def target_diagnostics(ctx, model) -> dict[str, float]:
    """``{"target_accuracy": ...}`` when the experiment gives a labeled target set, else ``{}``."""
    if not ctx.has_role(ROLE_LABELED_TARGET):
        return {}
    return {"target_accuracy": labeled_target_accuracy(ctx, model)}
