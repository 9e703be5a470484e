"""The main job, ``vla-cl razor``: RL's Razor on robots, from a multi-task pi0 to the report.

``config``: the experiment's settings and the sweep's trials. ``pipeline``: the resumable stages.
``pretrain``: pi0 by behaviour cloning, measured on a suite (also ``vla-cl pretrain``).
``sweep``: the fine-tuning runs in worker processes. ``measure``: evaluations and forgetting predictors.
``law``: fits, Pareto frontiers and the finding at matched new-task success. ``report``: summary.json,
plots, videos and report.html.
"""
