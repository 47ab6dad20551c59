import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.generation import GenerationSettings, generate

PROMPTS = [
    "#Person1#: Where is the bank?",
    "#Person1#: Hello, how are you?\n#Person2#: Fine, thanks. And you?",
    "Summary:",
    "#Person1#: I want a ticket to Paris.\n#Person2#: That is 50 dollars.\n#Person1#: Here you are.",
    "#Person1#: It is raining again.",
]


def _hf_generate_one(loaded, prompt, max_new_tokens, eos_ids):
    """The course notebook's way: model.generate on one example at a time."""
    enc = loaded.tokenizer(prompt, return_tensors="pt")
    out = loaded.model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(eos_ids),
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    tokens = out[0, 1:] if loaded.is_encoder_decoder else out[0, enc["input_ids"].shape[1] :]
    result = []
    for token in tokens.tolist():
        if token in eos_ids:
            break
        result.append(token)
    return result


def _with_early_eos(loaded, max_new_tokens):
    """Make a token the model emits mid-way an end-of-sequence token, so rows of a batch
    finish at different steps and the row-dropping path runs."""
    free = generate(loaded.model, loaded.tokenizer, PROMPTS, GenerationSettings(max_new_tokens=max_new_tokens), progress=False)
    eos = free[0].token_ids[3]
    loaded.model.generation_config.eos_token_id = [loaded.tokenizer.eos_token_id, eos]
    return {loaded.tokenizer.eos_token_id, eos}


@pytest.mark.parametrize("prefill_tokens", [4096, 16], ids=["one-prefill-chunk", "many-prefill-chunks"])
def test_batched_greedy_equals_one_at_a_time_and_hf_generate(tiny_model, monkeypatch, prefill_tokens):
    from tunelab.generation import batched

    monkeypatch.setattr(batched, "PREFILL_TOKENS", prefill_tokens)
    eos_ids = _with_early_eos(tiny_model, 12)
    batched = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(max_new_tokens=12, batch_size=4), progress=False)
    single = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(max_new_tokens=12, batch_size=1), progress=False)
    lengths = {len(g.token_ids) for g in batched}
    assert len(lengths) > 1, "rows should finish at different steps"
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    for prompt, out in zip(PROMPTS, batched):
        assert out.token_ids == _hf_generate_one(tiny_model, prompt, 12, eos_ids)
        assert out.finish_reason == ("length" if len(out.token_ids) == 12 else "stop")
        assert out.text == tiny_model.tokenizer.decode(out.token_ids, skip_special_tokens=True).strip()


def test_output_order_follows_input_order(tiny_model):
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)
    forward = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, settings, progress=False)
    backward = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS[::-1], settings, progress=False)
    assert [g.token_ids for g in forward] == [g.token_ids for g in backward[::-1]]


def test_stop_strings_cut_the_text(tiny_model):
    free = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=10), progress=False)[0]
    decode = lambda ids: tiny_model.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    start = next(i for i in range(1, 8) if decode(free.token_ids[i : i + 2]).strip())  # visible text
    stop = decode(free.token_ids[start : start + 2]).strip()
    cut = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=10, stop=(stop,)), progress=False)[0]
    assert cut.finish_reason == "stop" and len(cut.token_ids) <= start + 2
    assert stop not in cut.text and free.text.startswith(cut.text)


def test_sampling_is_seeded(tiny_model):
    settings = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, repetition_penalty=1.2)
    a = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(seed=1, **settings), progress=False)
    b = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(seed=1, **settings), progress=False)
    c = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(seed=2, **settings), progress=False)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert all(len(g.token_ids) <= 8 for g in a)


def test_repetition_penalty_changes_greedy_output(tiny_model):
    plain = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(max_new_tokens=16), progress=False)
    penalized = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(max_new_tokens=16, repetition_penalty=3.0), progress=False)
    assert [g.token_ids for g in plain] != [g.token_ids for g in penalized]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"stop": ("",)}, "stop strings must be non-empty"),
    ],
)
def test_bad_settings(tiny_llama_dir, kwargs, message):
    with pytest.raises(TunelabError, match=message):
        GenerationSettings(**kwargs).validate()


def test_empty_prompt_is_refused(tiny_model):
    from tunelab.generation import generate_from_ids

    with pytest.raises(TunelabError, match="empty prompt"):
        generate_from_ids(tiny_model.model, tiny_model.tokenizer, [[]], GenerationSettings(), progress=False)


