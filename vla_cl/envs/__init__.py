"""Simulated manipulation tasks behind one VLA-convention interface (ManiSkill3, SimplerEnv Bridge).

    from vla_cl.envs import make, list_tasks
    env = make("maniskill/PickCube-v1", obs_mode="state", seed=0)

Importing this package is cheap; ManiSkill3/SAPIEN are imported only when a task is created.
"""

from vla_cl.envs.registry import EnvOptions, TaskSpec, get_spec, list_tasks, make

__all__ = ["EnvOptions", "TaskSpec", "get_spec", "list_tasks", "make"]
