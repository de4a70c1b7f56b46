"""telly.profiles: sections with help text, profiles as differences, a flat stored form."""
import dataclasses

import pytest

from telly.profiles import FIELD_SECTION, PROFILES, SECTIONS, Profile, get_profile


def test_every_field_has_help_and_a_name_unique_across_sections():
    names = [f.name for kind in SECTIONS.values() for f in dataclasses.fields(kind)]
    assert len(names) == len(set(names)) == len(FIELD_SECTION)
    assert all(f.metadata.get("help") for kind in SECTIONS.values() for f in dataclasses.fields(kind))


def test_changed_routes_each_field_to_its_section_and_refuses_unknown_ones():
    smoke = get_profile("smoke")
    unit = smoke.changed(name="unit", batch_size=4, max_code_tokens=16)
    assert (unit.name, unit.training.batch_size, unit.inputs.max_code_tokens) == ("unit", 4, 16)
    assert unit.probing == smoke.probing and smoke.training.batch_size == 16  # a copy: smoke is untouched
    with pytest.raises(ValueError, match="profile 'smoke' has no field 'batchsize'"):
        smoke.changed(batchsize=4)


def test_to_dict_is_flat_and_every_profile_keeps_its_margins():
    for profile in PROFILES.values():
        flat = profile.to_dict()
        assert set(flat) == {"name", *FIELD_SECTION} and flat["name"] == profile.name
        assert profile.margin("mrr") == dict(flat["margins"])["mrr"]
    assert isinstance(get_profile("laptop"), Profile)
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        get_profile("nope")


def test_task_sizes_plan_one_tasks_seeds_and_splits_and_leave_the_others():
    profile = get_profile("laptop").changed(task_sizes=(("code-search", 5, 300, 64, 900),))
    assert profile.seeds_for("code-search") == (0, 1, 2, 3, 4)
    assert profile.seeds_for("clone-detection") == profile.training.seeds
    assert profile.split_sizes("code-search", (1, 2, 3)) == {"train": 300, "valid": 64, "test": 900}
    assert profile.split_sizes("clone-detection", (1, 2, 3)) == {"train": 1, "valid": 2, "test": 3}


def test_a_planned_task_loads_its_planned_splits(tiny):
    from telly.tasks import get_task

    profile = get_profile("smoke").changed(task_sizes=(("code-summarization", 5, 12, 4, 7),))
    assert get_task("code-summarization").load_data(profile).sizes() == {"train": 12, "valid": 4, "test": 7}
    assert get_task("code-generation").load_data(profile).sizes() == dict(zip(("train", "valid", "test"),
                                                                             profile.generation.generation_examples))
