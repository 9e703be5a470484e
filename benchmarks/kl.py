"""Benchmark the KL core: ``action_token_kl`` throughput and the cost of a ``KLProbe`` measurement.

    python benchmarks/kl.py            # the full run: 100k x 7 x 256 logits, probe sets of thousands
    python benchmarks/kl.py --quick    # seconds; a smoke test runs this

Three tables:
1. ``action_token_kl`` on N x 7 x 256 logits (float32 and bfloat16) against an unchunked textbook
   version (``log_softmax`` + ``F.kl_div``), in seconds, actions/s and input GB/s.
2. The support choice on OpenVLA-width logits (7 x 32064): the 256-token action slice vs the full vocabulary.
3. ``KLProbe.measure`` cost as a ratio to one plain forward pass of the same (LoRA) policy over the
   same probe set, with pi0 from the cache and from ``disable_adapter()``. The cache needs no second
   forward, so its ratio is the KL's own overhead; a disabled adapter must run pi0's forward too, so its
   honest cost is ~2 forwards (a bit less, since the base forward skips the adapter's matmuls).

Timings are the best of ``--repeats`` runs of this process's CPU time (``--clock wall`` for wall-clock
time; shared cores make wall-clock times noisy); set OMP_NUM_THREADS to pin the thread count.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from vla_cl.benchmarking import CLOCKS, best_time, print_table
from vla_cl.kl import KLProbe, action_token_kl

# CPU time of this process by default: on shared cores other jobs inflate wall-clock times erratically
# (up to 2x here), while CPU time only counts the work this process did. ``--clock wall`` switches.
clock = CLOCKS["cpu"]






def naive_kl(base: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The textbook version, for comparison: full-size temporaries, no chunking, no input checks."""
    base_log, log = torch.log_softmax(base.float(), -1), torch.log_softmax(logits.float(), -1)
    return F.kl_div(log, base_log, log_target=True, reduction="none").sum((-1, -2))


