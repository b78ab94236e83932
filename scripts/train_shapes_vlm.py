"""Train the shapes LLaVA (zoprune.shapes) from scratch on CPU.

    python scripts/train_shapes_vlm.py --out src/zoprune/shapes/weights

(The shipped checkpoint was trained in four rounds with ``--init``; its model card lists the exact commands.)

Recipe (LLaVA's two stages; everything seeded: data stream, initialisation, batch order):

* stage A (vision pre-training: "align the visual tokens first"): the vision tower and the projector are trained
  alone on dense per-patch targets -- for each of the 144 patches, the shape, colour, size and digit value of the
  object covering it (or background), whether an object's centre lies in it, and its row and column -- read by
  linear heads from the *projected* visual tokens, plus a multi-label target (which colour+shape pairs and digit
  are in the image) on the [CLS] token. Cheap (no language model), and it makes every visual token say what it
  shows and where it is.
* stage B (visual question answering): the vision tower is frozen (as in LLaVA); the projector and the language
  model are trained on up to ``--turns`` questions of every kind per freshly generated image, packed: the prompt
  prefix ``<s> USER: <image>`` once, then every ``{question} ASSISTANT: {answer}</s>`` side by side, each seeing
  only the prefix and itself (a block attention mask) at the positions it would have as the only question, so
  each is exactly an inference-time prompt and no answer leaks into another (``--no-packed``: one multi-turn
  conversation instead). The loss is on the answer words and ``</s>`` only. A short curriculum starts with one
  or two objects per image.

Matrix products run under bfloat16 autocast (the weights, the optimiser and the saved checkpoint stay float32);
on this machine's AVX-512-BF16 cores that roughly halves the step time.

The auxiliary heads are thrown away; the saved checkpoint is a plain LlavaForConditionalGeneration + LlavaProcessor.
A learning curve (held-out accuracy of the first answer token) is printed and saved to training_log.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zoprune.shapes import data as D
from zoprune.shapes import model as M

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
GRID = D.IMAGE_SIZE // D.PATCH_SIZE
#: per-patch heads: (name, classes); class 0 is "background" except for row and column
PATCH_HEADS = (("shape", len(D.SHAPES) + 2), ("colour", len(D.COLOURS) + 2), ("size", 4), ("digit", 11),
               ("centre", 2), ("row", GRID), ("col", GRID))
N_CLS_OUT = len(D.SHAPES) * len(D.COLOURS) + 10
HELD_OUT_SEED = 20261124


def pixel_values(images) -> torch.Tensor:
    """Same numbers as the checkpoint's image processor for 96 px inputs (rescale, CLIP mean/std)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    arr = (arr - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


