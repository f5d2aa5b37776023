"""Strategies by name. Each file of this package (and of `fedmm.baselines`) holds one algorithm and
registers its `StrategySpec`; the Flower machinery they share is in `base.py` and `client_dp.py`.
"""

from fedmm.strategies.spec import (
    Exchange,
    NoOptions,
    PrivacyMode,
    StrategySpec,
    all_strategies,
    register,
    strategy_names,
    strategy_options,
    strategy_spec,
)

__all__ = ["Exchange", "NoOptions", "PrivacyMode", "StrategySpec", "all_strategies", "register", "strategy_names",
           "strategy_options", "strategy_spec"]
