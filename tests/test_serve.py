"""The Ray Serve application end to end on CPU with the demo model: API, batching, previews, faults, browser, drain."""

from __future__ import annotations

import io
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

from star_deploy.errors import ConfigError  # noqa: E402
from star_deploy.serve import runner  # noqa: E402
from star_deploy.serve.app import build_app  # noqa: E402
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
    import ray

    serve.shutdown()
    ray.shutdown()


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
    assert request(f"{url}/docs").status == 200


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
    bodies = [CASES[i % len(CASES)] for i in range(64)]
    start = time.monotonic()
    replies = post_all(f"{url}/v1/images", bodies)
    assert all(r.status == 200 for r in replies), [r.body[:200] for r in replies if r.status != 200]
    for i, reply in enumerate(replies):
        assert same_image(png_pixels(reply.body), references[i % len(CASES)])
    assert time.monotonic() - start < 150


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
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("a green square on a white background")
        driver.execute_script(
            "window.frames = 0; new MutationObserver(() => window.frames++)"
            ".observe(document.getElementById('image'), {attributes: true, attributeFilter: ['src']});"
        )
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 90).until(lambda d: d.find_element(By.ID, "image").get_attribute("data-final") == "true")
        image = driver.find_element(By.ID, "image")
        assert driver.execute_script("return arguments[0].naturalWidth", image) == 128
        assert driver.execute_script("return window.frames") == 7, "expected 6 previews and the final image"
        assert driver.find_element(By.ID, "status").text.startswith("done")
    finally:
        driver.quit()


def test_build_app_for_config_files():
    assert build_app({"replicas": 2, "num_cpus": 1, "max_batch_size": 4}) is not None
    with pytest.raises(ConfigError, match="unknown serve args replica"):
        build_app({"replica": 2})
    with pytest.raises(ConfigError, match="max_batch_size must be >= 1"):
        build_app({"max_batch_size": 0})


def test_shutdown_drains_in_flight_requests(url, references):
    bodies = [CASES[i % len(CASES)] for i in range(6)]
    replies: list = []
    load = threading.Thread(target=lambda: replies.extend(post_all(f"{url}/v1/images", bodies)))
    load.start()
    time.sleep(0.5)
    runner.stop(60)
    load.join(timeout=120)
    assert [r.status for r in replies] == [200] * 6
    for i, reply in enumerate(replies):
        assert same_image(png_pixels(reply.body), references[i % len(CASES)])
    with pytest.raises(OSError):
        request(f"{url}/healthz", timeout_s=5)
