"""Advantages and returns for on-policy RL: generalised advantage estimation with correct bootstrapping.

Layout. A rollout is T rows in time order along the first axis (trailing axes, if any, are independent
streams, e.g. one column per env). Row t holds the reward r_t of the action taken in s_t, the value
V(s_t) and, in ``next_values``, the value V(s_{t+1}) of the state the action led to. Two flags say how
row t relates to the episode's end:

* ``terminated[t]``: s_{t+1} is terminal (ManiSkill terminates on success). Nothing follows, so nothing
  is bootstrapped: delta_t = r_t - V(s_t).
* ``episode_end[t]``: the episode stops after row t, by termination or by truncation at the time limit.
  A truncated task would have gone on, so the value of where it stood still counts:
  delta_t = r_t + gamma V(s_{t+1}) - V(s_t), with s_{t+1} the final observation *before* any reset.
  Either way the advantage recursion stops at the end of the episode.

Treating a truncation like a termination (or bootstrapping from the next episode's first state) biases
every value target near the time limit; ``bootstrap_values`` builds ``next_values`` so that neither
happens.
"""

from __future__ import annotations

import torch


def _check_flags(name: str, flags: torch.Tensor, shape: torch.Size) -> None:
    if not isinstance(flags, torch.Tensor) or flags.dtype != torch.bool or flags.shape != shape:
        raise ValueError(
            f"{name} must be a bool tensor of shape {tuple(shape)}, got "
            f"{getattr(flags, 'dtype', type(flags).__name__)} {tuple(getattr(flags, 'shape', ()))}"
        )


def _check_values(name: str, values: torch.Tensor, shape: torch.Size | None = None) -> None:
    if not isinstance(values, torch.Tensor) or not values.is_floating_point() or values.ndim == 0:
        raise ValueError(f"{name} must be a float tensor with a time axis, got {type(values).__name__}")
    if shape is not None and values.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be finite")


def bootstrap_values(
    values: torch.Tensor, final_values: torch.Tensor, episode_end: torch.Tensor, episode: torch.Tensor
) -> torch.Tensor:
    """``next_values`` for rows stored episode after episode (rows of an episode contiguous, in step
    order): V(s_{t+1}) is the next row's value inside an episode and, on an episode's last row, the value
    of that episode's final pre-reset observation, ``final_values[episode[t]]``.

    ``values`` (N,), ``final_values`` (E,) one per episode, ``episode_end`` (N,) bool, ``episode`` (N,)
    integer episode index of each row. (On terminated rows ``gae`` ignores the next value.)"""
    _check_values("values", values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D (rows), got shape {tuple(values.shape)}")
    _check_flags("episode_end", episode_end, values.shape)
    if not isinstance(episode, torch.Tensor) or episode.is_floating_point() or episode.shape != values.shape:
        raise ValueError(f"episode must be an integer tensor of shape {tuple(values.shape)}")
    _check_values("final_values", final_values)
    if bool((episode < 0).any()) or bool((episode >= final_values.shape[0]).any()):
        raise ValueError(f"episode indices must lie in [0, {final_values.shape[0]}) (one final value each)")
    if len(values) and not bool(episode_end[-1]):
        raise ValueError("the last row must end its episode: rollouts hold whole episodes")
    changes = episode[1:] != episode[:-1]
    if bool((changes != episode_end[:-1]).any()):
        raise ValueError("episode_end must be true exactly on each episode's last row (rows episode-contiguous)")
    shifted = torch.cat([values[1:], values.new_zeros(1)])
    return torch.where(episode_end, final_values[episode].to(values.dtype), shifted)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    episode_end: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over rows in time order (see the module docstring).

        delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma lam (1 - episode_end_t) A_{t+1}       (A_T = delta_T on the last row)

    Returns (advantages, returns = advantages + values), both detached. ``lam`` = 1 gives Monte Carlo
    returns (bootstrapped on truncation), ``lam`` = 0 one-step TD. A last row that does not end its
    episode (a rollout cut at a fixed length) is handled as cleanrl does: its advantage is its delta."""
    _check_values("rewards", rewards)
    _check_values("values", values, rewards.shape)
    _check_values("next_values", next_values, rewards.shape)
    _check_flags("terminated", terminated, rewards.shape)
    _check_flags("episode_end", episode_end, rewards.shape)
    if bool((terminated & ~episode_end).any()):
        raise ValueError("a terminated row must also end its episode (episode_end = terminated | truncated)")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam!r}")
    rewards, values, next_values = rewards.detach(), values.detach(), next_values.detach()
    keep_value = (~terminated).to(values.dtype)
    carry = (~episode_end).to(values.dtype)
    deltas = rewards.to(values.dtype) + gamma * keep_value * next_values.to(values.dtype) - values
    advantages = torch.empty_like(values)
    running = torch.zeros_like(values[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * carry[t] * running
        advantages[t] = running
    return advantages, advantages + values


def standardize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over every element, std with ddof=0 (PPO's advantage normalisation);
    a single element, or elements all equal, come back as zeros."""
    _check_values("x", x)
    centred = x - x.mean()
    return centred / (centred.pow(2).mean().sqrt() + eps)
