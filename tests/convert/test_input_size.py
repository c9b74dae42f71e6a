"""The input size a conversion uses: --imgsz, else the checkpoint's own, else the target's (issue 12.3).

A model trained at 160 px and exported at a profile's 640 loses most of its mAP (0.536 -> 0.137 on the yolov8
fixture), so the checkpoint's recorded size must win and every disagreement must be printed.
"""

from __future__ import annotations

import pytest

from edgekit.convert.chain import resolve_input_size
from edgekit.targets import load_target


@pytest.fixture(scope="module")
def intel_cpu():
    target = load_target("intel-cpu")
    assert target.input_size == (640, 640)
    return target


def test_the_checkpoints_own_size_wins_over_the_profile_and_the_conflict_is_printed(intel_cpu):
    size, note = resolve_input_size((160, 160), True, None, intel_cpu)
    assert size == (160, 160)
    assert "suggests 640x640" in note and "160x160" in note


def test_no_note_when_the_sizes_agree(intel_cpu):
    assert resolve_input_size((640, 640), True, None, intel_cpu) == ((640, 640), None)


def test_the_profile_applies_only_when_the_checkpoint_records_no_size(intel_cpu):
    size, note = resolve_input_size((352, 352), False, None, intel_cpu)
    assert size == (640, 640)
    assert "does not record its input size" in note


def test_an_explicit_size_wins_and_a_conflict_with_the_checkpoint_is_printed(intel_cpu):
    size, note = resolve_input_size((160, 160), True, (320, 320), intel_cpu)
    assert size == (320, 320)
    assert "trained at 160x160" in note
    assert resolve_input_size((352, 352), False, (320, 320), intel_cpu) == ((320, 320), None)


def test_a_profile_without_size_keeps_the_model_size(intel_cpu):
    from dataclasses import replace

    free = replace(intel_cpu, input_size=None)
    assert resolve_input_size((352, 352), False, None, free) == ((352, 352), None)
