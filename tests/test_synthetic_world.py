"""The synthetic world of issue 30: deterministic films, their ground truth, real mp4s and the
classifier that reads the world's attributes back from decoded frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multishot.dataset import synthetic_world as w
from multishot.dataset.record import split_prompt


def test_films_are_deterministic_from_their_seed():
    a, b = w.sample_films(3, 20), w.sample_films(3, 20)
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
    assert np.array_equal(w.render_film(a[5]), w.render_film(b[5]))
    assert [f.to_dict() for f in w.sample_films(4, 20)] != [f.to_dict() for f in a]


def test_ground_truth_and_captions():
    films = w.sample_films(5, 300)
    assert {len(f.shots) for f in films} == {1, 2, 3, 4}
    assert any(f.aba for f in films) and {f.caption_mode for f in films} == {"named", "anonymous"}
    for f in films:
        edges = [0, *f.cut_frames, f.num_frames]
        assert [(s.start_frame, s.end_frame) for s in f.shots] == list(zip(edges, edges[1:]))
        assert all((c - 1) % 4 == 0 and c >= 5 for c in f.cut_frames)   # latent-exact, >= 2 latent frames
        assert all(b - a >= 8 for a, b in zip(edges[1:], edges[2:]))
        assert all(x.scene != y.scene for x, y in zip(f.shots, f.shots[1:]))
        assert f.aba == (len(f.shots) >= 3 and f.shots[2].scene == f.shots[0].scene)
        global_caption, shots = split_prompt(f.prompt)
        assert [s.rstrip(".") for s in shots] == f.scenes
        assert f"contains {len(f.shots)} shot" in global_caption
        assert (f.character.words() in global_caption) == (f.caption_mode == "named")
        assert not any(word in f.prompt for word in (f.character.colour, f.character.shape)) \
            or f.caption_mode == "named"
        assert w.Film.from_dict(json.loads(json.dumps(f.to_dict()))) == f


def test_the_character_moves_inside_a_shot_and_persists_across_shots():
    film = w.sample_film(11, num_shots=3)
    frames = w.render_film(film)
    shot = film.shots[0]
    first, last = frames[shot.start_frame], frames[shot.end_frame - 1]
    if abs(shot.x1 - shot.x0) >= 2:
        assert not np.array_equal(first, last)
    reading = w.classify_video(frames)
    assert reading.shot_characters == [film.character] * 3


def test_the_classifier_is_exact_on_renders():
    films = w.sample_films(6, 120)
    frames = shots = 0
    for f in films:
        reading = w.classify_video(w.render_film(f))
        assert reading.cut_frames == f.cut_frames and reading.shot_scenes == f.scenes
        assert w.frame_accuracy(reading, f) == 1.0
        assert reading.shot_characters == [f.character] * len(f.shots)
        frames, shots = frames + f.num_frames, shots + len(f.shots)
    assert shots >= 250


def test_the_classifier_reads_decoded_mp4s(tmp_path):
    """Real H.264 files through PyAV: >= 99% of frames' scenes and characters right."""
    films = w.sample_films(7, 40)
    scene_ok = char_ok = frames = shots_ok = shots = 0
    for f in films:
        mp4, meta = w.write_film(f, tmp_path)
        assert w.Film.from_dict(json.loads(meta.read_text())) == f
        video = w.read_video(mp4)
        assert video.shape == (f.num_frames, f.height, f.width, 3)
        reading = w.classify_video(video)
        scene_ok += w.frame_accuracy(reading, f) * f.num_frames
        truth_scenes = [s.scene for s in f.shots for _ in range(s.start_frame, s.end_frame)]
        char_ok += sum(w.classify_character(v, s) == f.character for v, s in zip(video, truth_scenes))
        frames += f.num_frames
        chars = w.characters_in(video, [(s.start_frame, s.end_frame) for s in f.shots], truth_scenes)
        shots_ok += sum(c == f.character for c in chars)
        shots += len(f.shots)
    assert scene_ok / frames >= 0.99 and char_ok / frames >= 0.99 and shots_ok / shots >= 0.99


def test_no_character_and_every_attribute_are_told_apart():
    for scene in w.SCENES:
        assert w.classify_scene(w.background(scene)) == scene
        assert w.classify_character(w.background(scene)) is None
        for shape in w.SHAPES:
            for colour in w.COLOURS:
                for texture in w.TEXTURES:
                    c = w.Character(shape, colour, texture)
                    assert w.classify_character(w.render_frame(scene, c, 30.5, 33.0)) == c


def test_the_vocabulary_file_matches_the_world():
    vocab = w.describe_vocabulary()
    assert set(vocab["scenes"]) == set(w.SCENES) and vocab["num_frames"] == w.NUM_FRAMES
    for f in w.sample_films(8, 50):
        words = f.prompt.replace(".", " ").split()
        assert all(x in vocab["words"] or x.startswith("[") or x.endswith("]") for x in words), f.prompt


@pytest.mark.parametrize("shots", [5])
def test_too_many_shots_for_the_length_are_refused(shots):
    with pytest.raises(ValueError, match="do not fit"):
        w.sample_film(0, num_shots=shots)
