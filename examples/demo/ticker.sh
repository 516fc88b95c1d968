#!/bin/sh
# A tiny demo app: a heartbeat on stdout every 5 seconds, a clean exit on SIGTERM.
trap 'echo "ticker: SIGTERM, bye"; exit 0' TERM
echo "ticker: started as instance ${CITRUS_INSTANCE:-?} (GREETING=${GREETING:-unset})"
n=0
while :; do
  n=$((n + 1))
  echo "ticker: beat $n"
  sleep 5 &
  wait $!
done
