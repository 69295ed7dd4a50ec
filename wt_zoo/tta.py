"""Test-time augmentation: a model's prediction averaged over flipped and shifted copies of each image.

Modes (validate.py ``--tta``):

- ``none``: the plain prediction.
- ``flip``: the image and its horizontal mirror (2 forward passes).
- ``flip-translate``: the image and its mirror, each unshifted and shifted by ``shift`` pixels (default 2)
  up, down, left and right (10 forward passes). The shift pads by reflection: the views are built from
  normalised batches, where the training crop's black border is not known (the timm loader's
  normalisation differs from the on-device one), and a reflected border adds no edge the model never saw.

The views' softmax probabilities are averaged, not their logits: the result is the mean of the views'
predictive distributions (an ensemble), whose cross-entropy is a proper loss, and one view with large
logits cannot outvote the others. The plain pass is the first view, so TTA costs only the extra ones.
"""
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ['TTA_MODES', 'check_tta_mode', 'tta_views', 'num_tta_views', 'tta_probabilities']

TTA_MODES = ('none', 'flip', 'flip-translate')
TTA_SHIFT = 2


def check_tta_mode(mode: str) -> str:
    if mode not in TTA_MODES:
        raise ValueError(f'--tta expects one of {", ".join(TTA_MODES)}, got {mode!r}')
    return mode


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of a batch, so its views run on the same (e.g. channels_last) path."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _shift(x: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """``x`` moved by (dy, dx) pixels (down, right), the uncovered border filled by reflection."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode='reflect')
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w].contiguous(memory_format=_layout(x))


def tta_views(x: torch.Tensor, mode: str, shift: int = TTA_SHIFT) -> Iterator[torch.Tensor]:
    """The views of a batch (N, C, H, W) beyond the plain one, which the caller already has."""
    check_tta_mode(mode)
    if mode == 'none':
        return
    mirrored = x.flip(3).contiguous(memory_format=_layout(x))
    yield mirrored
    if mode == 'flip-translate':
        if shift < 1 or shift >= min(x.shape[-2:]):
            raise ValueError(f'TTA shift must be 1 to {min(x.shape[-2:]) - 1} pixels for {tuple(x.shape[-2:])} '
                             f'images, got {shift}')
        moves = [(shift, 0), (-shift, 0), (0, shift), (0, -shift)]
        for image in (x, mirrored):
            for dy, dx in moves:
                yield _shift(image, dy, dx, shift)


def num_tta_views(mode: str) -> int:
    """Forward passes per image, the plain one included."""
    return {'none': 1, 'flip': 2, 'flip-translate': 10}[check_tta_mode(mode)]


def tta_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, plain_logits: torch.Tensor,
                      mode: str, shift: int = TTA_SHIFT) -> torch.Tensor:
    """Mean softmax (float32) over the plain view (its logits given) and the mode's other views of ``x``."""
    total = plain_logits.float().softmax(dim=1)
    count = 1
    for view in tta_views(x, mode, shift):
        total += forward(view).float().softmax(dim=1)
        count += 1
    return total / count
