#!/usr/bin/env bash
# The towers benchmark on a GPU machine (the device tool), ONNX Runtime's CUDA provider included.
#
#   bash bench/gpu_towers.sh prepare       # here: fills .whl/ (ignored, < 64 MiB, carried)
#   device run, carry [".whl", "artifacts/model"]:  bash bench/gpu_towers.sh run
#   .venv/bin/python bench/towers.py --merge-gpu bench/results/towers_gpu.json
#
# Why the preparation: the GPU machine has onnxruntime (CPU only), CUDA 13 libraries (the nvidia-*
# cu13 wheels under torch) and no network; onnxruntime-gpu 1.30.0 is a CUDA 13 build, but its wheel
# is 247 MB and a call carries 64 MiB. 210 MB of it is the GPU code of libonnxruntime_providers_cuda
# for sm_75/80/86/89/90/120; `prepare` zeroes the payload of every fatbin entry but sm_90 (Hopper:
# H100, H200; headers and offsets kept, so the library loads as built), drops what the Python API
# does not load (libonnxruntime.so, the TensorRT provider: no libnvinfer there) and packs the rest
# with xz (x86 BCJ filter: 1.4 MB less). It also brings pydantic (conf/ needs it; the image lacks
# it) and the user-tower weights of the training checkpoint that produced artifacts/model (for the
# PyTorch reference).
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=${ORT_VERSION:-1.30.0}   # the image's onnxruntime version; its -gpu wheel is CUDA 13
KEEP_ARCH=${KEEP_ARCH:-90}           # SM of the lent GPUs (H100, H200)
WHL=.whl

prepare() {
    grep -qx "/$WHL/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$WHL/" >> .git/info/exclude; }
    mkdir -p "$WHL"
    local dl=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
              --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64)
    local work=/tmp/gpu_towers_ort
    mkdir -p "$work"
    "${dl[@]}" -q -d "$work" "onnxruntime-gpu==$ORT_VERSION"
    rm -rf "$work/pkg" && mkdir "$work/pkg"
    (cd "$work/pkg" && python3 -m zipfile -e "$work"/onnxruntime_gpu-"$ORT_VERSION"-*.whl .)
    local capi="$work/pkg/onnxruntime/capi"
    rm -f "$capi"/libonnxruntime.so.* "$capi"/libonnxruntime_providers_tensorrt.so
    rm -rf "$work/pkg/onnxruntime/transformers" "$work/pkg/onnxruntime/quantization"
    python3 - "$capi/libonnxruntime_providers_cuda.so" "$KEEP_ARCH" <<'EOF'
