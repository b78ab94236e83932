"""Train the shapes LLaVA (zoprune.shapes) from scratch on CPU.

    python scripts/train_shapes_vlm.py --out src/zoprune/shapes/weights

Recipe (everything seeded: data stream, initialisation, batch order):

* stage A (vision pre-training, LLaVA-style "align the visual tokens first"): the vision tower and the projector
  are trained alone on dense per-patch targets -- for each of the 144 patches, the shape, colour, size and digit
  value of the object covering it (or background) and whether an object's centre lies in it -- read by linear
  heads from the *projected* visual tokens, plus a multi-label target (which colour+shape pairs and digit are in
  the image) on the [CLS] token. This is cheap (no language model) and makes every visual token say what it shows.
* stage B (visual question answering, with a curriculum from one object per image to 2-5): the whole model
  is trained end to end on multi-turn conversations, one image with up to seven questions (one per kind,
  shuffled), ``USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...``; the first
  turn is exactly the single-turn prompt used at inference. The loss is on the answer words and ``</s>`` only;
  the per-patch losses stay on with a smaller weight.

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
N_SHAPE, N_COLOUR, N_SIZE, N_DIGIT, N_CENTRE = len(D.SHAPES) + 2, len(D.COLOURS) + 2, 4, 11, 2
N_PATCH_OUT = N_SHAPE + N_COLOUR + N_SIZE + N_DIGIT + N_CENTRE
N_CLS_OUT = len(D.SHAPES) * len(D.COLOURS) + 10
HELD_OUT_SEED = 20261124


def pixel_values(images) -> torch.Tensor:
    """Same numbers as the checkpoint's image processor for 96 px inputs (rescale, CLIP mean/std)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    arr = (arr - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


def patch_targets(scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 144, 5) per-patch class targets and (B, N_CLS_OUT) multi-hot image targets."""
    out = np.zeros((len(scenes), GRID * GRID, 5), dtype=np.int64)
    cls = np.zeros((len(scenes), N_CLS_OUT), dtype=np.float32)
    for b, sc in enumerate(scenes):
        n_ids = len(sc.objects) + 2
        onehot = np.eye(n_ids, dtype=np.int32)[sc.label_map]  # (96, 96, ids)
        cover = onehot.reshape(GRID, D.PATCH_SIZE, GRID, D.PATCH_SIZE, n_ids).sum((1, 3)).reshape(-1, n_ids)
        cover[:, 0] = 0
        best = cover.argmax(1)
        best[cover.max(1) < 4] = 0  # fewer than 4 pixels of any object: background
        rows = []
        for i, o in enumerate(sc.objects):
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
    def __init__(self, text_hidden: int, vision_hidden: int):
        super().__init__()
        self.patch = torch.nn.Linear(text_hidden, N_PATCH_OUT)
        self.cls = torch.nn.Linear(vision_hidden, N_CLS_OUT)

    def loss(self, feats: torch.Tensor, cls_hidden: torch.Tensor, targets: torch.Tensor, cls_t: torch.Tensor,
             accuracy: dict | None = None):
        logits = self.patch(feats)  # (B, 144, N_PATCH_OUT)
        total, start = 0.0, 0
        for j, n in enumerate((N_SHAPE, N_COLOUR, N_SIZE, N_DIGIT, N_CENTRE)):
            head, target = logits[..., start:start + n].reshape(-1, n), targets[..., j].reshape(-1)
            total = total + F.cross_entropy(head, target)
            if accuracy is not None:  # on the patches that show an object (or a centre / the digit)
                on = target > 0
                accuracy[("shape", "colour", "size", "digit", "centre")[j]] = round(
                    (head[on].argmax(-1) == target[on]).float().mean().item(), 3)
            start += n
        return total + F.binary_cross_entropy_with_logits(self.cls(cls_hidden), cls_t)


def encode(words: list[str], vocab: dict[str, int]) -> list[int]:
    return [vocab.get(w, M.UNK_ID) for w in words]


def conversation(scene, rng: np.random.Generator, vocab, max_turns: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 except answers and </s>) of a multi-turn conversation about ``scene``."""
    kinds = list(D.KINDS)
    rng.shuffle(kinds)
    ids = [M.BOS_ID] + encode(["user", ":"], vocab) + [M.IMAGE_TOKEN_ID] * M.NUM_IMAGE_TOKENS
    labels = [-100] * len(ids)
    turns = 0
    for kind in kinds:
        qa = D.ask(scene, rng, kind)
        if qa is None:
            continue
        q, a = qa
        if turns:
            ids += encode(["user", ":"], vocab)
            labels += [-100, -100]
        q_ids = encode(D.words(q) + ["assistant", ":"], vocab)
        ids += q_ids
        labels += [-100] * len(q_ids)
        ids += [vocab[a], M.EOS_ID]
        labels += [vocab[a], M.EOS_ID]
        turns += 1
        if turns == max_turns:
            break
    return ids, labels


