"""Shared pieces of the episodic (few-shot) methods ``protonet`` and ``maml``.

Both methods train on N-way K-shot episodes drawn from the training classes and are evaluated on
episodes of classes they never saw (``ctx.episodes`` splits the data by class). This module holds
what they share: the episode parameters, the per-epoch stream of training episodes (from
``ctx.episodes``), and the evaluation: every image of the val or test split is decoded once
(``ctx.loader``) into a bank, episodes are drawn from it with a fixed seed, and the mean episode
accuracy is reported with its 95% confidence interval.
torch is imported inside the functions so that listing plugins stays fast.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from transferstudio.api import DataError, draw_episodes, param

MIN_TEST_EPISODES = 600
"""The test split is always scored on at least this many episodes (the usual few-shot protocol:
with 600 episodes the 95% interval of a 5-way accuracy is about +-1 point)."""

EVAL_SEED = 600
"""Seed of the evaluation episodes. Drawn from a split's bank it is all that decides them, so
every epoch of a run, and every episodic method run on the same data and class split
(``data.split_seed``), is scored on the very same val and test episodes, whatever its
``train.seed`` (streamed episodes, see :func:`evaluate_streamed_episodes`, also depend on it)."""


@dataclass
class EpisodicParams:
    """N-way K-shot episodes: sizes for training and evaluation, and how many."""

    n_way: int = param(5, min=2, max=1000, help="classes per training episode")
    k_shot: int = param(
        1, min=1, max=1000, help="labeled support images per class in a training episode"
    )
    queries: int = param(
        15,
        min=1,
        max=1000,
        help="query images per class in an episode (the images that are scored)",
    )
    episodes_per_epoch: int = param(100, min=1, max=1_000_000, help="training episodes per epoch")
    eval_way: int = param(0, min=0, max=1000, help="classes per evaluation episode; 0 uses n_way")
    eval_shot: int = param(
        0, min=0, max=1000, help="support images per class in evaluation episodes; 0 uses k_shot"
    )
    val_episodes: int = param(
        600,
        min=1,
        max=1_000_000,
        help="validation episodes after each epoch; fewer is faster but noisier (the test "
        "split always uses test_episodes)",
    )
    test_episodes: int = param(
        MIN_TEST_EPISODES,
        min=MIN_TEST_EPISODES,
        max=1_000_000,
        help=f"test episodes, at least {MIN_TEST_EPISODES}: the reported accuracy is their "
        "mean with a 95% confidence interval",
    )

    @property
    def way(self) -> int:
        """Classes per evaluation episode."""
        return self.eval_way or self.n_way

    @property
    def shot(self) -> int:
        """Support images per class in evaluation episodes."""
        return self.eval_shot or self.k_shot

    def evaluation_episodes(self, split: str) -> int:
        """How many episodes score ``split``: ``test_episodes`` (never fewer than
        :data:`MIN_TEST_EPISODES`) for the test split, ``val_episodes`` otherwise."""
        if split == "test":
            return max(MIN_TEST_EPISODES, self.test_episodes)
        return self.val_episodes


def confidence_interval95(values: Sequence[float]) -> float:
    """Half-width of the normal 95% confidence interval of the mean of ``values``:
    ``1.96 * s / sqrt(n)`` with ``s`` the sample standard deviation (n - 1 in the denominator).
    0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    # statistics.stdev sums exactly, so identical values give exactly 0.
    return 1.96 * statistics.stdev(values) / math.sqrt(n)


def training_episodes(ctx: Any, params: EpisodicParams, epoch: int, count: int) -> Iterable[Any]:
    """``count`` training episodes for ``epoch``, drawn with a seed derived from the run's seed
    and the epoch (so a resumed run sees the same episodes as an uninterrupted one)."""
    import torch

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.epoch_generator(epoch)))
    return ctx.episodes("train", params.n_way, params.k_shot, params.queries, count, seed)


class EpisodeGroups:
    """A sized iterable of lists of ``size`` consecutive episodes (MAML's meta-batches)."""

    def __init__(self, episodes: Iterable[Any], size: int) -> None:
        self.episodes = episodes
        self.size = size

    def __len__(self) -> int:
        return math.ceil(len(self.episodes) / self.size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Any]]:
        group: list[Any] = []
        for episode in self.episodes:
            group.append(episode)
            if len(group) == self.size:
                yield group
                group = []
        if group:
            yield group


EpisodeScorer = Callable[[Any, Any, Any], Any]
"""``score(support, support_targets, query) -> query logits [queries, way]``; ``support`` and
``query`` are images or, for methods that evaluate on embeddings, their embeddings."""

