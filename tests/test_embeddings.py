"""Textual-inversion embeddings in A1111's file formats, used by name."""
from __future__ import annotations

import pytest


class NotATensor:  # a pickled object: weights_only loading must refuse it
    pass


class Payload:
    """Unpickling this calls ``Path.touch``: code a downloaded .pt could carry."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("embeddings")
    gen = torch.Generator().manual_seed(0)
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=gen) * 3}, "name": "sparkle", "step": 100},
               root / "sparkle.pt")
    save_file({"emb_params": torch.randn(1, 32, generator=gen) * 3}, str(root / "glowy.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(1, 1024, generator=gen)}}, root / "wide.pt")
    torch.save(NotATensor(), root / "pickled.pt")
    torch.save({"string_to_param": {"*": Payload(root.parent / f"{root.name}-ran")}}, root / "payload.pt")
    (root / "notes.txt").write_text("not an embedding")
    return root


@pytest.fixture(scope="module")
def emb_engine(folder):
    from app.engine.engine import Engine, EngineOptions

    return Engine.load(EngineOptions(model="demo", device="cpu", embeddings=str(folder)))


def test_embeddings_change_the_image_and_nothing_else(engine, emb_engine, small_request):
    def pixels(eng, prompt):
        return eng.generate(small_request(prompt=prompt)).images[0].tobytes()

    plain = pixels(emb_engine, "a photo")
    assert plain == pixels(engine, "a photo")  # other prompts are untouched by loading embeddings
    with_sparkle = pixels(emb_engine, "a photo sparkle")
    assert with_sparkle != pixels(engine, "a photo sparkle")  # the word means the learned vectors
    assert with_sparkle != pixels(emb_engine, "a photo glowy")
    assert pixels(emb_engine, "a photo (sparkle:1.3)") != with_sparkle  # weights apply to embeddings too


def test_long_and_weighted_prompts_encode_embeddings_as_diffusers_does(emb_engine):
    from app.engine.prompts import Fragment, encode_schedule, encode_weighted

    pipe = emb_engine.pipe
    theirs = pipe.encode_prompt("a photo sparkle", "cpu", 1, False)[0]
    ours = encode_weighted(pipe, [Fragment(pipe.maybe_convert_prompt("a photo sparkle", pipe.tokenizer))])
    assert ours.equal(theirs)
    # With a BREAK the first chunk is that same text.
    split = encode_schedule(pipe, "a photo sparkle BREAK red fox", 1)[0].cond
    assert split.shape[1] == 2 * 77 and split[:, :77].equal(theirs)
    ids = pipe.tokenizer(pipe.maybe_convert_prompt("sparkle", pipe.tokenizer), add_special_tokens=False)["input_ids"]
    assert len(ids) == 2  # two vectors, each its own token, once


def test_the_listing_says_what_was_loaded_and_skipped(emb_engine, make_app):
    client = make_app(ENGINE=emb_engine).test_client()
    body = client.get("/sdapi/v1/embeddings").get_json()
    assert body["loaded"] == {"glowy": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                        "shape": 32, "vectors": 1},
                              "sparkle": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                          "shape": 32, "vectors": 2}}
    assert set(body["skipped"]) == {"wide", "pickled", "payload"}
    reasons = {i.name: i.error for i in emb_engine.embeddings}
    assert "1024 wide" in reasons["wide"] and "32" in reasons["wide"]
    assert reasons["pickled"].startswith("refused 'pickled.pt'") and "NotATensor" in reasons["pickled"]


def test_without_a_folder_the_listing_is_empty(client):
    assert client.get("/sdapi/v1/embeddings").get_json() == {"loaded": {}, "skipped": {}}


def test_a_pt_file_carrying_code_is_refused_and_the_code_never_runs(emb_engine, folder):
    reasons = {i.name: i.error for i in emb_engine.embeddings}
    assert reasons["payload"].startswith("refused 'payload.pt': it holds pickled code")
    assert not (folder.parent / f"{folder.name}-ran").exists()


def test_webuiapi_get_embeddings_against_a_running_server(emb_engine, make_app):
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    with ServerHandle(make_app(ENGINE=emb_engine), port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        listing = api.get_embeddings()
        assert set(listing["loaded"]) == {"glowy", "sparkle"} and "payload" in listing["skipped"]
        info = api.txt2img(prompt="a sparkle fox", width=64, height=64, steps=2, seed=3).info
        assert info["prompt"] == "a sparkle fox"


def test_a_prompt_naming_a_skipped_embedding_is_refused_naming_it(emb_engine, make_app, small_request):
    from app.engine.types import ValidationError

    with pytest.raises(ValidationError) as info:  # "wide" is a file here whose vectors do not fit
        emb_engine.generate(small_request(prompt="a Wide fox"))
    assert info.value.field == "prompt" and "embedding 'wide' cannot be used" in str(info.value)
    assert emb_engine.generate(small_request(prompt="a wider fox")).images  # another word is just a word
    client = make_app(ENGINE=emb_engine).test_client()
    # Found when the job runs: the synchronous A1111 call answers 400 naming the field, not 500.
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a wide fox", "width": 64, "height": 64,
                                                      "steps": 2})
    body = response.get_json()
    assert response.status_code == 400 and body["field"] == "prompt" and "embedding 'wide' cannot be used" in body["error"]
    assert body["value"] == repr("wide")  # shown as a 400 before queueing shows it
    # The job keeps the cause as data, which is what the 400 came from (no text parsed back).
    job = client.get("/api/jobs?limit=1").get_json()["jobs"][0]
    assert job["state"] == "failed" and job["error"] == "invalid request: " + body["error"]
    assert job["failure"] == {"kind": "invalid", "field": "prompt", "value": repr("wide"), "message": body["error"]}
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a payload fox", "width": 64, "height": 64,
                                                      "steps": 2})
    assert response.status_code == 400 and "pickled code" in response.get_json()["error"]