def patch_targets(scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 144, len(PATCH_HEADS)) per-patch class targets and (B, N_CLS_OUT) multi-hot image targets."""
    out = np.zeros((len(scenes), GRID * GRID, len(PATCH_HEADS)), dtype=np.int64)
    out[:, :, 5] = np.arange(GRID * GRID) // GRID
    out[:, :, 6] = np.arange(GRID * GRID) % GRID
    cls = np.zeros((len(scenes), N_CLS_OUT), dtype=np.float32)
    for b, sc in enumerate(scenes):
        n_ids = len(sc.objects) + 2
        onehot = np.eye(n_ids, dtype=np.int32)[sc.label_map]  # (96, 96, ids)
        cover = onehot.reshape(GRID, D.PATCH_SIZE, GRID, D.PATCH_SIZE, n_ids).sum((1, 3)).reshape(-1, n_ids)
        cover[:, 0] = 0
        best = cover.argmax(1)
        best[cover.max(1) < 4] = 0  # fewer than 4 pixels of any object: background
        rows = []
        for o in sc.objects:
            rows.append((1 + D.SHAPES.index(o.shape), 1 + D.COLOUR_NAMES.index(o.colour), 1 + D.SIZES.index(o.size),
                         0))
            cls[b, D.SHAPES.index(o.shape) * len(D.COLOURS) + D.COLOUR_NAMES.index(o.colour)] = 1
        if sc.digit is not None:
            rows.append((len(D.SHAPES) + 1, len(D.COLOURS) + 1, 3, 1 + sc.digit.value))
            cls[b, len(D.SHAPES) * len(D.COLOURS) + sc.digit.value] = 1
        table = np.array([(0, 0, 0, 0)] + rows, dtype=np.int64)
        out[b, :, :4] = table[best]
        centres = [(o.x, o.y) for o in sc.objects] + ([(sc.digit.x, sc.digit.y)] if sc.digit else [])
        for x, y in centres:
            out[b, int(y // D.PATCH_SIZE) * GRID + int(x // D.PATCH_SIZE), 4] = 1
    return torch.from_numpy(out), torch.from_numpy(cls)


class Aux(torch.nn.Module):
    """Linear read-outs of stage A: per-patch heads on the projected tokens, a multi-label head on [CLS]."""

    def __init__(self, text_hidden: int, vision_hidden: int):
        super().__init__()
        self.patch = torch.nn.Linear(text_hidden, sum(n for _, n in PATCH_HEADS))
        self.cls = torch.nn.Linear(vision_hidden, N_CLS_OUT)

    def loss(self, feats: torch.Tensor, cls_hidden: torch.Tensor, targets: torch.Tensor, cls_t: torch.Tensor,
             accuracy: dict | None = None):
        logits = self.patch(feats).float()  # (B, 144, sum of classes)
        total, start = 0.0, 0
        for j, (name, n) in enumerate(PATCH_HEADS):
            head, target = logits[..., start:start + n].reshape(-1, n), targets[..., j].reshape(-1)
            total = total + F.cross_entropy(head, target)
            if accuracy is not None:  # on the patches that show an object (all patches for row / column)
                on = target >= 0 if name in ("row", "col") else target > 0
                accuracy[name] = round((head[on].argmax(-1) == target[on]).float().mean().item(), 3)
            start += n
        return total + F.binary_cross_entropy_with_logits(self.cls(cls_hidden).float(), cls_t)


def encode(words: list[str], vocab: dict[str, int]) -> list[int]:
    return [vocab.get(w, M.UNK_ID) for w in words]


def conversation(scene, rng: np.random.Generator, vocab, max_turns: int,
                 repeat: dict[str, int] | None = None) -> list[tuple[list[int], list[int]]]:
    """Up to ``max_turns`` turns about ``scene``, each ``(ids, labels)`` of ``{question} assistant : {answer}
    </s>`` (labels -100 except the answer and </s>): the kinds in shuffled rounds (every kind once per round, or
    ``repeat[kind]`` times, skipping those the scene cannot support), no question twice."""
    turns: list[tuple[list[int], list[int]]] = []
    asked: set[str] = set()
    for _ in range(3 * max_turns):
        if len(asked) == max_turns:
            break
        kinds = [kind for kind in D.KINDS for _ in range((repeat or {}).get(kind, 1))]
        rng.shuffle(kinds)
        for kind in kinds:
            qa = D.ask(scene, rng, kind)
            if qa is None or qa[0] in asked or len(asked) == max_turns:
                continue
            q, a = qa
            asked.add(q)
            q_ids = encode(D.words(q) + ["assistant", ":"], vocab)
            turns.append((q_ids + [vocab[a], M.EOS_ID], [-100] * len(q_ids) + [vocab[a], M.EOS_ID]))
    return turns


def prefix_ids(vocab) -> list[int]:
    """What every prompt starts with: ``<s> user : <image> x 144``."""
    return [M.BOS_ID] + encode(["user", ":"], vocab) + [M.IMAGE_TOKEN_ID] * M.NUM_IMAGE_TOKENS


def qa_batch(scenes, rng, vocab, max_turns, packed: bool = True, repeat: dict[str, int] | None = None):
    """Packed single-turn samples: per image, the prompt prefix once, then its turns side by side. Each turn sees
    the prefix and itself only (a block mask) and has the position ids it would have as the only question of a
    prompt, so every turn is exactly an inference-time prompt and no answer leaks into another turn.

    With ``packed=False`` (how the shipped checkpoint's second round was trained): one multi-turn conversation
    per image, ``... {q1} assistant : {a1} </s> user : {q2} assistant : {a2} </s> ...``, every turn seeing the
    earlier ones, positions counted on.

    Returns input_ids, labels (B, L), a boolean attention mask (B, 1, L, L) (True: may attend) and position ids
    (B, L)."""
    prefix = prefix_ids(vocab)
    rows = []
    for scene in scenes:
        ids, labels, segment, pos = list(prefix), [-100] * len(prefix), [0] * len(prefix), list(range(len(prefix)))
        for t, (turn_ids, turn_labels) in enumerate(conversation(scene, rng, vocab, max_turns, repeat), start=1):
            if not packed and t > 1:
                turn_ids, turn_labels = encode(["user", ":"], vocab) + turn_ids, [-100, -100] + turn_labels
            ids += turn_ids
            labels += turn_labels
            segment += [t if packed else 0] * len(turn_ids)
            start = len(prefix) if packed else len(pos)  # packed: every question where it would stand alone
            pos += range(start, start + len(turn_ids))
        rows.append((ids, labels, segment, pos))
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), width), M.PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding, 0: prefix, t: turn t
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (i, lab, seg, pos) in enumerate(rows):
        input_ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(lab)] = torch.tensor(lab)
        segment[b, :len(seg)] = torch.tensor(seg)
        position_ids[b, :len(pos)] = torch.tensor(pos)
    query, key = segment[:, :, None], segment[:, None, :]  # (B, L, 1), (B, 1, L)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = causal & (key >= 0) & ((key == 0) | (key == query))
    mask[:, :, 0] |= query[:, :, 0] < 0  # padding queries attend to <s> only (no all-masked rows)
    return input_ids, labels, mask[:, None], position_ids


def vision_features(model, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 144, d_v) projector inputs (the configured feature layer, [CLS] dropped) and (B, d_v) [CLS] states."""
    hidden = model.model.vision_tower(pixel_values=pix, output_hidden_states=True).hidden_states
    layer = hidden[model.config.vision_feature_layer]
    return layer[:, 1:], hidden[-1][:, 0]


def answer_logits(model, input_ids, mask, position_ids, projected, labels):
    """Logits at the positions whose next token is labelled, from token embeddings with the projected visual
    tokens (B, 144, d_l) written at the image placeholders."""
    embeds = model.model.get_input_embeddings()(input_ids)
    image = (input_ids == M.IMAGE_TOKEN_ID).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(image, projected.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids
                                        ).last_hidden_state
    sel = labels[:, 1:] != -100
    return model.lm_head(hidden[:, :-1][sel]).float(), labels[:, 1:][sel]


@torch.no_grad()
def quick_eval(model, examples, vocab, batch: int = 128) -> dict[str, float]:
    """Held-out accuracy of the first generated token (greedy), single-turn prompts, left padding, float32."""
    model.eval()
    correct: dict[str, list[bool]] = {}
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        rows = [prefix_ids(vocab) + encode(D.words(e.question) + ["assistant", ":"], vocab) for e in chunk]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[M.PAD_ID] * (width - len(r)) + r for r in rows])
        mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pixel_values(
            [e.image for e in chunk]), logits_to_keep=1)
        pred = out.logits[:, -1].argmax(-1).tolist()
        for e, p in zip(chunk, pred):
            correct.setdefault(e.kind, []).append(p == vocab[e.answer])
    model.train()
    res = {k: round(float(np.mean(v)), 3) for k, v in sorted(correct.items())}
    res["all"] = round(float(np.mean([x for v in correct.values() for x in v])), 3)
    return res


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def stage_a(model, aux, args, rng, t0) -> None:
    vis_params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(vis_params + list(aux.parameters()), lr=args.stage_a_lr, betas=(0.9, 0.98),
                            weight_decay=0.01)
    for step in range(args.stage_a_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.stage_a_steps, 100, args.stage_a_lr)
        scenes = [D.make_scene(rng) for _ in range(args.stage_a_batch)]
        targets, cls_t = patch_targets(scenes)
        acc: dict = {}
        with autocast(args.bf16):
            feats, cls_h = vision_features(model, pixel_values([s.image for s in scenes]))
            projected = model.model.multi_modal_projector(feats)
            loss = aux.loss(projected, cls_h, targets, cls_t, accuracy=acc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vis_params, 1.0)
        opt.step()
        if step % 50 == 0 or step == args.stage_a_steps - 1:
            print(f"A {step:5d} aux {loss.item():.3f} patch accuracy {acc} {time.time() - t0:7.0f}s", flush=True)


