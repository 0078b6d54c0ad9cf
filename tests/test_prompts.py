"""A1111 prompt syntax: emphasis, BREAK, long prompts, and what A1111 fails on (refused)."""
from __future__ import annotations

import pytest

from app.engine.prompts import (
    CHUNK_LENGTH,
    encode_weighted,
    parse_prompt_attention,
    prompt_syntax_problem,
    tokenize_chunks,
)
from app.engine.types import GenerationRequest, ValidationError
from helpers import assert_error, small_job


def weights(text: str) -> list[tuple[str, float]]:
    return [(f.text, round(f.weight, 4)) for f in parse_prompt_attention(text) if not f.is_break]


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a [b]", [("a ", 1.0), ("b", round(1 / 1.1, 4))]),
    ("a (cat:1.0)", [("a cat", 1.0)]),
    ("(a:1.5) (b: 0.5 )", [("a", 1.5), (" ", 1.0), ("b", 0.5)]),
    # A1111's own doctest: nesting multiplies.
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
])
def test_emphasis_weights_as_a1111(text, expected):
    assert weights(text) == expected


@pytest.fixture(scope="module")
def pipe(engine):
    return engine.pipe


def test_break_starts_a_new_chunk(pipe):
    tok = pipe.tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    cat, dog = (tok(w, add_special_tokens=False)["input_ids"] for w in ("a cat", "a dog"))
    chunks = tokenize_chunks(tok, parse_prompt_attention("a cat BREAK a dog"))
    assert [len(c.tokens) for c in chunks] == [77, 77]
    assert chunks[0].tokens[:len(cat) + 2] == [bos, *cat, eos]
    assert chunks[1].tokens[:len(dog) + 2] == [bos, *dog, eos]
    assert len(tokenize_chunks(tok, parse_prompt_attention("a cat a dog"))) == 1


def test_the_tokenizers_vocabulary_is_read_once_not_per_prompt(pipe, tmp_path):
    """``get_vocab()`` builds a dict of the whole vocabulary (0.1-0.15 s): the comma's id is
    looked up once per tokenizer, not for each of an image's prompts."""
    pipe.tokenizer.save_pretrained(tmp_path)
    tok = type(pipe.tokenizer).from_pretrained(tmp_path)  # a fresh one, not looked up yet
    calls = []
    real = tok.get_vocab
    tok.get_vocab = lambda: calls.append(1) or real()
    chunks = [tokenize_chunks(tok, parse_prompt_attention(" ".join(["a red fox,"] * 30))) for _ in range(4)]
    assert len(calls) == 1
    comma = real()[",</w>"]
    assert chunks[0] == chunks[3] and comma in chunks[0][0].tokens


def test_long_prompt_fills_chunks_of_75_and_backtracks_to_a_comma(pipe):
    tok = pipe.tokenizer
    text = " ".join(["a quick red fox in snow,"] * 25)  # 7 tokens a piece: 175 tokens
    chunks = tokenize_chunks(tok, parse_prompt_attention(text))
    assert len(chunks) == 3
    comma = tok.get_vocab()[",</w>"]
    # The first chunk ends at a comma (the text after it moved on), padded with EOS to 77.
    body = chunks[0].tokens[1:1 + CHUNK_LENGTH]
    last = max(i for i, t in enumerate(body) if t != tok.eos_token_id)
    assert body[last] == comma and last == 69
    assert chunks[1].tokens[1:6] == tok("a quick red fox in", add_special_tokens=False)["input_ids"]
    # Without the backtrack the first chunk is cut mid-phrase at 75 tokens.
    assert tokenize_chunks(tok, parse_prompt_attention(text), comma_backtrack=0)[0].tokens[75] != comma


def test_weights_are_per_token_and_the_chunk_mean_is_kept(pipe):
    import copy

    import torch

    # The demo's untrained final layer norm has a zero bias, so its outputs' mean is ~0; a trained
    # encoder's is not. Give a copy a bias like a trained one to see A1111's mean restoring.
    trained = copy.copy(pipe)
    trained.text_encoder = copy.deepcopy(pipe.text_encoder)
    norm = next(m for name, m in trained.text_encoder.named_modules() if name.endswith("final_layer_norm"))
    torch.nn.init.constant_(norm.bias, 0.25)
    plain = encode_weighted(trained, parse_prompt_attention("a cat"))
    strong = encode_weighted(trained, parse_prompt_attention("a (cat:1.5)"))
    assert plain.shape == strong.shape == (1, 77, pipe.text_encoder.config.hidden_size)
    assert float(strong.mean()) == pytest.approx(float(plain.mean()), rel=1e-5)
    # Only the weighted tokens' direction changes: "cat" is scaled by 1.5, the rest by the same factor.
    cat = 2  # BOS, "a", "cat"
    factor = strong[0, 0] / plain[0, 0]
    assert torch.allclose(strong[0, cat] / plain[0, cat], factor * 1.5, rtol=1e-4)
    assert torch.allclose(strong[0, 1], plain[0, 1] * factor, rtol=1e-4)


