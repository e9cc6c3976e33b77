"""The ``detect`` method's settings: scale jitter around min_size, evaluation at min_size, and
sizes that contradict each other refused naming the key."""

from __future__ import annotations

import pytest
from transferstudio_builtins.detect import DetectParams

from transferstudio.api import ExperimentError


def test_scale_jitter_trains_around_min_size_and_evaluates_at_it():
    sizes = DetectParams(min_size=300, scale_jitter=True).detector_options()["min_size"]
    assert sorted(sizes) == [240, 270, 300, 330, 360]
    # torchvision evaluates at the last size of the tuple.
    assert sizes[-1] == 300
    assert DetectParams(min_size=300, scale_jitter=False).detector_options()["min_size"] == (300,)


def test_a_max_size_below_min_size_is_refused_naming_the_key():
    with pytest.raises(ExperimentError) as info:
        DetectParams(min_size=600, max_size=400).validate()
    assert info.value.key == "method.params.max_size"
