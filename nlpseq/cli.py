"""Command line: thin click commands over importable functions."""

from __future__ import annotations

import json
import sys

import click

from nlpseq.config import POOLINGS
from nlpseq.errors import NlpseqError

#: the inference backends of nlpseq.backends (listed here so the CLI starts without torch)
BACKENDS = ("torch", "onnx", "int8", "bf16")
_backend_option = click.option(
    "--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
    help="torch, onnx (ONNX Runtime on RUN_DIR/onnx, exported on first use), int8 (dynamic "
         "quantization) or bf16 (bfloat16 products, where the device computes them "
         "natively); onnx and int8 run on the CPU.")


class _Group(click.Group):
    """Prints NlpseqError (and other expected failures) as one line; --debug shows tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NlpseqError as err:
            if ctx.meta.get("nlpseq.debug"):
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="nlpseq")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """nlpseq: train and run recurrent networks on text with YAML pipelines."""
    ctx.meta["nlpseq.debug"] = debug


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory to write (config, weights, tokenizer, metrics, history).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a pipeline value, e.g. --set train.max_minutes=10 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(pipeline: str, out_dir: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Train PIPELINE (a YAML file) into a run directory; prints dev metrics as JSON."""
    from nlpseq.config import load_config
    from nlpseq.trainer import train as run

    result = run(load_config(pipeline, overrides), out_dir, progress=not quiet)
    dev = result.metrics.get("dev", {})
    click.echo(json.dumps({k: v for k, v in dev.items() if not isinstance(v, dict)}))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("data_files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default=None,
              help="Also draw the scores as PNG: per-entity-type bars (NER), the confusion "
                   "matrix (sentiment).")
@click.option("--beam", type=click.IntRange(min=1, max=1000), default=None,
              help="Translation runs: beam size; 1 is greedy [default: the run's eval.beam].")
@click.option("--dynamic-lr", type=click.FloatRange(min=0), default=None,
              help="Character LM runs: adapt the model to the text while scoring it, one SGD "
                   "step of this size per window; 0 keeps the weights fixed [default: the "
                   "run's eval.dynamic_lr].")
@_backend_option
def evaluate(run_dir: str, data_files: tuple[str, ...], as_json: bool, device: str,
             plot_file: str | None, beam: int | None, dynamic_lr: float | None,
             backend: str) -> None:
    """Score RUN_DIR's model on DATA_FILES (translation: SOURCE REFERENCE)."""
    import nlpseq

    task = nlpseq.load(run_dir, device, backend)
    given = {"beam": beam, "dynamic_lr": dynamic_lr}
    options = {name: value for name, value in given.items() if value is not None}
    if options:
        task.check_options(options, evaluating=True)
    if plot_file:  # checked before scoring, so a wrong option does not cost the evaluation
        from nlpseq.plot import check_plot_target

        check_plot_target(task.name, plot_file)
    metrics = task.evaluate_files(list(data_files), **options)
    if plot_file:
        from nlpseq.plot import evaluation_png

        evaluation_png(task.name, metrics, plot_file)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        if not isinstance(value, dict):
            click.echo(f"{key}\t{value:.4f}" if isinstance(value, float) else f"{key}\t{value}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--input", "input_file", default="-", show_default=True,
              help="Input file, one text per line (- reads stdin).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per output line.")
@click.option("--format", "input_format", type=click.Choice(["auto", "conll", "text"]),
              default="auto", show_default=True,
              help="NER input: CoNLL columns (tokens first, blank line between sentences), "
                   "plain text (one sentence a line), or judged from the first 200 lines.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@_backend_option
def predict(run_dir: str, input_file: str, as_json: bool, input_format: str,
            device: str, backend: str) -> None:
    """Predict for each input line: a label (sentiment) or tagged tokens (NER)."""
    import nlpseq

    task = nlpseq.load(run_dir, device, backend).require("predict")
    options = {} if input_format == "auto" else {"input_format": input_format}
    task.check_options(options)
    for output in task.predict_lines(_input_lines(input_file), as_json, **options):
        click.echo(output)


def _input_lines(input_file: str):
    """The lines of ``input_file`` (``-``: stdin), read lazily so output can start early."""
    from nlpseq.corpora import read_lines, read_stdin_lines

    numbered = read_stdin_lines() if input_file == "-" else read_lines(input_file)
    return (line for _, line in numbered)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--input", "input_file", default="-", show_default=True,
              help="Source sentences, one per line (- reads stdin).")
