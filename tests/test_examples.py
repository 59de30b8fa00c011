"""The example files the README points to (``configs/examples/``) ship, and the real readers
accept them: prompts for ``multishot generate --prompts``, a schedule for ``--causal
--schedule``, training prompts for ``multishot distill`` (``prompts:``)."""

from __future__ import annotations

from pathlib import Path

from multishot.distill.prompts import read_prompts
from multishot.generate.schedule import read_schedule_file
from multishot.generate.shots import read_prompts_file

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"


def test_prompts_file_reads_into_requests():
    requests = read_prompts_file(EXAMPLES / "prompts.jsonl", num_frames=81, seed=7)
    assert [r.name for r in requests] == ["harbour", "kitchen", "desert"]
    assert requests[0].cut_frames == [81, 161] and requests[0].num_frames == 241
    assert len(requests[1].cut_frames) == 1 and requests[2].cut_frames == []  # spread evenly / one shot
    assert requests[2].num_frames == 81 and requests[2].seed == 2


def test_schedule_file_reads_into_shots():
    schedule = read_schedule_file(EXAMPLES / "shots.txt", default_chunks=5)
    assert schedule.global_caption.startswith("A rainy night")
    assert [s.chunks for s in schedule.shots] == [5, 6, 5]


def test_distill_prompts_read():
    prompts = read_prompts(EXAMPLES / "distill_prompts.jsonl")
    assert [len(p.shots) for p in prompts] == [2, 3]
