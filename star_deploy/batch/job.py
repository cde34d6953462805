"""``run_batch``: plan a job, open its folder, generate what is not done yet (here or on Ray), keep the index."""

from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..errors import StarDeployError
from ..files.atomic import check_separate
from ..files.signals import Interrupted
from ..runtime.loading import model_config
from ..runtime.plan import LoadPlan
from .folder import Skeleton, locked, open_job, refuse_other_job, remove_partials, skeleton_files
from .index import IndexAppender, rewrite_index, verified_rows
from .layout import image_folders, layout_files
from .local import RowsSink, run_local
from .model import load_pipeline
from .options import BatchOptions
from .plan import Chunk, ImageTask, plan_chunks, plan_images, todo_chunks
from .progress import Summary, progress_bar
from .prompts import read_prompts
from .record import record_dict, settings_digest
from .writer import ChunkRunner, existing_image


def run_batch(options: BatchOptions) -> Summary:
    """Generate every image of ``options.prompts`` not already in ``options.out``; the run's summary."""
    started = time.perf_counter()
    plan = options.check()
    options.call.fast_mode(model_config(plan))  # knobs this model's schedule refuses, before anything is opened
    prompts = read_prompts(options.prompts)
    data = options.prompts.read_bytes()
    settings = options.settings(plan)
    copy = f"prompts{options.prompts.suffix.lower()}"
    record = record_dict(settings, copy, hashlib.sha256(data).hexdigest())
    tasks = plan_images(
        prompts, options.seed, options.images_per_prompt, options.sampling, options.layout, settings_digest(settings)
    )
    check_separate([options.out], [*plan.inputs, options.prompts])
    folders = image_folders(options.layout, prompts)
    skeleton = Skeleton(skeleton_files(record, copy, data) | layout_files(options.layout, prompts), folders)
    refuse_other_job(options.out, record, options.prompts, options.overwrite)
    pipe = None if options.ray else load_pipeline(plan, min(options.batch_size, len(tasks)))
    with ExitStack() as held:
        if options.out.is_dir():
            held.enter_context(locked(options.out))
        if not open_job(options.out, skeleton, record, options.prompts, options.overwrite):
            held.enter_context(locked(options.out))
        return generate(options, plan, tasks, pipe, folders, started)


def generate(
    options: BatchOptions, plan: LoadPlan, tasks: list[ImageTask], pipe: Any, folders: list[str], started: float
) -> Summary:
    """Generate the images of ``tasks`` that are not done, appending their index lines as they finish."""
    out = options.out
    rows = verified_rows(out, tasks)
    chunks = todo_chunks(plan_chunks(tasks, options.batch_size), set(rows))
    refuse_foreign_files(out, chunks)
    rewrite_index(out, [rows[k] for k in sorted(rows)])
    summary = Summary(skipped=len(rows), total=len(tasks), out=str(out), started=started)
    by_file = {t.file: t.ordinal for t in tasks}
    appender = IndexAppender(out)
    try:
        with progress_bar(len(tasks), len(rows)) as advance:

            def on_rows(new: list[dict[str, Any]]) -> None:
                appender.append(new)
                rows.update((by_file[r["file"]], r) for r in new)
                summary.done += len(new)
                advance(len(new))

            summary.interrupted = dispatch(options, plan, pipe, chunks, on_rows) if chunks else None
    except StarDeployError as exc:
        summary.error = str(exc)
    except KeyboardInterrupt as exc:
        summary.interrupted = exc.args[0] if isinstance(exc, Interrupted) else "SIGINT"
    finally:
        appender.close()
    if summary.interrupted is None:
        summary.failed = len(tasks) - len(rows)
    if len(rows) == len(tasks):
        rewrite_index(out, [rows[k] for k in sorted(rows)])
        remove_partials(out, folders)
    return summary.finish()


def refuse_foreign_files(out: Path, chunks: list[Chunk]) -> None:
    """Before any work: a file where an image to do goes must be one an earlier attempt wrote (else refused)."""
    for chunk in chunks:
        for task in chunk.tasks:
            if task.ordinal in chunk.todo:
                existing_image(out, task)


def dispatch(options: BatchOptions, plan: LoadPlan, pipe: Any, chunks: list[Chunk], on_rows: RowsSink) -> str | None:
    """The chunks on Ray (``--ray``) or in this process; the signal that stopped them, if any."""
    if options.ray is None:
        return run_local(ChunkRunner(pipe, options.out, options.call.sampler), chunks, on_rows)
    from .ray_job import run_on_ray

    return run_on_ray(options, plan, chunks, on_rows)