@click.option("--beam", type=click.IntRange(min=1, max=1000), default=None,
              help="Beam size; 1 is greedy decoding [default: the run's eval.beam].")
@click.option("--attention-plot", "plot_file", type=click.Path(dir_okay=False), default=None,
              help="Write the attention heat map (PNG) of the translation to this file; with "
                   "several input lines, one file per line named STEM-LINE.png.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@_backend_option
def translate(run_dir: str, input_file: str, beam: int | None, plot_file: str | None,
              device: str, backend: str) -> None:
    """Translate each input line with RUN_DIR's model: one output line per input line."""
    from pathlib import Path

    import nlpseq
    from nlpseq.corpora import read_lines, read_stdin_lines
    from nlpseq.errors import NlpseqError

    task = nlpseq.load(run_dir, device, backend).require("translate")
    if plot_file and not Path(plot_file).expanduser().resolve().parent.is_dir():
        # checked before translating, so a typo does not cost the whole input's work
        raise NlpseqError("--attention-plot: the folder does not exist", plot_file)
    if plot_file:
        from nlpseq.plot import require_matplotlib

        require_matplotlib()
    numbered = read_stdin_lines() if input_file == "-" else read_lines(input_file)
    if not plot_file:  # streamed: the first translations appear while input is still read
        for output in task.predict_lines((line for _, line in numbered), beam=beam):
            click.echo(output)
        return
    lines = [line for _, line in numbered]
    from nlpseq.plot import attention_png

    # each line is decoded once: its translation and heat map come from the same search
    path, chunk = Path(plot_file), 1024
    for start in range(0, len(lines), chunk):
        results = task.translate_with_attention(lines[start : start + chunk], beam)
        for number, result in enumerate(results, start + 1):
            click.echo(result.text)
            if not result.source_tokens:  # an empty line has no plot
                continue
            target = path if len(lines) == 1 else path.with_name(
                f"{path.stem}-{number}{path.suffix or '.png'}")
            attention_png(result.attention.tolist(), result.source_tokens,
                          result.target_tokens, target)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prompt", default="", help="Text to continue (may be empty).")
@click.option("--length", default=500, show_default=True, help="Characters to generate.")
@click.option("--temperature", default=1.0, show_default=True,
              help="Sampling temperature; 0 means greedy (always the most likely character).")
@click.option("--top-k", type=int, default=None, help="Sample only from the K likeliest.")
@click.option("--top-p", type=float, default=None,
              help="Sample only from the smallest set whose probability reaches P (0 < P <= 1).")
@click.option("--seed", type=int, default=None, help="Random seed: same seed, same text.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@_backend_option
def generate(run_dir: str, prompt: str, length: int, temperature: float, top_k: int | None,
             top_p: float | None, seed: int | None, device: str, backend: str) -> None:
    """Print PROMPT followed by text generated by RUN_DIR's character model, as it comes."""
    import nlpseq

    task = nlpseq.load(run_dir, device, backend).require("generate")
    pieces = task.stream(prompt, length=length, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed)
    out = sys.stdout
    out.write(prompt)
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--input", "input_file", required=True,
              help="Series to continue: M4 rows, long CSV/TSV or one column (as data.format).")
@click.option("--horizon", type=click.IntRange(min=1), default=None,
              help="Values to forecast [default: the model's horizon].")
@click.option("--quantiles", is_flag=True, help="Add the model's quantile columns (q10, q90).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default=None,
              help="Also draw history and forecasts as PNG (the series of --plot-series).")
@click.option("--plot-series", default="", help="Comma-separated ids to draw [default: the "
              "first four].")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
def forecast(run_dir: str, input_file: str, horizon: int | None, quantiles: bool,
             plot_file: str | None, plot_series: str, device: str) -> None:
    """Forecast each series of INPUT with RUN_DIR's model: CSV series_id,step,forecast."""
    import nlpseq

    task = nlpseq.load(run_dir, device).require("forecast")
    if plot_file:
        from nlpseq.plot import require_matplotlib

        require_matplotlib()
    series, out = task.forecast_file(input_file, horizon, quantiles)
    for line in task.csv_lines(series, out, quantiles):
        click.echo(line)
    if plot_file:
        from nlpseq.tasks.forecast import forecast_png

        ids = [s.strip() for s in plot_series.split(",") if s.strip()]
        forecast_png(series, out, task.config.model.levels, plot_file, ids)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx",
              show_default=True, help="Export format.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write [default: RUN_DIR/onnx, where --backend onnx reads].")
