"""``distill``: knowledge distillation from a finished run into the experiment's backbone.

The student minimises ``alpha * CE(student, y) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)``
(Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network"), plus, when
``hint_layers`` names layer pairs, a FitNets hint loss (Romero et al. 2015): the mean squared
error between a student activation, mapped to the teacher's width by a learned projection, and
the teacher's activation at the paired layer.

The teacher is a finished run (its best checkpoint), frozen and always in eval mode. When the
training images are not augmented, every image looks the same in every epoch, so the teacher's
outputs are computed once per image and reused (keyed by a digest of the image tensor's bytes).
torch is imported inside the functions so that listing plugins stays fast.

Over 400 lines because the teacher (loading, output cache), the hint projections and the
method share one set of parameters and are read together when checking the loss against the
papers; nothing here is used by another module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transferstudio.api import (
    ROLE_LABELED,
    ExperimentError,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
)

TEACHER_CACHE_BUDGET_BYTES = 2 * 1024**3
"""Largest teacher cache (logits plus hint activations, kept on the CPU) before it turns off."""


@dataclass
class DistillParams:
    """Knowledge distillation: a finished run teaches the student (soft targets, hints)."""

    teacher_run: str = param(
        "",
        help="the teacher: a finished run's id (from the workspace) or its run folder; it must "
        "classify this experiment's classes and take the same preprocessed images",
    )
    teacher_backbone: str = param(
        "",
        help="or a teacher trained elsewhere: its backbone plugin id (with teacher_weights)",
    )
    teacher_weights: str = param(
        "",
        help="the whole teacher network's weights file (.pt/.pth/.safetensors in the backbone "
        "plugin's own layout, classifier trained on this experiment's classes)",
    )
    alpha: float = param(
        0.5,
        min=0.0,
        max=1.0,
        help="weight of the cross-entropy on the true labels; the distillation term gets 1 - alpha",
    )
    temperature: float = param(
        4.0,
        min=0.05,
        max=100.0,
        help="softmax temperature T of the soft targets (higher = softer); the distillation "
        "term is scaled by T^2 so its gradients keep their size",
    )
    hint_layers: list[str] = param(
        [],
        help="FitNets hints: 'student_path=teacher_path' module pairs, e.g. "
        "'backbone.layer2=backbone.layer3'; empty = no hint loss",
    )
    hint_weight: float = param(
        1.0,
        min=0.0,
        max=1000.0,
        help="weight of the hint loss (mean squared error between the projected student "
        "activation and the teacher activation)",
    )
    teacher_cache: str = param(
        "auto",
        choices=["auto", "off"],
        help="'auto' computes the teacher's outputs once per training image when images are "
        "not augmented; 'off' runs the teacher on every batch",
    )

    def validate(self) -> None:
        parse_hint_layers(self.hint_layers)
        run, backbone, weights = (
            self.teacher_run.strip(),
            self.teacher_backbone.strip(),
            self.teacher_weights.strip(),
        )
        if run and (backbone or weights):
            raise ExperimentError(
                "name one teacher: teacher_run, or teacher_backbone with teacher_weights",
                "method.params.teacher_run",
            )
        if bool(backbone) != bool(weights):
            missing = "teacher_weights" if backbone else "teacher_backbone"
            raise ExperimentError(
                "a teacher trained elsewhere needs both teacher_backbone and teacher_weights",
                f"method.params.{missing}",
            )


def parse_hint_layers(entries: list[str]) -> list[tuple[str, str]]:
    """``["s.path=t.path", ...]`` -> ``[("s.path", "t.path"), ...]``; a bad entry is an error
    naming ``method.params.hint_layers``."""
    pairs = []
    for entry in entries:
        student, sep, teacher = str(entry).partition("=")
        student, teacher = student.strip(), teacher.strip()
        if not sep or not student or not teacher:
            raise ExperimentError(
                f"{entry!r} is not a 'student_path=teacher_path' pair, e.g. "
                "'backbone.layer2=backbone.layer3'",
                "method.params.hint_layers",
            )
        pairs.append((student, teacher))
    return pairs


# --------------------------------------------------------------------------- losses


def distillation_loss(student_logits, teacher_logits, temperature: float):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The ``T^2`` factor keeps the gradient size independent of ``T`` (Hinton et al. 2015, sec. 2).
    """
    import torch.nn.functional as F

    t = float(temperature)
    student_log_p = F.log_softmax(student_logits.float() / t, dim=1)
    teacher_log_p = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)
    return kl * (t * t)


