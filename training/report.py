"""How a training result is shown on the terminal: metrics next to the baseline, the version, a sample."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from training.pipeline import TrainResult


def print_result(result: TrainResult, console: Console | None = None) -> None:
    console = console or Console()
    ks = sorted({int(name.rsplit("_", 1)[1]) for name in result.metrics if name.startswith("ndcg_at_")})
    table = Table(title=f"Held-out ranking quality ({result.n_users:,} users × {result.n_items:,} items, "
                        f"{result.n_interactions:,} interactions)")
    table.add_column("metric")
    table.add_column("NMF", justify="right")
    table.add_column("popularity", justify="right")
    table.add_column("ratio", justify="right")
    for metric in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage"):
        for k in ks:
            ours = result.metrics.get(f"{metric}_at_{k}")
            base = result.baseline_metrics.get(f"baseline_{metric}_at_{k}")
            if ours is None or base is None:
                continue
            ratio = f"{ours / base:.2f}×" if base > 0 else "-"
            table.add_row(f"{metric}@{k}", f"{ours:.4f}", f"{base:.4f}", ratio)
    console.print(table)
    console.print(f"MLflow run: {result.run_id}   final fit: {result.fit_seconds:.1f}s")
    if result.version:
        console.print(f"Registered [bold]{result.model_name}[/bold] version {result.version} "
                      f"with alias [bold]{result.alias}[/bold] ({result.gate_reason})")
    else:
        console.print(f"Logged model {result.model_uri} (not registered)")
    if result.sample_recommendations:
        # a table, not one line: the console wraps a long line anywhere, splitting an item id in two
        top = Table(title=f"Top {len(result.sample_recommendations)} for user {result.sample_user}", title_justify="left")
        top.add_column("rank", justify="right")
        top.add_column("item", overflow="fold")
        top.add_column("score", justify="right")
        for rank, (item, score) in enumerate(result.sample_recommendations, 1):
            top.add_row(str(rank), str(item), f"{score:.3f}")
        console.print(top)
