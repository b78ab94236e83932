"""A small LLaVA trained from scratch on procedurally generated shapes VQA, shipped with the package.

``zoprune.shapes.data`` generates the images and questions; ``zoprune.shapes.model`` builds, saves and loads
the checkpoint (a stock ``LlavaForConditionalGeneration`` with a ``LlavaProcessor``).
"""

from zoprune.shapes.data import KINDS, ShapesExample, make_dataset, make_example, normalize_answer

__all__ = ["KINDS", "ShapesExample", "make_dataset", "make_example", "normalize_answer"]
