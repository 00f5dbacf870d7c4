#!/bin/sh
# A stand-in for an agent's task: it receives credentials, uses them, and says what it got.
set -eu
echo "task: API_TOKEN is set (${#API_TOKEN} bytes), DB_PASSWORD is set (${#DB_PASSWORD} bytes)"
echo "task: DEPLOY_KEY_FILE is $DEPLOY_KEY_FILE (mode $(stat -c %a "$DEPLOY_KEY_FILE"), $(wc -l < "$DEPLOY_KEY_FILE") lines)"
# A careless task that prints a secret: `broker run` redacts it from the output.
echo "task: oops, printing the token: $API_TOKEN"
