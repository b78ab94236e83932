"""scripts/train_shapes_vlm.py: packed stage-B samples are exactly single-question prompts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from zoprune.shapes import data as D
from zoprune.shapes import model as M

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_shapes_vlm.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_shapes_vlm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny():
    model = M.build_model(seed=0, vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                          text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=2, text_mlp=64).eval()
    return model, M.build_processor().tokenizer.get_vocab()


def answer_logits(train, model, vocab, packed: bool, repeat=None):
    rng = np.random.default_rng(0)
    scenes = [D.make_scene(rng) for _ in range(3)]
    ids, labels, mask, positions = train.qa_batch(scenes, np.random.default_rng(1), vocab, 6, packed, repeat)
    with torch.no_grad():
        features, _ = train.vision_features(model, train.pixel_values([s.image for s in scenes]))
        projected = model.model.multi_modal_projector(features)  # (3, 144, d)
        logits, targets = train.answer_logits(model, ids, mask, positions, projected, labels)
    return ids, labels, projected, logits, targets


def test_packed_questions_equal_single_question_prompts(train, tiny):
    model, vocab = tiny
    ids, labels, projected, logits, targets = answer_logits(train, model, vocab, packed=True)
    prefix = train.prefix_ids(vocab)
    expected, expected_targets = [], []
    for b in range(ids.shape[0]):
        row, row_labels = ids[b].tolist(), labels[b].tolist()
        start = len(prefix)
        while start < len(row) and row[start] != M.PAD_ID:
            end = row.index(M.EOS_ID, start) + 1  # one question: "{q} assistant : {a} </s>"
            single = torch.tensor([prefix + row[start:end]])
            single_labels = torch.tensor([[-100] * len(prefix) + row_labels[start:end]])
            n = single.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]  # (1, 1, n, n): a plain prompt
            with torch.no_grad():
                got, got_targets = train.answer_logits(model, single, causal, torch.arange(n)[None],
                                                       projected[b:b + 1], single_labels)
            expected.append(got)
            expected_targets.append(got_targets)
            start = end
    assert torch.equal(torch.cat(expected_targets), targets)
    assert len(targets) == 2 * 3 * 6  # six questions per image, each an answer word and </s>
    torch.testing.assert_close(torch.cat(expected), logits, rtol=1e-4, atol=1e-4)


def test_unpacked_conversation_sees_earlier_answers(train, tiny):
    model, vocab = tiny
    ids, labels, _, _, targets = answer_logits(train, model, vocab, packed=False)
    words = {i: w for w, i in vocab.items()}
    first = [words[i] for i in ids[0].tolist() if i != M.IMAGE_TOKEN_ID]
    assert first.count("user") == 6 and first.count("</s>") == 6  # one conversation, six turns
    assert len(targets) == 2 * 3 * 6


def test_repeat_asks_a_kind_more_often(train, tiny):
    _, vocab = tiny
    rng = np.random.default_rng(3)
    scenes = [D.make_scene(rng) for _ in range(40)]
    relation = {vocab[w] for w in ("left", "right", "above", "below")}

    def position_share(repeat):
        turns = [t for s in scenes for t in train.conversation(s, np.random.default_rng(4), vocab, 10, repeat)]
        return sum(bool(relation & set(ids)) for ids, _ in turns) / len(turns)

    assert position_share({"position": 3}) > 1.5 * position_share(None)