def export(run_dir: str, export_format: str, out_dir: str | None) -> None:
    """Export RUN_DIR's model as ONNX graphs for ONNX Runtime; prints the folder."""
    from pathlib import Path

    import nlpseq
    from nlpseq.checkpoint import WEIGHTS, RunDir
    from nlpseq.export import export_onnx

    task = nlpseq.load(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / export_format
    click.echo(export_onnx(task, out, RunDir(run_dir).file(WEIGHTS)))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              required=True, help="Fraction of each recurrent layer's hidden units to keep.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory to write (new or empty).")
@click.option("--minutes", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Then fine-tune on the run's training data for this long (0 = not).")
def prune(run_dir: str, keep: float, out_dir: str, minutes: float) -> None:
    """Remove the least important hidden units of a sentiment or NER run's word encoder
    (structured: the matrices shrink); prints hidden sizes and parameters before and after."""
    from nlpseq.prune import prune_run
    from nlpseq.runtime import log_stderr

    click.echo(json.dumps(prune_run(run_dir, out_dir, keep, minutes, log_stderr)))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@_backend_option
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most texts run through the model together (across requests).")
@click.option("--wait-ms", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="How long the first request of a batch waits for others to join it.")
@click.option("--max-length", default=10000, show_default=True, type=click.IntRange(min=1),
              help="Longest text (characters) a request may send.")
@click.option("--max-texts", default=256, show_default=True, type=click.IntRange(min=1),
              help="Most texts in one request.")
@click.option("--threads", default=1, show_default=True,
              help="torch / ONNX Runtime threads of the model (0 = their default); one leaves "
                   "a core to the HTTP event loop.")
def serve(run_dir: str, host: str, port: int, backend: str, max_batch: int, wait_ms: float,
          max_length: int, max_texts: int, threads: int) -> None:
    """Serve RUN_DIR's model over HTTP: POST /predict, /generate or /translate, GET /health
    and /info (see nlpseq.serve)."""
    from nlpseq.serve import ServeConfig
    from nlpseq.serve import serve as run

    run(run_dir, ServeConfig(backend=backend, max_batch=max_batch, wait_ms=wait_ms,
                             max_length=max_length, max_texts=max_texts, threads=threads),
        host=host, port=port)


@main.command()
@click.option("--corpora", envvar="NLPSEQ_CORPORA", default="",
              help="Benchmark corpora folder (default $NLPSEQ_CORPORA); the bundled demo "
                   "corpus is used when unset.")
@click.option("--batch-size", default=64, show_default=True,
              help="Sentences per training batch of the benchmarked model.")
@click.option("--hidden-size", default=128, show_default=True,
              help="LSTM hidden size of the benchmarked BiLSTM classifier.")
@click.option("--pooling", default="last", show_default=True,
              type=click.Choice(POOLINGS),
              help="Head of the benchmarked classifier; `last` (final states of both "
                   "directions) is the plain PyTorch SST-2 script's model.")
@click.option("--embedding-updates", type=click.Choice(["lazy", "dense"]), default="lazy",
              show_default=True,
              help="How Adam updates the embedding table: `lazy` (only the rows each batch "
                   "uses, as the sentiment pipelines train: embeddings.lazy_updates) or "
                   "`dense` (every row on every step, as plain PyTorch's Adam does).")
@click.option("--seconds", default=20.0, show_default=True, help="Time per measurement.")
@click.option("--threads", default=0, help="torch CPU threads (0 = default).")
@click.option("--run", "run_dir", default="",
              help="Instead, time a trained run: characters/s of sampling for a chargen run, "
                   "input lines/s through predict/translate for the others (needs --input).")
@click.option("--input", "input_file", default="", help="Lines to predict with --run.")
@click.option("--length", default=1000, show_default=True,
              help="Characters per sample with --run on a chargen run.")
@click.option("--backend", "backends", type=click.Choice(BACKENDS), multiple=True,
              help="With --run: the backend(s) to time, in alternating rounds (repeatable; "
                   "default torch).")
@click.option("--beam", type=click.IntRange(min=1, max=1000), default=None,
              help="With --run on a translate run: beam size [default: the run's eval.beam].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(corpora: str, batch_size: int, hidden_size: int, pooling: str,
          embedding_updates: str, seconds: float, threads: int, run_dir: str, input_file: str,
          length: int, backends: tuple[str, ...], beam: int | None, as_json: bool) -> None:
    """Measure text-stage, training and inference throughput against the matmul rate."""
    from nlpseq.bench import run_bench, run_inference_bench
    from nlpseq.cpuload import BUSY

    if run_dir:
        figures = run_inference_bench(run_dir, input_file, length=length, seconds=seconds,
                                      threads=threads, backends=backends or ("torch",),
                                      beam=beam)
    else:
        figures = run_bench(corpora=corpora, batch_size=batch_size, hidden_size=hidden_size,
                            seconds=seconds, threads=threads, pooling=pooling,
                            lazy_updates=embedding_updates == "lazy")
    others = figures.get("other_processes_cores", 0.0)
    if isinstance(others, float) and others >= BUSY:
        click.echo(f"warning: other processes kept {others:.1f} CPU cores busy during the "
                   "measurement; these figures are not this machine's own", err=True)
    if as_json:
        click.echo(json.dumps(figures))
    else:
        for key, value in figures.items():
            click.echo(f"{key:32s} {value:,.3f}" if isinstance(value, float) else
                       f"{key:32s} {value}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="PNG to write [default: RUN_DIR/curves.png for one run, ./curves.png for "
                   "several].")
def plot(run_dirs: tuple[str, ...], out_file: str | None) -> None:
    """Draw the training curves of RUN_DIRS in one PNG: training loss, dev selection metric
    (kept checkpoint starred) and learning rate against steps and minutes."""
    from pathlib import Path

    from nlpseq.plot import curves_png

    if out_file is None:
        out_file = str(Path(run_dirs[0]) / "curves.png") if len(run_dirs) == 1 else "curves.png"
    click.echo(curves_png(run_dirs, out_file))


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Study folder: one run directory per trial (trial-NNNN), trials.csv, "
                   "best.yaml, plots and (without --storage) the study database study.db.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Stop once the study has this many completed or pruned trials, counting "
                   "earlier runs of the command and other processes.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Wall-clock budget of this search; no trial starts that would not fit.")
@click.option("--trial-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Training budget of each trial (train.max_minutes) [default: the "
                   "pipeline's].")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage URL shared by processes or machines, e.g. "
                   "postgresql://user:pw@host/db [default: sqlite:///OUT/study.db].")
