"""The benchmark's report: the main table, the ablation ladder with paired intervals, the chosen learning rates,
the gap check per task, `transfer.csv`, and the rank sweep plot (`rank_sweep.png` / `.csv`)."""

from __future__ import annotations

import csv
from pathlib import Path

from .records import RunRecord
from .stats import Cell, cell, gap_check, paired
from .suite import ABLATION_STEPS, TASKS, VARIANTS


def digits(metric: str) -> int:
    return 3 if metric == "cider" else 1  # CIDEr lives near 0..3, recalls and accuracies in percent


def per_seed(records: list[RunRecord], task: str, method: str, rank: int) -> dict[int, float]:
    """{seed: value} of the report runs of (task, method) at `rank` (frozen and full have no rank); a row that runs
    as another on this task (`Variant.runs_as`: unitrans on captioning is vcra) takes that row's runs."""
    method = VARIANTS[method].runs_as(TASKS[task])
    return {
        r.seed: r.value
        for r in records
        if r.phase == "report"
        and r.task == task
        and r.method == method
        and (r.rank == rank or method in ("frozen", "full"))
    }


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def main_table(records: list[RunRecord], tasks: list[str], methods: list[str], rank: int, seeds: int) -> list[str]:
    ref = tasks[0]  # trainable parameters differ by task (captioning's decoder has its own bank): the first task's
    head = ["method", *(f"{TASKS[t].label} ({TASKS[t].metric})" for t in tasks), f"trainable ({TASKS[ref].label})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m]
        for t in tasks:
            if not VARIANTS[m].applies_to(TASKS[t]):
                row.append("n/a")
                continue
            values = per_seed(records, t, m, rank)
            short = f" (n={len(values)})" if values and m != "frozen" and len(values) < seeds else ""
            same = VARIANTS[m].runs_as(TASKS[t])
            short += f" (= {same})" if same != m else ""
            row.append(cell(list(values.values())).text(digits(TASKS[t].metric)) + short if values else "-")
        params = next(
            (
                r
                for r in records
                if r.task == ref
                and r.method == VARIANTS[m].runs_as(TASKS[ref])
                and r.phase == "report"
                and r.rank == rank
            ),
            None,
        )
        row.append(f"{_fmt_params(params.trainable)} ({100 * params.trainable / params.total:.2f}%)" if params else "-")
        lines.append("| " + " | ".join(row) + " |")
    note = (
        f"Mean ± std over {seeds} seeds on domain B test (frozen: one evaluation, nothing random; (n=k): only k "
        f"seeds have run yet, -: none); rank {rank}; "
        "n/a: the method's component does not exist for the task (captioning has no fusion branch, so no QASN; "
        "MCAM is a retrieval loss); (= row): the method trains exactly as that row on this task (unitrans without "
        "a fusion branch or MCAM), so the cell is that row's runs."
    )
    return [note, "", *lines]


def ablation_table(records: list[RunRecord], tasks: list[str], rank: int) -> list[str]:
    head = ["step", *(TASKS[t].label for t in tasks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for before, after in ABLATION_STEPS:
        row = [f"{before} -> {after}"]
        for t in tasks:
            if not (VARIANTS[before].applies_to(TASKS[t]) and VARIANTS[after].applies_to(TASKS[t])):
                row.append("n/a")
                continue
            if VARIANTS[before].runs_as(TASKS[t]) == VARIANTS[after].runs_as(TASKS[t]):
                row.append("same method")  # e.g. vcra -> unitrans on captioning: nothing is added
                continue
            p = paired(per_seed(records, t, before, rank), per_seed(records, t, after, rank))
            row.append("-" if p is None else p.text(digits(TASKS[t].metric)) + (" *" if p.significant else ""))
        lines.append("| " + " | ".join(row) + " |")
    note = (
        "Paired difference (after - before) over the seeds both ran, with its 95% t-interval; * = the interval "
        "excludes 0; same method: the step adds nothing on this task (unitrans is vcra on captioning)."
    )
    return [note, "", *lines]


def chosen_lr_table(
    records: list[RunRecord], chosen: dict[tuple[str, str], float], tasks: list[str], methods: list[str]
) -> list[str]:
    """Per method and task: the val metric at each lr of the grid, the chosen one in bold; `(edge)` when the
    chosen lr is the grid's smallest or largest, where a wider grid might choose another."""
    head = ["method", "grid", *(TASKS[t].label for t in tasks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        if m == "frozen":
            continue
        grid = VARIANTS[m].lr_grid
        row = [m, " / ".join(f"{x:g}" for x in grid)]
        for t in tasks:
            if not VARIANTS[m].applies_to(TASKS[t]):
                row.append("n/a")
                continue
            if VARIANTS[m].runs_as(TASKS[t]) != m:
                row.append(f"= {VARIANTS[m].runs_as(TASKS[t])}")
                continue
            val = {r.lr: r.value for r in records if r.phase == "select" and r.task == t and r.method == m}
            if not val:
                row.append("-")
                continue
            d, tried = digits(TASKS[t].metric), sorted({*grid, *val})
            texts = [("-" if lr not in val else f"**{val[lr]:.{d}f}**" if lr == chosen.get((t, m)) else
                      f"{val[lr]:.{d}f}") + ("" if lr in grid else f" ({lr:g})") for lr in tried]  # fmt: skip
            edge = " (edge)" if chosen.get((t, m)) in (tried[0], tried[-1]) and set(grid) <= set(val) else ""
            row.append(" / ".join(texts) + edge)
        lines.append("| " + " | ".join(row) + " |")
    note = (
        "Domain B val metric of the first seed at each learning rate of the grid, and (with its lr) beyond the grid "
        "where the best lay at its end; bold: chosen (the best; ties: the smaller lr); (edge): the best is still "
        "the last lr tried; -: not run yet; n/a: not applicable."
    )
    return [note, "", *lines]


def gap_lines(records: list[RunRecord], tasks: list[str], rank: int) -> list[str]:
    def c(t: str, m: str) -> Cell | None:
        values = per_seed(records, t, m, rank)
        return cell(list(values.values())) if values else None

    out = []
    for t in tasks:
        check = gap_check(c(t, "frozen"), c(t, "full"), c(t, "unitrans"))
        if check is not None:
            out.append(f"- {TASKS[t].label}: {check.text(digits(TASKS[t].metric))}")
    return out


def write_csv(records: list[RunRecord], out: Path, tasks: list[str], methods: list[str], rank: int) -> None:
    with (out / "transfer.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "task", "metric", "mean", "std", "n_seeds", "trainable_params", "total_params"])
        for m in methods:
            for t in tasks:
                values = per_seed(records, t, m, rank)
                if values:
                    c = cell(list(values.values()))
                    same = VARIANTS[m].runs_as(TASKS[t])
                    r = next(x for x in records if x.task == t and x.method == same and x.phase == "report")
                    w.writerow([m, t, TASKS[t].metric, f"{c.mean:.4f}", f"{c.std:.4f}", c.n, r.trainable, r.total])


def plot_rank_sweep(records: list[RunRecord], task: str, ranks: list[int], methods: list[str], out: Path):
    """`rank_sweep.png` + `.csv`: mean ± std over seeds against rank; frozen and full drawn as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = TASKS[task].metric
    fig, (ax_m, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for method, marker in zip(methods, "os^v"):
        pts = []
        for r in ranks:
            values = per_seed(records, task, method, r)
            if values:
                c = cell(list(values.values()))
                trainable = next(x.trainable for x in records if x.task == task and x.method == method and x.rank == r)
                pts.append((r, c, trainable))
                rows.append([method, r, f"{c.mean:.4f}", f"{c.std:.4f}", c.n, trainable])
        if pts:
            xs = [p[0] for p in pts]
            ax_m.errorbar(xs, [p[1].mean for p in pts], yerr=[p[1].std for p in pts], marker=marker, capsize=3,
                          label=method)  # fmt: skip
            ax_p.plot(xs, [p[2] for p in pts], marker=marker, label=method)
    if not rows:
        plt.close(fig)
        return None
    for method, colour in (("frozen", "tab:gray"), ("full", "tab:green")):
        values = per_seed(records, task, method, 0)
        if values:
            c = cell(list(values.values()))
            ax_m.axhspan(c.mean - c.std, c.mean + c.std, color=colour, alpha=0.2)
            ax_m.axhline(c.mean, color=colour, linestyle="--", label=f"{method} (mean ± std)")
    for ax in (ax_m, ax_p):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("rank r")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_m.set_ylabel(f"{TASKS[task].label} {metric} (domain B test)")
    ax_p.set_ylabel("trainable parameters")
    ax_p.set_yscale("log")
    fig.suptitle(f"Rank sweep, {TASKS[task].label} (tiny BLIP, synthetic scenes A -> B)")
    fig.tight_layout()
    png = out / "rank_sweep.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    with (out / "rank_sweep.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "rank", metric, "std", "n_seeds", "trainable_params"])
        w.writerows(rows)
    return png
