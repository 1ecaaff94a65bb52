"""The `cuetune serve` command line (registered in `cuetune.cli`); the server itself is
`cuetune.serve.app`, imported only when the command runs."""

from __future__ import annotations

from pathlib import Path

import typer


def serve_command(
    runs: list[str] = typer.Argument(None, help="Run folders (or NAME=FOLDER) made on one base model"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CUETUNE_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' on /v1"),
    adapter_root: Path | None = typer.Option(None, "--adapter-root",
                                             help="Allow POST /v1/adapters for run folders under DIR"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: the runs')"),
    max_queue: int = typer.Option(256, "--max-queue", help="Rows waiting before 429"),
    max_batch: int = typer.Option(32, "--max-batch", help="Rows per classification forward"),
    max_running: int = typer.Option(32, "--max-running", help="Rows decoding together"),
    wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="How long rows gather when idle"),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Most tokens a completion may ask for"),
    one_adapter: bool = typer.Option(False, "--one-adapter-per-batch",
                                     help="Do not mix adapters in a batch (for comparison)"),
) -> None:
    """Serve many runs' adapters over one frozen base: OpenAI-compatible HTTP, mixed batches."""
    from cuetune.serve.app import Limits
    from cuetune.serve.app import serve as run_server

    if not runs and adapter_root is None:
        raise typer.BadParameter("give run folders to serve, or --adapter-root to load them later")
    run_server(runs or [], host, port, device=device, adapter_root=adapter_root, api_key=api_key,
               limits=Limits(max_tokens=max_tokens), max_queue=max_queue, max_batch=max_batch,
               max_running=max_running, wait_ms=wait_ms, mix=not one_adapter)
