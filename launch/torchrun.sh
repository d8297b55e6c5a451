#!/usr/bin/env bash
# Plain torchrun, spelled out: what `nluft launch` runs, for users who prefer torchrun itself.
#
# Usage: launch/torchrun.sh NPROC_PER_NODE CONFIG [key=value ...] [--resume]
#   one node:      launch/torchrun.sh 2 configs/sentiment.yaml strategy.name=ddp
#   node R of N:   NNODES=N NODE_RANK=R RDZV_ENDPOINT=node0:29400 \
#                      launch/torchrun.sh 8 configs/my.yaml strategy.name=ddp   (on every node)
#   restarts:      MAX_RESTARTS=2 launch/torchrun.sh 2 CONFIG ... --resume
# Optional: RDZV_ID (the same on every node; default nluft).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,10p' "$0" >&2; exit 2; fi
nproc=$1
shift
nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
if [ "$nnodes" -gt 1 ] && [ -z "${RDZV_ENDPOINT:-}" ]; then
    echo "launch/torchrun.sh: set RDZV_ENDPOINT=HOST:PORT of node 0 for NNODES=$nnodes" >&2
    exit 2
fi
# One node: port 0 makes the OS pick a free port, so two jobs never collide on 29500.
endpoint=${RDZV_ENDPOINT:-127.0.0.1:0}
# Node 0 hosts the rendezvous store (hostname matching is ambiguous when agents share a host).
is_host=0
if [ "$node_rank" -eq 0 ]; then is_host=1; fi
# Workers get their own store: elastic restarts are reliable (see PLATFORM_NOTES).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec torchrun --nnodes "$nnodes" --nproc-per-node "$nproc" \
    --rdzv-backend c10d --rdzv-endpoint "$endpoint" --rdzv-id "${RDZV_ID:-nluft}" \
    --rdzv-conf "is_host=$is_host" --max-restarts "${MAX_RESTARTS:-0}" \
    --module nluft train "$@"