def throughput(n: int, repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(n, 7, 256, generator=generator) * 2
    logits = base + 0.5 * torch.randn(n, 7, 256, generator=generator)
    base16, logits16 = base.bfloat16(), logits.bfloat16()
    cases = [
        ("action_token_kl float32", lambda: action_token_kl(base, logits), 4),
        ("action_token_kl bfloat16", lambda: action_token_kl(base16, logits16), 2),
        ("naive log_softmax + kl_div (float32)", lambda: naive_kl(base, logits), 4),
    ]
    rows = []
    for name, fn, bytes_per in cases:
        seconds = best_time(fn, repeats, clock)
        gigabytes = 2 * base.numel() * bytes_per / 1e9
        rows.append([name, f"{seconds:.3f}", f"{n / seconds / 1e6:.2f} M", f"{gigabytes / seconds:.2f}"])
    print_table(
        f"1. action_token_kl on {n:,} x 7 x 256 logits",
        ["implementation", "seconds", "actions/s", "input GB/s"],
        rows,
    )


def support_cost(n: int, repeats: int) -> None:
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(n, 7, 32064, generator=generator)
    logits = base + 0.5 * torch.randn(n, 7, 32064, generator=generator)
    rows = []
    for support in ("action", "full"):
        seconds = best_time(lambda support=support: action_token_kl(base, logits, support=support), repeats, clock)
        kl = float(action_token_kl(base, logits, support=support).mean())
        rows.append([support, f"{seconds:.3f}", f"{n / seconds:,.0f}", f"{kl:.4f}"])
    print_table(
        f"2. support choice on {n:,} x 7 x 32064 logits", ["support", "seconds", "actions/s", "mean KL"], rows
    )


class HeadsPolicy(nn.Module):
    """The prototype's CPU pi0: state -> MLP 2 x 256 -> 7 heads of 256 action tokens."""

    def __init__(self, state_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.heads = nn.Linear(hidden, 7 * 256)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.heads(self.body(state)).reshape(state.shape[0], 7, 256)


def perturb_adapter(model: nn.Module) -> None:
    """Give LoRA's B a non-zero value so pi differs from pi0, as after fine-tuning."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)


def mlp_case(n: int):
    import peft

    torch.manual_seed(0)
    model = peft.get_peft_model(
        HeadsPolicy(), peft.LoraConfig(r=16, lora_alpha=32, target_modules=["body.0", "body.2", "heads"])
    )
    return model, torch.randn(n, 16), model, 512


def llama_case(n: int, hidden: int = 256, layers: int = 4):
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    prompt, d = 32, 7
    config = LlamaConfig(
        vocab_size=32064,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=64,
    )
    model = peft.get_peft_model(
        LlamaForCausalLM(config).eval(),
        peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    ids = torch.cat([torch.randint(1, 31744, (n, prompt)), torch.randint(31744, 32000, (n, d))], dim=1)

    def logits_fn(batch: torch.Tensor) -> torch.Tensor:
        # Only the positions predicting the d action tokens need logits: the last d + 1 but the final one.
        return model(input_ids=batch, logits_to_keep=d + 1).logits[:, :d, :]

    return model, ids, logits_fn, 16


def probe_cost(name: str, case, n: int, repeats: int) -> list[str]:
    model, inputs, logits_fn, batch_size = case(n)
    perturb_adapter(model)
    probe = KLProbe(inputs, batch_size=batch_size)

    def forward_only() -> None:
        with torch.no_grad():
            for batch in probe.batches():
                logits_fn(batch)

    def base_forward_only() -> None:
        with model.disable_adapter():
            forward_only()

    def cache() -> None:
        with model.disable_adapter():
            probe.cache_reference(logits_fn)

    cases = {
        "forward": forward_only,
        "pi0 forward": base_forward_only,
        "cache": cache,
        "cached": lambda: probe.measure(logits_fn),
        "disabled": lambda: probe.measure(logits_fn, reference=model.disable_adapter),
    }
    forward_only()  # warm-up: first calls allocate
    timings = {key: [] for key in cases}
    for _ in range(repeats):  # interleaved, so drift in the shared cores hits every case alike
        for key, fn in cases.items():
            timings[key].append(best_time(fn, 1, clock))
    best = {key: min(values) for key, values in timings.items()}
    kl = probe.measure(logits_fn).mean
    assert abs(probe.measure(logits_fn, reference=model.disable_adapter).mean - kl) <= 1e-6 * max(1.0, kl)

    def ratio(key: str) -> str:
        return f"{best[key]:.3f} ({best[key] / best['forward']:.2f}x)"

    return [
        name,
        f"{n:,}",
        f"{best['forward']:.3f}",
        ratio("pi0 forward"),
        ratio("cache"),
        ratio("cached"),
        ratio("disabled"),
        f"{kl:.4f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one repeat: a smoke run in seconds"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timing repeats (best is reported); default 5, quick 1"
    )
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="what to time (default: cpu)")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    repeats = args.repeats or (1 if args.quick else 5)
    sizes = (
        {"kl": 2_000, "support": 16, "mlp": 1_024, "llama": 16}
        if args.quick
        else {"kl": 100_000, "support": 512, "mlp": 16_384, "llama": 256}
    )
    llama = (lambda n: llama_case(n, hidden=64, layers=2)) if args.quick else llama_case
    llama_name = "Llama 2x64" if args.quick else "Llama 4x256"

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {platform.machine()}, "
        f"{args.clock} time, best of {repeats}"
    )
    throughput(sizes["kl"], repeats)
    support_cost(sizes["support"], repeats)
    rows = [
        probe_cost("MLP 16-256-256-7x256 + LoRA r16", mlp_case, sizes["mlp"], repeats),
        probe_cost(f"{llama_name}, vocab 32064 + LoRA r16", llama, sizes["llama"], repeats),
    ]
    print_table(
        "3. KLProbe cost vs one plain forward pass of pi over the probe set (ratio to it in parentheses)",
        [
            "policy",
            "probe set",
            "forward of pi s",
            "forward of pi0 s",
            "cache_reference s",
            "measure, cached pi0",
            "measure, disable_adapter",
            "mean KL",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
