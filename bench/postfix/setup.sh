#!/bin/sh
# Install and start a loopback-only Postfix on 127.0.0.1:2626 delivering to
# /var/tmp/postfix-bench/mail/bench/ (Maildir), for side-by-side benchmarks.
# Needs root and Debian's apt. Replaces /etc/postfix/{main,master}.cf.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v postfix >/dev/null 2>&1; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
postfix stop >/dev/null 2>&1 || true
mkdir -p /var/tmp/postfix-bench/mail
chown 65534:65534 /var/tmp/postfix-bench/mail
cp "$here/main.cf" "$here/master.cf" /etc/postfix/
postfix check
postfix start