def stage_b(model, args, rng, vocab, held_out, log, processor, t0) -> None:
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    seen = 0
    last = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    for step in range(last + 1):
        if step % args.eval_every == 0 or step == last:
            res = quick_eval(model, held_out, vocab)
            res.update(step=step, seconds=round(time.time() - t0), questions_seen=seen)
            log["curve"].append(res)
            print("EVAL " + json.dumps(res), flush=True)
            if step == last:
                break
            if step and args.checkpoints:  # intermediate checkpoint, overwritten by the final one
                model.save_pretrained(args.out)
                processor.save_pretrained(args.out)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, 100, args.lr)
        easy = step < args.curriculum * args.steps  # one or two objects per image first
        scenes = [D.make_scene(rng, n_objects=int(rng.integers(1, 3)) if easy else None) for _ in range(args.batch)]
        input_ids, labels, mask, position_ids = qa_batch(scenes, rng, vocab, args.turns, args.packed, args.repeat)
        with autocast(args.bf16):
            with torch.no_grad():
                feats, _ = vision_features(model, pixel_values([s.image for s in scenes]))
            projected = model.model.multi_modal_projector(feats)
            logits, targets = answer_logits(model, input_ids, mask, position_ids, projected, labels)
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        seen += int((labels != -100).sum().item()) // 2
        if step % 25 == 0:
            print(f"B {step:5d} qa {loss.item():.3f} {'easy' if easy else 'full'} {time.time() - t0:7.0f}s",
                  flush=True)
    model.model.vision_tower.requires_grad_(True)


