"""Simulated manipulation tasks behind one VLA-convention interface (ManiSkill3, SimplerEnv Bridge).

Importing this package is cheap; ManiSkill3/SAPIEN are imported only when a task is created.
"""