MAX_IMAGE_BANK_BYTES = 1 << 30
"""A split whose images take more memory than this is not held in memory for evaluation;
its episodes are then streamed from ``ctx.episodes`` (decoding every episode's images)."""


def split_bank(
    ctx: Any, split: str, encode: Callable[[Any], Any] | None = None, max_bytes: int | None = None
) -> tuple[Any, Any] | None:
    """Every (un-augmented) image of ``split`` once, passed through ``encode`` (``None`` keeps
    the images), with its class index: ``(items, targets)`` on ``ctx.device``.

    Decoding a split once and sampling episodes from it is much cheaper than decoding every
    episode's images (600 test episodes decode each image dozens of times). Returns ``None``
    when the items would exceed ``max_bytes``."""
    import torch

    items, targets, held = [], [], 0
    for images, labels in ctx.loader(split):
        batch = images.to(ctx.device)
        batch = encode(batch) if encode is not None else batch
        held += batch.numel() * batch.element_size()
        if max_bytes is not None and held > max_bytes:
            return None
        items.append(batch)
        targets.append(labels.to(ctx.device))
    if not items:
        raise DataError(f"the {split} split has no images to evaluate")
    return torch.cat(items), torch.cat(targets)


def episode_indices(
    targets: Any, way: int, shot: int, queries: int, count: int, seed: int, split: str = ""
) -> list[tuple[Any, Any]]:
    """``count`` episodes over a bank with class ``targets``: ``(support_index, query_index)``
    pairs, class by class (``shot`` then ``queries`` per class), classes in the order drawn.
    Deterministic for a given ``seed`` and bank."""
    import torch

    need = shot + queries
    episodes = []
    for drawn in draw_episodes(targets.tolist(), way, shot, queries, count, seed, split or "this"):
        picks = [drawn[k : k + need] for k in range(0, len(drawn), need)]
        support = [i for members in picks for i in members[:shot]]
        query = [i for members in picks for i in members[shot:]]
        episodes.append((torch.tensor(support), torch.tensor(query)))
    return episodes


def evaluate_episodes(
    bank: Any,
    targets: Any,
    way: int,
    shot: int,
    queries: int,
    count: int,
    score: EpisodeScorer,
    seed: int = EVAL_SEED,
    split: str = "",
) -> dict[str, float]:
    """Score ``count`` episodes drawn from a bank (see :func:`split_bank`) and summarise them.

    Returns ``accuracy`` (mean query accuracy over episodes), ``accuracy_ci95`` (half-width of
    its 95% confidence interval), ``loss`` (mean query cross-entropy) and ``episodes``."""
    import torch

    device = bank.device
    support_targets = torch.arange(way, device=device).repeat_interleave(shot)
    query_targets = torch.arange(way, device=device).repeat_interleave(queries)
    results = []
    for support, query in episode_indices(targets, way, shot, queries, count, seed, split):
        logits = score(bank[support.to(device)], support_targets, bank[query.to(device)])
        results.append(_episode_result(logits, query_targets))
    return summarise_episodes(results)


def evaluate_streamed_episodes(
    ctx: Any,
    split: str,
    way: int,
    shot: int,
    queries: int,
    count: int,
    score: EpisodeScorer,
    seed: int = EVAL_SEED,
) -> dict[str, float]:
    """Like :func:`evaluate_episodes`, with the episodes' images decoded one episode at a time
    by ``ctx.episodes`` (for splits too large to hold in memory)."""
    results = []
    for support, support_targets, query, query_targets in ctx.episodes(
        split, way, shot, queries, count, seed
    ):
        logits = score(support.to(ctx.device), support_targets.to(ctx.device), query.to(ctx.device))
        results.append(_episode_result(logits, query_targets.to(ctx.device)))
    return summarise_episodes(results)


def _episode_result(logits: Any, targets: Any) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = logits.detach().float()
        return episode_accuracy(logits, targets), float(F.cross_entropy(logits, targets))


def summarise_episodes(results: Sequence[tuple[float, float]]) -> dict[str, float]:
    """``(accuracy, loss)`` per episode -> mean accuracy, its 95% interval, mean loss, count."""
    if not results:
        raise DataError("no episodes to evaluate")
    accuracies = [a for a, _ in results]
    n = len(results)
    return {
        "accuracy": sum(accuracies) / n,
        "accuracy_ci95": confidence_interval95(accuracies),
        "loss": sum(loss for _, loss in results) / n,
        "episodes": float(n),
    }


def episode_accuracy(logits: Any, targets: Any) -> float:
    """Fraction of queries whose highest logit is their class."""
    return float((logits.detach().argmax(dim=1) == targets).float().mean())
