"""What a classifier says about one image: logits -> its top k (class name, probability), best first.

The one place that turns logits into answers: ``python -m transferlab.predict`` writes them as CSV rows
and ``python -m transferlab.serve`` as JSON, so both give the same classes and probabilities for a file.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prediction:
    """One image: its best class and score (softmax probability), the top k, or why it failed."""

    path: str = ""
    label: str = ""
    score: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    def csv_row(self) -> dict[str, str]:
        return {
            "path": self.path,
            "label": self.label,
            "score": "" if self.score is None else f"{self.score:.6f}",
            "top_k": ";".join(f"{name}:{probability:.4f}" for name, probability in self.top_k),
            "error": self.error,
        }

    def answer(self) -> dict[str, Any]:
        """The JSON the server answers: ``{"label": ..., "score": ..., "top_k": [[label, probability], ...]}``."""
        return {"label": self.label, "score": self.score, "top_k": [[name, p] for name, p in self.top_k]}


def rank(logits: torch.Tensor, class_names: Sequence[str], top_k: int) -> list[Prediction]:
    """One Prediction per row of ``logits`` (batch x classes): softmax, then the ``top_k`` classes, best first.

    ``top_k`` is capped at the number of classes; the probabilities are computed in float32 whatever
    the logits' precision, so a half-precision model ranks as a full-precision one would.
    """
    probabilities, classes = logits.float().softmax(dim=1).topk(min(top_k, len(class_names)), dim=1)
    predictions = []
    for row_probabilities, row_classes in zip(probabilities.tolist(), classes.tolist(), strict=True):
        ranked = [(class_names[c], p) for c, p in zip(row_classes, row_probabilities, strict=True)]
        predictions.append(Prediction(label=ranked[0][0], score=ranked[0][1], top_k=ranked))
    return predictions


def failure(error: BaseException) -> str:
    """Why an image could not be used, on one line: ``"OSError: image file is truncated ..."``."""
    return " ".join(f"{type(error).__name__}: {error}".split())
