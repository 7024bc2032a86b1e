"""Two-view data sets. Every loader returns :class:`TwoViewSplits`: per split, one tensor per view and labels."""
from analyses.datasets.common import TwoViewData, TwoViewSplits, stratified_split

__all__ = ["TwoViewData", "TwoViewSplits", "stratified_split"]
