"""The `cuetune` command line: one convention for every command (a folder written is `--out`,
a config key changed is `--set key=value`).

Errors a user can fix print as one line (`error: <where>: <what to do>`) and exit with code 2;
no traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import click
import transformers
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cuetune import atomic
from cuetune.bench import report, shards
from cuetune.bench.cells import run_bench
from cuetune.bench.grid import load_bench
from cuetune.config import decoding_overrides
from cuetune.data.examples import Example
from cuetune.data.readers import decode_bytes, lines_to_examples
from cuetune.engine import distributed
from cuetune.errors import CuetuneError, DataError
from cuetune.families.pretrained import describe_aliases
from cuetune.runs import ensemble, peft, selftrain
from cuetune.runs.config_file import load as load_config
from cuetune.runs.distill import distill as distill_run
from cuetune.runs.loader import load
from cuetune.runs.merge import merge as merge_run
from cuetune.runs.train import resume_run
from cuetune.runs.train import train as train_run
from cuetune.runs.tuned import load_run
from cuetune.search.runner import load_config as load_search
from cuetune.search.runner import run as run_search
from cuetune.serve.app import Limits
from cuetune.serve.app import serve as run_server

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prompt-based, parameter-efficient fine-tuning of language models.")
err = Console(stderr=True)
out = Console()


def _quiet_libraries() -> None:
    """Keep library chatter (progress bars, load reports) off the user's screen."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig, but the handler itself passes warnings only,
        warnings_only = logging.StreamHandler()  # so INFO progress lines are not printed twice
        warnings_only.setLevel(logging.WARNING)
        warnings_only.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(warnings_only)
        root.setLevel(logging.WARNING)


_LINES: logging.Handler | None = None


def _progress_lines() -> None:
    """Where no progress bar draws (a log file, CI, a pipe), cuetune's progress comes as lines
    on stderr: its loops log them at INFO (`engine.progress.Ticker`); a terminal gets the bars."""
    global _LINES
    logger = logging.getLogger("cuetune")
    if _LINES is not None:  # main() again in one process (tests): one handler, on today's stderr
        logger.removeHandler(_LINES)
        _LINES = None
    if err.is_terminal:
        return
    _LINES = logging.StreamHandler(sys.stderr)
    _LINES.setFormatter(logging.Formatter("%(message)s"))
    _LINES.addFilter(lambda record: record.levelno == logging.INFO)  # warnings go as before
    logger.addHandler(_LINES)
    logger.setLevel(logging.INFO)


def _progress():
    """A rich progress bar with loss, dev metric, speed and ETA; returns (callback, stop)."""
    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=err, transient=False)
    task = {}

    def update(step, total, row, best):
        if not task:
            bar.start()
            task["id"] = bar.add_task("train", total=total, stats="")
        stats = f"loss {row['loss']:.4f}  {row['examples_per_s']:.1f} ex/s"
        if best is not None:
            stats += f"  best dev {best:.3f}"
        bar.update(task["id"], completed=step, total=total, stats=stats)

    return update, bar.stop


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="YAML config; none = the packaged default job"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config key: key=value"),
    out_dir: str | None = typer.Option(None, "--out", help="Run directory (same as --set output_dir=)"),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this interrupted run directory"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Allow a hub model's own Python code to run"),
) -> None:
    """Train a prompt; prints zero-shot vs tuned test metrics.

    Several processes: `accelerate launch --multi_gpu --num_processes N -m cuetune train ...`
    (gloo on CPU, NCCL on GPUs); only the main process shows progress and prints."""
    distributed.init()
    main = distributed.is_main()
    if resume is not None:
        if config is not None or set_ or out_dir:
            raise typer.BadParameter("--resume takes the run's saved config; drop CONFIG/--set/--out")
        update, stop = _progress() if main else (None, lambda: None)
        try:
            manifest = resume_run(resume, progress=update)
        finally:
            stop()
    else:
        overrides = list(set_) + ([f"output_dir={out_dir}"] if out_dir else [])
        overrides += ["model.trust_remote_code=true"] if trust_remote_code else []
        cfg = load_config(config, overrides)
        update, stop = _progress() if cfg.train.progress and main else (None, lambda: None)
        try:
            manifest = train_run(cfg, progress=update)
        finally:
            stop()
    if not main:
        return
    out.print_json(json.dumps(_summary(manifest)))
    name = next((n for n in HEADLINE if manifest.score("test", n) is not None), None)
    if name and manifest.score("zero_shot_test", name) is not None:
        out.print(f"test {name}: zero-shot {manifest.score('zero_shot_test', name):.3f} -> "
                  f"tuned {manifest.score('test', name):.3f}")


