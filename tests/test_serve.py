"""The Ray Serve application end to end on CPU with the demo model: API, batching, previews, faults, browser, drain."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="needs the serve extra: pip install 'star-deploy[serve]'")
pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'star-deploy[serve]'")

from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402
from serve_helpers import (  # noqa: E402
    CHROMEDRIVER,
    CHROMIUM,
    b64_pixels,
    chromium_driver,
    free_port,
    png_pixels,
    post_all,
    same_image,
)

from star_deploy.serve import runner  # noqa: E402
from star_deploy.serve.client import parse_events, request  # noqa: E402
from star_deploy.serve.options import ServeOptions  # noqa: E402

pytestmark = pytest.mark.serve

CASES = [
    {"prompt": "a red circle on a blue background", "seed": 0},
    {"prompt": "a red circle on a blue background", "seed": 1},
    {"prompt": "a green square on a white background", "seed": 2},
    {"prompt": "a yellow triangle on a black background", "seed": 3},
    {"prompt": "a blue square", "seed": 4, "cfg": 2.0, "top_k": 100, "top_p": 0.9},
]


@pytest.fixture(scope="module")
def url():
    """One Ray instance and one application (two replicas, batches of up to 8) for the whole module."""
    port = free_port()
    runner.start(ServeOptions(replicas=2, num_cpus=1, max_batch_size=8, batch_wait_s=0.1), port=port, num_cpus=2)
    yield f"http://127.0.0.1:{port}"
    runner.stop(10)


@pytest.fixture(scope="module")
def references(url) -> list[np.ndarray]:
    """Each case generated alone (one request at a time: batches of one)."""
    images = []
    for case in CASES:
        reply = request(f"{url}/v1/images", case)
        assert reply.status == 200, reply.body
        assert reply.headers["x-batch-size"] == "1"
        images.append(png_pixels(reply.body))
    return images


def test_health_model_card_and_docs(url):
    assert request(f"{url}/healthz").json()["status"] == "ok"
    card = request(f"{url}/v1/model").json()
    summary = (card["backend"], card["precision"], card["resolution"], card["num_scales"])
    assert summary == ("onnxruntime", "fp32", 128, 6), "the default replica is ONNX Runtime on the demo's graphs"
    assert card["config"]["patch_nums"] == [1, 2, 3, 4, 6, 8]
    paths = request(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/images", "/v1/images:stream", "/healthz", "/v1/model"} <= set(paths)
    docs = request(f"{url}/docs")
    assert docs.status == 200 and b"https://" not in docs.body, "/docs must not load anything from the internet"
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        reply = request(f"{url}/docs/assets/{asset}")
        assert reply.status == 200 and len(reply.body) > 10_000, asset
    assert request(f"{url}/docs/assets/..%2Fpyproject.toml").status == 404


def test_png_carries_prompt_and_settings(url, references):
    reply = request(f"{url}/v1/images", {**CASES[4], "prompt": "un carré bleu"})
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(reply.body))
    assert image.size == (128, 128)
    assert {k: image.text[k] for k in ("prompt", "seed", "cfg", "top_k", "top_p", "backend")} == {
        "prompt": "un carré bleu",
        "seed": "4",
        "cfg": "2.0",
        "top_k": "100",
        "top_p": "0.9",
        "backend": "onnxruntime",
    }
    assert request(f"{url}/v1/images", CASES[0]).body == request(f"{url}/v1/images", CASES[0]).body


def test_json_by_accept_header_or_field(url, references):
    by_header = request(f"{url}/v1/images", CASES[0], accept="application/json")
    by_field = request(f"{url}/v1/images", {**CASES[0], "response_format": "json"})
    for reply in (by_header, by_field):
        assert reply.status == 200 and reply.headers["content-type"] == "application/json"
        body = reply.json()
        assert body["prompt"] == CASES[0]["prompt"] and body["seed"] == 0 and isinstance(body["cfg"], float)
        assert same_image(b64_pixels(body["image"]), references[0])
    png = request(f"{url}/v1/images", {**CASES[0], "response_format": "png"}, accept="application/json")
    assert png.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"prompt": "a red circle", ', 400, "not valid JSON"),
        (b"[1, 2]", 422, "body"),
        ({"prompt": "x" * 100_000}, 422, "prompt"),
        (b'{"prompt": "a red circle", "cfg": NaN}', 422, "cfg"),
        ({"prompt": "a red circle", "cfg": -1}, 422, "cfg"),
        ({"prompt": "a red circle", "seed": -1}, 422, "seed"),
        ({"prompt": "a red circle", "seed": 2**63}, 422, "seed"),
        ({"prompt": "a red circle", "top_p": 0}, 422, "top_p"),
        ({"prompt": "a red circle", "top_k": -5}, 422, "top_k"),
        ({"prompt": "a red circle", "steps": 50}, 422, "steps"),
        ({"prompt": "a red circle", "response_format": "gif"}, 422, "response_format"),
        ({"seed": 1}, 422, "prompt"),
        ({"prompt": ["a", "b"]}, 422, "prompt"),
        ({"prompt": "a red circle", "seed": "5"}, 422, "seed"),
        ({"prompt": "a red circle", "seed": True}, 422, "seed"),
        ({"prompt": "a red circle", "seed": 5.0}, 422, "seed"),
        ({"prompt": "a red circle", "cfg": "4"}, 422, "cfg"),
        ({"prompt": "a red circle", "cfg": 1000.5}, 422, "cfg"),
        ({"prompt": "a red circle", "top_k": "10"}, 422, "top_k"),
        ({"prompt": "a red circle", "top_p": "0.5"}, 422, "top_p"),
        ({"prompt": "a red circle", "cfg_until": 7}, 400, "cfg_until 7: guidance runs on the first K scales; choose K"),
        ({"prompt": "a red circle", "fast": 3}, 422, "fast"),
    ],
)
def test_bad_requests_get_one_line_4xx(url, body, status, words):
    for path in ("/v1/images", "/v1/images:stream"):
        reply = request(f"{url}{path}", body)
        assert reply.status == status, (path, reply.body)
        assert b"\n" not in reply.body.strip()
        assert words in reply.json()["error"]
    assert request(f"{url}/healthz").status == 200


def test_empty_and_over_long_prompts_are_served(url):
    for prompt in ("", "a red circle on a blue background " * 25):
        reply = request(f"{url}/v1/images", {"prompt": prompt, "seed": 5})
        assert reply.status == 200, reply.body[:300]
        assert png_pixels(reply.body).shape == (128, 128, 3)


def test_batched_images_match_single_runs(url, references):
    replies = post_all(f"{url}/v1/images", CASES * 3)
    assert all(r.status == 200 for r in replies), [r.body[:200] for r in replies if r.status != 200]
    assert max(int(r.headers["x-batch-size"]) for r in replies) > 1, "requests were never batched"
    for i, reply in enumerate(replies):
        assert same_image(png_pixels(reply.body), references[i % len(CASES)]), (
            f"case {i % len(CASES)} differs when batched"
        )


def test_stream_sends_a_preview_per_scale_then_the_final_image(url, references):
    reply = request(f"{url}/v1/images:stream", CASES[0])
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = parse_events(reply.body)
    kinds = [kind for kind, _ in events]
    assert kinds == ["preview"] * 6 + ["final"]
    assert [data["scale"] for _, data in events[:6]] == list(range(6))
    previews = [b64_pixels(data["image"]) for _, data in events[:6]]
    final = b64_pixels(events[-1][1]["image"])
    assert same_image(final, references[0])
    assert same_image(previews[-1], final)
    changes = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(previews, previews[1:])]
    assert changes[0] > 0, "the previews do not change from scale to scale"


def test_concurrent_streams_are_batched_and_correct(url, references):
    replies = post_all(f"{url}/v1/images:stream", CASES[:4])
    for i, reply in enumerate(replies):
        events = parse_events(reply.body)
        assert [k for k, _ in events] == ["preview"] * 6 + ["final"]
        assert same_image(b64_pixels(events[-1][1]["image"]), references[i])


def test_64_concurrent_requests_all_succeed(url, references):
    """Every request answered with its own image; how many per second is `star-deploy bench-serve`'s to measure."""
    bodies = [CASES[i % len(CASES)] for i in range(64)]
    replies = post_all(f"{url}/v1/images", bodies)
    assert len(replies) == 64
    assert all(r.status == 200 for r in replies), [r.body[:200] for r in replies if r.status != 200]
    for i, reply in enumerate(replies):
        assert same_image(png_pixels(reply.body), references[i % len(CASES)])


