#!/bin/bash
# repliq-healthcheck [PATH]: exit 0 if GET PATH (default /healthz) on the
# daemon's local HTTP port answers 200, 1 otherwise. Uses bash's /dev/tcp, so
# the image needs no curl or wget. The port is REPLIQ_HEALTH_PORT (default
# 8080, the default of `http.listen`).
#   repliq-healthcheck            # liveness  (the image's HEALTHCHECK)
#   repliq-healthcheck /readyz    # readiness (a secondary that caught up)
path=${1:-/healthz}
port=${REPLIQ_HEALTH_PORT:-8080}
exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || { echo "no answer on 127.0.0.1:$port" >&2; exit 1; }
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
IFS=' ' read -r -t 5 _proto code _ <&3 || { echo "no HTTP status line from 127.0.0.1:$port" >&2; exit 1; }
[ "$code" = 200 ] || { echo "GET $path: $code" >&2; exit 1; }
