#!/bin/sh
# llama-cpp-python compiled for one bench CPU profile, for `python -m bench.run --cpu <profile>`: llama.cpp has one
# CPU backend compiled for the machine it is built on and no run-time switch, so a profile needs its own build.
#
#   nice -n 19 bench/llama_build.sh avx2|avx512     # ~15 min on 2 cores; into $EDGEGEMMA_HOME/llama-cpp/<profile>
#
# The build is a `pip install --target` folder, put first on PYTHONPATH for the llama.cpp rows only (the installed
# package stays as it is). bench/run.py checks what any build was compiled with (llama_print_system_info) and uses
# it only if that is within the profile.
set -eu
profile=${1:-}
common="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
 -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
case $profile in
    avx2) isa="$common -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF" ;;
    avx512) isa="$common -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" ;;
    *) echo "usage: bench/llama_build.sh avx2|avx512" >&2; exit 2 ;;
esac
dest="${EDGEGEMMA_HOME:-$HOME/.cache/edgegemma}/llama-cpp/$profile"
# The installed version, so that the profile's rows differ from the native ones by the instructions alone.
version=$(python -c "from importlib.metadata import version; print(version('llama_cpp_python'))" 2>/dev/null || echo 0.3.36)
rm -rf "$dest.partial"
mkdir -p "$(dirname "$dest")"
CMAKE_ARGS=$(echo $isa) CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    pip install --no-deps --no-binary llama-cpp-python --no-cache-dir --target "$dest.partial" "llama-cpp-python==$version"
rm -rf "$dest"
mv "$dest.partial" "$dest"
python - "$dest" <<'PY'
import subprocess, sys
code = "import llama_cpp; llama_cpp.llama_backend_init(); print(llama_cpp.llama_print_system_info().decode())"
print(subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": sys.argv[1]}, capture_output=True, text=True).stdout)
PY