def qa_batch(scenes, rng, vocab, max_turns):
    convs = [conversation(s, rng, vocab, max_turns) for s in scenes]
    width = max(len(i) for i, _ in convs)
    input_ids = torch.full((len(convs), width), M.PAD_ID, dtype=torch.long)  # right padding (causal: harmless)
    labels = torch.full((len(convs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(convs), width), dtype=torch.long)
    for b, (i, lab) in enumerate(convs):
        input_ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(lab)] = torch.tensor(lab)
        mask[b, :len(i)] = 1
    return input_ids, labels, mask


def image_features(model, pix):
    out = model.model.get_image_features(pixel_values=pix, vision_feature_layer=model.config.vision_feature_layer,
                                         vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                                         output_hidden_states=True)
    return out, torch.stack(list(out.pooler_output)), out.hidden_states[-1][:, 0]


@torch.no_grad()
def quick_eval(model, examples, vocab, batch: int = 128) -> dict[str, float]:
    """Held-out accuracy of the first generated token (greedy), single-turn prompts, left padding."""
    model.eval()
    correct: dict[str, list[bool]] = {}
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        rows = [[M.BOS_ID] + encode(["user", ":"], vocab) + [M.IMAGE_TOKEN_ID] * M.NUM_IMAGE_TOKENS
                + encode(D.words(e.question) + ["assistant", ":"], vocab) for e in chunk]
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
    res = {k: float(np.mean(v)) for k, v in sorted(correct.items())}
    res["all"] = float(np.mean([x for v in correct.values() for x in v]))
    return res


def curriculum(step: int, total: int, fraction: float) -> int | None:
    """Most objects per image at ``step`` of stage B: 1, then up to 2, then up to 3 over the first ``fraction``
    of the steps, then the full distribution (None: 2-5 objects)."""
    if step >= fraction * total:
        return None
    return 1 + int(3 * step / (fraction * total))


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="start from this checkpoint instead of random weights")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage-a-steps", type=int, default=1000)
    ap.add_argument("--stage-a-batch", type=int, default=32)
    ap.add_argument("--stage-a-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=1400, help="stage B steps")
    ap.add_argument("--batch", type=int, default=16, help="stage B images per step")
    ap.add_argument("--turns", type=int, default=7, help="questions per image in stage B")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--curriculum", type=float, default=0.3,
                    help="fraction of stage B on easier images (1, then <=2, then <=3 objects)")
    ap.add_argument("--aux-weight", type=float, default=0.3)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-n", type=int, default=210)
    ap.add_argument("--final-n", type=int, default=700)
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

    # ---- stage A: vision tower + projector on dense per-patch targets ----
    vis_params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(vis_params + list(aux.parameters()), lr=args.stage_a_lr, betas=(0.9, 0.98),
                            weight_decay=0.01)
    for step in range(args.stage_a_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.stage_a_steps, 100, args.stage_a_lr)
        scenes = [D.make_scene(rng) for _ in range(args.stage_a_batch)]
        targets, cls_t = patch_targets(scenes)
        _, feats, cls_h = image_features(model, pixel_values([s.image for s in scenes]))
        acc: dict = {}
        loss = aux.loss(feats, cls_h, targets, cls_t, accuracy=acc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vis_params, 1.0)
        opt.step()
        if step % 50 == 0 or step == args.stage_a_steps - 1:
            print(f"A {step:5d} aux {loss.item():.3f} patch accuracy {acc} {time.time() - t0:7.0f}s", flush=True)
    log["stage_a_seconds"] = time.time() - t0

    # ---- stage B: end-to-end multi-turn VQA (+ per-patch losses) ----
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    seen = 0
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            res = quick_eval(model, held_out, vocab)
            res.update(step=step, seconds=round(time.time() - t0), questions_seen=seen)
            log["curve"].append(res)
            print("EVAL " + json.dumps(res), flush=True)
            if step == args.steps:
                break
            if step and args.checkpoints:  # intermediate checkpoint, overwritten by the final one
                model.save_pretrained(args.out)
                processor.save_pretrained(args.out)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, 100, args.lr)
        n_max = curriculum(step, args.steps, args.curriculum)
        scenes = [D.make_scene(rng, n_objects=None if n_max is None else int(rng.integers(1, n_max + 1)))
                  for _ in range(args.batch)]
        input_ids, labels, mask = qa_batch(scenes, rng, vocab, args.turns)
        targets, cls_t = patch_targets(scenes)
        enc, feats, cls_h = image_features(model, pixel_values([s.image for s in scenes]))
        hidden = model.model(input_ids=input_ids, attention_mask=mask, mm_encoder_outputs={"image": enc}
                             ).last_hidden_state
        sel = labels[:, 1:] != -100
        logits = model.lm_head(hidden[:, :-1][sel])
        qa_loss = F.cross_entropy(logits, labels[:, 1:][sel])
        aux_loss = aux.loss(feats, cls_h, targets, cls_t)
        loss = qa_loss + args.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        seen += int(sel.sum().item()) // 2
        if step % 25 == 0:
            print(f"B {step:5d} qa {qa_loss.item():.3f} aux {aux_loss.item():.3f} objects<={n_max} "
                  f"{time.time() - t0:7.0f}s", flush=True)
    log["train_seconds"] = time.time() - t0

    model.eval()
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"saved to {args.out} after {log['train_seconds']:.0f}s", flush=True)

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
