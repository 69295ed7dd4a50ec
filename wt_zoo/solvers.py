"""Glue between the zoo's DEQ stages and torchdeq's solvers and gradient methods.

Nothing here solves anything itself: the fixed-point solvers (Anderson, Broyden, plain
fixed-point iteration), implicit differentiation and phantom gradients all come from torchdeq.
This module validates settings, builds torchdeq's DEQ core, and turns its statistics into a
small record that callers (training logs, benchmarks, profile) can read. A state is a tensor or,
for a multi-resolution block, a list of tensors (one per branch), which torchdeq solves as one
flattened vector; ``func`` then takes one argument per branch and returns the list.
"""
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Tuple, Union

import torch
from torchdeq import get_deq
from torchdeq.loss import jac_reg
from torchdeq.utils.layer_utils import deq_decorator

State = Union[torch.Tensor, List[torch.Tensor]]  # one tensor, or one per branch of a multi-resolution block

SOLVERS = ('anderson', 'broyden', 'fixed_point_iter')
GRAD_MODES = ('implicit', 'phantom')

__all__ = ['SOLVERS', 'GRAD_MODES', 'State', 'SolverStats', 'check_solver_args', 'build_deq_core', 'solve', 'jacobian_penalty']


@dataclass
class SolverStats:
    """What one solve did: mean iterations over the batch, worst final relative residual."""
    nstep: float
    rel_residual: float
    converged: bool

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def check_solver_args(f_solver: str, b_solver: str, grad_mode: str, f_max_iter: int, b_max_iter: int,
                      f_tol: float, phantom_steps: int, jac_reg_weight: float, eval_f_max_iter: int = 0) -> None:
    """Reject bad DEQ settings early, naming the valid choices."""
    for name, value in (('f_solver', f_solver), ('b_solver', b_solver)):
        if value not in SOLVERS:
            raise ValueError(f'unknown {name} {value!r}; valid choices: {", ".join(SOLVERS)}')
    if grad_mode not in GRAD_MODES:
        raise ValueError(f'unknown grad_mode {grad_mode!r}; valid choices: {", ".join(GRAD_MODES)}')
    for name, value in (('f_max_iter', f_max_iter), ('b_max_iter', b_max_iter), ('phantom_steps', phantom_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if isinstance(eval_f_max_iter, bool) or not isinstance(eval_f_max_iter, int) or eval_f_max_iter < 0:
        raise ValueError(f'eval_f_max_iter must be a non-negative integer (0: f_max_iter), got {eval_f_max_iter!r}')
    if not f_tol > 0:
        raise ValueError(f'f_tol must be positive, got {f_tol!r}')
    if not jac_reg_weight >= 0:
        raise ValueError(f'jac_reg_weight must be >= 0, got {jac_reg_weight!r}')


def build_deq_core(f_solver: str = 'anderson', f_max_iter: int = 12, f_tol: float = 1e-3, b_solver: str = 'fixed_point_iter',
                   b_max_iter: int = 12, grad_mode: str = 'phantom', phantom_steps: int = 2,
                   eval_f_max_iter: int = 0) -> torch.nn.Module:
    """torchdeq's indexing core: solve without grad, then attach IFT or phantom-gradient steps.

    ``eval_f_max_iter`` (0: ``f_max_iter``) caps the solver in eval mode only: a DEQ can be solved further at test
    time than training could afford, which is what its fixed point promises.
    """
    return get_deq(
        core='indexing',
        f_solver=f_solver,
        f_max_iter=f_max_iter,
        eval_f_max_iter=eval_f_max_iter,
        f_tol=f_tol,
        f_stop_mode='rel',
        b_solver=b_solver,
        b_max_iter=b_max_iter,
        b_stop_mode='rel',
        ift=grad_mode == 'implicit',
        grad=phantom_steps,
    )


def solve(core: torch.nn.Module, func: Callable[..., State], z_init: State, f_tol: float) -> Tuple[State, SolverStats]:
    """Solve ``z = func(z)`` from ``z_init`` with the core; returns the (best) iterate and its stats."""
    z_out, info = core(func, z_init)
    z_star = z_out[-1]
    nstep = info['nstep'].float().mean().item()
    rel_residual = info['rel_lowest'].float().max().item()
    stats = SolverStats(nstep=nstep, rel_residual=rel_residual, converged=bool(rel_residual <= f_tol))
    return z_star, stats


def jacobian_penalty(func: Callable[..., State], z_star: State) -> torch.Tensor:
    """Hutchinson estimate of ||J_f(z*)||_F^2 / numel (Bai et al. 2021), differentiable in f's weights.

    A list state is probed as the flattened vector torchdeq solves (its own wrapper flattens it).
    """
    z_star = z_star.detach() if torch.is_tensor(z_star) else [z.detach() for z in z_star]
    vector_func, z_vector = deq_decorator(func, z_star, no_stat=False)
    z_probe = z_vector.detach().requires_grad_()
    return jac_reg(vector_func(z_probe), z_probe, vecs=1, create_graph=True)
