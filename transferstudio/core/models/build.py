"""Building a classifier: a backbone plugin's network, local weights, and a new head.

Imported only where models are built (it imports torch).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from transferstudio.api import BackboneSpec, WeightsError
from transferstudio.core.models.weights import read_state_dict


class ClassifierModel(nn.Module):
    """``head(backbone(x))``: the backbone yields features, the head yields logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def make_head(
    in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0
) -> nn.Module:
    """A linear head, or ``Linear-ReLU-Dropout-Linear`` when ``hidden`` > 0; dropout first."""
    layers: list[nn.Module] = []
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    if hidden > 0:
        layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = hidden
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


# Layer types a head may be rebuilt from (see ``describe_head``): enough for the built-ins'
# heads, bottlenecks included; a head with any other layer is not described.
_HEAD_LAYERS = {
    nn.Linear: lambda m: {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None},
    nn.BatchNorm1d: lambda m: {"features": m.num_features, "affine": m.affine},
    nn.ReLU: lambda m: {},
    nn.GELU: lambda m: {},
    nn.Identity: lambda m: {},
    nn.Flatten: lambda m: {},
    nn.Dropout: lambda m: {"p": m.p},
}


def describe_head(head: nn.Module) -> dict | None:
    """A JSON recipe of a head made only of common layers (a ``Sequential`` of them, or one),
    stored in checkpoints so that a run's classifier can be rebuilt without its method;
    ``None`` when the head holds anything else."""
    sequential = isinstance(head, nn.Sequential)
    layers = []
    for layer in head if sequential else [head]:
        describe = _HEAD_LAYERS.get(type(layer))
        if describe is None:
            return None
        layers.append({"type": type(layer).__name__, **describe(layer)})
    return {"sequential": sequential, "layers": layers}


def head_from_recipe(recipe: dict, source: str = "head recipe") -> nn.Module:
    """The (untrained) head a :func:`describe_head` recipe describes. The recipe comes from a
    file (checkpoint, bundle manifest), so its types and sizes are checked before any layer is
    allocated: a Linear of 10^11 outputs is a :class:`WeightsError` naming ``source`` and the
    limit, not a MemoryError."""
    build = {
        "Linear": lambda d: nn.Linear(d["in"], d["out"], bias=d["bias"]),
        "BatchNorm1d": lambda d: nn.BatchNorm1d(d["features"], affine=d["affine"]),
        "ReLU": lambda d: nn.ReLU(),
        "GELU": lambda d: nn.GELU(),
        "Identity": lambda d: nn.Identity(),
        "Flatten": lambda d: nn.Flatten(),
        "Dropout": lambda d: nn.Dropout(d["p"]),
    }
    layers_data = recipe.get("layers") if isinstance(recipe, dict) else None
    if not isinstance(layers_data, list) or not layers_data:
        raise WeightsError(f"{source}: head_recipe has no list of layers; export the model again")
    for i, layer in enumerate(layers_data):
        _check_layer(layer, f"head_recipe.layers[{i}]", source, build)
    layers = [build[d["type"]](d) for d in layers_data]
    return nn.Sequential(*layers) if recipe.get("sequential", True) else layers[0]


def _check_layer(layer, key: str, source: str, known) -> None:
    """Refuse a head layer description of an unknown type, a missing or non-integer size, or
    sizes above ``core.limits`` (before it is built)."""
    from transferstudio.core.files.limits import (
        MAX_LAYER_FEATURES,
        MAX_LAYER_PARAMS,
        LimitError,
        check_limit,
        positive_int,
    )

    advice = "export the model again"
    if not isinstance(layer, dict) or layer.get("type") not in known:
        kind = layer.get("type") if isinstance(layer, dict) else layer
        raise WeightsError(
            f"{source}: {key} is {kind!r}, not a head layer TransferStudio rebuilds "
            f"({', '.join(known)}); {advice}"
        )
    sizes = {"Linear": ("in", "out"), "BatchNorm1d": ("features",)}.get(layer["type"], ())
    flags = {"Linear": "bias", "BatchNorm1d": "affine"}.get(layer["type"])
    try:
        dims = [
            positive_int(
                layer.get(s),
                file=source,
                what=f"{key}.{s}",
                limit=MAX_LAYER_FEATURES,
                advice=advice,
            )
            for s in sizes
        ]
        if len(dims) == 2:
            check_limit(
                dims[0] * dims[1],
                MAX_LAYER_PARAMS,
                file=source,
                what=f"the parameter count of {key} ({dims[0]} x {dims[1]})",
                advice=advice,
            )
    except LimitError as exc:
        raise WeightsError(str(exc)) from None
    if flags is not None and not isinstance(layer.get(flags), bool):
        raise WeightsError(f"{source}: {key}.{flags} must be true or false; {advice}")
    if layer["type"] == "Dropout":
        p = layer.get("p")
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise WeightsError(f"{source}: {key}.p must be a number from 0 to 1; {advice}")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def build_backbone(spec: BackboneSpec, weights_file: Path | None) -> nn.Module:
    """The backbone with its classifier replaced by identity, loaded from ``weights_file``.

    Keys of the old classifier are ignored (its shape depends on the old task); any other
    missing or unexpected key is a :class:`WeightsError` naming them.
    """
    model = spec.build()
    try:
        model.get_submodule(spec.classifier)
    except AttributeError:
        raise WeightsError(
            f"backbone {spec.name!r} declares classifier {spec.classifier!r}, "
            "which is not a module of its network"
        ) from None
    _set_submodule(model, spec.classifier, nn.Identity())
    if weights_file is not None:
        load_backbone_weights(model, spec, read_state_dict(weights_file), str(weights_file))
    return model


