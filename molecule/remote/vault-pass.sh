#!/bin/sh
# Ansible's vault password for this scenario: the random one tests/loopback_hosts.py wrote in prepare
# (before prepare, e.g. for the syntax check, there is no vault file to open and any value will do).
cat "$(dirname "$0")/.remote/vault-pass" 2>/dev/null || echo "no-vault-yet"
