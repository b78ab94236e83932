"""The named pipelines of the paper and its peers, so commands can say ``--method divprune``.

A method whose components are not installed is listed as unavailable and left out of evaluations.
"""

from __future__ import annotations

from zoprune import hookimpl

METHODS: dict[str, tuple[dict, str]] = {
    "zoo-prune": ({"scorer": "zo_sensitivity", "selector": "coverage"},
                  "ZOO-Prune: ZO sensitivity x diversity, product fusion (the paper)"),
    "zoo-prune-fast": ({"scorer": "jacobian_norm", "selector": "coverage"},
                       "ZOO-Prune with the closed-form sensitivity (jacobian_norm): ~1/50 of ZO's cost, for serving"),
    "zoo-prune-sum": ({"scorer": "zo_sensitivity", "selector": {"name": "coverage", "fusion": "sum"}},
                      "ablation: sensitivity + diversity"),
    "zo-topk": ({"scorer": "zo_sensitivity", "selector": "topk"}, "ablation: sensitivity only (top-k ZO score)"),
    "divprune": ({"scorer": None, "selector": "divprune"}, "DivPrune: max-min diversity (ablation: diversity only)"),
    "norm": ({"scorer": "norm", "selector": "topk"}, "top-k by the L2 norm of the projected feature"),
    "cls-attention": ({"scorer": "cls_attention", "selector": "topk"},
                      "FasterVLM / VisionZip dominant tokens: [CLS] attention in the vision encoder"),
    "visionzip": ({"scorer": "cls_attention", "selector": "visionzip"},
                  "VisionZip: dominant tokens by [CLS] attention + contextual tokens merged by key similarity"),
    "fastv": ({"scorer": None, "selector": "fastv"},
              "FastV: attention of the last prompt token in LLM layer K-1 (K = 2), pruned from layer K on"),
    "dart": ({"scorer": None, "selector": "dart"},
             "DART: pivots by key L1 norm in LLM layer K-1 (K = 2) keep the tokens least similar to them"),
    "scope": ({"scorer": "cls_attention", "selector": "scope"},
              "SCOPE: [CLS] attention x facility-location coverage gain"),
    "vispruner": ({"scorer": "cls_attention", "selector": "vispruner"},
                  "VisPruner: top [CLS]-attention tokens + the least duplicated of the rest"),
    "cdpruner": ({"scorer": None, "selector": "cdpruner"},
                 "CDPruner: conditional DPP, instruction relevance x feature similarity (greedy MAP)"),
    "zo-mmr": ({"scorer": "zo_sensitivity", "selector": "mmr"},
               "ZO sensitivity with maximal-marginal-relevance selection (lambda = 0.5)"),
    "holov": ({"scorer": "cls_attention", "selector": "holov"},
              "HoloV: the budget split over 16 raster crops by [CLS] attention x similarity variance"),
    "pool": ({"scorer": None, "selector": "pool"}, "adaptive average pooling of the patch grid to k cells: a floor"),
    "downsample": ({"scorer": None, "selector": "downsample"},
                   "the image shrunk before the vision tower to about k tokens (Qwen2-VL / 2.5-VL only): a floor"),
    "random": ({"scorer": None, "selector": "random"}, "random tokens (seeded): the floor"),
    "uniform": ({"scorer": None, "selector": "uniform"}, "a regular grid over the patches: the floor"),
}


@hookimpl
def register_methods(register):
    for name, (config, description) in METHODS.items():
        register(name, config, description)
