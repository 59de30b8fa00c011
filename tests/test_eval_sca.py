"""Shot Cut Accuracy: properties of the metric, and the real detector on the pipeline's samples."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multishot.evaluate.sca import PENALTY_SHOTS, cuts_from_shots, penalty_frames, shot_cut_accuracy
from multishot.pipeline.detect import DetectedShot

#: the first example imports scipy; a per-example deadline would flag that, not the metric
NO_DEADLINE = settings(deadline=None)


@st.composite
def layouts(draw, max_cuts: int = 6):
    """(requested cuts, num_frames): distinct cut frames in [1, F) at least 8 frames apart."""
    num_frames = draw(st.integers(40, 400))
    cuts = draw(st.lists(st.integers(1, num_frames - 1), min_size=1, max_size=max_cuts, unique=True))
    cuts = sorted(cuts)
    if any(b - a < 8 for a, b in zip(cuts, cuts[1:])):
        cuts = cuts[:1]
    return cuts, num_frames


@NO_DEADLINE
@given(layouts())
def test_detected_equal_to_requested_scores_one(layout):
    cuts, num_frames = layout
    result = shot_cut_accuracy(cuts, cuts, num_frames)
    assert result.sca == 1.0 and result.nsd == 0.0
    assert result.matched == [(c, c) for c in cuts] and not result.missed and not result.extra


@NO_DEADLINE
@given(layouts(), st.data())
def test_a_missed_or_an_extra_cut_scores_lower_by_one_penalty(layout, data):
    cuts, num_frames = layout
    dropped = data.draw(st.sampled_from(cuts))
    missed = shot_cut_accuracy([c for c in cuts if c != dropped], cuts, num_frames)
    assert missed.missed == [dropped] and missed.sca < 1.0
    assert missed.nsd == pytest.approx(penalty_frames(len(cuts), num_frames) / num_frames)
    free = [f for f in range(1, num_frames) if all(abs(f - c) > 2 * num_frames for c in cuts)
            ] or [f for f in range(1, num_frames) if f not in cuts]
    added = data.draw(st.sampled_from(free))
    extra = shot_cut_accuracy(sorted(cuts + [added]), cuts, num_frames)
    assert extra.sca < 1.0 and len(extra.matched) + len(extra.extra) == len(cuts) + 1


@NO_DEADLINE
@given(layouts(max_cuts=1), st.integers(1, 30))
def test_a_shifted_cut_scores_lower_the_farther_it_is(layout, shift):
    (cut,), num_frames = layout
    scores = []
    for d in (0, shift, shift + 1):
        moved = cut + d if cut + d < num_frames else cut - d
        if not 1 <= moved < num_frames:
            return
        scores.append(shot_cut_accuracy([moved], [cut], num_frames).sca)
    assert scores[0] == 1.0 and scores[1] < 1.0
    assert scores[2] <= scores[1]
    # within two penalties the cut stays matched and every frame of shift costs
    if shift + 1 < 2 * penalty_frames(1, num_frames):
        assert scores[2] < scores[1]
        assert scores[1] == pytest.approx(math.exp(-shift / num_frames))


def _brute_force_error(detected: list[int], requested: list[int], penalty: float) -> float:
    """Minimum over every partial one-to-one matching: matched deviations + penalty per unmatched cut."""
    best = penalty * (len(detected) + len(requested))
    for size in range(1, min(len(detected), len(requested)) + 1):
        for req in itertools.combinations(requested, size):
            for det in itertools.permutations(detected, size):
                cost = sum(abs(a - b) for a, b in zip(req, det))
                best = min(best, cost + penalty * (len(detected) + len(requested) - 2 * size))
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(30, 200).flatmap(lambda f: st.tuples(
    st.just(f), st.lists(st.integers(1, f - 1), max_size=4, unique=True),
    st.lists(st.integers(1, f - 1), max_size=4, unique=True))))
def test_hungarian_matching_finds_the_cheapest_partial_matching(case):
    num_frames, detected, requested = case
    result = shot_cut_accuracy(detected, requested, num_frames)
    expected = _brute_force_error(sorted(detected), sorted(requested), penalty_frames(len(requested), num_frames))
    assert result.matched_error + result.penalty_error == pytest.approx(expected)
    assert result.sca == pytest.approx(math.exp(-expected / num_frames))


def test_penalty_is_a_mean_shot_length_and_cuts_are_validated():
    assert PENALTY_SHOTS == 1.0
    assert penalty_frames(5, 240) == 40.0  # 6 shots of 40 frames
    with pytest.raises(ValueError, match="outside"):
        shot_cut_accuracy([0], [10], 100)  # frame 0 starts the first shot: no cut
    with pytest.raises(ValueError, match="outside"):
        shot_cut_accuracy([10], [100], 100)


def test_a_gradual_transition_cuts_in_its_middle():
    shots = [DetectedShot(0, 30, False), DetectedShot(30, 60, False), DetectedShot(70, 100, True)]
    assert cuts_from_shots(shots) == [30, 65]


def test_pipeline_samples_of_real_footage_score_at_least_095(footage_shards, tmp_path):
    """The pipeline's rendered samples (hard cuts at known frames) through the real TransNetV2."""
    import pyarrow.fs as pafs

    from multishot.dataset.shards import ShardSetLayout, read_shard
    from multishot.evaluate.video import Evaluator, EvalConfig

    fs = pafs.LocalFileSystem()
    layout = ShardSetLayout(footage_shards)
    shards = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(layout.shards_dir)) if i.path.endswith(".tar"))
    evaluator = Evaluator(EvalConfig())
    scores, cuts = [], 0
    for shard in shards:
        for record, mp4 in read_shard(fs, shard):
            path = tmp_path / f"{record.key}.mp4"
            path.write_bytes(mp4)
            result = evaluator.evaluate(path, record.cut_frames, None)
            assert result["num_frames"] == record.num_frames
            scores.append(result["metrics"]["sca"])
            cuts += len(record.cut_frames)
    assert len(scores) >= 3 and cuts >= 3, (len(scores), cuts)
    assert sum(scores) / len(scores) >= 0.95, scores
