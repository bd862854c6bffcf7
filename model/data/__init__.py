"""Synthetic dialogue data (``scenarios``, ``generate``).

The camera scenarios (``visual``) and in-turn cue scenarios (``cues``) live in their own
modules on top of ``scenarios``; they are registered into ``scenarios.SCENARIOS`` here, so that
whoever imports any part of the package sees every scenario (and no import cycle is needed).
"""

from model.data import cues, scenarios, visual

scenarios.SCENARIOS.update(visual.SCENARIOS)
scenarios.SCENARIOS.update(cues.SCENARIOS)
