"""When a job in parts hands its slot back (docpipe_ingest.parts.hand_back_due): after a kept
part, once it has held the slot for a slice, and only while parts are left; never with a slice
of 0."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_contracts.configuration import SettingsError, load_settings
from docpipe_ingest.parts import PartsConfig, hand_back_due
from docpipe_ingest.settings import WorkerSettings

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
slices = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False)


def test_a_job_that_held_its_slot_for_a_slice_hands_it_back() -> None:
    assert hand_back_due(20.0, 20.0, parts_left=3)
    assert hand_back_due(45.0, 20.0, parts_left=1)


def test_a_job_within_its_slice_keeps_its_slot() -> None:
    assert not hand_back_due(19.9, 20.0, parts_left=3)


def test_the_last_part_completes_the_job_instead_of_handing_it_back() -> None:
    assert not hand_back_due(600.0, 20.0, parts_left=0)


@given(held=seconds, left=st.integers(min_value=0, max_value=10_000))
def test_a_slice_of_zero_never_hands_back(held: float, left: int) -> None:
    assert not hand_back_due(held, 0.0, parts_left=left)


@given(held=seconds, slice_s=slices, left=st.integers(min_value=1, max_value=10_000))
def test_with_parts_left_it_hands_back_exactly_once_the_slice_is_held(
    held: float, slice_s: float, left: int
) -> None:
    assert hand_back_due(held, slice_s, parts_left=left) == (held >= slice_s)


@given(a=seconds, b=seconds, slice_s=slices)
def test_holding_longer_never_turns_a_hand_back_into_keeping_the_slot(
    a: float, b: float, slice_s: float
) -> None:
    shorter, longer = sorted((a, b))
    if hand_back_due(shorter, slice_s, parts_left=1):
        assert hand_back_due(longer, slice_s, parts_left=1)


def test_the_slice_is_20_seconds_by_default_and_set_by_docpipe_part_slice_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert PartsConfig().slice_s == load_settings(WorkerSettings).part_slice_seconds == 20.0
    monkeypatch.setenv("DOCPIPE_PART_SLICE_SECONDS", "0")
    assert load_settings(WorkerSettings).part_slice_seconds == 0.0
    monkeypatch.setenv("DOCPIPE_PART_SLICE_SECONDS", "-1")
    with pytest.raises(SettingsError, match="DOCPIPE_PART_SLICE_SECONDS"):
        load_settings(WorkerSettings)
