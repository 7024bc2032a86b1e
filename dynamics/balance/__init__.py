"""Interventions against modality imbalance, applied by hooks to the user's own model and loop.

Each returns a handle that is a context manager and removes every hook it made; its decisions go into the
per-step table of the recorder attached to the same model:

* :func:`modality_dropout` / :class:`ModalityDropout`: drop one view's representation per sample;
* :func:`rebalance`: conditional-learning-speed re-balancing (Wu et al., ICML 2022), adapted to late fusion;
* :func:`ogm_ge`: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).
"""
from .dropout import DropoutHandle, ModalityDropout, dropout_masks, modality_dropout
from .fusion import FusionInput
from .handle import Intervention
from .ogm import OGMGE, coefficients, ogm_ge, scores, unimodal_outputs
from .rebalance import Rebalance, decide, rebalance

__all__ = ["modality_dropout", "ModalityDropout", "rebalance", "ogm_ge", "Intervention", "DropoutHandle",
           "Rebalance", "OGMGE", "FusionInput", "dropout_masks", "decide", "scores", "coefficients",
           "unimodal_outputs"]
