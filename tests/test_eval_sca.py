"""Shot Cut Accuracy: properties of the metric, and the real detector on the pipeline's samples."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multishot.evaluate.sca import cuts_from_shots, extra_cost, missed_cost, shot_cut_accuracy
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
def test_a_missed_or_an_extra_cut_scores_lower(layout, data):
    cuts, num_frames = layout
    dropped = data.draw(st.sampled_from(cuts))
    missed = shot_cut_accuracy([c for c in cuts if c != dropped], cuts, num_frames)
    assert missed.sca < 1.0
    # a miss costs at most the frames of the shorter shot it merges (less if re-matching is cheaper)
    edges = [0, *cuts, num_frames]
    j = edges.index(dropped)
    assert missed.nsd * num_frames <= min(dropped - edges[j - 1], edges[j + 1] - dropped) + 1e-9
    added = data.draw(st.sampled_from([f for f in range(1, num_frames) if f not in cuts]))
    extra = shot_cut_accuracy(sorted(cuts + [added]), cuts, num_frames)
    assert extra.sca < 1.0 and extra.nsd * num_frames <= extra_cost(added, cuts, num_frames) + 1e-9


@NO_DEADLINE
@given(layouts(max_cuts=1), st.integers(1, 60), st.booleans())
def test_a_shifted_cut_scores_lower_the_farther_it_is(layout, shift, right):
    (cut,), num_frames = layout
    room = num_frames - cut if right else cut  # the shot the cut moves into
    step = 1 if right else -1
    scores = [shot_cut_accuracy([cut + step * d], [cut], num_frames).sca
              for d in (shift, shift + 1) if 0 < cut + step * d < num_frames]
    if len(scores) < 2:
        return
    assert scores[0] < 1.0 and scores[1] < 1.0
    if shift + 1 <= room / 2:  # nearer its own place than the far side: every frame counts
        assert scores[1] < scores[0]
        assert scores[0] == pytest.approx(math.exp(-shift / num_frames))
    else:  # past half the shot it is priced as a miss plus an extra, never above its shift
        assert scores[1] >= math.exp(-(shift + 1) / num_frames) - 1e-12


def _brute_force_error(detected: list[int], requested: list[int], num_frames: int) -> float:
    """Minimum over every partial one-to-one matching: matched deviations + unmatched cuts' costs."""
    miss = {c: missed_cost(c, requested, num_frames) for c in requested}
    extra = {c: extra_cost(c, requested, num_frames) for c in detected}
    best = sum(miss.values()) + sum(extra.values())
    for size in range(1, min(len(detected), len(requested)) + 1):
        for req in itertools.combinations(requested, size):
            for det in itertools.permutations(detected, size):
                cost = sum(abs(a - b) for a, b in zip(req, det))
                cost += sum(v for c, v in miss.items() if c not in req) + sum(v for c, v in extra.items() if c not in det)
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


def test_penalties_count_frames_in_the_wrong_shot_and_cuts_are_validated():
    # requested shots [0, 40) [40, 100) [100, 240): missing the cut at 40 merges 40 frames away
    assert missed_cost(40, [40, 100], 240) == 40 and missed_cost(100, [40, 100], 240) == 60
    assert extra_cost(130, [40, 100], 240) == 30 and extra_cost(230, [40, 100], 240) == 10
    result = shot_cut_accuracy([45, 230], [40, 100], 240)  # pairing 100 with 230 would cost 130
    assert result.matched == [(40, 45)] and result.missed == [100] and result.extra == [230]
    assert result.nsd == pytest.approx((5 + 60 + 10) / 240)
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
