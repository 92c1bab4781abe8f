"""The experiment runner (going_modular.experiments): ids, records, locking, resuming, summaries, the command line,
and the book's stored records, each re-checked by re-running its experiment's cheapest run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import going_modular.experiments as ex
from experiment_toy import EXPERIMENTS, least_squares
from going_modular.experiments import (
    BOOK_EXPERIMENTS,
    Experiment,
    RecordsError,
    assert_reproduces,
    code_fingerprint,
    load_records,
    main,
    mean_interval,
    paired_difference,
    read_records,
    reproduce,
    run_experiment,
    run_id,
    store_record,
    summary_table,
)

TOY = EXPERIMENTS[0]
TESTS = Path(__file__).parent
QUICK = Experiment(
    "toy", least_squares, tuple(c for c in TOY.configs if c["steps"] == 10)
)


CODE = code_fingerprint(least_squares)


def quiet(line: str) -> None:
    pass


def record_of(run: str, **changes) -> dict:
    """A well-formed record of the toy grid's run ``id`` (not computed)."""
    record = {
        "id": run,
        "experiment": "toy",
        "config": TOY.config(run),
        "metrics": {"error": 1.0},
        "seconds": 0.5,
        "device": "cpu (x86_64, AVX2)",
        "versions": ex.versions(),
        "code": CODE,
    }
    return record | changes


# ---- ids and grids
def test_run_id_is_the_sorted_configuration():
    assert (
        run_id({"seed": 0, "model": "vit", "lr": 0.001}) == "lr=0.001,model=vit,seed=0"
    )
    assert run_id({"b": 1, "a": "x"}) == run_id({"a": "x", "b": 1})


@pytest.mark.parametrize(
    "config", [{"a": True}, {"a": [1]}, {"a": "two words"}, {"a b": 1}, {"a": None}]
)
def test_run_id_refuses_values_that_would_not_read_back(config):
    with pytest.raises(ValueError, match="config"):
        run_id(config)


def test_an_experiment_refuses_a_grid_that_lists_a_run_twice_a_bad_name_or_no_runs():
    with pytest.raises(ValueError, match="twice: seed=0"):
        Experiment("x", least_squares, ({"seed": 0}, {"seed": 0}))
    with pytest.raises(ValueError, match="name"):
        Experiment("Bad Name", least_squares, ({"seed": 0},))
    with pytest.raises(ValueError, match="no runs"):
        Experiment("x", least_squares, ())
    with pytest.raises(KeyError, match="no run 'seed=9'"):
        TOY.config("seed=9")


# ---- records on disk
def test_read_records_names_the_file_and_line_of_a_bad_line(tmp_path):
    path = tmp_path / "toy.jsonl"
    good = json.dumps(record_of(TOY.ids[0]))
    for bad, message in (
        ("{not json", "line 2: not JSON"),
        ('{"id": "x"}', "line 2: expected a JSON object with keys"),
        ("[1, 2]", "line 2: expected a JSON object"),
        (
            json.dumps(record_of(TOY.ids[1], id=TOY.ids[2])),
            "line 2: id 'seed=2,steps=10' does not match its config",
        ),
    ):
        path.write_text(f"{good}\n{bad}\n")
        with pytest.raises(RecordsError, match=message) as err:
            read_records(path)
        assert str(path) in str(err.value)
    assert read_records(tmp_path / "missing.jsonl") == []


def test_store_record_appends_skips_a_stored_id_and_replaces_on_request(tmp_path):
    path = tmp_path / "toy.jsonl"
    assert store_record(path, record_of(TOY.ids[0]))
    assert store_record(path, record_of(TOY.ids[1]))
    assert not store_record(
        path, record_of(TOY.ids[0], seconds=9.0)
    )  # already there: kept
    assert [r["seconds"] for r in read_records(path)] == [0.5, 0.5]
    assert store_record(path, record_of(TOY.ids[0], seconds=9.0), replace=True)
    assert sorted((r["id"], r["seconds"]) for r in read_records(path)) == [
        (TOY.ids[0], 9.0),
        (TOY.ids[1], 0.5),
    ]


