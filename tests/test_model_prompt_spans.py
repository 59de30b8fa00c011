"""Window cross-attention spans and masks against hand-worked prompts, with real tokenizers
built locally with the ``tokenizers`` library (no download)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from multishot.dataset.record import build_prompt
from multishot.model.config import WanConfig
from multishot.model.dit import WanModel
from multishot.model.layout import ShotLayout
from multishot.model.prompt_spans import (TextSpans, char_spans, clean_prompt, prompt_token_spans,
                                shot_text_mask, token_spans)

PROMPT = "[global caption] A man. [per shot caption] He sits. [shot cut] He runs."


def word_tokenizer(texts):
    """Word-level tokenizer (words and punctuation runs) appending ``</s>`` like T5."""
    words = sorted({w for t in texts for w, _ in
                    pre_tokenizers.Whitespace().pre_tokenize_str(t)})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    return tok


def test_char_spans_follow_holocine_boundaries():
    spans = char_spans(PROMPT)
    g, s0, s1 = spans
    assert g == (-1, 0, PROMPT.index("[per shot caption]"))
    # Shot 0 runs from [per shot caption] to the END of the first [shot cut] (tag included).
    assert s0 == (0, PROMPT.index("[per shot caption]"), PROMPT.index("[shot cut]") + 10)
    assert s1 == (1, PROMPT.index("[shot cut]") + 10, len(PROMPT))
    assert char_spans("a plain negative prompt") == []


def test_token_spans_and_mask_hand_worked():
    tok = word_tokenizer([PROMPT])
    # Tokens: 0 [ 1 global 2 caption 3 ] 4 A 5 man 6 . | 7 [ 8 per 9 shot 10 caption 11 ]
    # 12 He 13 sits 14 . 15 [ 16 shot 17 cut 18 ] | 19 He 20 runs 21 . | 22 </s>
    spans = prompt_token_spans(tok, PROMPT, text_len=30)
    assert spans == TextSpans((0, 7), ((7, 19), (19, 22)))
    mask = shot_text_mask(spans, 2, 30)
    on = [torch.nonzero(row).flatten().tolist() for row in mask]
    # HoloCine: ranges [first, last+1] used with inclusive ends, pads from max end + 1 = 23.
    assert on[0] == list(range(0, 20)) + list(range(23, 30))
    assert on[1] == list(range(0, 8)) + list(range(19, 23)) + list(range(23, 30))
    strict = shot_text_mask(spans, 2, 30, inclusive_end=False, admit_padding=False)
    on = [torch.nonzero(row).flatten().tolist() for row in strict]
    assert on == [list(range(0, 19)), list(range(0, 7)) + list(range(19, 22))]


def test_more_video_shots_than_prompt_shots_is_an_error():
    spans = TextSpans((0, 3), ((3, 5),))
    with pytest.raises(ValueError, match="2 shots"):
        shot_text_mask(spans, 2, 8)
    # Fewer video shots than captions is fine (HoloCine ignores the extra spans, but its pad
    # start still counts them).
    assert shot_text_mask(TextSpans((0, 3), ((3, 5), (5, 9))), 1, 12)[0].tolist() == \
        [True] * 6 + [False] * 4 + [True] * 2


def test_negative_prompt_is_unmasked():
    tok = word_tokenizer(["blurry, low quality"])
    spans = prompt_token_spans(tok, "blurry,   low quality", 16)
    assert spans.global_span is None
    assert shot_text_mask(spans, 3, 16).all()


def test_subword_tokenizer_assigns_tokens_to_the_span_holding_their_characters():
    prompts = [build_prompt("Two friends walk along a rainy harbour at dusk.",
                            ["Wide shot of the harbour.", "Close-up of Anna laughing.",
                             "Ben points at a ship."]),
               build_prompt("A kitchen.", ["Steam rises.", "A hand stirs soup."])]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # SentencePiece-style, as UMT5
    tok.train_from_iterator(prompts * 20, trainers.BpeTrainer(vocab_size=120,
                                                              special_tokens=["<unk>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    text = clean_prompt("  " + prompts[0].replace(" ", "  ") + "\n")
    assert text == prompts[0]
    offsets = tok.encode(text).offsets
    spans = token_spans(text, offsets)
    assert spans.num_shots == 3
    bounds = char_spans(text)
    # Independent check: every real token lies in the span that owns its first character.
    for sid, (t0, t1) in [(-1, spans.global_span), *enumerate(spans.shot_spans)]:
        _, c0, c1 = next(b for b in bounds if b[0] == sid)
        for i in range(t0, t1):
            a, b = offsets[i]
            assert a < c1 and b > c0, (sid, i, text[a:b])
    assert offsets[-1] == (0, 0)                      # </s> belongs to no span
    assert spans.shot_spans[-1][1] == len(offsets) - 1


def test_model_text_mask_follows_each_tokens_shot():
    config = WanConfig(dim=64, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16, text_len=12,
                       freq_dim=16)
    model = WanModel(config)
    layout = ShotLayout.stack([ShotLayout.from_cut_frames(13, [5], 4),    # shots [0,2) [2,4)
                               ShotLayout.from_cut_frames(13, [], 4)])
    spans = TextSpans((0, 2), ((2, 4), (4, 6)))
    mask = model.text_mask(layout, [spans, None], 12)
    assert mask.shape == (2, 16, 12)
    table = shot_text_mask(spans, 2, 12)
    assert torch.equal(mask[0, :8], table[0].expand(8, -1))
    assert torch.equal(mask[0, 8:], table[1].expand(8, -1))
    assert mask[1].all()                               # None: unmasked (negative prompt)


def test_hugging_face_fast_tokenizer_gives_the_same_spans():
    # The trainer passes a transformers fast tokenizer (UMT5's); wrap the same local tokenizer.
    from transformers import PreTrainedTokenizerFast
    tok = word_tokenizer([PROMPT])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")
    assert prompt_token_spans(hf, PROMPT, 30) == prompt_token_spans(tok, PROMPT, 30)
    # Truncation to the text length keeps the spans inside it.
    short = prompt_token_spans(hf, PROMPT, 16)
    assert short.shot_spans[-1][1] <= 16
