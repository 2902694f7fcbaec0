"""Pull progress for people: a rich progress bar on a terminal, nothing anywhere else.

:func:`pull_progress` is a context manager yielding the callback a runtime's ``pull`` takes. Docker
reports bytes per layer (summed into one bar); Podman reports only status lines (shown next to a
spinner). Nothing is drawn when stderr is not a terminal or when the command prints ``--json``.
rich is imported only when a bar is actually drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TextIO

from composer_core.types import PullProgress

ProgressCallback = Callable[[PullProgress], None]
#: What the deploy flow takes: given the image being pulled, a context yielding the callback.
ProgressFactory = Callable[[str], AbstractContextManager[ProgressCallback | None]]


def wanted(as_json: bool, stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    return not as_json and bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def no_progress(image: str) -> Iterator[ProgressCallback | None]:
    yield None


@contextmanager
def pull_progress(image: str) -> Iterator[ProgressCallback | None]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    console = Console(stderr=True)
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.fields[size]}"), TextColumn("{task.fields[status]}"),
                   console=console, transient=True)
    task = bar.add_task(f"pulling {image}", total=None, status="", size="")
    layers: dict[str, tuple[int, int]] = {}

    def update(event: PullProgress) -> None:
        if event.layer and event.total:
            layers[event.layer] = (event.current or 0, event.total)
        elif event.layer and event.status.lower().startswith(("download complete", "pull complete",
                                                               "already exists")):
            done = layers.get(event.layer)
            if done:
                layers[event.layer] = (done[1], done[1])
        total = sum(t for _, t in layers.values())
        completed = sum(c for c, _ in layers.values())
        size = f"{completed / 1e6:.1f}/{total / 1e6:.1f} MB" if total else ""
        bar.update(task, total=total or None, completed=completed, size=size,
                   status=event.status[:60])

    with bar:
        yield update


def factory(enabled: bool) -> ProgressFactory:
    return pull_progress if enabled else no_progress
