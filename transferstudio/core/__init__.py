"""The Qt-free core: experiments, data, models, engine, metrics, runs. Never imports Qt."""
