"""`segue export` and `segue import`: the log to and from JSON Lines or Parquet files."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from domain.events import EVENT_TYPES
from gateway.cli.common import database_url, load_settings

# Same spelling as everywhere else in Segue: RFC 3339 with a zone; a bare date means its midnight
# UTC.
_TIME_HELP = "RFC 3339 time with a zone (or a date: midnight UTC)"


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an RFC 3339 time", param_hint=name) from None
    if parsed.tzinfo is None:
        if len(value) == 10:  # a date
            return parsed.replace(tzinfo=UTC)
        raise click.BadParameter(f"{value!r} needs a time zone", param_hint=name)
    return parsed


def _url() -> str:

    return database_url(load_settings())


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` that becomes `path` only if the block succeeds, so a
    failed export never leaves a partial file under the name asked for."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@click.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet"]),
    default=None,
    help="Default: from the output's extension (.jsonl, .parquet).",
)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--since", default=None, help=f"Events recorded at or after this. {_TIME_HELP}")
@click.option("--until", default=None, help=f"Events recorded before this. {_TIME_HELP}")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(sorted(EVENT_TYPES)),
    help="Only these event types (repeat for several).",
)
@click.option(
    "--surface",
    "surfaces",
    multiple=True,
    help="Only slates served on this surface and outcomes attributed to them (repeatable).",
)
def export(
    fmt: str | None,
    output: Path,
    since: str | None,
    until: str | None,
    types: tuple[str, ...],
    surfaces: tuple[str, ...],
) -> None:
    """Write events to OUTPUT in commit order, one per line (or row): type, event_id,
    recorded_at, schema_version, stream_id, stream_version, payload, metadata."""
    import asyncpg

    from gateway.analysis.event_io import (
        Filters,
        JsonlSink,
        ParquetSink,
        Sink,
        export_events,
        format_of,
    )
    from gateway.store.reads import NotSettled

    try:
        fmt = format_of(output, fmt)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--output") from None
    filters = Filters(_when(since, "--since"), _when(until, "--until"), types, surfaces)
    url = _url()
    ended: list[datetime] = []

    async def run(sink: Sink) -> int:
        conn = await asyncpg.connect(url)
        bar: Any = None
        try:

            def total(n: int) -> None:
                nonlocal bar
                bar = click.progressbar(length=max(n, 1), label="exporting", file=sys.stderr)
                bar.__enter__()

            def step(n: int) -> None:
                if bar is not None:
                    bar.update(n)

            def window(until: datetime) -> None:
                ended.append(until)

            return await export_events(
                conn, sink, filters, on_total=total, on_batch=step, on_until=window
            )
        except NotSettled as exc:
            raise click.ClickException(f"cannot export: {exc}") from None
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
            await conn.close()

    with _replacing(output) as tmp:
        if fmt == "parquet":
            sink: Sink = ParquetSink(tmp)
            try:
                n = asyncio.run(run(sink))
            finally:
                sink.close()
        else:
            with tmp.open("wb") as f:
                sink = JsonlSink(f)
                n = asyncio.run(run(sink))
                sink.close()
    # The window's end, settled: the next export of this log starts there (`--since`).
    click.echo(f"exported {n} events recorded before {ended[0].isoformat()} to {output}", err=True)


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet"]),
    default=None,
    help="Default: from the file's extension (.jsonl, .parquet).",
)
def import_(path: Path, fmt: str | None) -> None:
    """Append the events of PATH that the store does not hold yet (by event id), in file order.
    The whole file is checked first; a bad line stops the import before anything is written."""
    import asyncpg

    from gateway.analysis.event_io import (
        BadLine,
        format_of,
        import_events,
        read_jsonl,
        read_parquet,
    )

    try:
        fmt = format_of(path, fmt)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None
    url = _url()

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            size = pq.ParquetFile(str(path)).metadata.num_rows
        except Exception as exc:
            raise click.ClickException(f"{path.name}: not a Parquet file ({exc})") from None
    else:
        size = path.stat().st_size

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            with click.progressbar(length=size, label="checking", file=sys.stderr) as bar:
                staged = (
                    read_parquet(path, bar.update)
                    if fmt == "parquet"
                    else read_jsonl(path, bar.update)
                )
                return await import_events(conn, staged, on_writing=_writing)
        finally:
            await conn.close()

    try:
        result = asyncio.run(run())
    except BadLine as exc:
        raise click.ClickException(f"{path.name}: {exc} (nothing was imported)") from None
    click.echo(f"{result}", err=True)


def _writing(n: int) -> None:
    click.echo(f"\nwriting {n} events in one transaction ...", err=True)