def replica_pids(count: int, timeout_s: float = 30.0) -> set[int]:
    """Process ids of the model replicas (asks until ``count`` distinct ones answered)."""
    handle = serve.get_deployment_handle("StarReplica", runner.APP_NAME)
    pids: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(pids) < count and time.monotonic() < deadline:
        pids.update(r.result(timeout_s=10) for r in [handle.pid.remote() for _ in range(8)])
    return pids


def running_replicas() -> int:
    status = serve.status().applications[runner.APP_NAME].deployments["StarReplica"]
    return status.replica_states.get("RUNNING", 0)


def test_killing_a_replica_mid_load_loses_no_request(url, references):
    victims = replica_pids(2)
    assert len(victims) == 2
    victim = sorted(victims)[0]
    bodies = [CASES[i % len(CASES)] for i in range(24)]
    replies: list = []
    load = threading.Thread(target=lambda: replies.extend(post_all(f"{url}/v1/images", bodies)))
    load.start()
    time.sleep(1.5)
    os.kill(victim, signal.SIGKILL)
    load.join(timeout=180)
    assert not load.is_alive()
    for i, reply in enumerate(replies):
        if reply.status == 503:
            assert "retry" in reply.json()["error"]
            continue
        assert reply.status == 200, reply.body[:300]
        assert same_image(png_pixels(reply.body), references[i % len(CASES)])
    assert sum(r.status == 200 for r in replies) >= len(replies) - 2, "too many requests refused"
    deadline = time.monotonic() + 120
    while running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert running_replicas() == 2, "the killed replica did not come back"
    pids = replica_pids(2)
    assert victim not in pids and len(pids) == 2
    assert request(f"{url}/v1/images", CASES[0]).status == 200


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
def test_web_page_shows_previews_then_the_final_image(url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver(str(tmp_path / "profile"))
    try:
        driver.set_page_load_timeout(30)
        driver.get(url + "/")
        image = driver.find_element(By.ID, "image")
        assert driver.execute_script("return getComputedStyle(arguments[0]).visibility", image) == "hidden"
        top_k = driver.find_element(By.ID, "top_k")
        WebDriverWait(driver, 30).until(lambda d: top_k.get_attribute("max") == "256")
        assert top_k.get_attribute("value") == "256", "the slider starts at the default, capped at the codebook"
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("a green square on a white background")
        driver.execute_script(
            "window.frames = 0; new MutationObserver((records) => { window.frames += records.length; })"
            ".observe(document.getElementById('image'), {attributes: true, attributeFilter: ['src']});"
        )
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 90).until(lambda d: d.find_element(By.ID, "image").get_attribute("data-final") == "true")
        image = driver.find_element(By.ID, "image")
        assert driver.execute_script("return arguments[0].naturalWidth", image) == 128
        assert driver.execute_script("return window.frames") == 7, "expected 6 previews and the final image"
        status = driver.find_element(By.ID, "status").text
        assert status.startswith("done") and "with 0 other" not in status, status
    finally:
        driver.quit()


