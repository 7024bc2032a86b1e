"""Experiments that reproduce Wu et al. (MIDL 2020) with `dynamics`: data sets, models, training, the grid."""
