"""Shot Cut Accuracy: properties of the metric, and the real detector on the pipeline's samples."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multishot.evaluate.sca import cut_penalty, cuts_from_shots, shot_cut_accuracy
from multishot.pipeline.detect import DetectedShot

#: the first example imports scipy; a per-example deadline would flag that, not the metric
NO_DEADLINE = settings(deadline=None)


@st.composite
def layouts(draw, max_cuts: int = 6):
    """(requested cuts, num_frames): distinct cut frames in [1, F)."""
    num_frames = draw(st.integers(40, 400))
    cuts = draw(st.lists(st.integers(1, num_frames - 1), min_size=1, max_size=max_cuts, unique=True))
    return sorted(cuts), num_frames


@NO_DEADLINE
@given(layouts())
def test_detected_equal_to_requested_scores_one(layout):
    cuts, num_frames = layout
    result = shot_cut_accuracy(cuts, cuts, num_frames)
    assert result.sca == 1.0 and result.nsd == 0.0
    assert result.matched == [(c, c) for c in cuts] and not result.missed and not result.extra


@NO_DEADLINE
@given(layouts(), st.data())
def test_a_missed_or_an_extra_cut_costs_one_constant_penalty(layout, data):
    cuts, num_frames = layout
    penalty = cut_penalty(len(cuts), num_frames)
    assert penalty == num_frames / (len(cuts) + 1)
    dropped = data.draw(st.sampled_from(cuts))
    missed = shot_cut_accuracy([c for c in cuts if c != dropped], cuts, num_frames)
    # a miss costs P, unless re-pairing the neighbours is cheaper; never more than P
    assert missed.sca < 1.0 and missed.nsd * num_frames <= penalty + 1e-9
    assert missed.shot_count_error == -1
    added = data.draw(st.sampled_from([f for f in range(1, num_frames) if f not in cuts]))
    extra = shot_cut_accuracy(sorted(cuts + [added]), cuts, num_frames)
    assert extra.sca < 1.0 and extra.nsd * num_frames <= penalty + 1e-9
    assert extra.shot_count_error == 1


@NO_DEADLINE
@given(layouts(max_cuts=4), st.integers(1, 12), st.data())
def test_more_extra_cuts_cost_more(layout, more, data):
    cuts, num_frames = layout
    free = [f for f in range(1, num_frames) if f not in cuts]
    extras = data.draw(st.lists(st.sampled_from(free), min_size=1, max_size=min(len(free), more), unique=True))
    scores = [shot_cut_accuracy(sorted(cuts + extras[:n]), cuts, num_frames) for n in range(len(extras) + 1)]
    assert all(b.sca < a.sca for a, b in zip(scores, scores[1:]))
    # every extra cut costs exactly P when the requested ones are all detected
    for n, r in enumerate(scores):
        assert r.penalty_error == pytest.approx(n * cut_penalty(len(cuts), num_frames))
        assert r.shot_count_error == n


def test_near_duplicate_extra_cuts_are_not_free():
    # the case: a 4-cut request, 8 extra cuts one frame after requested ones
    requested = [48, 96, 144, 192]
    detected = sorted(requested + [c + 1 for c in requested] + [c + 2 for c in requested])
    result = shot_cut_accuracy(detected, requested, 241)
    assert len(result.extra) == 8 and result.shot_count_error == 8
    assert result.sca == pytest.approx(math.exp(-8 / 5)) and result.sca < 0.21


@pytest.mark.parametrize("shots, low, high", [(3, 0.50, 0.52), (4, 0.46, 0.48), (5, 0.44, 0.46)])
def test_a_video_without_cuts_scores_as_the_papers_never_cutting_baselines(shots, low, high):
    num_frames = 241
    requested = [round(num_frames * i / shots) for i in range(1, shots)]
    result = shot_cut_accuracy([], requested, num_frames)
    assert low <= result.sca <= high
    assert 0.44 <= result.sca <= 0.52  # the 0.45-0.51 band of the papers' single-shot baselines
    assert result.shot_count_error == -(shots - 1)


@NO_DEADLINE
@given(layouts(max_cuts=1), st.integers(1, 60), st.booleans())
def test_a_shifted_cut_scores_lower_the_farther_it_is(layout, shift, right):
    (cut,), num_frames = layout
    step = 1 if right else -1
    penalty = cut_penalty(1, num_frames)
    scores = [shot_cut_accuracy([cut + step * d], [cut], num_frames).sca
              for d in (shift, shift + 1) if 0 < cut + step * d < num_frames]
    if len(scores) < 2:
        return
    assert scores[0] < 1.0 and scores[1] < 1.0
    if shift + 1 <= 2 * penalty:  # paired: every frame of shift counts
        assert scores[1] < scores[0]
        assert scores[0] == pytest.approx(math.exp(-shift / num_frames))
    else:  # farther than a miss plus an extra: priced as both
        assert scores[1] == pytest.approx(math.exp(-2 * penalty / num_frames))


def _brute_force_error(detected: list[int], requested: list[int], num_frames: int) -> float:
    """Minimum over every partial one-to-one matching: matched deviations + P per unmatched cut."""
    penalty = cut_penalty(len(requested), num_frames)
    best = penalty * (len(detected) + len(requested))
    for size in range(1, min(len(detected), len(requested)) + 1):
        for req in itertools.combinations(requested, size):
            for det in itertools.permutations(detected, size):
                cost = sum(abs(a - b) for a, b in zip(req, det))
                cost += penalty * (len(requested) + len(detected) - 2 * size)
                best = min(best, cost)
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(30, 200).flatmap(lambda f: st.tuples(
    st.just(f), st.lists(st.integers(1, f - 1), max_size=4, unique=True),
    st.lists(st.integers(1, f - 1), max_size=4, unique=True))))
def test_hungarian_matching_finds_the_cheapest_partial_matching(case):
    num_frames, detected, requested = case
    result = shot_cut_accuracy(detected, requested, num_frames)
    expected = _brute_force_error(sorted(detected), sorted(requested), num_frames)
    assert result.matched_error + result.penalty_error == pytest.approx(expected)
    assert result.sca == pytest.approx(math.exp(-expected / num_frames))


def test_penalties_are_one_mean_shot_and_cuts_are_validated():
    # requested shots [0, 40) [40, 60) [60, 240): P = 240 / 3 = 80 frames
    result = shot_cut_accuracy([45, 230], [40, 60], 240)  # pairing 60 with 230 would cost 170 > 2P
    assert result.matched == [(40, 45)] and result.missed == [60] and result.extra == [230]
    assert result.penalty == 80 and result.nsd == pytest.approx((5 + 80 + 80) / 240)
    assert shot_cut_accuracy([45, 219], [40, 60], 240).matched == [(40, 45), (60, 219)]  # 159 < 2P
    assert shot_cut_accuracy([45, 130], [40, 100], 240).matched == [(40, 45), (100, 130)]
    with pytest.raises(ValueError, match="outside"):
        shot_cut_accuracy([0], [10], 100)  # frame 0 starts the first shot: no cut
    with pytest.raises(ValueError, match="outside"):
        shot_cut_accuracy([10], [100], 100)
    with pytest.raises(ValueError, match="twice"):
        shot_cut_accuracy([10], [20, 20], 100)


def test_a_gradual_transition_cuts_in_its_middle():
    shots = [DetectedShot(0, 30, False), DetectedShot(30, 60, False), DetectedShot(70, 100, True)]
    assert cuts_from_shots(shots) == [30, 65]


@pytest.mark.timeout(1800)  # may be the first user of the session's pipeline run, which it then waits for
def test_pipeline_samples_of_real_footage_are_scored(footage_shards, tmp_path):
    """The pipeline's rendered samples (hard cuts at known frames) through the real TransNetV2.

    No target is set on SCA's value on our own footage (issue 30: a metric tuned to reach a
    target on our data is circular); the scores are checked for consistency and printed."""
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
            sca = result["sca"]
            assert sca["sca"] == pytest.approx(math.exp(-sca["nsd"])) == result["metrics"]["sca"]
            assert sca["shot_count_error"] == len(result["detected_cuts"]) - len(record.cut_frames)
            scores.append(sca["sca"])
            cuts += len(record.cut_frames)
    assert len(scores) >= 3 and cuts >= 3, (len(scores), cuts)
    print(f"SCA of {len(scores)} pipeline samples: mean {sum(scores) / len(scores):.3f}, {scores}")
