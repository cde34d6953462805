"""The application builder: ``star_deploy.serve.app:build_app`` for ``serve run``/``serve deploy`` config files."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from .ingress import StarIngress
from .options import ServeOptions
from .replica import StarModel


def build(options: ServeOptions) -> Application:
    """Ingress plus ``options.replicas`` model replicas with the requested resources."""
    actor = {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus}
    model = StarModel.options(
        num_replicas=options.replicas,
        ray_actor_options=actor,
        max_ongoing_requests=options.max_ongoing_requests,
        graceful_shutdown_timeout_s=60,
        health_check_period_s=2,
    ).bind(options)
    return StarIngress.options(max_ongoing_requests=max(1000, 4 * options.max_ongoing_requests)).bind(model, options)


def build_app(args: dict[str, Any]) -> Application:
    """Serve config files' builder: ``import_path: star_deploy.serve.app:build_app``, ``args``: ServeOptions."""
    return build(ServeOptions.from_args(dict(args or {})))
