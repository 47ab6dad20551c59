import pytest

from tunelab.data import Example, load_examples
from tunelab.errors import PromptError
from tunelab.prompting import PromptBuilder, PromptTemplate, ShotSelector


@pytest.fixture
def pool(dialog_file):
    return load_examples(dialog_file)


def _plain_builder(tiny_model, **kwargs):
    return PromptBuilder(tiny_model.tokenizer, use_chat_template=False, context_window=tiny_model.context_window, **kwargs)


def test_zero_one_few_shot_plain_prompts(tiny_llama_dir, pool):
    from tunelab.models import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    builder = _plain_builder(loaded)
    target = pool[0]
    zero = builder.build(target, [])
    assert zero.text == f"Summarize the following conversation.\n\n{target.input}\n\nSummary:"
    assert zero.shot_ids == []
    one = builder.build(target, pool[1:2])
    assert one.text == (
        f"Summarize the following conversation.\n\n{pool[1].input}\n\nSummary: {pool[1].references[0]}"
        f"\n\n\nSummarize the following conversation.\n\n{target.input}\n\nSummary:"
    )
    few = builder.build(target, pool[1:4])
    assert few.shot_ids == ["d2", "d3", "d4"] and few.text.count("Summary:") == 4
    assert few.text.endswith(f"{target.input}\n\nSummary:")


def test_chat_template_inline_and_turns(tiny_llama_dir, pool):
    from tunelab.models import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    inline = PromptBuilder(loaded.tokenizer, PromptTemplate(instruction="Sum up."))
    assert inline.use_chat_template and not inline.adds_special_tokens
    plain = PromptBuilder(loaded.tokenizer, PromptTemplate(instruction="Sum up."), use_chat_template=False)
    assert inline.build(pool[0], pool[1:3]).text == f"<|user|>{plain.build(pool[0], pool[1:3]).text}</s><|assistant|>"
    builder = PromptBuilder(loaded.tokenizer, PromptTemplate(instruction="Sum up.", shot_style="turns"))
    prompt = builder.build(pool[0], pool[1:3])
    expected = "".join(
        f"<|user|>Sum up.\n\n{s.input}</s><|assistant|>{s.references[0]}</s>" for s in pool[1:3]
    ) + f"<|user|>Sum up.\n\n{pool[0].input}</s><|assistant|>"
    assert prompt.text == expected
    with pytest.raises(PromptError, match="shot_style must be 'inline' or 'turns'"):
        PromptBuilder(loaded.tokenizer, PromptTemplate(shot_style="mixed"))


def test_chat_template_on_without_one_is_an_error(tiny_t5_dir):
    from tunelab.models import load_model

    loaded = load_model(str(tiny_t5_dir), device="cpu")
    with pytest.raises(PromptError, match="no chat template"):
        PromptBuilder(loaded.tokenizer, use_chat_template=True)
    assert PromptBuilder(loaded.tokenizer).use_chat_template is False  # auto


def test_shots_never_include_the_row_being_answered(pool):
    selector = ShotSelector(pool, 3, seed=0)
    for example in pool:
        shots = selector.for_example(example)
        assert len(shots) == 3 and example.id not in [s.id for s in shots]
    # same pool, same seed -> same draw; another seed -> another draw
    assert [s.id for s in ShotSelector(pool, 3, seed=0).for_example(pool[0])] == [s.id for s in selector.for_example(pool[0])]
    draws = {tuple(s.id for s in ShotSelector(pool, 3, seed=seed).for_example(pool[0])) for seed in range(6)}
    assert len(draws) > 1


def test_fixed_shot_ids(pool):
    selector = ShotSelector(pool, ids=["d3", "d1"])
    assert [s.id for s in selector.for_example(pool[5])] == ["d3", "d1"]
    assert [s.id for s in selector.for_example(pool[0])] == ["d3"]  # d1 is the row itself
    with pytest.raises(PromptError, match="shot ids not in the pool: nope"):
        ShotSelector(pool, ids=["d1", "nope"])
    with pytest.raises(PromptError, match="asked for 9 shots but only 6"):
        ShotSelector(pool, 9)


def test_context_window_check(tiny_llama_dir, pool):
    from tunelab.models import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    sizes = [_plain_builder(loaded).build(pool[0], pool[1 : 1 + k]).num_tokens for k in range(4)]
    window = sizes[1] + 10  # room for one shot and 10 new tokens, not for two
    strict = PromptBuilder(loaded.tokenizer, use_chat_template=False, context_window=window, max_new_tokens=10)
    with pytest.raises(PromptError, match=r"example 'd1': \d+ prompt tokens \+ 10 new tokens exceed the model's context window.*drop-shots"):
        strict.build(pool[0], pool[1:4])
    lenient = PromptBuilder(loaded.tokenizer, use_chat_template=False, context_window=window, max_new_tokens=10, on_overflow="drop-shots")
    prompt = lenient.build(pool[0], pool[1:4])
    assert prompt.shot_ids == ["d2"] and prompt.num_tokens == sizes[1]  # dropped from the end
    tiny = PromptBuilder(loaded.tokenizer, use_chat_template=False, context_window=5, on_overflow="drop-shots")
    with pytest.raises(PromptError, match="the input alone is too long"):
        tiny.build(pool[0], pool[1:3])


def test_encoder_decoder_window_holds_the_prompt_only(tiny_t5_dir):
    from tunelab.models import load_model

    loaded = load_model(str(tiny_t5_dir), device="cpu")
    example = Example("x", "hello there", ("hi",))
    n = PromptBuilder(loaded.tokenizer).build(example, []).num_tokens
    builder = PromptBuilder(loaded.tokenizer, context_window=n, is_encoder_decoder=True, max_new_tokens=50)
    assert builder.build(example, []).num_tokens == n


def test_shots_need_references(pool):
    unlabeled = [Example("u1", "some text"), Example("u2", "more text")]
    with pytest.raises(PromptError, match="need a reference"):
        ShotSelector(unlabeled, 1).for_example(pool[0])


def test_a_shot_with_the_same_text_under_another_id_is_not_used(pool):
    twin = Example("copy-of-d1", pool[0].input, ("a summary",))
    selector = ShotSelector([twin, *pool[1:3]], 2, seed=0)
    assert [s.id for s in selector.for_example(pool[0])] in (["d2", "d3"], ["d3", "d2"])


def test_a_pool_too_small_besides_the_row_is_an_error(pool):
    selector = ShotSelector(pool[:3], 3, seed=0)
    with pytest.raises(PromptError, match="only 2 examples besides 'd1' itself; asked for 3"):
        selector.for_example(pool[0])
    assert len(selector.for_example(pool[4])) == 3
    with pytest.raises(PromptError, match="--shots 0 with --shot-ids"):
        ShotSelector(pool, 0, ids=["d1"])
    with pytest.raises(PromptError, match="--shots must be >= 0"):
        ShotSelector(pool, -1)


def test_an_empty_cue_and_instruction_leave_a_text_to_continue():
    template = PromptTemplate(instruction="", output_label="")
    assert template.plain_block("the film is", None) == "the film is"
    assert PromptTemplate(instruction="", output_label="Answer:").plain_block("x", None) == "x\n\nAnswer:"