HEADLINE = ("accuracy", "macro_f1", "bleu", "chrf", "rouge_1", "rouge_2", "rouge_l", "exact_match",
            "token_f1", "token_nll")
"""The metrics `train` prints: classification's, then generation's."""


def _summary(manifest) -> dict:
    """A finished run in one JSON line: where, which method, size, and every headline metric
    the run has (classification and generation runs have different ones)."""
    summary = {"run_dir": manifest.run_dir, "method": manifest.method_name,
               "trainable_parameters": manifest.trainable_parameters,
               "adapter_bytes": manifest.adapter_bytes}
    for key in ("zero_shot_test", "dev_best", "test"):
        for name in HEADLINE:
            if (value := manifest.score(key, name)) is not None:
                summary[f"{key}_{name}"] = round(value, 4)
    return summary


@app.command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="A finished run directory"),
          data: Path = typer.Option(..., "--data", help="Labelled data file"),
          set_: list[str] = typer.Option([], "--set", "-s", help="Generation runs: decoding setting "
                                         "for this evaluation (no_repeat_ngram_size=3, strategy=beam)"),
          ) -> None:
    """Evaluate a trained run (or an ensemble folder) on a labelled file; prints metrics JSON."""
    model = load(run_dir)
    try:
        metrics = model.evaluate(data, **decoding_overrides(set_))
    except ValueError as exc:  # pydantic: a bad decoding setting
        raise CuetuneError(f"--set: {exc}") from None
    out.print_json(json.dumps(metrics, ensure_ascii=False))


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="A finished run directory"),
            input_: str = typer.Option(..., "--input", "-i", help="File (jsonl/csv/tsv/json/txt) or -"),
            output: Path | None = typer.Option(None, "--out", "--output", "-o",
                                               help="JSONL file; default stdout"),
            batch_size: int = typer.Option(32, help="Prediction batch size")) -> None:
    """Predict labels and per-label probabilities (a run or an ensemble folder); writes JSONL."""
    model = load(run_dir)
    examples = _inputs(model, input_)
    preds = model.predict(examples, batch_size=batch_size)
    rows = [{"text": e.text, **({"text_pair": e.text_pair} if e.text_pair else {}), **p}
            for e, p in zip(examples, preds, strict=True)]
    if output:
        atomic.write_jsonl(output, rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


def _inputs(model, source: str) -> list[Example]:
    """What predict and generate read: a data file with the run's columns, or one input a line
    from a .txt file or standard input (`-`), decoded strictly (bad bytes name their line)."""
    if source == "-":
        return lines_to_examples(decode_bytes(sys.stdin.buffer.read(), "<stdin>"), "<stdin>")
    if source.endswith(".txt"):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return lines_to_examples(decode_bytes(path.read_bytes(), source), source)
    return model.read(source)


@app.command()
def generate(run_dir: Path = typer.Argument(..., help="A finished generation run directory"),
             input_: str = typer.Option(..., "--input", "-i", help="File (jsonl/csv/tsv/json/txt) or -"),
             output: Path | None = typer.Option(None, "--out", "--output", "-o",
                                               help="JSONL file; default stdout"),
             set_: list[str] = typer.Option([], "--set", "-s",
                                            help="Decoding setting: strategy=beam, num_beams=5, "
                                                 "max_new_tokens=40, stop=[\\n], temperature=0.7 ..."),
             ) -> None:
    """Write text for each input with the tuned prompt; writes JSONL (input and output)."""
    model = load_run(run_dir)
    overrides = decoding_overrides(set_)
    examples = _inputs(model, input_)
    try:
        texts = model.generate(examples, **overrides)
    except ValueError as exc:  # pydantic: a bad decoding setting
        raise CuetuneError(f"--set: {exc}") from None
    rows = [{"text": e.text, **({"text_pair": e.text_pair} if e.text_pair else {}), "output": t}
            for e, t in zip(examples, texts, strict=True)]
    if output:
        atomic.write_jsonl(output, rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


@app.command("ensemble")
def ensemble_(runs: list[Path] = typer.Argument(..., help="Finished runs trained on the same split"),
              out_dir: Path = typer.Option(..., "--out", help="New folder for the ensemble"),
              weighting: str = typer.Option("mean", help="mean, or dev (weights by dev accuracy)")) -> None:
    """Combine finished runs (any methods) by their mean label log-probability; predict and
    eval accept the folder. Runs on different splits are refused with the differing key."""
    metrics = ensemble.build(runs, out_dir, weighting)
    out.print_json(json.dumps({"ensemble_dir": str(out_dir), **{
        f"{split}_accuracy": round(m["accuracy"], 4) for split, m in metrics.items()}}))


@app.command()
def distill(teacher: Path = typer.Argument(..., help="A finished run, mixture run or ensemble folder"),
            pool: Path = typer.Option(..., "--pool", help="Unlabelled inputs (labels, if any, are dropped)"),
            out_dir: str = typer.Option(..., "--out", help="Run directory of the student"),
            set_: list[str] = typer.Option([], "--set", "-s", help="Student key=value: method.name=prefix"),
            size: int | None = typer.Option(None, "--pool-size", help="Seeded sample of the pool")) -> None:
    """Label a pool with a teacher's probabilities and train one adapter on them (PET); the
    student is scored on the teacher's gold dev and test splits."""
    update, stop = _progress()
    try:
        manifest = distill_run(teacher, pool, out_dir, list(set_), size, progress=update)
    finally:
        stop()
    pool_size = manifest.metrics["distillation"]["pool"]["size"]
    out.print_json(json.dumps({**_summary(manifest), "pool_size": pool_size}))


@app.command("self-train")
def self_train(config: Path = typer.Argument(..., help="Run config with a selftrain: section (pool: FILE)"),
               set_: list[str] = typer.Option([], "--set", "-s", help="Override a key: key=value"),
               out_dir: str | None = typer.Option(None, "--out", help="Folder of the rounds (same as "
                                                  "--set output_dir=)")) -> None:
    """Train on gold, pseudo-label the pool with confident, class-balanced labels, train a
    student on both, repeat while dev improves; each round is a run folder. Rerun to resume."""
    overrides = list(set_) + ([f"output_dir={out_dir}"] if out_dir else [])
    cfg, settings = selftrain.load_config(config, overrides)
    update, stop = _progress()
    try:
        summary = selftrain.run(cfg, settings, progress=update)
    finally:
        stop()
    keys = ("round", "dev", "test_accuracy", "kept_per_class")
    rounds = [{k: r[k] for k in keys} for r in summary["rounds"]]
    out.print_json(json.dumps({"rounds": rounds, "best_round": summary["best_round"],
                               "stopped": summary["stopped"], "pool_size": summary["pool"]["size"]}))
    best = Path(cfg.output_dir) / f"round-{summary['best_round']}"
    out.print(f"best on dev: {best} (cuetune predict {best} --input FILE)", soft_wrap=True, highlight=False)


@app.command()
def search(config: Path = typer.Argument(..., help="Run config with a search: section"),
           set_: list[str] = typer.Option([], "--set", "-s", help="Override a key: key=value"),
           out_dir: str | None = typer.Option(None, "--out",
                                              help="Search folder (same as --set search.out=)")) -> None:
    """Search templates, label words and calibration on train and dev (test is never read);
    writes prompts.jsonl, ranking.md, search.png and best.yaml. Rerun to resume."""
    cfg, settings = load_search(config, list(set_) + ([f"search.out={out_dir}"] if out_dir else []))
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=err)
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total or None)
        bar.update(tasks[stage], completed=done, total=total or None)

    if err.is_terminal:
        with bar:
            summary = run_search(cfg, settings, progress=update)
    else:  # no bar's last frame in a log: the stage lines (_progress_lines) say it all
        summary = run_search(cfg, settings)
    best, base = summary["best"], summary["best_baseline"]
    combined = summary["combined"]
    out.print_json(json.dumps({"search_dir": settings.out, "candidates": summary["candidates"],
                               "best_dev": best["dev"], "best_baseline_dev": base and base["dev"],
                               "best": best["prompt"],
                               "combined": combined and {"dev": combined["dev"],
                                                         "members": len(combined["members"])}},
                              ensure_ascii=False))
    if combined:
        out.print(f"run the combination: cuetune train {Path(settings.out) / 'best.yaml'}\n"
                  f"run the single best prompt: cuetune train {Path(settings.out) / 'single.yaml'}",
                  soft_wrap=True, highlight=False)
    else:
        out.print(f"run it: cuetune train {Path(settings.out) / 'best.yaml'}", soft_wrap=True,
                  highlight=False)