def test_a_record_that_cannot_be_written_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "toy.jsonl"
    store_record(path, record_of(TOY.ids[0]))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        store_record(path, record_of(TOY.ids[1], metrics={"error": float("nan")}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [
        "toy.jsonl"
    ]  # no temporary file left


def test_concurrent_writers_lose_no_record(tmp_path):
    path = tmp_path / "many.jsonl"
    configs = [{"steps": 10, "seed": i} for i in range(80)]

    def write(part: list[dict]) -> None:
        for config in part:
            store_record(
                path, record_of(TOY.ids[0]) | {"id": run_id(config), "config": config}
            )

    threads = [threading.Thread(target=write, args=(configs[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["id"] for r in read_records(path)) == sorted(
        run_id(c) for c in configs
    )


def test_load_records_sorts_out_unknown_foreign_and_stale_records(tmp_path):
    path = tmp_path / "toy.jsonl"
    lines = [
        record_of(TOY.ids[0]),
        record_of(TOY.ids[1], code="000000000000"),  # made by other code
        record_of(TOY.ids[0])
        | {
            "id": "seed=0,steps=5",
            "config": {"steps": 5, "seed": 0},
        },  # not in the grid
        record_of(TOY.ids[2], experiment="other"),  # another experiment's
        record_of(
            TOY.ids[0], seconds=7.0
        ),  # a second record of a stored run: the first counts
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    stored = load_records(TOY, tmp_path)
    assert (
        tuple(r["id"] for r in stored.records) == TOY.ids[:2]
        and stored.records[0]["seconds"] == 0.5
    )
    assert stored.stale == (TOY.ids[1],)
    assert [r["id"] for r in stored.unknown] == ["seed=0,steps=5"] and len(
        stored.foreign
    ) == 1
    assert stored.missing == TOY.ids[2:]
    status = stored.status()
    assert (
        "2 of 8 runs stored" in status
        and "1 stale" in status
        and "1 unknown runs left out" in status
    )
    assert "1 records of another experiment left out" in status


# ---- provenance
def test_the_code_fingerprint_follows_the_imports(tmp_path, monkeypatch):
    package = tmp_path / "going_modular"
    shutil.copytree(
        ex.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(ex, "PACKAGE_ROOT", package)
    before = code_fingerprint(
        least_squares
    )  # the toy imports going_modular.experiments, which imports the chapters
    numpy_vit = package / "numpy_vit.py"
    numpy_vit.write_text(numpy_vit.read_text() + "\n# an edit nothing here imports\n")
    assert code_fingerprint(least_squares) == before
    attention = package / "attention.py"
    attention.write_text(attention.read_text() + "\n# an edit every ViT imports\n")
    assert code_fingerprint(least_squares) != before
    assert len(before) == 12 and int(before, 16) >= 0


# ---- running
def test_run_experiment_runs_only_what_has_no_record(tmp_path):
    new = run_experiment(QUICK, results=tmp_path, device="cpu", log=quiet)
    assert [r["id"] for r in new] == list(QUICK.ids)
    record = new[0]
    assert set(ex.RECORD_KEYS) <= set(record) and record["device"].startswith("cpu (")
    assert record["metrics"] == least_squares(
        record["config"], device=torch.device("cpu")
    )
    assert run_experiment(QUICK, results=tmp_path, device="cpu", log=quiet) == []
    assert load_records(QUICK, tmp_path).records == tuple(new)


def test_only_and_stale_choose_the_runs(tmp_path):
    (one,) = run_experiment(
        QUICK, results=tmp_path, only=[QUICK.ids[1]], device="cpu", log=quiet
    )
    assert one["id"] == QUICK.ids[1] and len(read_records(tmp_path / "toy.jsonl")) == 1
    store_record(
        tmp_path / "toy.jsonl",
        one | {"code": "000000000000", "metrics": {"error": 5.0}},
        replace=True,
    )
    assert load_records(QUICK, tmp_path).stale == (one["id"],)
    redone = run_experiment(
        QUICK, results=tmp_path, only=[one["id"]], stale=True, device="cpu", log=quiet
    )
    assert [r["metrics"] for r in redone] == [one["metrics"]]
    assert (
        load_records(QUICK, tmp_path).stale == ()
        and len(read_records(tmp_path / "toy.jsonl")) == 1
    )


def test_bad_input_stops_before_any_run(tmp_path):
    calls = []
    counted = Experiment(
        "toy", lambda config, device: calls.append(1) or {"x": 1.0}, QUICK.configs
    )
    with pytest.raises(KeyError, match="no run 'seed=9'"):
        run_experiment(counted, results=tmp_path, only=["seed=9"], log=quiet)
    (tmp_path / "toy.jsonl").write_text("{oops\n")
    with pytest.raises(RecordsError, match="toy.jsonl, line 1"):
        run_experiment(counted, results=tmp_path, log=quiet)
    with pytest.raises(ValueError, match="jobs"):
        run_experiment(counted, results=tmp_path, jobs=0, log=quiet)
    assert calls == [] and (tmp_path / "toy.jsonl").read_text() == "{oops\n"


@pytest.mark.parametrize(
    "metrics", [{}, {"x": float("inf")}, {"x": "high"}, {"x": [1.0, None]}, [1.0]]
)
def test_a_run_must_return_finite_numbers(tmp_path, metrics):
    broken = Experiment("toy", lambda config, device: metrics, QUICK.configs)
    with pytest.raises((TypeError, ValueError), match="metrics"):
        run_experiment(broken, results=tmp_path, log=quiet)
    assert not (tmp_path / "toy.jsonl").exists()


def test_a_run_with_an_output_parameter_gets_its_own_folder(tmp_path):
    def writes(
        config: dict, *, device: torch.device, output: Path | None = None
    ) -> dict:
        output.mkdir(parents=True)
        (output / "note.txt").write_text(str(config["seed"]))
        return {"x": 1.0}

    run_experiment(
        Experiment("toy", writes, QUICK.configs), results=tmp_path, log=quiet
    )
    assert (tmp_path / "toy" / QUICK.ids[2] / "note.txt").read_text() == "2"


def test_assert_reproduces_demands_equal_metrics():
    record = record_of(TOY.ids[0], metrics={"error": 0.25, "curve": [1.0, 2.0]})
    assert_reproduces(record, {"error": 0.25, "curve": [1.0, 2.0]})
    for fresh in (
        {"error": 0.25 + 1e-15, "curve": [1.0, 2.0]},
        {"error": 0.25},
        {"error": 0.25, "curve": [1.0]},
    ):
        with pytest.raises(AssertionError, match="metric '(error|curve)'"):
            assert_reproduces(record, fresh)


# ---- summaries
def test_mean_interval_is_students_t_interval():
    values = [0.61, 0.72, 0.68, 0.80, 0.65]
    mean, low, high = mean_interval(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / np.sqrt(5)
    assert mean == pytest.approx(0.692) and (low, high) == pytest.approx(
        (0.692 - half, 0.692 + half)
    )
    assert paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0]) == pytest.approx(
        mean_interval([2.0, 3.0, 1.0])
    )
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])
    with pytest.raises(ValueError, match="same shape"):
        paired_difference([1.0, 2.0], [1.0])


def test_summary_table_groups_the_seeds(tmp_path):
    path = tmp_path / "toy.jsonl"
    for i, error in enumerate((1.0, 2.0, 3.0, 4.0)):
        store_record(path, record_of(TOY.ids[i], metrics={"error": error}))
    table = summary_table(load_records(TOY, tmp_path)).splitlines()
    assert table[0] == "| steps | error | n |"
    mean, low, high = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert table[2] == f"| 10 | 2.500 ± 1.291 [{low:.3f}, {high:.3f}] | 4 |"


# ---- the command line, in process
def test_the_command_line_lists_shows_and_refuses(tmp_path, capsys):
    argv = ["--module", "experiment_toy", "--results", str(tmp_path)]
    assert main([*argv, "run", "toy", "--only", *QUICK.ids[:2]]) == 0
    assert main([*argv, "list"]) == 0
    listing = capsys.readouterr().out
    assert any(line.split()[:3] == ["toy", "8", "2"] for line in listing.splitlines())
    assert all(e.name in listing for e in BOOK_EXPERIMENTS)
    assert main([*argv, "ids", "toy"]) == 0 and capsys.readouterr().out.split() == list(
        TOY.ids
    )
    assert (
        main([*argv, "show", "toy"]) == 0
        and "2 of 8 runs stored" in capsys.readouterr().out
    )
    assert (
        main([*argv, "check", "toy"]) == 0
        and "equals its record" in capsys.readouterr().out
    )
    before = (tmp_path / "toy.jsonl").read_bytes()
    assert (
        main([*argv, "run", "nope"]) == 2
        and "unknown experiment 'nope'; known:" in capsys.readouterr().err
    )
    assert (
        main([*argv, "run", "toy", "--only", "seed=7"]) == 2
        and "no run 'seed=7'" in capsys.readouterr().err
    )
    (tmp_path / "toy.jsonl").write_bytes(before + b"garbage\n")
    assert (
        main([*argv, "run", "toy"]) == 2
        and "toy.jsonl, line 3: not JSON" in capsys.readouterr().err
    )
    assert (tmp_path / "toy.jsonl").read_bytes() == before + b"garbage\n"
    ex.EXPERIMENT_MODULES.clear()


# ---- processes: slow
def command(results: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "going_modular.experiments",
        "--module",
        "experiment_toy",
        "--results",
        str(results),
        *args,
    ]


def env() -> dict:
    return os.environ | {
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    }


@pytest.mark.slow
def test_a_killed_runner_resumes_without_rerunning_finished_runs(tmp_path):
    path = tmp_path / "toy.jsonl"
    runner = subprocess.Popen(
        command(tmp_path, "run", "toy"), env=env(), stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while (
        len(path.read_text().splitlines() if path.exists() else []) < 6
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    before = read_records(path)  # parses: no half-written line
    assert 6 <= len(before) < len(TOY.ids), "the kill must land inside the grid"
    done = subprocess.run(
        command(tmp_path, "run", "toy"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"toy: {len(TOY.ids) - len(before)} runs to do" in done.stdout
    after = read_records(path)
    assert after[: len(before)] == before and sorted(r["id"] for r in after) == sorted(
        TOY.ids
    )


@pytest.mark.slow
def test_worker_processes_give_the_records_one_process_gives(tmp_path):
    done = subprocess.run(
        command(tmp_path / "two", "run", "toy", "--jobs", "2"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run_experiment(TOY, results=tmp_path / "one", log=quiet)
    one, two = (load_records(TOY, tmp_path / name).records for name in ("one", "two"))
    assert [r["metrics"] for r in one] == [r["metrics"] for r in two] and len(
        two
    ) == len(TOY.ids)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", BOOK_EXPERIMENTS, ids=lambda e: e.name)
def test_every_book_experiment_is_stored_and_its_cheapest_run_reproduces(experiment):
    stored = load_records(experiment)
    assert stored.missing == () and stored.unknown == () and stored.foreign == ()
    assert stored.stale == (), (
        f"{len(stored.stale)} stale records: make experiments (vit-experiment run --stale)"
    )
    record, fresh = reproduce(experiment)
    assert_reproduces(record, fresh["metrics"])