def _backbone_part(state: dict, expected: dict, classifier_prefix: str) -> dict:
    """The part of ``state`` that holds the backbone. Besides a bare backbone's state dict this
    accepts our own checkpoints, which store modules by name: a classifier as ``model.backbone.``
    and ``model.head.`` (next to other modules such as a discriminator), or an encoder that is a
    backbone itself (``encoder.``). The first reading whose keys cover the backbone's wins."""

    def covers(candidate: dict) -> bool:
        keys = {k for k in candidate if not k.startswith(classifier_prefix)}
        return bool(keys) and all(
            k in keys for k in expected if not k.endswith("num_batches_tracked")
        )

    if covers(state):
        return state
    modules = sorted({k.split(".", 1)[0] for k in state if "." in k})
    prefixes = ["backbone."] + [f"{m}.backbone." for m in modules] + [f"{m}." for m in modules]
    for p in prefixes:
        candidate = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        if covers(candidate):
            return candidate
    return state  # reported key by key by the caller


def load_backbone_weights(model: nn.Module, spec: BackboneSpec, state: dict, source: str) -> None:
    """Load a state dict into a backbone whose classifier is already replaced."""
    if spec.convert_state_dict is not None:
        state = spec.convert_state_dict(state)
    prefix = spec.classifier + "."
    expected = model.state_dict()
    state = _backbone_part(state, expected, prefix)
    state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    # Checkpoints from before BatchNorm counted its batches lack num_batches_tracked; torch
    # itself accepts that, and the counter does not affect inference or training with momentum.
    missing = sorted(
        k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    )
    unexpected = sorted(k for k in state if k not in expected)
    wrong_shape = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(
                f"missing keys ({len(missing)}): {', '.join(missing[:8])}"
                + (" ..." if len(missing) > 8 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                + (" ..." if len(unexpected) > 8 else "")
            )
        if wrong_shape:
            parts.append(
                "shape mismatch: "
                + ", ".join(
                    f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in wrong_shape[:5]
                )
            )
        raise WeightsError(
            f"weights {source} do not fit backbone {spec.name!r}: "
            + "; ".join(parts)
            + ". Check that the file was saved from the same "
            "architecture"
        )
    model.load_state_dict(state, strict=False)  # every key was checked above


def build_classifier(
    spec: BackboneSpec,
    weights_file: Path | None,
    num_classes: int,
    dropout: float = 0.0,
    hidden: int = 0,
) -> nn.Module:
    """Backbone + new head for ``num_classes``: the module every classification method trains."""
    backbone = build_backbone(spec, weights_file)
    return ClassifierModel(backbone, make_head(spec.feature_dim, num_classes, hidden, dropout))


def classifier_from_recipe(
    spec: BackboneSpec, recipe: dict, state: dict, source: str
) -> ClassifierModel:
    """Backbone ``spec`` plus the head a :func:`describe_head` recipe describes, loaded with
    ``state`` (``backbone.*`` and ``head.*`` keys); a mismatch is a :class:`WeightsError`
    naming ``source``."""
    model = ClassifierModel(build_backbone(spec, None), head_from_recipe(recipe, source))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(
            f"{source}: its weights do not fit backbone {spec.name!r}: {str(exc).splitlines()[0]}"
        ) from None
    return model


def build_trained_classifier(spec: BackboneSpec, weights_file: Path, num_classes: int) -> nn.Module:
    """A backbone plugin's whole network, classifier included, from a weights file trained
    elsewhere on ``num_classes`` classes (the plugin's own layout, e.g. a torchvision state dict
    whose ``fc`` has ``num_classes`` outputs): a teacher that is not a TransferStudio run.

    The last ``nn.Linear`` of the plugin's ``classifier`` module is resized to the file's shape;
    a file without that layer's weights, or for another number of classes, is a
    :class:`WeightsError` saying so."""
    net = spec.build()
    state = read_state_dict(weights_file)
    if spec.convert_state_dict is not None:
        state = spec.convert_state_dict(state)
    classifier = net.get_submodule(spec.classifier)
    linears = [(n, m) for n, m in classifier.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise WeightsError(
            f"backbone {spec.name!r}: its classifier {spec.classifier!r} has no Linear layer"
        )
    name, last = linears[-1]
    path = f"{spec.classifier}.{name}" if name else spec.classifier
    weight = state.get(f"{path}.weight")
    if weight is None or weight.dim() != 2:
        raise WeightsError(
            f"{weights_file} holds no classifier weights '{path}.weight' for backbone "
            f"{spec.name!r}: a teacher file must hold the whole network trained on this "
            "experiment's classes (use a TransferStudio run as teacher_run otherwise)"
        )
    if weight.shape[0] != num_classes:
        raise WeightsError(
            f"{weights_file} classifies {weight.shape[0]} classes ('{path}.weight' is "
            f"{tuple(weight.shape)}); this experiment has {num_classes}"
        )
    resized = nn.Linear(weight.shape[1], weight.shape[0], bias=f"{path}.bias" in state)
    _set_submodule(net, path, resized)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(
            f"weights {weights_file} do not fit backbone {spec.name!r}: {first}"
        ) from None
    return net
