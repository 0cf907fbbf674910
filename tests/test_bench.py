"""bench/ runs end to end and writes the JSON it promises. No timing is asserted: only that the harness works."""
from __future__ import annotations

import json
import os

import pytest

from bench import profiles, run, workloads
from bench.systems import LLAMA_QUANTIZED

FIGURES = ("tokens_per_s", "texts_per_s", "seconds")


def run_quick(folder, out, *extra):
    return run.main(["--quick", "--models", str(folder), "--systems", "edgegemma:q4_0:numpy", "--limit", "3",
                     "--synthetic", "2", "--latency-calls", "2", "--no-cold-cache", "--out", str(out), "-q", *extra])


def check_report(out, dim_matches_reference: bool):
    report = json.loads(out.read_text())
    assert set(report) >= {"meta", "workloads", "systems", "acceptance", "table"}
    assert report["meta"]["quick"] and report["meta"]["threads"] == 2
    assert report["workloads"]["reference"]["texts"] == 3 and report["workloads"]["synthetic"]["texts"] == 2
    assert report["workloads"]["reference"]["tokens"] > 3 and report["workloads"]["query"]["tokens"] > 2
    row = report["systems"]["edgegemma:q4_0:numpy"]
    assert "error" not in row, row.get("error")
    assert row["file_mib"] > 0 and row["backend"] == "numpy"
    best = row["best"]
    for name in ("reference", "synthetic"):
        assert all(best[name][f] > 0 for f in FIGURES)
    assert best["latency_ms"] > 0 and best["cold_start_s"] > 0 and best["peak_rss_mib"] > 0
    if os.path.exists("/proc/self/status"):  # private memory: part of the resident set
        assert 0 < best["anon_end_mib"] < best["peak_rss_mib"]
    assert len(row["runs"]) == 1 and len(row["runs"][0]["latency_all_s"]) == 2
    assert ("cos_reference" in row) == dim_matches_reference
    assert "edgegemma:q4_0:numpy" in report["table"]
    return report


def test_synthetic_workload_is_deterministic():
    a, b = workloads.synthetic_texts(3), workloads.synthetic_texts(3)
    assert a == b and len(set(a)) == 3
    assert len(a[0].split()) == workloads.SYNTHETIC_WORDS


def test_select_patterns():
    systems = run.all_systems()
    ids = lambda pats: [s.id for s in run.select(systems, pats)]
    assert ids(["edgegemma:q4_0"]) == ["edgegemma:q4_0:numba", "edgegemma:q4_0:numpy"]
    assert ids(["st"]) == ["st:fp32:bs1", "st:fp32:bs32", "st:bf16:bs1", "st:bf16:bs32"]
    assert ids(["*:numpy"]) == [f"edgegemma:{t}:numpy" for t in run.TYPES if t not in LLAMA_QUANTIZED]  # K-quants: numba only
    with pytest.raises(SystemExit):
        run.select(systems, ["nothing"])


def test_quick_run_on_tiny_model(tiny_gguf, tmp_path, capsys, monkeypatch):
    """The whole harness on the toy model: child process, workloads, figures, JSON, table. The native profile
    clears CPU switches left in the shell."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # (not a Numba one: Numba reads its own at import)
    folder = tmp_path / "models"
    folder.mkdir()
    os.symlink(tiny_gguf("q4_0"), folder / "q4_0.gguf")
    run_quick(folder, tmp_path / "run.json")
    report = check_report(tmp_path / "run.json", dim_matches_reference=False)
    assert report["meta"]["cpu_profile"]["name"] == "native"
    assert report["systems"]["edgegemma:q4_0:numpy"]["runs"][0]["cpu_switches"] == {}
    assert "| edgegemma:q4_0:numpy |" in capsys.readouterr().out


def test_quick_run_on_real_model(real_gguf, reference_dir, tmp_path):
    """The real q4_0 file: also the cosine to sentence-transformers' reference embeddings."""
    folder = tmp_path / "models"
    folder.mkdir()
    os.symlink(real_gguf("q4_0"), folder / "q4_0.gguf")
    run_quick(folder, tmp_path / "run.json")
    report = check_report(tmp_path / "run.json", dim_matches_reference=True)
    assert report["systems"]["edgegemma:q4_0:numpy"]["cos_reference"]["mean"] > 0.9


def test_cpu_profiles_against_this_host():
    """A profile runs only where the CPU has every feature it allows; a refusal names features the CPU lacks."""
    host = profiles.host_features()
    for profile in profiles.PROFILES.values():
        why = profiles.refusal(profile, host)
        lacking = [f for f in profile.features if f in host and not host[f]]
        x86 = "avx2" in host  # LLVM lists x86 features only for an x86 CPU
        assert (why is not None) == (not profile.native and (not x86 or bool(lacking)))
        if why:
            assert all(f in why for f in lacking)
            with pytest.raises(SystemExit, match=profile.name):
                run.main(["--cpu", profile.name, "--quick"])


def test_numba_target_of_a_profile_takes_nothing_from_the_host():
    host = profiles.host_features()
    flags = profiles.numba_features(profiles.PROFILES["avx2"], host).split(",")
    on = {f[1:] for f in flags if f.startswith("+")}
    assert {"avx2", "fma", "f16c"} <= on and not any(f.startswith("avx512") or f.startswith("amx") for f in on)
    assert {f[1:] for f in flags if f[:1] in "+-"} == set(host)  # every feature LLVM knows, each decided


def test_quick_run_under_avx2_profile(tiny_gguf, tmp_path):
    """--cpu avx2: the worker ran under the profile's switches, and the table says which profile it is."""
    if profiles.refusal(profiles.PROFILES["avx2"]):
        pytest.skip(profiles.refusal(profiles.PROFILES["avx2"]))
    folder = tmp_path / "models"
    folder.mkdir()
    os.symlink(tiny_gguf("q4_0"), folder / "q4_0.gguf")
    run_quick(folder, tmp_path / "run.json", "--cpu", "avx2")
    report = check_report(tmp_path / "run.json", dim_matches_reference=False)
    assert report["meta"]["cpu_profile"]["name"] == "avx2"
    assert report["table"].startswith("CPU profile: avx2")
    switches = report["systems"]["edgegemma:q4_0:numpy"]["runs"][0]["cpu_switches"]
    assert switches["NUMBA_CPU_NAME"] == "haswell" and "-avx512f" in switches["NUMBA_CPU_FEATURES"].split(",")
    assert switches["OPENBLAS_CORETYPE"] == "Haswell"