def hint_loss(projected_student, teacher_activation):
    """Mean squared error between a projected student activation and the teacher's, after
    average-pooling both to their common spatial size when their maps differ."""
    import torch.nn.functional as F

    s, t = projected_student.float(), teacher_activation.float()
    if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
    return F.mse_loss(s, t)


def make_projection(student_shape, teacher_shape, where: str):
    """The learned map from a student activation to the teacher's width: a 1x1 convolution for
    feature maps ``[B, C, H, W]``, a linear layer on the last axis otherwise (``[B, D]``, or
    tokens ``[B, N, D]`` when both have the same number of tokens)."""
    from torch import nn

    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) == 4 and len(t) == 4:
        return nn.Conv2d(s[1], t[1], kernel_size=1)
    if len(s) == len(t) and len(s) in (2, 3) and s[1:-1] == t[1:-1]:
        return nn.Linear(s[-1], t[-1])
    raise ExperimentError(
        f"cannot pair student activation {list(s[1:])} with teacher activation {list(t[1:])} "
        "(per image); pair feature maps with feature maps or vectors with vectors",
        f"method.params.hint_layers ({where})",
    )


# --------------------------------------------------------------------------- teacher cache


class TeacherCache:
    """The teacher's outputs per training image, keyed by a digest of the image tensor's bytes.

    Exact when images are not augmented: a given file always becomes the same tensor, so its
    digest finds the outputs computed the first time, whatever batch it now sits in. Outputs
    are kept on the CPU.
    """

    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[Any, ...]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def digests(images) -> list[bytes]:
        """One 16-byte digest per image of the batch."""
        import hashlib

        rows = images.detach().float().cpu().contiguous().reshape(len(images), -1).numpy()
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]

    def lookup(self, keys: list[bytes]) -> list[int]:
        """Indices (into ``keys``) of the images whose outputs are not cached yet."""
        return [i for i, k in enumerate(keys) if k not in self.entries]

    def store(self, keys: list[bytes], outputs: tuple[Any, ...]) -> None:
        """Keep ``outputs`` (tensors whose first axis matches ``keys``) per image."""
        cpu = [o.detach().float().cpu() for o in outputs]
        for i, key in enumerate(keys):
            self.entries[key] = tuple(o[i] for o in cpu)

    def gather(self, keys: list[bytes], device) -> tuple[Any, ...]:
        """The cached outputs of ``keys`` stacked into batch tensors on ``device``."""
        import torch

        rows = [self.entries[k] for k in keys]
        return tuple(torch.stack(parts).to(device) for parts in zip(*rows, strict=True))


# --------------------------------------------------------------------------- the method


class _Capture:
    """Forward hooks that keep the outputs of named modules, only while :meth:`recording`.

    Outside a recording the hooks do nothing, so evaluation, export and prediction with the
    student pay nothing and hold no activations."""

    def __init__(self, network, paths: list[str], role: str) -> None:
        self.paths = paths
        self.outputs: dict[str, Any] = {}
        self.active = False
        names = dict(network.named_modules())
        for path in paths:
            if path not in names:
                sample = ", ".join(p for p in names if p and p.count(".") <= 1)
                raise ExperimentError(
                    f"{path!r} is not a module of the {role}; module paths look like {sample}",
                    "method.params.hint_layers",
                )
            names[path].register_forward_hook(self._hook(path))

    def _hook(self, path: str):
        def keep(module, inputs, output):
            if self.active:
                self.outputs[path] = output

        return keep

    def run(self, network, images) -> tuple[Any, list[Any]]:
        """``network(images)`` and the outputs of the hooked modules, in ``paths`` order."""
        self.active = True
        try:
            out = network(images)
            return out, [self.outputs[p] for p in self.paths]
        finally:
            self.active = False
            self.outputs.clear()