@pytest.mark.slow
def test_default_model_batched_matches_model_generate(default_model):
    """The real model with its chat template: batched greedy summaries equal the
    one-at-a-time model.generate loop (the bench counts rare float near-ties)."""
    from tunelab.data import load_examples
    from tunelab.prompting import PromptBuilder

    builder = PromptBuilder(default_model.tokenizer, context_window=default_model.context_window)
    prompts = [builder.build(e, []).text for e in load_examples("dialogsum", "test", limit=4)]
    ours = generate(default_model.model, default_model.tokenizer, prompts, GenerationSettings(max_new_tokens=24, batch_size=4), add_special_tokens=False, progress=False)
    eos = {default_model.tokenizer.eos_token_id}
    with torch.inference_mode():
        for prompt, out in zip(prompts, ours):
            enc = default_model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            ref = default_model.model.generate(**enc, max_new_tokens=24, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
            ref = ref[: next((i for i, t in enumerate(ref) if t in eos), len(ref))]
            assert out.token_ids == ref


def test_shared_prefix_is_prefilled_once_and_changes_nothing(tiny_model, monkeypatch):
    """Few-shot prompts share their examples: that prefix is computed once per batch
    (spied on here), and outputs still equal model.generate one prompt at a time."""
    from tunelab.generation import batched

    prefix = "Summarize the following conversation. #Person1#: Hello, how are you? #Person2#: Fine, thanks. Summary: They greet each other. " * 3
    prompts = [prefix + p for p in PROMPTS]
    seen_shared = []
    original = batched._CausalDecoder._prefill_shared
    monkeypatch.setattr(batched._CausalDecoder, "_prefill_shared", lambda self: seen_shared.append(self.shared) or original(self))
    eos_ids = _with_early_eos(tiny_model, 10)
    outputs = generate(tiny_model.model, tiny_model.tokenizer, prompts, GenerationSettings(max_new_tokens=10, batch_size=5), progress=False)
    for prompt, out in zip(prompts, outputs):
        assert out.token_ids == _hf_generate_one(tiny_model, prompt, 10, eos_ids)
    if not tiny_model.is_encoder_decoder:
        assert seen_shared and seen_shared[-1] >= batched.MIN_SHARED_PREFIX


def test_repetition_penalty_ignores_padding(tiny_model):
    """Padding (often the EOS id) must not count as already-generated text: make the pad
    id a token the model emits, and batched output must still equal model.generate."""
    free = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GenerationSettings(max_new_tokens=8), progress=False)
    pad = free[1].token_ids[2]
    tiny_model.tokenizer.pad_token = tiny_model.tokenizer.convert_ids_to_tokens(pad)
    settings = GenerationSettings(max_new_tokens=8, batch_size=5, repetition_penalty=1.3)
    batched = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, settings, progress=False)
    for prompt, out in zip(PROMPTS, batched):
        enc = tiny_model.tokenizer(prompt, return_tensors="pt")
        ref = tiny_model.model.generate(**enc, max_new_tokens=8, do_sample=False, repetition_penalty=1.3, eos_token_id=[], pad_token_id=pad)
        ref = ref[0, 1:] if tiny_model.is_encoder_decoder else ref[0, enc["input_ids"].shape[1]:]
        eos = tiny_model.tokenizer.eos_token_id
        ref = ref.tolist()
        ref = ref[: ref.index(eos)] if eos in ref else ref
        assert out.token_ids == ref


def test_missing_pad_token_and_integer_settings_are_fine(tiny_model):
    tiny_model.tokenizer.pad_token = None
    out = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS[:2], GenerationSettings(max_new_tokens=3, temperature=1, do_sample=True, repetition_penalty=2), progress=False)
    assert all(len(g.token_ids) <= 3 for g in out)


def test_sliding_window_models_are_refused_past_the_window(tiny_llama_dir):
    from tunelab.models import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    loaded.model.config.sliding_window = 8
    with pytest.raises(TunelabError, match="past this model's sliding attention window of 8"):
        generate(loaded.model, loaded.tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=10), progress=False)
    loaded.model.config.sliding_window = 4096  # inside the window: fine
    assert generate(loaded.model, loaded.tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=2), progress=False)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_soft_prompt_models_decode_like_their_training_forward(kind, tiny_model):
    """peft prompt/prefix tuning: batched decoding gives the tokens a cache-free greedy
    loop through peft's own forward (the computation training does) gives."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    task = "SEQ_2_SEQ_LM" if tiny_model.is_encoder_decoder else "CAUSAL_LM"
    config = (PromptTuningConfig if kind == "prompt" else PrefixTuningConfig)(task_type=task, num_virtual_tokens=5)
    torch.manual_seed(0)
    model = get_peft_model(tiny_model.model, config).eval()
    tokenizer = tiny_model.tokenizer
    batched = [g.token_ids for g in generate(model, tokenizer, PROMPTS[:3], GenerationSettings(max_new_tokens=8, batch_size=3), progress=False)]
    for prompt, got in zip(PROMPTS[:3], batched):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        decoded = torch.tensor([[model.config.decoder_start_token_id]]) if tiny_model.is_encoder_decoder else ids
        with torch.no_grad():
            for _ in range(8):
                if tiny_model.is_encoder_decoder:
                    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=decoded).logits
                else:
                    logits = model(input_ids=decoded, attention_mask=torch.ones_like(decoded)).logits
                decoded = torch.cat([decoded, logits[:, -1:].argmax(-1)], dim=1)
        new = decoded[0, 1:].tolist() if tiny_model.is_encoder_decoder else decoded[0, ids.shape[1]:].tolist()
        eos = tokenizer.eos_token_id
        assert got == (new[: new.index(eos)] if eos in new else new)
