"""Everything that runs inside training: which parameter belongs to which view (views), when to record
(schedules), the per-tensor reductions (kernels), the hooks and step state machine (recorder), per-view parts
of shared weights (attribution), the probe, the plug-in interface of recorded quantities (quantity) and one
plug-in (update_alignment), and the distributed layout."""
from .attribution_spec import rows, view
from .probe import ProbeBatch
from .quantity import Quantity
from .recorder import InactiveRecorder, Recorder, attach
from .update_alignment import UpdateAlignment

__all__ = ["attach", "Recorder", "InactiveRecorder", "view", "rows", "ProbeBatch", "Quantity", "UpdateAlignment"]
