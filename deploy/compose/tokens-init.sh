#!/bin/sh
# Makes docker-compose.yml's tokens on first start, each on its own volume so that a container
# mounts only the ones it uses; later starts keep them. 32 random bytes each, as hex.
set -eu
for name in webhook policy operator reader; do
  file="/tokens/$name/token"
  if [ -s "$file" ]; then
    echo "tokens-init: the $name token exists"
    continue
  fi
  umask 077
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$file.new"
  mv "$file.new" "$file"
  echo "tokens-init: made the $name token"
done
# The services run as 65532; Alertmanager (the webhook token's other reader) as nobody.
chown 65532:65532 /tokens/*/token
chmod 0400 /tokens/policy/token /tokens/operator/token /tokens/reader/token
chmod 0444 /tokens/webhook/token
