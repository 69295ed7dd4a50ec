"""Deep Equilibrium ResNets: the same block as the weight-tied family, solved for z* = f(z*, x).

Solvers and gradients come from torchdeq (see :mod:`wt_zoo.solvers`). TorchScript is not supported
for this family: the solvers' convergence loops read tensor values on the host. fx treats the
solver-driven layer (:class:`EquilibriumImplicit`) as a leaf, so symbolic tracing and torchvision's
fx feature extraction work around it.
"""
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch
from torch import nn
from timm.layers import register_notrace_module
from timm.models import register_model

from ..solvers import SolverStats, State, build_deq_core, check_solver_args, jacobian_penalty, solve
from .implicit_resnet import TAG_MODEL_ARGS, ImplicitResNet, check_depth, create_implicit_resnet, family_default_cfgs

__all__ = ['EquilibriumImplicit', 'EquilibriumMixin', 'DEQResNet']


@register_notrace_module  # fx: a leaf, the solver's loop reads tensor values
class EquilibriumImplicit(nn.Module):
    """Solve the implicit layer's fixed point with torchdeq; record what the solver did on every forward.

    The state is the block's: a tensor for a single-resolution block, a list with one tensor per
    branch for a multi-resolution one (torchdeq solves a list as one flattened vector).
    """

    def __init__(self, block: nn.Module, f_solver: str = 'anderson', f_max_iter: int = 12, f_tol: float = 1e-3,
                 b_solver: str = 'fixed_point_iter', b_max_iter: int = 12, grad_mode: str = 'phantom',
                 phantom_steps: int = 2, jac_reg_weight: float = 0.0, eval_f_max_iter: int = 0):
        super().__init__()
        self.block = block
        self.f_tol = f_tol
        self.jac_reg_weight = jac_reg_weight
        self.grad_checkpointing = False  # nothing to checkpoint: the solve keeps no graph
        self.deq = build_deq_core(f_solver=f_solver, f_max_iter=f_max_iter, f_tol=f_tol, b_solver=b_solver,
                                  b_max_iter=b_max_iter, grad_mode=grad_mode, phantom_steps=phantom_steps,
                                  eval_f_max_iter=eval_f_max_iter)
        self.last_stats: Optional[SolverStats] = None
        self.jac_loss: Optional[torch.Tensor] = None
        self.unrolled_depth = 0  # > 0: train unrolled this many steps instead of solving (warm-up)
        self._warned = False

    def forward(self, x: State) -> State:
        branches = not torch.is_tensor(x)
        if branches:
            x = list(x)
        first = x[0] if branches else x
        z_init = x  # the same start as the unrolled twin
        if first.device.type == 'meta':
            # No values to iterate on: one application gives the output's shape and dtype.
            return self.block(z_init, x)
        if self.unrolled_depth and self.training:
            z = z_init
            for _ in range(self.unrolled_depth):
                z = self.block(z, x)
            self.last_stats, self.jac_loss = None, None
            return z

        # torchdeq calls func again inside backward (implicit gradient), where autocast is no longer on:
        # carry the forward's autocast state so both see the same function.
        device_type = first.device.type
        autocast_on = torch.is_autocast_enabled(device_type)
        autocast_dtype = torch.get_autocast_dtype(device_type)

        def func(*z):  # torchdeq passes a list state as one argument per branch
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                if not branches:
                    return self.block(z[0], x).to(z[0].dtype)
                return [out.to(state.dtype) for out, state in zip(self.block(list(z), x), z)]

        # The solver's iterates and algebra (Anderson's bmm and least squares) stay fp32: in bf16 its small
        # systems lose the regulariser and turn singular. Only the block runs in autocast.
        if autocast_on:
            z_init = [z.float() for z in z_init] if branches else z_init.float()
        with torch.autocast(device_type, enabled=False):
            z_star, stats = solve(self.deq, func, z_init, self.f_tol)
        if not all(torch.isfinite(z).all() for z in (z_star if branches else [z_star])):
            raise FloatingPointError(
                f'DEQ solver returned non-finite values (relative residual {stats.rel_residual:.3g} after '
                f'{stats.nstep:.1f} iterations); lower the learning rate or raise jac_reg_weight')
        self.last_stats = stats
        if not stats.converged and not self._warned:
            self._warned = True
            warnings.warn(
                f'DEQ solver did not reach f_tol={self.f_tol:g} (relative residual {stats.rel_residual:.3g} '
                f'after {stats.nstep:.1f} iterations); returning its best iterate. Further misses are '
                f'recorded in solver_stats without warning.', RuntimeWarning, stacklevel=_user_stacklevel())
        self.jac_loss = None
        if self.training and self.jac_reg_weight > 0 and torch.is_grad_enabled():
            self.jac_loss = jacobian_penalty(func, z_star)
        return z_star