@app.command()
def merge(run_dir: Path = typer.Argument(..., help="A finished LoRA, prompt-ft or full run"),
          out_dir: Path = typer.Option(..., "--out", help="New folder for the merged model"),
          gguf: str | None = typer.Option(None, "--gguf", help="Also a GGUF file: f16 or q8_0")) -> None:
    """Fold a run's adapter into the base weights: a plain transformers model folder that
    AutoModelFor*.from_pretrained, vLLM or TGI load, and with --gguf a file for llama.cpp and
    Ollama (soft prompts and prefixes are refused: they are no weight change)."""
    path = merge_run(run_dir, out_dir, gguf)
    out.print_json(json.dumps({"merged_dir": str(path)}))


@app.command("export")
def export(run_dir: Path = typer.Argument(..., help="A finished run directory"),
           out_dir: Path | None = typer.Option(None, "--out", help="New folder for the PEFT adapter"),
           old_out: Path | None = typer.Argument(None, hidden=True, metavar="[OUT]",
                                                 help="Deprecated: the folder as a second argument")) -> None:
    """Write a run's adapter in PEFT's format (soft, ptuning, prefix, lora)."""
    out_dir = _out_option(out_dir, old_out, "export RUN OUT", "export RUN --out OUT")
    path = peft.export_peft(run_dir, out_dir)
    out.print_json(json.dumps({"peft_dir": str(path)}))


