"""The retrieval features of a batch of images: the record that the network produces and retrieval consumes.

It lives apart from the distance and the re-ranking so that the model (``icg.model``), which fills it, does not
depend on retrieval, which reads it. :func:`check_finite_features` refuses the features of a diverged model (NaN or
infinite values), for every path that produces features: ``ICGModule.extract``, ``icg predict``, the embedder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NonFiniteFeaturesError", "ReIDFeatures", "check_finite_features"]


@dataclass(eq=False)  # element-wise tensor equality has no single truth value
class ReIDFeatures:
    """The retrieval features of a batch of images (what ``ICGModule.extract`` returns).

    Attributes:
        global_feat: after-BN global feature, ``[B, C]`` (always present).
        foreground: after-BN foreground feature, ``[B, C]`` (AFM on).
        parts: after-BN part features, ``[B, K, C]`` (PPC on).
        graph: after-BN graph feature, ``[B, C]`` (FSG on).
        visibility: ``[B, K]`` bool, part ``k`` is visible in the image; present iff ``parts`` is.

    Components may differ in width ``C`` and dtype, but must agree in ``B`` and device. Indexing, slicing and
    :meth:`cat` work along the batch; an integer index gives a record of one image (``B = 1``).
    """

    global_feat: Tensor
    foreground: Tensor | None = None
    parts: Tensor | None = None
    graph: Tensor | None = None
    visibility: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.global_feat, Tensor):
            raise TypeError(f"ReIDFeatures.global_feat must be a tensor, got {type(self.global_feat).__name__}")
        batch, device = self.global_feat.shape[:1], self.global_feat.device
        expected_dims = {"global_feat": 2, "foreground": 2, "graph": 2, "parts": 3, "visibility": 2}
        for name, value in self.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"ReIDFeatures.{name} must be a tensor or None, got {type(value).__name__}")
            if value.dim() != expected_dims[name]:
                layout = {"parts": "[B, K, C]", "visibility": "[B, K]"}.get(name, "[B, C]")
                raise ValueError(f"ReIDFeatures.{name} must be {layout}, got shape {tuple(value.shape)}")
            if value.shape[:1] != batch:
                raise ValueError(
                    f"ReIDFeatures.{name} has {value.shape[0]} rows but global_feat has {self.global_feat.shape[0]}"
                )
            if value.device != device:
                raise ValueError(f"ReIDFeatures.{name} is on {value.device} but global_feat is on {device}")
            if name == "visibility":
                if value.dtype != torch.bool:
                    raise TypeError(f"ReIDFeatures.visibility must be bool, got {value.dtype}")
            elif not value.is_floating_point():
                raise TypeError(f"ReIDFeatures.{name} must be floating point, got {value.dtype}")
        if (self.parts is None) != (self.visibility is None):
            present, missing = ("parts", "visibility") if self.visibility is None else ("visibility", "parts")
            raise ValueError(f"ReIDFeatures.{present} is given without {missing}: give both or neither")
        if self.parts is not None and self.visibility.shape[1] != self.parts.shape[1]:
            raise ValueError(
                f"ReIDFeatures.visibility has {self.visibility.shape[1]} parts but parts has {self.parts.shape[1]}"
            )

    def items(self) -> list[tuple[str, Tensor]]:
        """``(name, tensor)`` of the components present, in field order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    @property
    def num_parts(self) -> int:
        """``K``, or 0 without part features."""
        return 0 if self.parts is None else self.parts.shape[1]

    @property
    def device(self) -> torch.device:
        return self.global_feat.device

    def __len__(self) -> int:
        return self.global_feat.shape[0]

    def _map(self, fn: Callable[[str, Tensor], Tensor]) -> ReIDFeatures:
        return ReIDFeatures(**{name: fn(name, value) for name, value in self.items()})

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None, non_blocking: bool = False
    ) -> ReIDFeatures:
        """Moves every component to ``device``; ``dtype`` converts the features (visibility stays bool)."""

        def move(name: str, t: Tensor) -> Tensor:
            return t.to(device=device, dtype=None if name == "visibility" else dtype, non_blocking=non_blocking)

        return self._map(move)

    def normalized(self) -> ReIDFeatures:
        """Every feature L2-normalised in float32 along its last dimension (each part on its own); visibility
        unchanged. A zero vector stays zero."""
        return self._map(lambda name, t: t if name == "visibility" else F.normalize(t.float(), dim=-1))

    def detach(self) -> ReIDFeatures:
        return self._map(lambda _, t: t.detach())

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> ReIDFeatures:
        if isinstance(index, int):
            index = [index]
        if isinstance(index, Tensor) and index.dim() == 0:
            index = index.reshape(1)
        return self._map(lambda _, t: t[index])

    def take(self, rows: Tensor) -> ReIDFeatures:
        """The records of ``rows``, a 1-d int64 tensor of non-negative row numbers: ``self[rows]`` through
        ``index_select``, which gathers rows several times faster than indexing on the CPU."""
        return self._map(lambda _, t: t.index_select(0, rows))

    @classmethod
    def cat(cls, items: Sequence[ReIDFeatures]) -> ReIDFeatures:
        """Concatenates records along the batch; all must have the same components."""
        if len(items) == 0:
            raise ValueError("ReIDFeatures.cat needs at least one record")
        names = [name for name, _ in items[0].items()]
        for i, item in enumerate(items):
            if [name for name, _ in item.items()] != names:
                raise ValueError(
                    f"ReIDFeatures.cat: record {i} has components {[n for n, _ in item.items()]}, record 0 has {names}"
                )
        return cls(**{name: torch.cat([getattr(item, name) for item in items]) for name in names})


class NonFiniteFeaturesError(ValueError):
    """Features hold NaN or infinite values: the model's weights are not finite.

    Attributes:
        rows: the rows (images) of the batch with a non-finite value.
    """

    def __init__(
        self, what: str, rows: list[int], total: int, components: list[str], names: Sequence[str] | None = None
    ) -> None:
        self.rows, self.total, self.components = rows, total, components
        shown = [str(names[i]) if names is not None else f"row {i}" for i in rows[:5]]
        super().__init__(
            f"{what}: the features of {len(rows)} of {total} images hold NaN or infinite values (in "
            f"{', '.join(components)}; {', '.join(shown)}{', ...' if len(rows) > 5 else ''}). The model's weights "
            "are not finite (a checkpoint saved after training diverged?). Use an earlier checkpoint, or retrain "
            "with a lower learning rate."
        )

    def naming(self, what: str, names: Sequence[str]) -> NonFiniteFeaturesError:
        """The same error, with the rows named (e.g. by their image files)."""
        return NonFiniteFeaturesError(what, self.rows, self.total, self.components, names)


def check_finite_features(features: ReIDFeatures, what: str, names: Sequence[str] | None = None) -> None:
    """Raises :class:`NonFiniteFeaturesError` when a row of ``features`` holds NaN or infinite values.

    Args:
        features: a batch of features.
        what: the caller, for the message (``"ICGModule.extract"``).
        names: a name per row (file paths) to list the first bad rows by; row numbers otherwise.
    """
    bad = torch.zeros(len(features), dtype=torch.bool, device=features.device)
    components = []
    for name, value in features.items():
        if value.is_floating_point():
            rows = ~torch.isfinite(value.flatten(1)).all(dim=1)
            if bool(rows.any()):
                components.append(name)
                bad |= rows
    if components:
        raise NonFiniteFeaturesError(what, bad.nonzero().flatten().tolist(), len(features), components, names)
