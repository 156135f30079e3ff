#!/usr/bin/env bash
# `make dev-agent`: an agent with a generated dev config under ./.dev/ (self-signed
# certificate, random secret, the local sandbox image), in the foreground. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-local-agent.sh

DIR=$(pwd)/.dev
PORT=${DEV_PORT:-8443}
make_local_agent "$DIR" "$PORT" dev-controller dev-agent
write_controller_config "$DIR" dev-controller dev "https://127.0.0.1:$PORT"
cat <<INFO
quickcmd dev agent
  URL:             https://127.0.0.1:$PORT
  controller id:   dev-controller
  secret file:     $DIR/hmac.secret
  certificate:     $DIR/tls/agent-cert.pem
  agent config:    $DIR/agent-config.yaml
  controller cfg:  $DIR/xdg-config/quickcmd/controller.yaml
Try, in another shell:
  XDG_CONFIG_HOME=$DIR/xdg-config XDG_DATA_HOME=$DIR/xdg-data $QC_BIN run --agent dev -- echo hello
INFO
exec "$QC_AGENT_BIN" --config="$DIR/agent-config.yaml"
