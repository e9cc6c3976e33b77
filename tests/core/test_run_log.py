"""Warnings and plugin log lines reach the run's log.txt and log events, from the method's
``setup()`` on, and nothing of a run's logging outlives it."""

from __future__ import annotations

import logging
import warnings

import pytest

from tests.helpers import tiny_experiment
from transferstudio.core.progress import events as E
from transferstudio.core.runs.run_log import LOGGER
from transferstudio.core.training.engine import PlainState, run_experiment


@pytest.mark.filterwarnings("always::UserWarning")
def test_setup_log_lines_and_warnings_end_in_log_txt_and_events(make_images, tmp_path, host):
    spec = host.methods["fine-tune"]
    original = spec.factory

    def noisy_factory(params):
        method = original(params)
        real_setup = method.setup

        def setup(ctx):
            ctx.log("hello from setup")
            warnings.warn("setup is deprecated-ish", UserWarning, stacklevel=1)
            logging.getLogger("transferstudio.plugin").warning("a plugin's own logger")
            real_setup(ctx)

        method.setup = setup
        return method

    object.__setattr__(spec, "factory", noisy_factory)  # the spec may be a frozen dataclass
    try:
        exp = tiny_experiment(make_images({"a": 6, "b": 6}), train__epochs=1)
        state = PlainState()
        showwarning = warnings.showwarning
        result = run_experiment(exp, host, state, tmp_path / "ws")
    finally:
        object.__setattr__(spec, "factory", original)
    assert result.status == "completed", result.message
    log = (result.folder / "log.txt").read_text(encoding="utf-8")
    assert "hello from setup" in log
    assert "UserWarning: setup is deprecated-ish" in log
    assert "a plugin's own logger" in log
    messages = [e.text for e in state.events if isinstance(e, E.LogMessage)]
    assert any("setup is deprecated-ish" in m for m in messages)
    # detached: no handler and no warning hook left behind for the next run
    assert warnings.showwarning is showwarning
    assert not [h for h in LOGGER.handlers if type(h).__name__ == "_RunLogHandler"]
