"""Check, on a GPU with vLLM installed, that vLLM answers from zoprune's pruned embeddings as
``PrunedModel.generate`` does on the same images (docs/serving.md, "Checking it on a GPU").

    pip install vllm==0.32.0 && pip install -e .
    python scripts/check_vllm.py --model llava-hf/llava-1.5-7b-hf --images a.jpg b.jpg c.jpg \\
        --question "Describe the image in one sentence." --method zoo-prune-fast --budget 64

For each image it compares, greedy, ``--max-tokens`` tokens:

1. the prompt length vLLM reports (``RequestOutput.prompt_token_ids``: text + k placeholders) with the pruned
   prompt ``PrunedModel`` feeds the language model — they must be equal (k(N, budget) placeholders);
2. vLLM's answer from the pruned embeddings (``LLM(..., enable_mm_embeds=True)``) with ``PrunedModel.generate``;
3. as the baseline for how far two engines' greedy decodes agree at all, vLLM's answer from the image itself with
   the unpruned transformers model's.

With ``--server URL`` it also sends each request to a running ``vllm serve MODEL --enable-mm-embeds`` through the
OpenAI API (``/v1/chat/completions``, ``image_embeds`` parts) and compares that answer too. Exit status 1 when a
prompt length differs, or when fewer pruned answers than baseline answers agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-hf/llava-1.5-7b-hf", help="a LLaVA-1.5 or LLaVA-NeXT checkpoint")
    parser.add_argument("--images", nargs="+", type=Path, required=True)
    parser.add_argument("--question", default="Describe the image in one sentence.")
    parser.add_argument("--method", default="zoo-prune-fast", help="method name or config file")
    parser.add_argument("--budget", type=int, default=64, help="visual tokens kept per image")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--server", default=None, help="base URL of a running `vllm serve --enable-mm-embeds`")
    return parser.parse_args(argv)


def agreement(ours: list[str], theirs: list[str]) -> int:
    """How many answers are the same after stripping surrounding whitespace."""
    return sum(a.strip() == b.strip() for a, b in zip(ours, theirs))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from vllm import LLM, SamplingParams

    import zoprune
    from zoprune.loading import load_image, load_model
    from zoprune.integrations.vllm import chat_request, offline_request, prune_for_vllm
    from zoprune.methods import resolve_method

    model, processor = load_model(args.model, dtype=args.dtype, device="cuda")
    pruned = zoprune.prune(model, resolve_method(args.method)[1], budget=args.budget)
    images = [load_image(path) for path in args.images]
    greedy = {"max_new_tokens": args.max_tokens, "do_sample": False}

    requests, ours, full, pruned_lengths = [], [], [], []
    for image in images:
        prompt, embeds = prune_for_vllm(pruned, processor, [image], args.question)
        inputs = processor(images=[image], text=[prompt], return_tensors="pt").to("cuda")
        length = inputs["input_ids"].shape[1]
        pruned_lengths.append(pruned.prepare(**inputs)["input_ids"].shape[1])
        output = pruned.generate(**inputs, **greedy)
        ours.append(processor.decode(output[0, length:], skip_special_tokens=True))
        with torch.no_grad():
            output = model.generate(**inputs, **greedy)
        full.append(processor.decode(output[0, length:], skip_special_tokens=True))
        requests.append((prompt, embeds))
    del model, pruned
    torch.cuda.empty_cache()

    llm = LLM(model=args.model, dtype=args.dtype, enable_mm_embeds=True, limit_mm_per_prompt={"image": 1})
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    served = llm.generate([offline_request(prompt, embeds) for prompt, embeds in requests], params)
    baseline = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}
                             for (prompt, _), image in zip(requests, images)], params)
    vllm_pruned = [r.outputs[0].text for r in served]
    vllm_full = [r.outputs[0].text for r in baseline]
    lengths_ok = [len(r.prompt_token_ids) == n for r, n in zip(served, pruned_lengths)]

    over_http = []
    if args.server:
        for prompt, embeds in requests:
            body = chat_request(args.model, args.question, embeds, max_tokens=args.max_tokens, temperature=0.0)
            request = urllib.request.Request(args.server.rstrip("/") + "/v1/chat/completions",
                                             data=json.dumps(body).encode(), headers={"Content-Type":
                                                                                      "application/json"})
            with urllib.request.urlopen(request) as response:
                over_http.append(json.load(response)["choices"][0]["message"]["content"])

    for i, path in enumerate(args.images):
        print(f"{path}: prompt length vLLM {len(served[i].prompt_token_ids)} / zoprune {pruned_lengths[i]}"
              f"{'' if lengths_ok[i] else '  MISMATCH'}")
        print(f"  zoprune generate: {ours[i]!r}\n  vLLM, pruned:     {vllm_pruned[i]!r}")
        if over_http:
            print(f"  vllm serve:       {over_http[i]!r}")
        print(f"  unpruned HF:      {full[i]!r}\n  vLLM, image:      {vllm_full[i]!r}")
    same, base = agreement(ours, vllm_pruned), agreement(full, vllm_full)
    print(f"prompt lengths equal: {sum(lengths_ok)} / {len(images)}; answers equal, pruned: {same} / {len(images)}; "
          f"unpruned baseline: {base} / {len(images)}"
          + (f"; vllm serve equal to offline: {agreement(over_http, vllm_pruned)} / {len(images)}"
             if over_http else ""))
    return 0 if all(lengths_ok) and same >= base else 1


if __name__ == "__main__":
    sys.exit(main())
