"""Draw a spec's architecture as a diagram (SVG, PNG, PDF, DOT source, or an interactive HTML
page)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dlspec.commands.common import add_spec_arguments, load_spec, positive_int
from dlspec.files import OutputError, output_path, write_atomic

FORMATS = ("svg", "png", "pdf", "dot", "html")
EXTENSIONS = tuple(f".{fmt}" for fmt in FORMATS)
EXIT_NO_GRAPHVIZ = 3
INSTALL_HINT = """\
install Graphviz, then run this command again:
  apt-get install graphviz    (Debian, Ubuntu)
  brew install graphviz       (macOS)
  conda install graphviz      (conda)
or render the source yourself: dot -T{fmt} {dot} -o {out}"""

EPILOG = f"""\
exit codes:
  0  the diagram was written
  1  the spec has errors, or Graphviz failed
  2  usage: a bad option, an unknown extension, an output that cannot be written
  {EXIT_NO_GRAPHVIZ}  Graphviz's `dot` program is not installed: the diagram's .dot source is
     written beside FILE instead, and the message says how to install Graphviz"""


def out_option(text: str) -> Path:
    """An ``--out`` value: a path whose extension names a format dlspec can write."""
    path = Path(text)
    if path.suffix.lower() not in EXTENSIONS:
        found = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise argparse.ArgumentTypeError(
            f"{text!r} has {found}; use one of {', '.join(EXTENSIONS)}"
        )
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_spec_arguments(parser)
    parser.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        type=out_option,
        help="the diagram to write: .svg, .png, .pdf, .dot or .html (default: SPEC's name with "
        "the --format's extension, in the current directory)",
    )
    parser.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        help="what to write when --out is not given (default svg); html: one self-contained "
        "page to open in a browser, with blocks to open and close, search, and each layer's "
        "figures on a click (no Graphviz needed)",
    )
    parser.add_argument(
        "--rankdir",
        choices=("TB", "LR"),
        default="TB",
        help="direction of the data flow: top to bottom (default) or left to right",
    )
    parser.add_argument(
        "--detail",
        choices=("low", "high"),
        default="low",
        help="low (default): activations, dropout and reshapes fold into the layer before them; "
        "high: every layer its own box, with its MACs",
    )
    parser.add_argument(
        "--expand",
        action="store_true",
        help="open every block and repetition: each block a frame around its layers, each "
        "copy of `Block * N` drawn (default: each is one box, as the HTML viewer starts)",
    )
    parser.add_argument(
        "--open",
        metavar="PATH",
        action="append",
        default=[],
        help="open the block or repetition at this path (layers, layers.0.mlp), and those "
        "holding it; may be repeated",
    )
    parser.add_argument(
        "--activations",
        metavar="BATCH",
        type=positive_int,
        help="show the bytes each layer keeps for the backward pass at this batch size",
    )


def run(args: argparse.Namespace, find_dot: Callable[[], str | None] | None = None) -> int:
    """Draw the spec; ``find_dot`` locates Graphviz's ``dot`` (tests pass one that fails)."""
    from dlspec.backends import graphviz_draw

    out: Path = args.out or Path(f"{Path(args.spec).stem}.{args.format or 'svg'}")
    fmt = out.suffix.lower().lstrip(".")
    if args.format and fmt != args.format:
        print(f"dlspec draw: --format {args.format} but --out {out} is {fmt}", file=sys.stderr)
        return 2
    try:
        output_path(out, inputs={"the spec": args.spec})
    except OutputError as exc:
        print(f"dlspec draw: {exc}", file=sys.stderr)
        return 2
    checked, code = load_spec(args, batch=args.activations or 1)
    # with errors, the viewer shows the model as far as it analyzed; a diagram shows nothing
    graph = checked.graph or (checked.partial if fmt == "html" else None)
    if graph is None:
        return code or 1
    # (every copy of a repetition listed only when asked: a million alike copies draw as one)
    opened = graph.all_steps() if args.open else []
    closable = {s.path for s in opened if s.form in ("block", "repeat")}
    unknown = [path for path in args.open if path not in closable]
    if unknown:
        known = ", ".join(sorted(closable)[:8]) + (", ..." if len(closable) > 8 else "")
        print(
            f"dlspec draw: --open {unknown[0]}: no block or repetition has this path"
            + (f" (there are: {known})" if closable else " (the model has none)"),
            file=sys.stderr,
        )
        return 2
    if fmt == "html":
        from dlspec.backends import html_view

        return _save(out, html_view.to_html(checked, args.expand, args.open).encode()) or code
    options = graphviz_draw.DrawOptions(
        rankdir=args.rankdir,
        detail=args.detail,
        expand=args.expand,
        open=frozenset(args.open),
        activations=args.activations,
    )
    source = graphviz_draw.to_dot(graph, options)
    if fmt == "dot":
        return _save(out, source.encode())
    if (find_dot or graphviz_draw.find_dot)() is None:
        dot_path = out.with_suffix(".dot")
        status = _save(dot_path, source.encode())
        if status:
            return status
        print(
            f"dlspec draw: Graphviz's `dot` program is not installed, so {out} was not rendered;\n"
            + INSTALL_HINT.format(fmt=fmt, dot=dot_path, out=out),
            file=sys.stderr,
        )
        return EXIT_NO_GRAPHVIZ
    try:
        data = graphviz_draw.render(source, fmt)
    except graphviz_draw.RenderError as exc:
        print(f"dlspec draw: {exc}", file=sys.stderr)
        return 1
    return _save(out, data)


def _save(path: Path, data: bytes) -> int:
    try:
        write_atomic(path, data)
    except OSError as exc:
        print(f"dlspec draw: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
