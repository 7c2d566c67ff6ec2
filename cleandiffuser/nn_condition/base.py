import torch
import torch.nn as nn

from ..serialization import RecordsInit


class BaseNNCondition(RecordsInit, nn.Module):
    """Maps a raw condition to an embedding: forward(condition, mask=None) -> (B, ...).

    Classifier-free guidance: in training mode each sample's embedding is zeroed with
    probability `dropout`; an explicit `mask` of shape (B,) (1 keep, 0 drop) overrides that.
    A zero embedding is the "null" condition used for the unconditional branch.
    Subclasses implement `encode(condition)`.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout

    def encode(self, condition) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, condition, mask: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.encode(condition)
        if mask is None and self.training and self.dropout > 0:
            mask = (torch.rand(emb.shape[0], device=emb.device) >= self.dropout)
        if mask is None:
            return emb
        return emb * mask.to(emb.dtype).view(-1, *([1] * (emb.dim() - 1)))