def openai_client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="not-used", max_retries=0, timeout=120)


def api_images(seeds: list[int], prompt: str) -> list[np.ndarray]:
    """The images of the Python API (the demo on ONNX Runtime) for ``seeds``."""
    from star_deploy import StarPipeline

    pipe = StarPipeline.from_pretrained(threads=1)
    return [np.asarray(image) for image in pipe([prompt] * len(seeds), seed=seeds).images]


def test_openai_client_generates_images_equal_to_the_api(url):
    prompt = "a yellow triangle on a black background"
    result = openai_client(url).images.generate(
        model="star", prompt=prompt, n=2, size="128x128", response_format="b64_json", extra_body={"seed": 7}
    )
    assert isinstance(result.created, int) and len(result.data) == 2
    assert all(d.revised_prompt is None for d in result.data)
    served = [b64_pixels(d.b64_json) for d in result.data]
    for got, want in zip(served, api_images([7, 8], prompt)):
        assert same_image(got, want), "image i of n must be the API's image of seed + i"
    assert not same_image(served[0], served[1])


def test_openai_client_streams_partial_images_then_the_image(url):
    prompt = "a red circle on a blue background"
    stream = openai_client(url).images.generate(
        prompt=prompt, size="128x128", stream=True, partial_images=2, extra_body={"seed": 7, "cfg": 4.0}
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert all(e.size == "128x128" and e.output_format == "png" for e in events)
    final = b64_pixels(events[-1].b64_json)
    assert same_image(final, api_images([7], prompt)[0])
    partials = [b64_pixels(e.b64_json) for e in events[:2]]
    assert partials[0].shape == final.shape and not same_image(partials[0], final)


def test_openai_route_refuses_what_it_cannot_serve(url):
    import openai

    client = openai_client(url)
    refused = [
        ({"size": "1024x1024"}, openai.BadRequestError, "this model draws 128x128 only"),
        ({"response_format": "url"}, openai.BadRequestError, "url is not offered"),
        ({"extra_body": {"seed": "5"}}, openai.UnprocessableEntityError, "seed"),
        ({"extra_body": {"cfg": 1001.0}}, openai.UnprocessableEntityError, "cfg"),
        ({"n": 11}, openai.UnprocessableEntityError, "n"),
        ({"stream": True, "partial_images": 6}, openai.BadRequestError, "at most 5"),
        (
            {"extra_body": {"fast": 1, "cfg_until": 9}},
            openai.BadRequestError,
            "cfg_until 9: guidance runs on the first",
        ),
    ]
    for kwargs, error, words in refused:
        with pytest.raises(error) as caught:
            result = client.images.generate(prompt="a red circle", **kwargs)
            list(result) if kwargs.get("stream") else None
        assert words in str(caught.value), (kwargs, str(caught.value))


def test_openai_client_reads_the_model_and_the_messages_of_missing_routes(url):
    import openai

    client = openai_client(url)
    model = client.models.retrieve("star")
    assert (model.id, model.object, model.owned_by) == ("star", "model", "star-deploy") and model.created > 0
    assert [m.id for m in client.models.list()] == ["star"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-image-1")
    assert "no model 'gpt-image-1'" in str(caught.value) and caught.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.edit(image=b"not an image", prompt="a red circle")
    assert "no route POST /v1/images/edits" in str(caught.value), str(caught.value)
    native = request(f"{url}/v1/nothing-here").json()["error"]
    assert native["type"] == "invalid_request_error" and "no route GET /v1/nothing-here" in native["message"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_sent_without_the_json_content_type_is_told_to_send_it(url, content_type):
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(url)
    for path, openai_shape in (("/v1/images", False), ("/v1/images/generations", True)):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        headers = {} if content_type is None else {"Content-Type": content_type}
        connection.request("POST", path, body=b'{"prompt": "a red circle"}', headers=headers)
        reply = connection.getresponse()
        error = json.loads(reply.read())["error"]
        connection.close()
        message = error["message"] if openai_shape else error
        assert reply.status == 415 and "Content-Type: application/json" in message, (path, message)


def test_a_replica_failing_its_health_check_is_replaced(url, references):
    handle = serve.get_deployment_handle("StarReplica", runner.APP_NAME)
    victim = handle.release.remote().result(timeout_s=30)
    bodies = [CASES[i % len(CASES)] for i in range(12)]
    replies = post_all(f"{url}/v1/images", bodies)
    assert [r.status for r in replies] == [200] * len(bodies), [r.body[:200] for r in replies if r.status != 200]
    for i, reply in enumerate(replies):
        assert same_image(png_pixels(reply.body), references[i % len(CASES)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (running_replicas() < 2 or victim in replica_pids(2, timeout_s=5)):
        time.sleep(1)
    pids = replica_pids(2)
    assert victim not in pids and len(pids) == 2, "the replica whose health check failed was not replaced"
    assert request(f"{url}/healthz").status == 200


def test_shutdown_drains_in_flight_requests(url, references, capfd):
    bodies = [CASES[i % len(CASES)] for i in range(6)]
    replies: list = []
    load = threading.Thread(target=lambda: replies.extend(post_all(f"{url}/v1/images", bodies)))
    load.start()
    time.sleep(0.5)
    capfd.readouterr()
    runner.stop(60)
    load.join(timeout=120)
    stopped = capfd.readouterr()
    assert "graceful_shutdown" not in stopped.err + stopped.out, "Ray's shutdown warning reached the terminal"
    assert [r.status for r in replies] == [200] * 6
    for i, reply in enumerate(replies):
        assert same_image(png_pixels(reply.body), references[i % len(CASES)])
    with pytest.raises(OSError):
        request(f"{url}/healthz", timeout_s=5)