def test_weighted_encoding_of_the_demo_model_is_finite(pipe):
    import torch

    strong = encode_weighted(pipe, parse_prompt_attention("a (cat:1.5) [dog]"))
    assert torch.isfinite(strong).all()
    assert not strong.equal(encode_weighted(pipe, parse_prompt_attention("a cat dog")))


def test_unweighted_encoding_is_diffusers_own(pipe):
    for text in ("a red fox in the snow", ""):
        ours = encode_weighted(pipe, parse_prompt_attention(text))
        theirs = pipe.encode_prompt(text, "cpu", 1, False)[0]
        assert ours.equal(theirs), text


def pixels(result):
    return result.images[0].tobytes()


def test_weight_one_gives_the_plain_prompts_image(engine, small_request):
    plain = engine.generate(small_request(prompt="a cat"))
    same = engine.generate(small_request(prompt="a (cat:1.0)"))
    strong = engine.generate(small_request(prompt="a (cat:1.5)"))
    assert pixels(same) == pixels(plain)
    assert pixels(strong) != pixels(plain)
    assert same.infotexts[0].startswith("a (cat:1.0)\n")  # the infotext keeps what the user wrote


def test_negative_prompt_weights_change_the_image(engine, small_request):
    plain = engine.generate(small_request(negative_prompt="blurry"))
    strong = engine.generate(small_request(negative_prompt="(blurry:1.6)"))
    assert pixels(strong) != pixels(plain)


def test_the_end_of_a_long_prompt_is_not_cut(engine, small_request):
    words = " ".join(["red fox in snow"] * 50)  # 200 tokens
    tail_a = engine.generate(small_request(prompt=words + " with a blue hat"))
    tail_b = engine.generate(small_request(prompt=words + " with a green boat"))
    assert pixels(tail_a) != pixels(tail_b)


def test_long_prompt_and_short_negative_on_img2img(engine, small_request):
    from helpers import gradient

    result = engine.generate(small_request(prompt=" ".join(["red fox"] * 60), negative_prompt="(ugly:1.3)",
                                           init_image=gradient(64, 64), strength=0.5))
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("field, text", [
    ("prompt", "(cat:1.2.3)"),
    ("negative_prompt", "[blurry:(ugly:1..2):3]"),
    ("prompt", "a [cat:dog:1e999]"),
])
def test_what_a1111_fails_on_is_refused_naming_the_field(field, text):
    values = {"prompt": "a fox", field: text}
    with pytest.raises(ValidationError) as info:
        GenerationRequest(**values).validate()
    assert info.value.field == field


@pytest.mark.parametrize("text", ["a [cat:dog:5]", "a [cat:0.5]", "a [cat|dog]", "[blurry::3]", "[a:[b|c]:0.5]",
                                  "a [cat:dog] here", r"a \[cat:5\]", "photo: a cat", "[(cat:1.2)]", "a | b"])
def test_prompt_editing_and_alternation_are_accepted(text):
    assert prompt_syntax_problem(text) is None
    GenerationRequest(prompt=text, negative_prompt=text).validate()


def test_with_steps_every_scheduled_prompts_weights_are_checked():
    text = "[(cat:1.2.3):dog:-1]"  # the bad weight is never used: A1111 runs it
    assert prompt_syntax_problem(text, steps=20) is None
    assert "1.2.3" in prompt_syntax_problem("[(cat:1.2.3):dog:5]", steps=20)


def test_a_bad_weight_answers_400_on_the_native_api(client):
    body = assert_error(client.post("/api/jobs", json=small_job(prompt="a (cat:1.2.3)")), 400, "prompt")
    assert "1.2.3" in body["error"]


def test_a_bad_weight_answers_400_on_the_a1111_api(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "negative_prompt": "[a|(b:1..2)]",
                                                      "steps": 2})
    assert "1..2" in assert_error(response, 400, "negative_prompt")["error"]
