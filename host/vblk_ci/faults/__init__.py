"""Named, parameterised faults a scenario (or a JSON schedule) can fire at a running VM.

``kinds`` holds the registry (name -> parameter validation -> a ``Fault`` that
arms and disarms itself through QMP), ``qmp`` the pure QMP argument builders,
``schedule`` the JSON schedule format and ``runner`` the loop that fires a
schedule's faults at points of I/O progress reported by the guest agent.
"""

from .kinds import KINDS, Fault, make_fault
from .schedule import Schedule, ScheduledFault, Trigger, load_schedule

__all__ = ["KINDS", "Fault", "Schedule", "ScheduledFault", "Trigger", "load_schedule", "make_fault"]