def _repeat(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, text.split(",")):
        kind, _, n = item.partition("=")
        if kind not in D.KINDS or not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KIND=N with KIND in {D.KINDS} and N >= 1")
        out[kind] = int(n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="start from this checkpoint instead of random weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bfloat16 autocast for the matrix products (weights stay float32)")
    ap.add_argument("--stage-a-steps", type=int, default=3000)
    ap.add_argument("--stage-a-batch", type=int, default=32)
    ap.add_argument("--stage-a-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=3000, help="stage B steps")
    ap.add_argument("--batch", type=int, default=32, help="stage B images per step")
    ap.add_argument("--turns", type=int, default=20, help="questions per image in stage B")
    ap.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                    help="stage B turns side by side, each seeing only the image prompt (default), or one "
                         "multi-turn conversation per image (--no-packed)")
    ap.add_argument("--repeat", type=_repeat, default={}, metavar="KIND=N,...",
                    help="ask these kinds N times per round of kinds instead of once (e.g. position=3)")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="end stage B after this many steps, on the learning-rate schedule of --steps")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--curriculum", type=float, default=0.1,
                    help="fraction of stage B on easier images (one or two objects)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-n", type=int, default=280)
    ap.add_argument("--final-n", type=int, default=1050)
    ap.add_argument("--checkpoints", action="store_true", help="also save at every evaluation")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    model = M.build_model(seed=args.seed)
    if args.init is not None:  # continue training a checkpoint (e.g. a second round with a fresh schedule)
        from transformers import LlavaForConditionalGeneration

        model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(args.init).state_dict())
    model.train()
    processor = M.build_processor()
    vocab = processor.tokenizer.get_vocab()
    aux = Aux(model.config.text_config.hidden_size, model.config.vision_config.hidden_size)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model parameters: {n_params:,}", flush=True)
    held_out = D.make_dataset(args.eval_n, seed=HELD_OUT_SEED)
    log: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "parameters": n_params, "curve": []}
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    stage_a(model, aux, args, rng, t0)
    log["stage_a_seconds"] = round(time.time() - t0)
    stage_b(model, args, rng, vocab, held_out, log, processor, t0)
    log["train_seconds"] = round(time.time() - t0)

    model.eval()
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"saved to {args.out} after {log['train_seconds']}s", flush=True)

    # ---- final evaluation through the saved checkpoint, the processor and generate() ----
    model, processor = M.load(args.out)
    final = D.make_dataset(args.final_n, seed=HELD_OUT_SEED)
    log["final_all_tokens"] = M.evaluate(model, processor, final)
    log["final_mean_visual_tokens"] = M.evaluate(model, processor, final, mean_visual_tokens=True)
    log["final_n"] = args.final_n
    print("FINAL all tokens " + json.dumps(log["final_all_tokens"]), flush=True)
    print("FINAL mean visual tokens " + json.dumps(log["final_mean_visual_tokens"]), flush=True)
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")


if __name__ == "__main__":
    main()
