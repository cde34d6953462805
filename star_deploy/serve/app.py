"""The application builder: ``star_deploy.serve.app:build_app`` for ``serve run``/``serve deploy`` config files."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from .ingress import StarIngress
from .options import ServeOptions
from .replica import StarReplica


def replica_count(options: ServeOptions) -> dict[str, Any]:
    """A fixed ``num_replicas``, or Ray Serve's ``autoscaling_config``."""
    if options.autoscaling_config is None:
        return {"num_replicas": options.replicas}
    return {"autoscaling_config": options.autoscaling_config.model_dump()}


def build(options: ServeOptions) -> Application:
    """Ingress plus the model replicas with the requested resources."""
    actor = {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus}
    model = StarReplica.options(
        **replica_count(options),
        ray_actor_options=actor,
        max_ongoing_requests=options.max_ongoing_requests,
        graceful_shutdown_timeout_s=60,
        health_check_period_s=2,
        health_check_timeout_s=30,
    ).bind(options)
    return StarIngress.options(max_ongoing_requests=max(1000, 4 * options.max_ongoing_requests)).bind(model, options)


def build_app(args: dict[str, Any] | ServeOptions | None = None) -> Application:
    """Serve config files' builder: ``import_path: star_deploy.serve.app:build_app``, ``args``: ServeOptions."""
    options = args if isinstance(args, ServeOptions) else ServeOptions.parse(dict(args or {}))
    return build(options)
