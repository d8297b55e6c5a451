#!/usr/bin/env bash
# The `deepspeed` launcher with a hostfile, for users who prefer it. Every rank runs
# `nluft train CONFIG ...`; the strategy comes from the config (deepspeed, ddp, fsdp).
#
# Usage: launch/deepspeed.sh HOSTFILE CONFIG [key=value ...] [--resume]
#   HOSTFILE has one line per host, "HOST slots=RANKS", e.g.
#       node0 slots=8
#       node1 slots=8
#   one host:                        launch/deepspeed.sh hostfile CONFIG strategy.name=deepspeed
#   several hosts, no ssh:           NODE_RANK=R MASTER_ADDR=node0 MASTER_PORT=29600 \
#                                        launch/deepspeed.sh hostfile CONFIG ...   (on every node)
#   several hosts, pdsh + ssh:       USE_SSH=1 MASTER_PORT=29600 launch/deepspeed.sh ... on node 0
#                                        (passwordless ssh from node 0 to every host)
# Optional: MASTER_PORT (default: a free port on one host; set it for several hosts).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,15p' "$0" >&2; exit 2; fi
hostfile=$1
shift
if [ ! -f "$hostfile" ]; then echo "launch/deepspeed.sh: no hostfile $hostfile" >&2; exit 2; fi
# The launcher's default port is 29500; on one host pick a free one so jobs never collide.
port=${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
# Without USE_SSH this launcher starts only this node's ranks (the deepspeed launcher would
# otherwise ssh even to a lone host named in a hostfile).
extra=(--no_ssh --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}")
if [ -n "${USE_SSH:-}" ]; then extra=(); fi
# --no_local_rank: nluft reads LOCAL_RANK from the environment, not from a --local_rank flag.
exec deepspeed --hostfile "$hostfile" --master_port "$port" "${extra[@]}" \
    --no_local_rank --module nluft train "$@"
