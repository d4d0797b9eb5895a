#!/bin/sh
# e2e-signal WORD [SECONDS]: asks the host for the action named WORD and
# waits until the host says it is done.
#
# Prints "E2E-SIGNAL: WORD" on the console; the VM runner calls the test's
# callback with WORD and, once it returned, writes "E2E-ACK: WORD" to the
# console's input, which this reads. Exits 0 on the acknowledgement, 1 if
# none came within SECONDS (default 120). WORD: letters, digits, ._:+=-
word=${1:?usage: e2e-signal WORD [SECONDS]}
limit=${2:-120}
echo "E2E-SIGNAL: $word"
end=$(( $(date +%s) + limit ))
while [ "$(date +%s)" -lt "$end" ]; do
    if IFS= read -r -t 1 line </dev/console; then
        line=$(printf '%s' "$line" | tr -d '\r')
        [ "$line" = "E2E-ACK: $word" ] && exit 0
    fi
done
echo "E2E: e2e-signal: no acknowledgement of $word from the host within $limit s" >&2
exit 1
