"""The bench scripts as a user runs them on a new machine: `--help` and scratch result folders never touch the
committed results, results files are written whole, a benchmark of two models that compute different functions
stops before timing, and the README table generator says what is missing instead of blanking the table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import machine  # noqa: E402
import tables  # noqa: E402


def _copy_benchmarks(tmp_path: Path, *names: str) -> Path:
    """A copy of benchmarks/ (the given scripts) whose results folder is inside tmp_path."""
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    for name in ("machine.py", "fma_peak.c", *names):
        shutil.copy(BENCH / name, folder / name)
    return folder


@pytest.mark.parametrize("script", ["machine.py", "bounds.py"])
def test_help_prints_usage_and_writes_no_results(tmp_path, script):
    # before: neither script parsed its arguments, so `--help` measured the machine (~35 s) and overwrote the
    # committed benchmarks/results/<this cpu>/machine.json (or bounds.json)
    folder = _copy_benchmarks(tmp_path, script)
    out = subprocess.run(
        [sys.executable, str(folder / script), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--results-dir" in out.stdout
    assert not (folder / "results").exists()


def test_results_dir_defaults_to_the_cpu_folder_and_takes_an_override(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu_ident", lambda: {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143"})
    assert machine.results_dir() == machine.RESULTS_ROOT / "intel-6-143"
    monkeypatch.setattr(machine, "cpu_ident", lambda: {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "1"})
    assert machine.results_dir() == machine.RESULTS_ROOT / "amd-25-1"  # another CPU, another folder
    assert machine.results_dir(tmp_path / "trial") == tmp_path / "trial"


def test_write_results_leaves_whole_files_when_a_run_fails_while_writing(tmp_path):
    machine.write_results(tmp_path, "ar", {"rows": [1]}, lambda d: f"# {d['rows']}\n")
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(before) == {"ar.json", "ar.md"} and json.loads(before["ar.json"]) == {"rows": [1]}

    with pytest.raises(TypeError):  # a value JSON cannot hold: the run fails while the .json is written
        machine.write_results(tmp_path, "ar", {"rows": [1, object()]}, lambda d: "never")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # the previous files, whole; no temp file

    def failing_report(data):
        raise KeyError("opt_speedup")

    with pytest.raises(KeyError):  # the report fails: the new measurements are kept, the old report stays whole
        machine.write_results(tmp_path, "ar", {"rows": [2]}, failing_report)
    assert json.loads((tmp_path / "ar.json").read_text()) == {"rows": [2]}
    assert (tmp_path / "ar.md").read_text() == before["ar.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar.json", "ar.md"]


def test_check_same_function_names_what_differs():
    a = torch.linspace(-3, 3, 10)
    assert machine.check_same_function("x", a + 1e-6, a) <= 1e-5
    with pytest.raises(RuntimeError, match=r"classic fp32: expected the same outputs .* got 0\.5"):
        machine.check_same_function("classic fp32", a + 0.5, a)
    with pytest.raises(RuntimeError, match=r"expected .* one shape, got \(10,\) and \(5,\)"):
        machine.check_same_function("y", a, a[:5])
    with pytest.raises(RuntimeError, match="got nan"):
        machine.check_same_function("z", a * float("nan"), a)


def test_classic_benchmark_stops_before_timing_models_with_different_weights(tmp_path, monkeypatch):
    import bench_classic
    import perceiver_pytorch

    from perceiver import Perceiver

    tiny = dict(bench_classic.SNIPPET, depth=1, num_latents=4, latent_dim=8, latent_heads=1, cross_dim_head=4,
                latent_dim_head=4, num_classes=3, num_freq_bands=2)  # fmt: skip
    torch.manual_seed(0)
    peer = perceiver_pytorch.Perceiver(**tiny).eval()
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **tiny).eval()
    with torch.no_grad():
        for p in ours.parameters():  # a conversion regression
            p.add_(0.5 * torch.randn_like(p))
    monkeypatch.setattr(bench_classic, "build_models", lambda: (ours, peer))
    monkeypatch.setattr(bench_classic, "machine_info", lambda peaks=True: {})
    monkeypatch.setattr(bench_classic, "CASES", [("b1-224x224", 1, 8)])
    timed = []
    monkeypatch.setattr(bench_classic, "measure_latency", lambda *a, **k: timed.append(a))
    monkeypatch.setattr(sys, "argv", ["bench_classic.py", "--quick", "--results-dir", str(tmp_path / "trial")])
    with pytest.raises(RuntimeError, match="ours vs perceiver-pytorch: expected the same outputs"):
        bench_classic.main()
    assert timed == [] and not (tmp_path / "trial").exists()


# ----------------------------------------------------------------------------- tables.py


def _classic(date: str, quick: bool = False) -> dict:
    """A minimal classic.json of the current layout."""
    lat = {k: {"median_s": s} for k, s in (("ours", 1.0), ("peer", 2.0))}
    mem = {k: {"peak_increase_mb": 10.0} for k in ("ours", "peer")}
    info = {"cpu": "Some CPU", "cpu_id": "vendor_id X cpu family 1 model 2", "flags": ["avx2"]}
    row = {"case": "b1-224x224", "precision": "fp32", "latency": lat, "memory": mem}
    return {"date": date, "quick": quick, "machine": info | {"load_average_at_start": [1.0]}, "rows": [row]}


def test_tables_refuses_to_blank_the_readme_without_results(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{tables.BEGIN}\n| old table |\n{tables.END}\nrest\n")
    monkeypatch.setattr(tables, "README", readme)
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")  # a new checkout: no results yet
    monkeypatch.setattr(sys, "argv", ["tables.py"])
    with pytest.raises(SystemExit, match="no results to make the table from under .*run a benchmark first"):
        tables.main()
    (tmp_path / "results" / "amd-1-2").mkdir(parents=True)  # a smoke run's only file: left out, so still none
    (tmp_path / "results" / "amd-1-2" / "classic.json").write_text(json.dumps(_classic("2026-12-01", quick=True)))
    with pytest.raises(SystemExit, match="no results to make the table from"):
        tables.main()
    assert "left out" in capsys.readouterr().err and "| old table |" in readme.read_text()


def test_tables_names_a_half_written_or_foreign_results_file(tmp_path):
    folder = tmp_path / "intel-6-1"
    folder.mkdir()
    (folder / "ar.json").write_text('{"machine": {"cpu": "x"}, "rows": [')  # an interrupted write
    with pytest.raises(tables.ResultsError, match=r"intel-6-1/ar.json: expected a complete JSON results file"):
        tables.table(tmp_path)
    (folder / "ar.json").unlink()
    (folder / "classic.json").write_text(json.dumps({"machine": {"cpu": "x"}, "rows": [{"case": "b1-224x224"}]}))
    with pytest.raises(tables.ResultsError, match=r"classic.json: expected the layout classic_rows reads, got no key"):
        tables.table(tmp_path)


def test_tables_reads_one_machine_folder_and_orders_machines_by_their_newest_run(tmp_path):
    old, new = tmp_path / "amd-25-1", tmp_path / "intel-6-143"
    for folder, date in ((old, "2026-11-01 10:00 UTC"), (new, "2026-12-01 10:00 UTC")):
        folder.mkdir()
        (folder / "classic.json").write_text(json.dumps(_classic("2026-01-01 10:00 UTC")))
        # the newest run of a folder may be a file that keeps its date under "run" (lora.json, quant.json)
        (folder / "machine.json").write_text(json.dumps({"machine": {}, "run": {"date": date}}))
    assert tables.machine_folders(tmp_path) == [new, old]
    assert tables.machine_folders(new) == [new]  # a bench script's --results-dir: one machine's folder
    text = tables.table(new)
    assert "Some CPU X family 1 model 2 (no native bf16)" in text and "2.00x" in text


def test_describe_flags_a_ceiling_read_below_a_measured_gemm():
    info = {"cpu": "c", "flags": [], "cores": 2, "threads": 2, "torch": "t", "python": "p",
            "load_average_at_start": [5.0], "matmul_peak_gflops": {"aten fp32": 131.0}, "fma_ceiling_gflops": 56.0}  # fmt: skip
    text = machine.describe(info)
    assert "236%" not in text and "other work shared the cores" in text


@pytest.mark.skipif(shutil.which("git") is None, reason="no git here")
def test_run_record_names_this_checkouts_commit_from_any_working_directory(tmp_path, monkeypatch):
    # before: `git rev-parse` ran in the caller's directory: "unknown" outside the checkout, another repository's
    # commit inside one
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH)
    if head.returncode != 0:
        pytest.skip("benchmarks/ is not in a git checkout here")
    monkeypatch.chdir(tmp_path)
    assert machine.run_record("bench_ar.py")["commit"] == head.stdout.strip()


def test_perceiver_ar_check_compares_the_same_positions_of_both():
    import bench_ar

    tiny = dict(num_tokens=262, dim=64, depth=1, max_seq_len=64, cross_attn_seq_len=48, dim_head=64, heads=2, ff_mult=2)
    assert bench_ar.check_ar(tiny) < 1e-4


def test_perceiver_io_report_names_the_cpu_id_beside_its_model_name():
    # "AMD EPYC" is the model name of both the AVX2-only Zen 3 and the AVX-512 Zen 4 machines of results/
    import bench_perceiver_io

    path = BENCH / "results" / "amd-25-1" / "perceiver_io.json"
    if not path.is_file():
        pytest.skip("no committed results of that machine")
    text = bench_perceiver_io.render(json.loads(path.read_text()))
    assert "AMD EPYC [vendor_id AuthenticAMD cpu family 25 model 1]" in text


def test_flow_benchmark_removes_its_temporary_weights_however_the_run_ends(monkeypatch):
    import bench_flow

    seen = []

    def interrupted(args, tmp):
        (tmp / "weights.safetensors").write_bytes(b"0" * 1024)
        seen.append(tmp)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_flow, "measure", interrupted)
    monkeypatch.setattr(sys, "argv", ["bench_flow.py", "--quick"])
    with pytest.raises(KeyboardInterrupt):
        bench_flow.main()
    assert seen and not seen[0].exists()


def test_arm_and_other_x86_vendors_get_a_folder_per_cpu(monkeypatch):
    # before: every CPU without an Intel / AMD vendor id shared one folder (`aarch64`): Graviton 2 and 3 (Neoverse
    # N1 and V1, different kernels) overwrote each other's results
    idents = [
        {"CPU implementer": "0x41", "CPU part": "0xd0c"},  # Neoverse N1
        {"CPU implementer": "0x41", "CPU part": "0xd40"},  # Neoverse V1
        {"vendor_id": "HygonGenuine", "cpu family": "24", "model": "0"},
    ]
    slugs = []
    for ident in idents:
        monkeypatch.setattr(machine, "cpu_ident", lambda ident=ident: ident)
        slugs.append(machine.machine_slug())
    assert slugs == ["arm-0x41-0xd0c", "arm-0x41-0xd40", "hygongenuine-24-0"]
