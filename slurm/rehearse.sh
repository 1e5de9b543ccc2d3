#!/usr/bin/env bash
# The "On a cluster" steps of README.md, run as written on the single-node SLURM dev cluster,
# from a fresh clone, so the used-by path is proved end to end and timed:
#
#   clone -> install (or reuse $PYTHON's venv) -> apptainer build + test -> data download ->
#   prefetch -> site profile -> launch --dry-run -> launch -> status until the reduce is done ->
#   outputs checked (every SLURM stage ran through `apptainer exec`) -> MLflow UI started, its runs
#   read back over HTTP (REST runs/search) -> predict
#
# Only what makes it small or local differs from the README:
#   - the download comes from a loopback "Dataverse" (slurm/devcluster/dataverse.py) serving
#     zips of a few hundred real images from $SKINHPC_SHARED/data/ham10000 (SKINHPC_DOWNLOAD_URL);
#   - `apptainer` is the stand-in slurm/devcluster/standin/apptainer (checks binds, runs on the host);
#   - the site profile is the dev cluster's (configs/cluster/slurm-devcluster.yaml);
#   - launch overrides: one seed, resnet10t without pretrained weights, 200 images at 48 px,
#     one epoch, CPU members (SMALL below).
#
# Usage:  PYTHON=/path/.venv/bin/python bash slurm/rehearse.sh
#   PYTHON           reuse this venv (skips `pip install -e .`; the clone still comes first on
#                    PYTHONPATH so its code is what runs)
#   SKINHPC_SHARED   folder holding data/ham10000 (default: ../shared beside this checkout)
#   REHEARSE_REF     what to clone (default HEAD: commit first, the work tree is not cloned)
#   REHEARSE_DIR     work folder (default a new mktemp -d; removed on success unless REHEARSE_KEEP=1)
#   REHEARSE_TIMEOUT seconds to wait for the SLURM job (default 1800)
# Needs: the dev cluster up (`sinfo -h` answers; slurm/devcluster/up.sh starts it).
# Exits non-zero as soon as a step fails, printing that step's log tail and the work folder.
set -euo pipefail

