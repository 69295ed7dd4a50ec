"""Glue between the zoo's DEQ stages and torchdeq's solvers and gradient methods.

Nothing here solves anything itself: the fixed-point solvers (Anderson, Broyden, plain
fixed-point iteration), implicit differentiation and phantom gradients all come from torchdeq.
This module validates settings, builds torchdeq's DEQ core, and turns its statistics into a
small record that callers (training logs, benchmarks, profile) can read.
"""
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Tuple

import torch
from torchdeq import get_deq
from torchdeq.loss import jac_reg

SOLVERS = ('anderson', 'broyden', 'fixed_point_iter')
GRAD_MODES = ('implicit', 'phantom')

__all__ = ['SOLVERS', 'GRAD_MODES', 'SolverStats', 'check_solver_args', 'build_deq_core', 'solve', 'jacobian_penalty']


@dataclass
class SolverStats:
    """What one solve did: mean iterations over the batch, worst final relative residual."""
    nstep: float
    rel_residual: float
    converged: bool

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def check_solver_args(f_solver: str, b_solver: str, grad_mode: str, f_max_iter: int, b_max_iter: int,
                      f_tol: float, phantom_steps: int, jac_reg_weight: float) -> None:
    """Reject bad DEQ settings early, naming the valid choices."""
    for name, value in (('f_solver', f_solver), ('b_solver', b_solver)):
        if value not in SOLVERS:
            raise ValueError(f'unknown {name} {value!r}; valid choices: {", ".join(SOLVERS)}')
    if grad_mode not in GRAD_MODES:
        raise ValueError(f'unknown grad_mode {grad_mode!r}; valid choices: {", ".join(GRAD_MODES)}')
    for name, value in (('f_max_iter', f_max_iter), ('b_max_iter', b_max_iter), ('phantom_steps', phantom_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if not f_tol > 0:
        raise ValueError(f'f_tol must be positive, got {f_tol!r}')
    if not jac_reg_weight >= 0:
        raise ValueError(f'jac_reg_weight must be >= 0, got {jac_reg_weight!r}')


def build_deq_core(f_solver: str = 'anderson', f_max_iter: int = 12, f_tol: float = 1e-3, b_solver: str = 'fixed_point_iter',
                   b_max_iter: int = 12, grad_mode: str = 'phantom', phantom_steps: int = 2) -> torch.nn.Module:
    """torchdeq's indexing core: solve without grad, then attach IFT or phantom-gradient steps."""
    return get_deq(
        core='indexing',
        f_solver=f_solver,
        f_max_iter=f_max_iter,
        f_tol=f_tol,
        f_stop_mode='rel',
        b_solver=b_solver,
        b_max_iter=b_max_iter,
        b_stop_mode='rel',
        ift=grad_mode == 'implicit',
        grad=phantom_steps,
    )


def solve(core: torch.nn.Module, func: Callable[[torch.Tensor], torch.Tensor], z_init: torch.Tensor,
          f_tol: float) -> Tuple[torch.Tensor, SolverStats]:
    """Solve ``z = func(z)`` from ``z_init`` with the core; returns the (best) iterate and its stats."""
    z_out, info = core(func, z_init)
    z_star = z_out[-1]
    nstep = info['nstep'].float().mean().item()
    rel_residual = info['rel_lowest'].float().max().item()
    stats = SolverStats(nstep=nstep, rel_residual=rel_residual, converged=bool(rel_residual <= f_tol))
    return z_star, stats


def jacobian_penalty(func: Callable[[torch.Tensor], torch.Tensor], z_star: torch.Tensor) -> torch.Tensor:
    """Hutchinson estimate of ||J_f(z*)||_F^2 / numel (Bai et al. 2021), differentiable in f's weights."""
    z_probe = z_star.detach().requires_grad_()
    return jac_reg(func(z_probe), z_probe, vecs=1, create_graph=True)