def _out_option(option: Path | None, positional: Path | None, old: str, new: str) -> Path:
    """`--out`, or for one more release the folder as a positional argument (with a note)."""
    if option is not None and positional is not None:
        raise typer.BadParameter(f"give the output folder once: `cuetune {new}`")
    if positional is not None:
        err.print(f"note: `cuetune {old}` is deprecated and goes in the next release; write "
                  f"`cuetune {new}` (--out, as every command takes it)", highlight=False, soft_wrap=True)
        return positional
    if option is None:
        raise typer.BadParameter(f"missing --out: `cuetune {new}`")
    return option


@app.command("import-peft")
def import_peft(
    peft_dir: Path = typer.Argument(..., help="A PEFT adapter folder (adapter_config.json + safetensors)"),
    config: Path | None = typer.Argument(None, help="YAML config: model, data, template, labels"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config key: key=value"),
    out_dir: str | None = typer.Option(None, "--out", help="Run directory to create"),
) -> None:
    """Turn a PEFT adapter into a cuetune run (evaluated on the config's dev/test data)."""
    overrides = list(set_) + ([f"output_dir={out_dir}"] if out_dir else [])
    out.print_json(json.dumps(_summary(peft.import_peft(peft_dir, load_config(config, overrides)))))


@app.command("serve")
def serve(
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
    if not runs and adapter_root is None:
        raise typer.BadParameter("give run folders to serve, or --adapter-root to load them later")
    run_server(runs or [], host, port, device=device, adapter_root=adapter_root, api_key=api_key,
               limits=Limits(max_tokens=max_tokens), max_queue=max_queue, max_batch=max_batch,
               max_running=max_running, wait_ms=wait_ms, mix=not one_adapter)


@app.command()
def bench(
    config: Path = typer.Argument(..., help="Bench YAML: tasks, methods (with grids), k, seeds"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a bench key: key=value"),
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder (same as --set output_dir=)"),
    shard: str | None = typer.Option(None, "--shard", help="I/N: run every N-th cell from the I-th "
                                     "into OUT/shards/I-of-N (Slurm arrays); join them with --join"),
    join: bool = typer.Option(False, "--join", help="Join the shards' results into OUT's reports"),
    old_join: bool = typer.Option(False, "--merge", hidden=True, help="Deprecated name of --join"),
    ray: str | None = typer.Option(None, "--ray", help="Run cells as Ray tasks: 'local' starts a "
                                   "cluster here, else a Ray address (auto, ray://head:10001)"),
    cpus: float = typer.Option(1.0, "--cpus-per-cell", help="With --ray: CPUs per cell (its threads)"),
    gpus: float = typer.Option(0.0, "--gpus-per-cell", help="With --ray: GPUs per cell"),
) -> None:
    """Run a tasks x methods x K x seeds grid (LM-BFF protocol); resumable; writes reports."""
    if old_join:
        err.print("note: `cuetune bench --merge` is now `--join` (merge folds adapter weights: "
                  "`cuetune merge`); --merge goes in the next release", highlight=False, soft_wrap=True)
        join = True
    overrides = list(set_) + ([f"output_dir={out_dir}"] if out_dir else [])
    cfg, root = load_bench(config, overrides)
    out_path = Path(cfg.output_dir)
    bar = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[cell]}"), TimeElapsedColumn(),
                   TextColumn("{task.fields[eta]}"), console=err)
    task = bar.add_task("bench", total=None, cell="", eta="")

    def update(done, total, cell, eta):
        eta_text = f"ETA {eta / 60:.0f} min" if eta else ""
        bar.update(task, completed=done, total=total, cell=cell.key if cell else "done", eta=eta_text)
        if cell and not err.is_terminal:  # no live bar in a log file or CI: one line per cell
            err.print(f"bench [{done + 1}/{total}] {cell.key} {eta_text}".rstrip(), soft_wrap=True)

    if sum([shard is not None, join, ray is not None]) > 1:
        raise typer.BadParameter("--shard, --join and --ray are separate ways to run; pick one")
    if (cpus != 1.0 or gpus != 0.0) and ray is None:
        raise typer.BadParameter("--cpus-per-cell/--gpus-per-cell apply to --ray only")
    if join:
        rows, missing = shards.join(cfg, out_path)
        out.print(f"joined {len(rows)} cells into {out_path}" + (
            f"; {len(missing)} not run yet: {', '.join(missing[:5])}{' ...' * (len(missing) > 5)}"
            if missing else ""))
    else:
        with bar:
            if shard is not None:
                i, n = shards.parse_shard(shard)
                rows = shards.run_shard(cfg, root, out_path, i, n, progress=update)
                out_path = shards.shard_folder(out_path, i, n)
            elif ray is not None:
                def finished(done, total, cell):  # Ray reports cells as they finish, in any order
                    bar.update(task, completed=done, total=total, cell=cell.key if cell else "")
                    if cell and not err.is_terminal:
                        err.print(f"bench {done}/{total} finished {cell.key}", soft_wrap=True)

                rows = shards.run_ray(cfg, root, out_path, ray, cpus, gpus, progress=finished)
            else:
                rows = run_bench(cfg, root, out_path, progress=update)
    out.print(f"{len(rows)} cells; reports in {out_path}: results.md, results.csv, "
              "results.json, report.html, bars_k*.png")
    failed = report.failures(rows)
    if failed:
        raise CuetuneError(f"{len(failed)} of {len(rows)} cells failed (listed at the end of "
                           f"{out_path / 'results.md'}); fix the cause and run the same command: "
                           "finished cells are read back and the failed ones run again")


@app.command()
def models() -> None:
    """List model aliases: family, parameters, installed and converted."""
    table = Table("alias", "family", "params", "installed", "converted", "package")
    for row in describe_aliases():
        conv = {True: "yes", False: "no", None: "n/a"}[row["converted"]]
        table.add_row(row["alias"], row["family"], f"{row['params'] / 1e6:.1f}M",
                      "yes" if row["installed"] else "no", conv, row["package"])
    out.print(table)


def main() -> None:
    _quiet_libraries()
    _progress_lines()
    try:
        app(standalone_mode=False)
    except CuetuneError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors are handled by click itself
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