SRC=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
SHARED=$(cd "${SKINHPC_SHARED:-$SRC/../shared}" && pwd)
REF=${REHEARSE_REF:-HEAD}
WORK=${REHEARSE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/skinhpc-rehearse.XXXXXX")}
TIMEOUT=${REHEARSE_TIMEOUT:-1800}
CLONE=$WORK/skinhpc
LOGS=$WORK/logs
mkdir -p "$LOGS"
JOB=ensemble-convnext-base
SMALL=(
  "seeds=[1]" reduce.min_members=1 reduce.bootstrap=100 reduce.gradcam=1
  data.subset=200 preprocess.size=48 preprocess.workers=1 preprocess.shards=1
  model.name=resnet10t model.pretrained=none
  "train.phases=[{name: all, epochs: 1, train: all, lr: 3.0e-3}]" train.num_workers=0
  cluster.gpus_per_member=0
)

SERVER_PID="" MLFLOW_PID="" LAUNCHED="" FINISHED="" T0=$SECONDS
declare -a TIMES=()

cleanup() {
  local rc=$?
  [[ -n $MLFLOW_PID ]] && kill -- "-$MLFLOW_PID" 2>/dev/null || true
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
  if [[ -n $LAUNCHED && -z $FINISHED ]]; then
    (cd "$CLONE" && skinhpc cancel "results/$JOB") >>"$LOGS/cancel.log" 2>&1 || true
  fi
  echo
  echo "step timings (s):"
  for t in "${TIMES[@]}"; do echo "  $t"; done
  echo "  total $((SECONDS - T0))"
  { printf '%s\n' "${TIMES[@]}"; echo "total $((SECONDS - T0))"; } >"$LOGS/timings.txt" 2>/dev/null || true
  if ((rc == 0)); then
    echo "REHEARSAL PASSED"
    [[ ${REHEARSE_KEEP:-0} == 1 || -n ${REHEARSE_DIR:-} ]] || rm -rf "$WORK"
  else
    echo "REHEARSAL FAILED (rc $rc); everything is kept in $WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT

# step NAME COMMAND...: run one step in the clone, its output in logs/NAME.log, timed.
step() {
  local name=$1 t=$SECONDS
  shift
  printf '%-18s ' "$name"
  if (cd "${CLONE_READY:-$WORK}" && "$@") >"$LOGS/$name.log" 2>&1; then
    TIMES+=("$(printf '%-18s %5d' "$name" $((SECONDS - t)))")
    printf 'ok    %4ds\n' $((SECONDS - t))
  else
    local rc=$?
    TIMES+=("$(printf '%-18s %5d FAILED' "$name" $((SECONDS - t)))")
    printf 'FAILED (rc %d) after %ds; last lines of %s:\n' "$rc" $((SECONDS - t)) "$LOGS/$name.log"
    tail -n 40 "$LOGS/$name.log" | sed 's/^/    /'
    return "$rc"
  fi
}

sinfo -h >/dev/null 2>&1 || { echo "no SLURM here (sinfo -h fails): start slurm/devcluster/up.sh" >&2; exit 2; }
echo "rehearsal in $WORK (clone of $SRC at $REF)"

# 1. clone
clone() { git clone -q "$SRC" "$CLONE" && git -C "$CLONE" checkout -q "$REF" && git -C "$CLONE" log -1 --oneline; }
step clone clone
CLONE_READY=$CLONE

# 2. install (README: python -m venv .venv && .venv/bin/pip install -e . && source .venv/bin/activate)
if [[ -n ${PYTHON:-} ]]; then
  export PYTHONPATH=$CLONE${PYTHONPATH:+:$PYTHONPATH}   # the clone's code, the reused venv's packages
  echo "install            skipped: reusing PYTHON=$PYTHON"
else
  install() { python3 -m venv .venv && .venv/bin/pip install -q -e .; }
  step install install
  PYTHON=$CLONE/.venv/bin/python
fi
export PATH=$CLONE/slurm/devcluster/standin:$(dirname "$PYTHON"):$PATH   # stand-in apptainer; venv activated
export APPTAINER_STANDIN_PYTHON=$PYTHON APPTAINER_STANDIN_LOG=$WORK/apptainer.log

# 3. the container (README: apptainer build skinhpc.sif apptainer.def; apptainer test skinhpc.sif)
step apptainer-build apptainer build skinhpc.sif apptainer.def
step apptainer-test apptainer test skinhpc.sif

# 4. data: the README's command; SKINHPC_DOWNLOAD_URL points it at the loopback Dataverse
"$PYTHON" "$CLONE/slurm/devcluster/dataverse.py" --from "$SHARED/data/ham10000" --images 300 \
  --url-file "$WORK/dataverse.url" >"$LOGS/dataverse.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [[ -s $WORK/dataverse.url ]] && break; sleep 0.2; done
[[ -s $WORK/dataverse.url ]] || { echo "dataverse stand-in did not start:"; cat "$LOGS/dataverse.log"; exit 1; }
export SKINHPC_DOWNLOAD_URL=$(cat "$WORK/dataverse.url")
step download skinhpc data download ham10000 --to data/ham10000

DATA=("data.sources=[{kind: ham10000, root: $CLONE/data/ham10000}]")
CONTAINER=("cluster.container=$CLONE/skinhpc.sif")

# 5. timm weights on the login node (nothing to fetch with pretrained=none; the step still runs)
step prefetch skinhpc prefetch jobs/ensemble.yaml "${DATA[@]}" "${SMALL[@]}"

# 6. the site profile: README edits slurm-example-site.yaml for the site; this site is the dev cluster
step site-profile cp configs/cluster/slurm-devcluster.yaml configs/cluster/slurm-example-site.yaml

# 7. launch (plan first), then skinhpc status until the reduce is done
step launch-dry-run python -m skinhpc.launch jobs/ensemble.yaml "${DATA[@]}" "${CONTAINER[@]}" "${SMALL[@]}" --dry-run
step launch python -m skinhpc.launch jobs/ensemble.yaml "${DATA[@]}" "${CONTAINER[@]}" "${SMALL[@]}"
LAUNCHED=1
wait_done() {
  local deadline=$((SECONDS + TIMEOUT)) out rc
  while ((SECONDS < deadline)); do
    rc=0
    out=$(skinhpc status "results/$JOB" 2>&1) || rc=$?
    printf '%s  +%ds\n%s\n' "$(date -u +%T)" $((SECONDS - T0)) "$out"
    # skinhpc status: 0 all done, 4 still in progress, anything else failed/cancelled/unknown
    ((rc == 0)) && grep -Eq '^reduce +done' <<<"$out" && return 0
    if ((rc != 4)) || grep -Eq '^[^ ]+ +(failed|unknown|cancelled|timeout) ' <<<"$out"; then
      echo "a stage failed (status exit $rc)"; return 1
    fi
    sleep 10
  done
  echo "not done after ${TIMEOUT}s"; return 1
}
step slurm-run wait_done
FINISHED=1
check_outputs() {
  local d=results/$JOB
  for f in job.yaml manifest.csv splits.csv members/000/done.json ensemble/metrics.json ensemble/report.html; do
    [[ -s $d/$f ]] || { echo "missing $d/$f"; return 1; }
  done
  ls "$d/ensemble/onnx" || return 1
  # every stage ran through the container (the stand-in logs each call; a bad bind fails the job)
  "$PYTHON" - "$APPTAINER_STANDIN_LOG" <<'EOF'
import json, sys
jobs = {r["slurm_job"] for r in map(json.loads, open(sys.argv[1])) if r["argv"][0] == "exec"}
print("apptainer exec in SLURM jobs:", sorted(j for j in jobs if j))
sys.exit(0 if len([j for j in jobs if j]) >= 3 else "fewer than 3 SLURM jobs (prepare, member, reduce) ran in the container")
EOF
}
step outputs check_outputs

# 8. MLflow UI (README: mlflow ui --backend-store-uri sqlite:///results/mlflow.db, then ssh -L)
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$CLONE" && exec setsid mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port "$PORT" --workers 1) \
  >"$LOGS/mlflow-server.log" 2>&1 &
MLFLOW_PID=$!
read_runs() {
  "$PYTHON" - "http://127.0.0.1:$PORT" "$JOB" <<'EOF'
import json, sys, time, urllib.request

base, job = sys.argv[1], sys.argv[2]

def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)

deadline = time.time() + 180
while True:
    try:
        urllib.request.urlopen(base + "/health", timeout=5).read()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("mlflow ui did not answer /health within 180 s")
        time.sleep(1)
exps = post("/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
runs = post("/api/2.0/mlflow/runs/search", {"experiment_ids": [e["experiment_id"] for e in exps],
                                            "max_results": 100}).get("runs", [])
print(f"{len(exps)} experiment(s), {len(runs)} run(s) over HTTP from {base}")
ours = [r for r in runs if job in json.dumps(r["data"].get("tags", [])) + r["info"].get("run_name", "")]
for r in ours:
    metrics = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
    print(r["info"]["run_name"], r["info"]["status"], len(metrics), "metrics",
          {k: round(v, 4) for k, v in sorted(metrics.items())[:6]})
if not ours or not any(r["data"].get("metrics") for r in ours):
    sys.exit(f"no run of job {job} with metrics in the MLflow UI's REST API")
EOF
}
step mlflow-ui read_runs

# 9. predict new images (three downloaded ones stand in for new photographs)
predict() {
  mapfile -t imgs < <(ls data/ham10000/HAM10000_images_part_2/*.jpg | head -n 3)
  skinhpc predict --model "results/$JOB" --out predictions.csv --device cpu "${imgs[@]}" || return 1
  cat predictions.csv || return 1
  (($(wc -l <predictions.csv) == 4)) || { echo "expected 3 predictions"; return 1; }
}
step predict predict
