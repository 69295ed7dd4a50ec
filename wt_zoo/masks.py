"""Fixed sparse masks over shared weights, one per unrolled iteration.

A weight-tied stage with sparse masks convolves iteration ``k`` with ``W * M_k``: the shared
weight ``W`` is trained by every iteration (gradients of all masked copies add up in ``W``),
while each iteration sees its own fixed sub-network. Masks are drawn once from a seed and kept
as packed bits in the state_dict, so a checkpoint is self-contained and small.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

MASK_KINDS = ('unstructured', '2:4', 'channel')
MASK_MODES = ('distinct', 'shared')

__all__ = ['MASK_KINDS', 'MASK_MODES', 'IterationMasks', 'make_mask', 'pack_bits', 'unpack_bits', 'check_mask_args']


def check_mask_args(mask_density: float, mask_kind: str, mask_mode: str) -> None:
    """Reject bad mask settings early, naming the valid choices."""
    if not isinstance(mask_density, (int, float)) or not 0.0 < float(mask_density) <= 1.0:
        raise ValueError(f'mask_density must be a number in (0, 1], got {mask_density!r}')
    if mask_kind not in MASK_KINDS:
        raise ValueError(f'unknown mask_kind {mask_kind!r}; valid choices: {", ".join(MASK_KINDS)}')
    if mask_mode not in MASK_MODES:
        raise ValueError(f'unknown mask_mode {mask_mode!r}; valid choices: {", ".join(MASK_MODES)}')
    if mask_kind == '2:4' and float(mask_density) != 0.5:
        raise ValueError(f"mask_kind '2:4' keeps 2 of every 4 input channels, so mask_density must be 0.5, "
                         f"got {mask_density!r}")


def make_mask(shape: Sequence[int], density: float, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Draw one boolean mask for a conv weight of ``shape`` (out, in, kh, kw) on the CPU."""
    out_chs, in_chs, kh, kw = shape
    if density >= 1.0:
        return torch.ones(shape, dtype=torch.bool)
    if kind == 'unstructured':
        numel = out_chs * in_chs * kh * kw
        keep = max(1, round(density * numel))
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[torch.randperm(numel, generator=generator)[:keep]] = True
        return mask.view(shape)
    if kind == '2:4':
        if in_chs % 4:
            raise ValueError(f"mask_kind '2:4' needs input channels divisible by 4, got {in_chs}")
        # For every (out, kh, kw) position, keep 2 of each group of 4 consecutive input channels.
        groups = torch.rand(out_chs, in_chs // 4, 4, kh, kw, generator=generator)
        ranks = groups.argsort(dim=2).argsort(dim=2)
        return (ranks < 2).reshape(out_chs, in_chs, kh, kw)
    if kind == 'channel':
        keep = max(1, round(density * in_chs))
        mask = torch.zeros(in_chs, dtype=torch.bool)
        mask[torch.randperm(in_chs, generator=generator)[:keep]] = True
        return mask.view(1, in_chs, 1, 1).expand(shape).contiguous()
    raise ValueError(f'unknown mask_kind {kind!r}; valid choices: {", ".join(MASK_KINDS)}')


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor into uint8 bytes (8 mask entries a byte, little-endian bits)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a 1-D uint8 tensor back to ``numel`` booleans."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1
    return unpacked.reshape(-1)[:numel].to(torch.bool)


class IterationMasks(nn.Module):
    """The masks of one unrolled stage: for each masked weight, one mask per iteration.

    ``forward(weights, iteration)`` returns the masked weights for that iteration. In eval mode
    the products are computed once and reused until a weight changes (its version counter
    moves, as after an optimizer step or ``load_state_dict``), so inference costs the same as
    the dense model.
    """

    def __init__(
            self,
            weight_shapes: Sequence[Tuple[int, ...]],
            depth: int,
            mask_density: float = 0.5,
            mask_kind: str = 'unstructured',
            mask_mode: str = 'distinct',
            mask_seed: int = 0,
            device=None,
    ):
        super().__init__()
        check_mask_args(mask_density, mask_kind, mask_mode)
        self.depth = depth
        self.mask_density = float(mask_density)
        self.mask_kind = mask_kind
        self.mask_mode = mask_mode
        self.num_masks = depth if mask_mode == 'distinct' else 1
        self.weight_shapes: List[List[int]] = [[int(d) for d in s] for s in weight_shapes]
        self.numels = [int(torch.Size(s).numel()) for s in self.weight_shapes]
        generator = torch.Generator(device='cpu').manual_seed(int(mask_seed))
        # One buffer holds every weight's packed masks side by side: row = mask slot, and weight
        # ``i`` owns bytes ``offsets[i]:offsets[i + 1]`` (a plain list keeps it scriptable).
        self.offsets: List[int] = [0]
        for numel in self.numels:
            self.offsets.append(self.offsets[-1] + (numel + 7) // 8)
        rows = [
            torch.cat([pack_bits(make_mask(shape, self.mask_density, mask_kind, generator)) for shape in self.weight_shapes])
            for _ in range(self.num_masks)
        ]
        self.register_buffer('bits', torch.stack(rows).to(device), persistent=True)
        self._cache: Dict[int, Tuple[tuple, List[torch.Tensor]]] = {}

    def mask(self, index: int, iteration: int) -> torch.Tensor:
        """Boolean mask of weight ``index`` at ``iteration``, shaped like the weight."""
        row = self.bits[iteration % self.num_masks, self.offsets[index]:self.offsets[index + 1]]
        return unpack_bits(row, self.numels[index]).view(self.weight_shapes[index])

    def _masked(self, weights: List[torch.Tensor], iteration: int) -> List[torch.Tensor]:
        out: List[torch.Tensor] = []
        for index, weight in enumerate(weights):
            out.append(weight * self.mask(index, iteration).to(weight.dtype))
        return out

    @torch.jit.unused
    def _cached(self, weights: List[torch.Tensor], iteration: int) -> List[torch.Tensor]:
        slot = iteration % self.num_masks
        key = tuple((w._version, w.data_ptr(), w.device, w.dtype) for w in weights)
        hit = self._cache.get(slot)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, self._masked(weights, iteration))
            self._cache[slot] = hit
        return hit[1]

    def forward(self, weights: List[torch.Tensor], iteration: int) -> List[torch.Tensor]:
        if not torch.jit.is_scripting() and not self.training:
            # cached products carry no graph: only usable where no gradient is wanted
            if not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
                return self._cached(weights, iteration)
        return self._masked(weights, iteration)

    def train(self, mode: bool = True):
        self._cache = {}
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._cache = {}
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__()
        state['_cache'] = {}
        return state

    def extra_repr(self) -> str:
        return (f'depth={self.depth}, mask_density={self.mask_density}, mask_kind={self.mask_kind!r}, '
                f'mask_mode={self.mask_mode!r}, num_masks={self.num_masks}')
