"""``vla-cl info``: what this machine offers the toolkit (versions, threads, accelerator, Vulkan)."""

from __future__ import annotations

import dataclasses

from vla_cl.config import RunConfig
from vla_cl.envs.check import machine_report
from vla_cl.runs import RunDir


@dataclasses.dataclass
class InfoConfig(RunConfig):
    pass


def run(config: InfoConfig, run_dir: RunDir) -> int:
    report = machine_report()
    run_dir.write_json("info.json", report)
    run_dir.log(**{k: v for k, v in report.items() if k != "versions"})
    for key, value in report.items():
        if key == "versions":
            for name, version in value.items():
                print(f"  {name:14s} {version or 'not installed'}")
        else:
            print(f"{key:14s} {value}")
    return 0