@click.option("--study-name", default=None,
              help="The study's name in the storage [default: the pipeline file's stem].")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), default=None,
              help="Read the search space from this file instead of the pipeline's tune "
                   "section.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a pipeline value for every trial (repeatable).")
@click.option("--seed", type=int, default=None,
              help="Seed of the TPE sampler [default: the pipeline's train.seed].")
@click.option("--quiet", is_flag=True, help="One line per trial, no training log.")
def tune(pipeline: str, out_dir: str, trials: int | None, minutes: float | None,
         trial_minutes: float | None, storage: str | None, study_name: str | None,
         space_file: str | None, overrides: tuple[str, ...], seed: int | None,
         quiet: bool) -> None:
    """Search PIPELINE's hyperparameters (its tune section) with Optuna; prints the best
    trial as JSON. Run the same command again to continue a stopped search."""
    import os

    import nlpseq
    from nlpseq.tuning import BEST, best_trial

    study = nlpseq.tune(pipeline, out_dir, trials, minutes, storage, overrides,
                        trial_minutes=trial_minutes, space=space_file, seed=seed,
                        study_name=study_name, quiet=quiet)
    best = best_trial(study)
    if best is not None:
        click.echo(json.dumps({"trial": best.number, "value": best.value,
                               "params": best.params, "best_yaml": os.path.join(out_dir, BEST)}))


if __name__ == "__main__":
    main()