import struct, sys
path, keep = sys.argv[1], int(sys.argv[2])
data = bytearray(open(path, "rb").read())
shoff, = struct.unpack_from("<Q", data, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
secs = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
strtab = secs[shstrndx][4]
name = lambda o: data[strtab + o:data.index(b"\0", strtab + o)].decode()
(_, _, _, _, off, size), = [s for s in secs if name(s[0]) == ".nv_fatbin"]
end, kept, zeroed = off + size, 0, 0
while off < end:
    magic, _, hsz, fsz = struct.unpack_from("<IHHQ", data, off)
    if magic != 0xBA55ED50:           # padding between fatbins
        off += 8
        continue
    e, e_end = off + hsz, off + hsz + fsz
    while e < e_end:                  # entry: kind u16, ver u16, header size u32, payload size u64, .., arch u32 @28
        _, _, ehs, psz = struct.unpack_from("<HHIQ", data, e)
        arch, = struct.unpack_from("<I", data, e + 28)
        if arch == keep:
            kept += psz
        else:
            data[e + ehs:e + ehs + psz] = bytes(psz)
            zeroed += psz
        e += ehs + psz
    off = e_end
if not kept:
    sys.exit(f"no sm_{keep} code in {path}")
open(path, "wb").write(data)
print(f"fatbin: kept {kept / 1e6:.1f} MB of sm_{keep}, zeroed {zeroed / 1e6:.1f} MB of other SMs")
EOF
    (cd "$work/pkg" && tar -cf - onnxruntime onnxruntime_gpu-*.dist-info) \
        | xz --x86 --lzma2=preset=9e,dict=256MiB -T1 > "$WHL/ort_gpu_sm$KEEP_ARCH.tar.xz"
    # pydantic and friends at the versions of this venv
    local pins
    pins=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(pydantic|pydantic[-_]core|pydantic[-_]settings|annotated[-_]types|typing[-_]inspection|python[-_]dotenv|typing[-_]extensions)==')
    # shellcheck disable=SC2086
    "${dl[@]}" -q -d "$WHL" $pins
    # the user tower's weights from the checkpoint whose model_version is the artifact's
    .venv/bin/python - "$WHL/user_tower_ckpt.pt" <<'EOF'
import json, sys
from pathlib import Path
import torch
from conf import load_settings
from models.export import model_version
from models.train import load_checkpoint
cfg = load_settings().model
want = json.loads((cfg.artifact_dir / "metadata.json").read_text())["model_version"]
for ck in sorted(cfg.checkpoint_dir.glob("*.pt")):
    t = load_checkpoint(ck)
    if model_version(t) == want:
        sd = {k: v for k, v in t.model.state_dict().items() if k.startswith("user.")}
        torch.save({"model_config": t.model.config, "state_dict": sd, "source": ck.name,
                    "model_version": want}, sys.argv[1])
        print(f"user tower of {ck.name} ({want}) -> {sys.argv[1]}")
        break
else:
    print(f"no checkpoint in {cfg.checkpoint_dir} has {want}: the reference will be untrained")
EOF
    du -cb "$WHL"/* artifacts/model | tail -1 | awk '{printf "carried: %.1f MiB (limit 64 with the tree)\n", $1/1048576}'
}

run() {   # on the GPU machine
    export PYTHONUNBUFFERED=1
    local out=${OUT:-/tmp/gpu_towers_out}
    mkdir -p "$out"
    {
        echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        python3 --version; python3 -c "import onnxruntime as o; print('image onnxruntime', o.__version__, o.get_available_providers())"
        echo "== stream stack"; java -version 2>&1 || echo "java: not found"
        for b in java redis-server tansu flink; do printf '%s: %s\n' "$b" "$(command -v $b || echo missing)"; done
        python3 -c "import pyflink" 2>&1 | tail -1 || true
    } 2>&1 | tee "$out/env.txt"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHL"/*.whl
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall('/tmp/site')" "$WHL"/ort_gpu_sm*.tar.xz
    export PYTHONPATH=/tmp/site
    LD_LIBRARY_PATH=$(python3 -c 'import glob, os, site; print(":".join(sorted({os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/lib*.so*", recursive=True)})))'):${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
    local ck=untrained
    [[ -f $WHL/user_tower_ckpt.pt ]] && ck=$WHL/user_tower_ckpt.pt
    set -o pipefail
    timeout 420 python3 bench/towers.py --artifact artifacts/model --out "$out/towers_gpu.json" \
        --torch-cuda "$ck" 2>&1 | tee "$out/run.log"
    python3 - "$out/towers_gpu.json" "$out/env.txt" "$ck" <<'EOF'
import json, sys
res, env = json.load(open(sys.argv[1])), open(sys.argv[2]).read()
if sys.argv[3] != "untrained" and "weights" in res["torch_cuda"]:
    import torch
    ck = torch.load(sys.argv[3], map_location="cpu", weights_only=True)
    res["torch_cuda"]["weights"] += f" (user tower of {ck['source']}, {ck['model_version']})"
res["machine"]["env"] = env
json.dump(res, open(sys.argv[1], "w"), indent=2)
EOF
}

case ${1:-} in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
