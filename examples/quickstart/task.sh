#!/bin/sh
# A stand-in for an agent's task: it receives credentials, uses them, and prints what it got.
set -eu
echo "task: API_TOKEN is set (${#API_TOKEN} bytes)"
echo "task: API_TOKEN_FILE is $API_TOKEN_FILE"
echo "task: file mode $(stat -c %a "$API_TOKEN_FILE"), $(wc -c < "$API_TOKEN_FILE") bytes"
# A careless task that prints its secret: `broker run` redacts it from the output.
echo "task: oops, printing the token: $API_TOKEN"
