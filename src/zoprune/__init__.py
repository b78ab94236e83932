"""zoprune: training-free visual token pruning for vision-language models.

```python
import zoprune
pruned = zoprune.prune(model, zoprune.PipelineConfig(budget=64))
output = pruned.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=20)
pruned.last_selection  # which tokens each image kept
pruned.embed(**inputs)  # the kept embeddings per image, for a server that takes image embeddings (vLLM)
```
"""

from zoprune.config import Budget, ComponentSpec, PipelineConfig
from zoprune.errors import (ConfigError, InputError, NumericalError, PluginError, UnsupportedModelError,
                             ZopruneError)
from zoprune.hookspecs import hookimpl
from zoprune.interfaces import (ComponentConfig, Context, ImageTokens, Merge, ModelAdapter, PrunedEmbedding, Scorer,
                                Selector)
from zoprune.pipeline import PrunedModel, Selection, prune
from zoprune.registry import get_registry

__version__ = "0.1.0"

__all__ = [
    "Budget", "ComponentConfig", "ComponentSpec", "ConfigError", "Context", "ImageTokens", "InputError",
    "Merge", "ModelAdapter", "NumericalError", "PipelineConfig", "PluginError", "PrunedEmbedding", "PrunedModel",
    "Scorer", "Selection",
    "Selector", "UnsupportedModelError", "ZopruneError", "get_registry", "hookimpl", "prune",
]