def _user_stacklevel() -> int:
    """``warnings.warn``'s stacklevel for the first caller outside torch, timm and wt_zoo: the user's line that ran
    the model, not ``Module._call_impl``. Call it from the function that warns."""
    roots = tuple(str(Path(package.__file__).parent) for package in (torch, timm)) + (str(Path(__file__).parents[1]),)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(roots):
        frame, level = frame.f_back, level + 1
    return level


class EquilibriumMixin:
    """What makes any zoo architecture a DEQ: its implicit layers solved, not unrolled.

    Put it before the architecture class (``class DEQResNet(EquilibriumMixin, ImplicitResNet)``); it
    consumes the solver settings (see :func:`wt_zoo.solvers.check_solver_args`) and ``warmup_depth``,
    the weight-tied twin's depth: what :meth:`set_unrolled_warmup` unrolls during training.
    """
    unrolled = False

    def __init__(
            self,
            f_solver: str = 'anderson',
            f_max_iter: int = 12,
            f_tol: float = 1e-3,
            b_solver: str = 'fixed_point_iter',
            b_max_iter: int = 12,
            grad_mode: str = 'phantom',
            phantom_steps: int = 2,
            jac_reg_weight: float = 0.0,
            eval_f_max_iter: int = 0,
            warmup_depth: int = 6,
            **kwargs,
    ):
        check_depth(warmup_depth, 'warmup_depth')
        self.warmup_depth = warmup_depth
        deq_args = dict(f_solver=f_solver, f_max_iter=f_max_iter, f_tol=f_tol, b_solver=b_solver, b_max_iter=b_max_iter,
                        grad_mode=grad_mode, phantom_steps=phantom_steps, jac_reg_weight=jac_reg_weight,
                        eval_f_max_iter=eval_f_max_iter)
        check_solver_args(**deq_args)
        self.deq_args = deq_args
        super().__init__(
            implicit_layer=lambda block, stage_index, device: EquilibriumImplicit(block, **deq_args), **kwargs)

    @torch.jit.ignore
    def set_unrolled_warmup(self, enable: bool = True) -> None:
        """Train each implicit layer as its weight-tied twin (``warmup_depth`` unrolled steps) instead of solving.

        MDEQ's pretraining: the unrolled steps give the block a useful, stable map before the solver
        and its approximate gradients take over. Evaluation always solves.
        """
        for layer in self.implicit_layers():
            layer.unrolled_depth = self.warmup_depth if enable else 0

    @property
    def solver_stats(self) -> Dict[str, Dict[str, float]]:
        """Per implicit layer, what the last forward's solver did (mean iterations, worst residual, converged)."""
        return {name: layer.last_stats.as_dict()
                for name, layer in self.named_implicit_layers() if layer.last_stats is not None}

    def aux_loss(self) -> torch.Tensor:
        """Weighted Jacobian regularisation of the last training forward (zero when disabled)."""
        penalties: List[torch.Tensor] = [layer.jac_loss for layer in self.implicit_layers() if layer.jac_loss is not None]
        if not penalties:
            return torch.zeros((), device=self.stem.conv.weight.device)
        return self.deq_args['jac_reg_weight'] * torch.stack(penalties).sum()


class DEQResNet(EquilibriumMixin, ImplicitResNet):
    """DEQ twin of :class:`WTResNet`: identical parameters, each stage solved instead of unrolled."""


default_cfgs = family_default_cfgs('deq')
# Test-time solver caps chosen on each checkpoint's held-out split (`python -m wt_zoo.bench deq-solver`, rule in
# wt_zoo.cards.choose_solver_cap): the best held-out top-1 among the caps whose mean relative residual is below
# 0.05; training's 12 iterations stopped short of that for the tiny and Fashion-MNIST tags.
# deq_resnet_base.c10's cap is the one its only test validation ran at (a lent GPU's deadline cut the cap-12
# run, results/device/README.md): measured, not chosen among caps; `bench deq-solver` would choose it properly.
TAG_MODEL_ARGS.update({
    'deq_resnet_tiny.c10': dict(eval_f_max_iter=24),
    'deq_resnet_small.c10': dict(eval_f_max_iter=24),
    'deq_resnet_small.fmnist': dict(eval_f_max_iter=30),
    'deq_resnet_base.c10': dict(eval_f_max_iter=30),
})


@register_model
def deq_resnet_tiny(pretrained=False, **kwargs) -> DEQResNet:
    return create_implicit_resnet(DEQResNet, 'deq_resnet_tiny', pretrained, **kwargs)


@register_model
def deq_resnet_small(pretrained=False, **kwargs) -> DEQResNet:
    return create_implicit_resnet(DEQResNet, 'deq_resnet_small', pretrained, **kwargs)


@register_model
def deq_resnet_base(pretrained=False, **kwargs) -> DEQResNet:
    return create_implicit_resnet(DEQResNet, 'deq_resnet_base', pretrained, **kwargs)
