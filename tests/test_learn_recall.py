"""Issue 32 [L]'s recall experiment (``multishot.learn_recall``) at the smallest size on CPU: the
committed world encoders, two A-B-A films, two teacher-forcing steps, one held-out prompt
streamed with CAMR and with the local window alone, both rows scored; what each row's return
shot attended is read from the streamed KV cache."""

from __future__ import annotations

import torch

from multishot import learn_recall
from multishot.dataset.synthetic_world import classify_video, render_film


def test_the_films_hide_the_character_in_b_and_name_it_nowhere():
    film = learn_recall.recall_film(5)
    assert film.cut_frames == [17, 33] and film.num_frames == 49 and film.aba
    assert film.caption_mode == "anonymous" and film.character.colour not in film.prompt
    assert film.character.shape not in film.prompt and film.character.texture not in film.prompt
    reading = classify_video(render_film(film))
    assert reading.shot_characters == [film.character, None, film.character]
    assert learn_recall.shot_ranges() == [(0, 5), (5, 9), (9, 13)]


def test_recall_path_runs_both_rows_and_only_camr_reaches_shot_a():
    torch.set_num_threads(2)
    result = learn_recall.run("cpu", train_films=2, eval_films=1, steps=2, batch=2, lr=1e-3,
                              sample_steps=2, dim=32, layers=2, heads=2, seeds=[0],
                              stream_seeds=[0], log=lambda m: None)
    rows = result["rows"]
    assert set(rows) == {"camr", "local_window"}
    assert result["training"][0]["steps"] == 2
    # the ceiling: ground truth through the world VAE reads scene A back in the third shot
    assert result["vae_ceiling"]["scene_recall"] == 1.0
    for row in rows.values():
        (run,) = row["per_seed"]
        for key in ("aba_recall", "character_recall", "scene_recall", "b_empty"):
            assert 0.0 <= run[key] <= 1.0
    a_end = learn_recall.shot_ranges()[0][1]
    # the local window alone: the last 4 frames, never shot A, during the return shot
    (local,) = rows["local_window"]["per_seed"][0]["attended_return"]
    assert local == {"5": [[5, 6, 7, 8]] * 2, "6": [[7, 8, 9, 10]] * 2}
    assert rows["local_window"]["return_passes_attending_a"] == 0.0
    # CAMR: the local window (one chunk) plus routed frames from before it, some of them in A
    (camr,) = rows["camr"]["per_seed"][0]["attended_return"]
    for chunk, window in (("5", [7, 8]), ("6", [9, 10])):
        for frames in camr[chunk]:
            routed = [f for f in frames if f < window[0]]
            assert frames[-2:] == window and 2 <= len(routed) <= window[0]
    assert any(f < a_end for per_block in camr.values() for frames in per_block for f in frames)
    assert rows["camr"]["per_seed"][0]["routed_in_a"] > 0
