"""oodbench core: contract, registry, data, models, training, metrics, cache, results and leaderboards."""

__version__ = "0.1.0"
