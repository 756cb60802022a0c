"""Retention policies: how the training mix of generation k >= 1 is built. One module each,
registered in :data:`lmcollapse.registry.POLICIES` with its settings (see
:mod:`lmcollapse.policies.base`); :func:`lmcollapse.registry.discover` imports every module
here, so a new policy is one new file."""

from lmcollapse.policies.base import (
    FractionSettings,
    MixContext,
    Policy,
    make_policy,
    reserve_needed,
)

__all__ = ["FractionSettings", "MixContext", "Policy", "make_policy", "reserve_needed"]
