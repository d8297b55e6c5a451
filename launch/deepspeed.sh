#!/usr/bin/env bash
# The `deepspeed` launcher with a hostfile, for users who prefer it. Every rank runs
# `nluft train CONFIG ...`; the strategy comes from the config (deepspeed, ddp, fsdp).
#
# Usage: launch/deepspeed.sh HOSTFILE CONFIG [key=value ...] [--resume]
#   HOSTFILE has one line per host, "HOST slots=RANKS", e.g.
#       node0 slots=8
#       node1 slots=8
#   one host:                        launch/deepspeed.sh hostfile CONFIG strategy.name=deepspeed
#   several hosts, pdsh + ssh:       the same command on node 0 (passwordless ssh to the others)
#   several hosts, no ssh:           NODE_RANK=R MASTER_ADDR=node0 MASTER_PORT=29600 \
#                                        launch/deepspeed.sh hostfile CONFIG ...   (on every node)
# Optional: MASTER_PORT (default: a free port on one host; set it for several hosts).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,14p' "$0" >&2; exit 2; fi
hostfile=$1
shift
if [ ! -f "$hostfile" ]; then echo "launch/deepspeed.sh: no hostfile $hostfile" >&2; exit 2; fi
# The launcher's default port is 29500; on one host pick a free one so jobs never collide.
port=${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
extra=()
if [ -n "${NODE_RANK:-}" ]; then
    extra=(--no_ssh --node_rank "$NODE_RANK" --master_addr "${MASTER_ADDR:?set MASTER_ADDR to node 0}")
fi
# --no_local_rank: nluft reads LOCAL_RANK from the environment, not from a --local_rank flag.
exec deepspeed --hostfile "$hostfile" --master_port "$port" "${extra[@]}" \
    --no_local_rank --module nluft train "$@"