class Distill(TransferMethod):
    """The student (``ctx.build_classifier()``) learns from the labels and a frozen teacher."""

    def __init__(self, params: DistillParams) -> None:
        self.params = params
        self.pairs = parse_hint_layers(params.hint_layers)
        self.teacher_forward_images = 0
        """Images the teacher has processed for training steps (the cache saves these)."""
        self._teacher_val: tuple[Any, Any] | None = None

    # ----------------------------------------------------------- setup

    def setup(self, ctx) -> None:
        p = self.params
        if p.teacher_run.strip():
            teacher = ctx.load_run_model(p.teacher_run.strip())
        elif p.teacher_backbone.strip():
            teacher = ctx.load_classifier(p.teacher_backbone.strip(), p.teacher_weights.strip())
        else:
            raise ExperimentError(
                "name the teacher: a finished run's id or run folder, or teacher_backbone with "
                "teacher_weights",
                "method.params.teacher_run",
            )
        self.model = ctx.build_classifier()
        teacher.to(ctx.device)
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()
        student_paths = [s for s, _ in self.pairs]
        teacher_paths = [t for _, t in self.pairs]
        self.student_capture = _Capture(self.model, student_paths, "student")
        self.teacher_capture = _Capture(self.teacher, teacher_paths, "teacher")
        teacher_classes = getattr(teacher, "class_names", None)
        if teacher_classes is not None and list(teacher_classes) != list(ctx.class_names):
            raise ExperimentError(
                f"the teacher run classifies {', '.join(teacher_classes)}; this experiment has "
                f"{', '.join(ctx.class_names)}; distil from a run trained on the same classes",
                "method.params.teacher_run",
            )
        sample = self._sample_batch(ctx)
        student_logits, student_acts, teacher_logits, teacher_acts = self._probe(sample)
        if teacher_logits.shape[1] != ctx.num_classes:
            raise ExperimentError(
                f"the teacher run predicts {teacher_logits.shape[1]} classes, this experiment has "
                f"{ctx.num_classes}; distil from a run trained on the same classes",
                "method.params.teacher_run",
            )
        self.projections = hint_projections(
            [
                make_projection(s.shape, t.shape, f"{sp}={tp}")
                for s, t, (sp, tp) in zip(student_acts, teacher_acts, self.pairs, strict=True)
            ]
        ).to(ctx.device)
        self.cache = (
            TeacherCache()
            if self.params.teacher_cache == "auto"
            and not ctx.augmenting
            and self._cache_fits(ctx, teacher_logits, teacher_acts)
            else None
        )
        if self.params.teacher_cache == "auto" and ctx.augmenting:
            ctx.log(
                "teacher cache off: training images are augmented, so the teacher runs on every "
                "batch (turn augmentation off to compute its outputs once per image)"
            )

    @staticmethod
    def _sample_batch(ctx):
        # One un-augmented batch tells the activation shapes the hint projections need.
        for split in ("val", "train"):
            try:
                images, _ = next(iter(ctx.loader(split)))
            except (KeyError, StopIteration):
                continue
            return images[:2].to(ctx.device)
        raise ExperimentError("distill needs at least one training image", "data.path")

    def _probe(self, images):
        import torch

        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            student_logits, student_acts = self.student_capture.run(self.model, images)
            self.model.train(was_training)
            teacher_logits, teacher_acts = self.teacher_capture.run(self.teacher, images)
        return student_logits, student_acts, teacher_logits, teacher_acts

    def _cache_fits(self, ctx, teacher_logits, teacher_acts) -> bool:
        per_image = 4 * (
            teacher_logits[0].numel() + sum(a[0].numel() for a in teacher_acts)
        )  # float32 bytes
        # The whole split: under torchrun each process sees other images every epoch, so its
        # cache grows towards every training image.
        images = len(ctx.loader("train").dataset)
        if per_image * images <= TEACHER_CACHE_BUDGET_BYTES:
            return True
        ctx.log(
            f"teacher cache off: the teacher's outputs would take {per_image * images / 2**30:.1f} "
            "GiB (hint activations are large); the teacher runs on every batch"
        )
        return False

    def modules(self):
        modules = {"model": self.model}
        if self.pairs:
            modules["hint_projections"] = self.projections
        return modules

    def parameter_groups(self, lr: float):
        groups = [{"params": list(self.model.parameters()), "lr": lr, "name": "student"}]
        if self.pairs:
            groups.append(
                {"params": list(self.projections.parameters()), "lr": lr, "name": "hints"}
            )
        return groups

    def train(self) -> None:
        self.model.train()
        self.projections.train()
        self.teacher.eval()  # the teacher's BatchNorm statistics and dropout never change

    def eval(self) -> None:
        self.model.eval()
        self.projections.eval()
        self.teacher.eval()

    # ----------------------------------------------------------- steps

    def _teacher_outputs(self, images):
        """The teacher's logits and hint activations for a batch (cached where possible)."""
        import torch

        def run(batch):
            self.teacher_forward_images += len(batch)
            with torch.no_grad():
                logits, acts = self.teacher_capture.run(self.teacher, batch)
            return (logits.float(), *(a.float() for a in acts))

        if self.cache is None:
            return run(images)
        keys = self.cache.digests(images)
        missing = self.cache.lookup(keys)
        self.cache.hits += len(keys) - len(missing)
        self.cache.misses += len(missing)
        if missing:
            index = torch.tensor(missing, device=images.device)
            self.cache.store([keys[i] for i in missing], run(images.index_select(0, index)))
        return self.cache.gather(keys, images.device)

    def training_step(self, batch, ctx) -> StepOutput:
        import torch

        images, targets = batch
        teacher_logits, *teacher_acts = self._teacher_outputs(images)
        logits, student_acts = self.student_capture.run(self.model, images)
        ce = ctx.loss(logits, targets)
        kd = distillation_loss(logits, teacher_logits, self.params.temperature)
        alpha = self.params.alpha
        loss = alpha * ce + (1.0 - alpha) * kd
        logs = {"ce_loss": float(ce.detach()), "kd_loss": float(kd.detach())}
        if self.pairs:
            projected = self.projections(student_acts)  # its forward: synchronised under DDP
            hints = torch.stack(
                [hint_loss(s, t) for s, t in zip(projected, teacher_acts, strict=True)]
            ).mean()
            loss = loss + self.params.hint_weight * hints
            logs["hint_loss"] = float(hints.detach())
        agree = (logits.detach().argmax(1) == teacher_logits.argmax(1)).float().mean()
        logs["agreement"] = float(agree)
        return StepOutput(loss, logits, targets, logs)

    def eval_batches(self, ctx, split: str):
        # Remember which split is evaluated: the student's val predictions are kept for the
        # agreement diagnostic, so it needs no second pass over the val images.
        self._evaluating = split
        self._student_val: list[Any] = []
        return ctx.loader(split)

    def validation_step(self, batch, ctx):
        images, targets = batch
        logits = self.model(images)
        if getattr(self, "_evaluating", None) == "val":
            self._student_val.append(logits.argmax(1).cpu())
        return logits, targets

    def epoch_diagnostics(self, ctx) -> dict[str, float]:
        """Teacher/student agreement and the teacher's accuracy on the val split."""
        import torch

        teacher, targets = self._teacher_val_predictions(ctx)
        if not len(targets):
            return {}
        student = torch.cat(self._student_val) if getattr(self, "_student_val", None) else None
        if student is None or len(student) != len(targets):
            self.eval()
            with torch.no_grad():
                student = torch.cat(
                    [self.model(x.to(ctx.device)).argmax(1).cpu() for x, _ in ctx.loader("val")]
                )
        return {
            "agreement": float((student == teacher).float().mean()),
            "teacher_accuracy": float((teacher == targets).float().mean()),
        }

    def _teacher_val_predictions(self, ctx):
        # The val split is never shuffled or augmented: the teacher's answers are computed once.
        import torch

        if self._teacher_val is None:
            predictions, targets = [], []
            with torch.no_grad():
                for images, labels in ctx.loader("val"):
                    predictions.append(self.teacher(images.to(ctx.device)).argmax(1).cpu())
                    targets.append(labels.cpu())
            self._teacher_val = (
                (torch.cat(predictions), torch.cat(targets))
                if targets
                else (torch.zeros(0), torch.zeros(0))
            )
        return self._teacher_val

    def predictor(self):
        return self.model

    def state_summary(self):
        p = self.params
        summary: dict[str, Any] = {"teacher_run": p.teacher_run}
        if p.teacher_backbone:
            summary["teacher"] = {"backbone": p.teacher_backbone, "weights": p.teacher_weights}
        if getattr(self, "cache", None) is not None:
            summary["teacher_cache"] = {"hits": self.cache.hits, "misses": self.cache.misses}
        return summary


def hint_projections(projections: list[Any]):
    """The hint projections as one module: ``forward(student_activations)`` maps each
    activation with its projection, in ``hint_layers`` order. Called through its own forward,
    its gradients are synchronised when the engine applies DistributedDataParallel to it
    (torchrun); a plain ModuleDict has no forward. Keys ``hint0``, ``hint1``, ... as before, so
    the checkpoints of earlier runs still load."""
    from torch import nn

    class HintProjections(nn.ModuleDict):
        def forward(self, activations: list[Any]) -> list[Any]:
            return [self[f"hint{i}"](a) for i, a in enumerate(activations)]

    # ModuleDict keys may not contain dots, so projections are numbered, not named by path.
    return HintProjections({f"hint{i}": p for i, p in enumerate(projections)})


DISTILL = MethodSpec(
    name="distill",
    description="knowledge distillation from a finished run (soft targets, optional FitNets "
    "hints); teacher outputs cached when not augmenting",
    params=DistillParams,
    factory=Distill,
    data_roles=(ROLE_LABELED,),
    baseline="fine-tune",  # the student trained alone, without the teacher
    # The student and the hint projections are called through their own forward; the teacher
    # is frozen (not synchronised) and each process caches the outputs of the images it sees.
    distributed=True,
)
