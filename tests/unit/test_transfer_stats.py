"""The transfer benchmark's plan, statistics and tables (`benchmarks/transfer/`), from records made here."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from benchmarks.transfer.records import RunRecord
from benchmarks.transfer.run import (
    choose_lrs,
    extension_jobs,
    report_jobs,
    select_extensions,
    select_jobs,
    sweep_jobs,
)
from benchmarks.transfer.stats import cell, gap_check, paired
from benchmarks.transfer.suite import TASKS, VARIANTS
from benchmarks.transfer.tables import ablation_table, chosen_lr_table, main_table, plot_rank_sweep
from unitrans_ds.tasks.registry import TASKS as TASK_CLASSES
from unitrans_ds.tracking.run_info import metric_key


def rec(task, method, value, seed=0, rank=16, phase="report", lr=0.01, split="test", trainable=100) -> RunRecord:
    return RunRecord(task, method, seed, split, TASKS[task].metric, value, trainable, 1000, lr, rank, 10, phase, "b")


# ---------------------------------------------------------------------- the plan
@pytest.mark.parametrize("name", list(TASKS))
def test_each_benchmark_metric_is_a_key_the_trainer_logs_for_its_task(name):
    # the trainer logs `test/<metric_key(m)>` for each of its task class's metrics; a name in another case
    # (`CIDEr` for `cider`) failed every captioning run after its 200 steps
    bench = TASKS[name]
    assert bench.metric in {metric_key(m) for m in TASK_CLASSES[bench.task].metrics}


# ---------------------------------------------------------------------- statistics
def test_paired_difference_and_its_t_interval():
    p = paired({0: 10.0, 1: 20.0, 2: 30.0}, {0: 11.0, 1: 22.0, 2: 33.0, 3: 99.0})  # seed 3 has no partner
    assert p.n == 3 and p.mean == pytest.approx(2.0)
    half = 4.302652729911275 * 1.0 / 3**0.5  # t(0.975, df=2) * sd(1, 2, 3) / sqrt(3)
    assert (p.lo, p.hi) == pytest.approx((2.0 - half, 2.0 + half))
    assert not p.significant  # the interval [-0.48, 4.48] holds 0
    assert paired({0: 1.0, 1: 1.0, 2: 1.0}, {0: 2.0, 1: 2.1, 2: 2.2}).significant
    assert paired({0: 1.0}, {1: 2.0}) is None


def test_gap_check_compares_the_gap_with_five_seed_stds():
    frozen, full = cell([10.0]), cell([30.0, 31.0, 29.0])  # std 1
    assert gap_check(frozen, full, cell([14.0, 22.0, 30.0])).ok is False  # gap 20 < 5 x unitrans std 8
    assert gap_check(frozen, full, cell([20.0, 24.0, 22.0])).ok is True  # 20 >= 5 x 2
    assert gap_check(frozen, None, full) is None
    one = gap_check(frozen, cell([30.0]), cell([28.0]))  # one seed: a std of 0 would pass anything
    assert one.ok is False and one.text(1) == "gap 20.0; no seed std yet (1 seed): not checked"


# ---------------------------------------------------------------------- plan
def test_components_a_task_lacks_are_not_run():
    assert not VARIANTS["vcra+qasn"].applies_to(TASKS["captioning"])  # no fusion branch
    assert not VARIANTS["vcra+mcam"].applies_to(TASKS["vqa"]) and VARIANTS["vcra+mcam"].applies_to(
        TASKS["video_retrieval"]
    )
    jobs = select_jobs(["captioning"], list(VARIANTS), seed=0, rank=16, fixed_lr=None)
    # unitrans on captioning (no fusion branch, no MCAM) trains as vcra, so its runs would repeat vcra's
    assert {j.method for j in jobs} == {"full", "lora", "scaling-vectors", "vcra (frozen A/B)", "vcra"}
    assert all(j.split == "val" and j.seed == 0 for j in jobs)
    assert len(jobs) == 5 * 3  # every lr of each grid
    assert [VARIANTS["unitrans"].runs_as(TASKS[t]) for t in ("captioning", "vqa", "video_qa", "image_retrieval")] == [
        "vcra", "vcra+qasn", "vcra+qasn", "unitrans"]  # fmt: skip
    chosen = {("vqa", m): 0.01 for m in VARIANTS if m != "frozen"}
    assert "unitrans" not in {j.method for j in report_jobs(["vqa"], list(VARIANTS), [0, 1], 16, chosen)}


def test_a_row_that_runs_as_another_shows_that_rows_runs_and_adds_no_ablation_step():
    records = [rec("captioning", "vcra", v, seed=s, trainable=500) for s, v in enumerate((1.2, 1.3, 1.4))]
    lines = main_table(records, ["captioning"], ["vcra", "unitrans"], 16, 3)
    row = next(line for line in lines if line.startswith("| unitrans |"))
    assert row == "| unitrans | 1.300 ± 0.100 (= vcra) | 500 (50.00%) |"
    ladder = ablation_table(records, ["captioning"], 16)
    assert (
        next(line for line in ladder if line.startswith("| vcra -> unitrans |")) == "| vcra -> unitrans | same method |"
    )
    table = chosen_lr_table(records, {}, ["captioning"], ["unitrans"])
    assert table[-1].endswith("| = vcra |")


def test_the_best_val_lr_is_chosen_and_used_at_every_seed_and_rank():
    records = [rec("image_retrieval", "lora", v, lr=lr, phase="select", split="val")
               for lr, v in ((3e-4, 10.0), (1e-3, 14.0), (3e-3, 12.0))]  # fmt: skip
    chosen = choose_lrs(records, None)
    assert chosen == {("image_retrieval", "lora"): 1e-3}
    jobs = report_jobs(["image_retrieval"], ["frozen", "lora"], [0, 1, 2], 16, chosen)
    assert [(j.method, j.seed, j.lr) for j in jobs] == [("frozen", 0, None), ("lora", 0, 1e-3), ("lora", 1, 1e-3),
                                                       ("lora", 2, 1e-3)]  # fmt: skip
    sweep = sweep_jobs([0, 1], [4, 16], 16, chosen)
    assert {(j.rank, j.seed, j.lr) for j in sweep} == {(4, 0, 1e-3), (4, 1, 1e-3)}  # the main rank is not rerun
    # seed-major: an interrupted sweep holds every rank at its first seeds
    order = [(j.seed, j.rank) for j in sweep_jobs([0, 1], [2, 4, 16], 16, chosen)]
    assert order == [(0, 2), (0, 4), (1, 2), (1, 4)]
    table = chosen_lr_table(records, chosen, ["image_retrieval", "captioning"], ["lora", "vcra+mcam"])
    assert "| lora | 0.0003 / 0.001 / 0.003 | 10.0 / **14.0** / 12.0 | - |" in table
    assert "| vcra+mcam | 0.003 / 0.01 / 0.03 | - | n/a |" in table  # not run yet; MCAM is retrieval-only
    edge = [rec("image_retrieval", "lora", v, lr=lr, phase="select", split="val")
            for lr, v in ((3e-4, 10.0), (1e-3, 14.0), (3e-3, 15.0))]  # fmt: skip
    assert "**15.0** (edge) |" in chosen_lr_table(edge, choose_lrs(edge, None), ["image_retrieval"], ["lora"])[-1]


def test_a_best_lr_at_the_grids_edge_gets_the_next_lr_beyond_it_up_to_twice():
    def sel(method, values):
        return [rec("image_retrieval", method, v, lr=lr, phase="select", split="val") for lr, v in values.items()]

    def nxt(records):
        return [(j.method, j.lr) for j in extension_jobs(records, ["image_retrieval"], ["full", "lora"], 0, 16)]

    full = sel("full", {3e-5: 54.0, 1e-4: 62.0, 3e-4: 65.0})  # best at the top
    lora = sel("lora", {3e-4: 50.0, 1e-3: 40.0})  # best at the bottom, but the grid has not finished
    assert nxt(full + lora) == [("full", 1e-3)]
    lora += sel("lora", {3e-3: 45.0})
    assert nxt(full + lora) == [("full", 1e-3), ("lora", 1e-4)]
    full += sel("full", {1e-3: 66.0, 3e-3: 67.0})  # still rising after two steps: the walk stops there
    lora += sel("lora", {1e-4: 49.0})  # the best is inside now
    assert nxt(full + lora) == []
    assert choose_lrs(full + lora, None) == {("image_retrieval", "full"): 3e-3, ("image_retrieval", "lora"): 3e-4}
    # a resumed benchmark whose grids have all run still walks on (the main loop asks before and after each round)
    args = argparse.Namespace(tasks=["image_retrieval"], methods=["full"], seeds=[0, 1], rank=16, lr=None)
    assert [(j.method, j.lr) for j in select_extensions(full[:3], args)] == [("full", 1e-3)]
    assert select_extensions(full[:3], argparse.Namespace(**{**vars(args), "lr": 0.01})) == []  # a fixed lr
    table = chosen_lr_table(full + lora, choose_lrs(full + lora, None), ["image_retrieval"], ["full"])
    assert table[-1].endswith("65.0 / 66.0 (0.001) / **67.0** (0.003) (edge) |")


# ---------------------------------------------------------------------- tables
def test_main_table_writes_n_a_and_mean_std_and_ablation_pairs_by_seed():
    records = [rec("image_retrieval", "frozen", 10.0, trainable=0)]
    for s, (v, q) in enumerate(((20.0, 23.0), (22.0, 24.0), (24.0, 28.0))):
        records += [rec("image_retrieval", "vcra", v, seed=s), rec("image_retrieval", "vcra+qasn", q, seed=s)]
    lines = main_table(records, ["image_retrieval", "captioning"], ["frozen", "vcra", "vcra+qasn"], 16, 3)
    row = next(line for line in lines if line.startswith("| vcra+qasn |"))
    assert "25.0 ± 2.6" in row and "| n/a |" in row  # captioning has no QASN
    ladder = ablation_table(records, ["image_retrieval"], 16)
    step = next(line for line in ladder if line.startswith("| vcra -> vcra+qasn |"))
    assert "+3.0 [" in step  # differences 3, 2, 4: mean 3
    # an unfinished benchmark: the cells say how many of the seeds they hold
    lines = main_table(records[:-2], ["image_retrieval"], ["frozen", "vcra"], 16, 3)
    assert "| 21.0 ± 1.4 (n=2) |" in next(line for line in lines if line.startswith("| vcra |"))
    assert "n=" not in next(line for line in lines if line.startswith("| frozen |"))
    # the trainable column is the first task's, named so: a captioning run does not fill the retrieval column
    records.append(rec("captioning", "vcra", 1.2, trainable=500))
    lines = main_table(records, ["captioning", "image_retrieval"], ["vcra"], 16, 3)
    assert lines[2].endswith("| trainable (captioning) |") and lines[-1].endswith("| 500 (50.00%) |")


def test_rank_sweep_plot_with_error_bars_and_bands(tmp_path):
    from PIL import Image

    records = [rec("image_retrieval", m, 10.0 + r + s, seed=s, rank=r, trainable=r * k)
               for m, k in (("unitrans", 10), ("lora", 1000)) for r in (2, 4, 8) for s in (0, 1)]  # fmt: skip
    records += [rec("image_retrieval", "frozen", 5.0, trainable=0), rec("image_retrieval", "full", 30.0, seed=0),
                rec("image_retrieval", "full", 32.0, seed=1)]  # fmt: skip
    png = plot_rank_sweep(records, "image_retrieval", [2, 4, 8], ["unitrans", "lora"], tmp_path)
    assert png is not None and Image.open(png).format == "PNG"
    rows = list(csv.DictReader((tmp_path / "rank_sweep.csv").open()))
    assert [(r["method"], int(r["rank"]), int(r["n_seeds"])) for r in rows] == [
        (m, r, 2) for m in ("unitrans", "lora") for r in (2, 4, 8)
    ]
    assert float(rows[0]["std"]) == pytest.approx(0.7071, abs=1e-4)


def test_question_types_scores_each_method_per_type_against_the_types_constant(tmp_path, capsys):
    """Real scenes clip shards; one run answers every question with its majority answer, one with a word no
    question has, one with each type's most frequent answer: 100, 0 and exactly the constant column."""
    from collections import Counter

    from benchmarks.transfer import question_types
    from unitrans_ds import make_shards

    split = tmp_path / "shards" / TASKS["video_qa"].shards / "test"
    make_shards.main(["--format", "scenes", "--domain", "b", "--task_set", "video", "--split", "test",
                      "--num_samples", "6", "--frames", "2", "--image_size", "32", "--out", str(split),
                      "--no_progress"])  # fmt: skip
    questions = question_types.load_questions(split)
    per_type = Counter(t for t, _ in questions.values())
    top = {t: Counter(a for tt, a in questions.values() if tt == t).most_common(1)[0][0] for t in per_type}
    answers = {
        "right": {q: a for q, (_, a) in questions.items()},
        "wrong": dict.fromkeys(questions, "zzz"),
        "prior": {q: top[t] for q, (t, _) in questions.items()},
    }
    for method, given in answers.items():
        out = tmp_path / "runs" / "report" / "video_qa" / f"{method}-r16-lr0.01-s0" / "eval" / "test_step000200"
        out.mkdir(parents=True)
        (out / "vqa_results.json").write_text(json.dumps([{"question_id": q, "answer": a} for q, a in given.items()]))
    (tmp_path / "runs" / "report" / "video_qa" / "prior-r16-lr0.01-s1").mkdir()  # still training: no results yet
    args = ["--run_root", str(tmp_path / "runs"), "--shards", str(tmp_path / "shards")]
    capsys.readouterr()  # make_shards' own lines
    assert question_types.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "seeds: prior 1, right 1, wrong 1"  # the unfinished run is not counted
    rows = [line.split() for line in lines[2:-1]]
    assert len(rows) == len(per_type) >= 3
    for row in rows:  # type words, n, constant, then the methods in name order: prior, right, wrong
        n, constant, prior, right, wrong = (float(x) for x in row[-5:])
        assert (right, wrong) == (100.0, 0.0) and prior == constant and n == per_type[" ".join(row[:-5])]
    assert question_types.main(["--run_root", str(tmp_path / "none"), "--shards", str(tmp_path / "shards")]) == 1
