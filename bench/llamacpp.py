"""llama.cpp as the CPU peer of the decode table: `llama-bench` built from the llama-cpp-python sdist
(which vendors llama.cpp's source), kept under .cache/llama.cpp (ignored by git; none of its code
is committed), and run on a GGUF file.

    python bench/llamacpp.py build            # fetch the sdist with pip, cmake + make llama-bench
    python bench/llamacpp.py run MODEL.gguf --threads 1 --prompt 24 --new-tokens 64

The prebuilt `llama-cpp-py-sync` wheel cannot load here (its libllama.so needs GLIBC 2.38, these
machines have 2.36), so llama.cpp is built from source: cmake and g++ are on these machines.
Every failure is one line saying why (`LlamaCppUnavailable`), so the decode table prints the row's
reason and the other rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / ".cache" / "llama.cpp"
SDIST = "llama-cpp-python"


class LlamaCppUnavailable(Exception):
    """llama.cpp cannot be built or cannot run here: the reason, one line."""


def _last(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


VARIANTS = ("native", "noamx")  # -march=native, what `cmake -B build` gives a user; the same but AMX


def bench_binary(home: Path = HOME, variant: str = "native") -> Path:
    return home / ("build" if variant == "native" else f"build-{variant}") / "bin" / "llama-bench"


def source_dir(home: Path = HOME) -> Path | None:
    found = sorted(home.glob("llama_cpp_python-*/vendor/llama.cpp/CMakeLists.txt"))
    return found[-1].parent if found else None


def fetch(home: Path = HOME) -> Path:
    """The vendored llama.cpp source of the llama-cpp-python sdist (pip download, no wheel)."""
    src = source_dir(home)
    if src is not None:
        return src
    home.mkdir(parents=True, exist_ok=True)
    sdists = sorted(home.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        r = subprocess.run([sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:",
                            "-d", str(home)], capture_output=True, text=True, timeout=900)
        sdists = sorted(home.glob("llama_cpp_python-*.tar.gz"))
        if r.returncode != 0 or not sdists:
            raise LlamaCppUnavailable(f"pip download {SDIST} --no-binary :all: failed: {_last(r.stderr or r.stdout)}")
    with tarfile.open(sdists[-1]) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp" in m.name]
        tar.extractall(home, members=members, filter="data")
    src = source_dir(home)
    if src is None:
        raise LlamaCppUnavailable(f"{sdists[-1].name} holds no vendor/llama.cpp")
    return src


# llama.cpp's x86 options and the /proc/cpuinfo flag each needs
ISA = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2",
       "GGML_AVX_VNNI": "avx_vnni", "GGML_AVX512": "avx512f", "GGML_AVX512_VBMI": "avx512vbmi",
       "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16"}


def isa_flags(variant: str = "native") -> list[str]:
    """`native`: -march=native, llama.cpp's default build. `noamx`: this CPU's instruction sets
    named one by one, AMX off. These VMs report amx_tile: the native build's AMX matrix product
    decodes (one token) but died with SIGSEGV in ggml_backend_amx_mul_mat on a prompt (a batch of
    tokens), so the prompt's time (TTFT) comes from the no-AMX build where the native one fails."""
    if variant == "native":
        return ["-DGGML_NATIVE=ON"]
    try:
        flags = set(next(x for x in Path("/proc/cpuinfo").read_text().splitlines()
                         if x.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return ["-DGGML_NATIVE=ON"]
    return ["-DGGML_NATIVE=OFF", *(f"-D{k}={'ON' if v in flags else 'OFF'}" for k, v in ISA.items()),
            "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def build(home: Path = HOME, jobs: int | None = None, variant: str = "native") -> Path:
    """llama-bench, built once (about 200 s on 2 cores); its path."""
    exe = bench_binary(home, variant)
    if exe.is_file():
        return exe
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            raise LlamaCppUnavailable(f"{tool} is not installed: llama.cpp builds from source here")
    src = fetch(home)
    out = exe.parent.parent
    configure = ["cmake", "-S", str(src), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_OPENMP=ON",
                 "-DBUILD_SHARED_LIBS=OFF", *isa_flags(variant)]
    steps = (configure, ["cmake", "--build", str(out), "--target", "llama-bench", "-j", str(jobs or os.cpu_count())])
    log_path = home / f"build-{variant}.log"
    with log_path.open("w") as log:
        for cmd in steps:
            r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=3600)
            if r.returncode != 0:
                raise LlamaCppUnavailable(f"{' '.join(cmd[:3])} failed (exit {r.returncode}): "
                                          f"{_last(log_path.read_text(errors='replace'))}; log: {log_path}")
    if not exe.is_file():
        raise LlamaCppUnavailable(f"the build ended without {exe}")
    return exe


def _bench(exe: Path, model: Path, threads: int, prompt: int, new_tokens: int, repeats: int) -> list[dict]:
    cmd = [str(exe), "-m", str(model), "-t", str(threads), "-p", str(prompt), "-n", str(new_tokens),
           "-r", str(repeats), "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        why = _last(r.stderr or r.stdout) if (r.stderr or r.stdout).strip() else f"exit {r.returncode}"
        if r.returncode < 0:
            why = f"killed by signal {-r.returncode}"
        raise LlamaCppUnavailable(f"llama-bench ({exe.parent.parent.name}) cannot run {Path(model).name}: {why}")
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise LlamaCppUnavailable(f"llama-bench printed no JSON: {_last(r.stdout)}") from None


def run(model: Path, threads: int, prompt: int, new_tokens: int, repeats: int, home: Path = HOME,
        variant: str = "native") -> dict:
    """llama-bench on `model`: decode tokens/s (tg, the `variant` build), prompt tokens/s (pp) and the
    time to first token (the prompt's processing plus one decoded token), `threads` threads."""
    native, noamx = bench_binary(home, variant), bench_binary(home, "noamx")
    if not native.is_file():
        raise LlamaCppUnavailable(f"{native} is not built (python bench/llamacpp.py build)")
    if not Path(model).is_file():
        raise LlamaCppUnavailable(f"{model}: GGUF file not found")
    note = ""
    tg = next(x for x in _bench(native, model, threads, 0, new_tokens, repeats) if x.get("n_gen"))
    try:
        pp = next(x for x in _bench(native, model, threads, prompt, 0, repeats) if x.get("n_prompt"))
    except LlamaCppUnavailable as e:
        if not noamx.is_file():
            raise LlamaCppUnavailable(f"{e}; and no no-AMX build for the prompt (bench/llamacpp.py build)") from None
        pp = next(x for x in _bench(noamx, model, threads, prompt, 0, repeats) if x.get("n_prompt"))
        note = f"prompt time from the no-AMX build ({e})"
    tokens_per_s, prompt_per_s = float(tg["avg_ts"]), float(pp["avg_ts"])
    return {"tokens_per_s": tokens_per_s, "prompt_tokens_per_s": prompt_per_s,
            "ttft_s": prompt / prompt_per_s + 1 / tokens_per_s, "samples_tokens_per_s": tg.get("samples_ts"),
            "threads": threads, "build": tg.get("build_commit"), "cpu": tg.get("cpu_info"),
            "model_type": tg.get("model_type"), "note": note}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build")
    r = sub.add_parser("run")
    r.add_argument("model", type=Path)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--prompt", type=int, default=24)
    r.add_argument("--new-tokens", type=int, default=64)
    r.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    try:
        if a.cmd == "build":
            for variant in VARIANTS:
                print(build(variant=variant))
        else:
            print(json.dumps(run(a.model, a.threads, a.prompt, a.new_tokens, a.repeats)))
    except LlamaCppUnavailable as e:
        sys.exit(f"llama.cpp: {e}")


if __name__ == "__main__":
    main()
