"""Training objectives (``train.loss``): one module per loss, each registered with
:data:`lmcollapse.registry.LOSSES` (:mod:`~lmcollapse.losses.base`: the interface)."""

from lmcollapse.losses.base import Loss, make_loss

__all__ = ["Loss", "make_loss"]
