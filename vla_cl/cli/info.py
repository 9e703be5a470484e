"""``vla-cl info``: what this machine offers the toolkit (versions, threads, accelerator, Vulkan)."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
import platform

from vla_cl.config import RunConfig
from vla_cl.runs import RunDir

PACKAGES = ("torch", "transformers", "peft", "gymnasium", "mani-skill", "sapien", "hydra-core", "lm-eval", "trl")


@dataclasses.dataclass
class InfoConfig(RunConfig):
    pass


def collect() -> dict:
    import torch

    from vla_cl.envs.vulkan import configure_vulkan

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "vulkan": configure_vulkan(),
        "versions": versions,
    }


def run(config: InfoConfig, run_dir: RunDir) -> int:
    report = collect()
    run_dir.write_json("info.json", report)
    run_dir.log(**{k: v for k, v in report.items() if k != "versions"})
    for key, value in report.items():
        if key == "versions":
            for name, version in value.items():
                print(f"  {name:14s} {version or 'not installed'}")
        else:
            print(f"{key:14s} {value}")
    return 0
