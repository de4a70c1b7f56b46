"""Every property of `PROPERTIES` on one backbone state, and the baselines that need no model."""
from __future__ import annotations

from typing import TYPE_CHECKING

from telly.probing.data import ProbeData, state_features
from telly.probing.properties import PROPERTIES
from telly.profiles import Profile

if TYPE_CHECKING:
    from telly.backbones import Backbone

# The backbone states a study probes, in the order records list them.
STATES = ("random", "pretrained", "finetuned")


def probe_state(backbone: Backbone, data: ProbeData, profile: Profile, *, max_length: int, seed: int = 0,
                progress: bool = True) -> dict[str, dict]:
    """{property name: result} for `backbone`, reading each input set the properties need once."""
    needs = {name for prop in PROPERTIES for name in prop.inputs}
    features = state_features(backbone, data, needs, max_length=max_length,
                              batch_size=profile.feature_batch_size, progress=progress)
    return {prop.name: prop.evaluate(features, data, profile, seed) for prop in PROPERTIES}


def baselines(data: ProbeData, profile: Profile, seed: int = 0) -> dict[str, list[dict]]:
    """{property name: its baselines} on the same split (no backbone involved)."""
    return {prop.name: prop.baselines(data, profile, seed) for prop in PROPERTIES}
