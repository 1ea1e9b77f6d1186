"""Losses with one call shape: ``loss(inputs, labels)``, ``loss.terms(...)``, ``loss.weights``.

Every loss is registered under a snake-case config name; :func:`create_loss` builds one from
a config entry.
"""

from chanloss.losses.arcface import ArcFaceLoss
from chanloss.losses.base import Loss
from chanloss.losses.cc_loss import CCLoss
from chanloss.losses.center import CenterLoss
from chanloss.losses.competing_ratio import CompetingRatioLoss
from chanloss.losses.cosface import CosFaceLoss
from chanloss.losses.cross_entropy import CrossEntropyLoss
from chanloss.losses.em_softmax import EMSoftmaxLoss
from chanloss.losses.focal import FocalLoss
from chanloss.losses.label_smoothing import LabelSmoothingLoss
from chanloss.losses.lgm import LGMLoss
from chanloss.losses.lsoftmax import LSoftmaxLoss
from chanloss.losses.mc_loss import MCLoss
from chanloss.losses.registry import LOSSES, create_loss, register_loss
from chanloss.losses.sphereface import SphereFaceLoss

__all__ = [
    "CCLoss",
    "LOSSES",
    "CompetingRatioLoss",
    "CrossEntropyLoss",
    "EMSoftmaxLoss",
    "LGMLoss",
    "Loss",
    "create_loss",
    "register_loss",
    "ArcFaceLoss",
    "CenterLoss",
    "CosFaceLoss",
    "FocalLoss",
    "LabelSmoothingLoss",
    "LSoftmaxLoss",
    "MCLoss",
    "SphereFaceLoss",
]
