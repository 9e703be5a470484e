"""ParityMNIST: the paper's toy setting in which forgetting, its forward-KL law and the alternative
predictors can be measured in minutes on a CPU (``vla-cl parity``).

``data`` (datasets, splits, cache), ``model`` (the 785-512-256-10 MLP and its checkpoints), ``methods``
(what each fine-tuning method learns from), ``train`` (pretraining and the one fine-tuning loop),
``evaluate`` (accuracies and every predictor), ``sweep`` (the process-parallel, resumable sweep),
``report`` (summary.json, R^2 table, plots) and ``command`` (the CLI config and entry point).
"""
