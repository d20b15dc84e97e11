#!/usr/bin/env bash
# The wheels the GPU machines' image lacks (gymnasium and MuJoCo, with what they need beyond the image's packages), for
# its Python 3.12 on x86-64, downloaded here into .whl/ (ignored by git). The device call carries them (carry: [".whl"])
# and benchmarks/gpu_session.sh installs them there when its Python cannot import gymnasium and mujoco.
#   Usage: bash benchmarks/gpu_wheels.sh      (seconds; about 14 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" && { grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"; }
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# the versions of this machine's venv, so that both sides run the same physics; mujoco-studio (a viewer) is not needed
"${PYTHON:-.venv/bin/python}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.1 mujoco-core==4.0.1 glfw pyopengl
ls .whl
