#!/usr/bin/env bash
# make systemd-test: the Debian package under a real systemd. This machine's
# own root, on an overlay (the machine itself is not changed), boots under
# systemd-nspawn with a private network; inside, a oneshot unit installs
# the package, logs in through silo.socket on port 22, upgrades to a second
# package while an upload runs, restarts in place with SIGUSR2, reloads,
# restarts, and removes the package. Needs root, overlayfs and
# systemd-nspawn (Debian's systemd-container).
#
#   packaging/systemd-test.sh OLD.deb NEW.deb
set -euo pipefail
old_deb=$(realpath "$1") new_deb=$(realpath "$2")
work=$(mktemp -d)
root=$work/root
cleanup() {
	umount "$root" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/up" "$work/work" "$root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/up,workdir=$work/work" "$root"

t=$root/root/silo-test
mkdir -p "$t"
cp "$old_deb" "$t/old.deb"
cp "$new_deb" "$t/new.deb"
ssh-keygen -q -t ed25519 -N '' -f "$t/id"
# A container image's policy-rc.d forbids starting services; a host has none.
rm -f "$root/usr/sbin/policy-rc.d"

cat >"$t/run.sh" <<'EOF'
#!/usr/bin/env bash
set -euxo pipefail
cd /root/silo-test
# wait_for CMD...: CMD succeeds within 30 s.
wait_for() {
	for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done
	echo "timed out: $*"; return 1
}
mainpid() { systemctl show -p MainPID --value silo.service; }
sftp_b() {
	sftp -F /dev/null -i id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
		-o BatchMode=yes -o LogLevel=ERROR -P 22 -b - "$@" alice@127.0.0.1
}

# Port 22 is the package's: an OpenSSH server of this machine gives it up.
systemctl stop ssh.service ssh.socket 2>/dev/null || true
dpkg -i old.deb
wait_for systemctl --quiet is-active silo.socket silo.service
test "$(systemctl show -p User --value silo.service)" = silo
silo user add alice --key id.pub --config /etc/silo/config.toml
test "$(stat -c %U /var/lib/silo/users.toml)" = silo
# Logging in before the server has the account would earn loopback a
# penalty: the packaged config exempts nothing.
wait_for sh -c "journalctl -u silo.service | grep -qF 'msg=\"users reloaded\" users=1'"
# 16 s at 20 Mbit/s: well within shutdown_grace (30 s), which bounds the drain.
head -c 40000000 /dev/urandom >big
echo "put id.pub key.pub" | sftp_b

# The upgrade, with an upload (held to 20 Mbit/s) running through it.
before=$(mainpid)
(echo "put big big" | sftp_b -l 20000 && echo upload-ok >upload.result || echo upload-failed >upload.result) &
wait_for test -s /var/lib/silo/homes/alice/big
dpkg -i new.deb
wait_for sh -c "test \"\$(systemctl show -p MainPID --value silo.service)\" != $before"
silo version | grep -q upgraded
echo ls | sftp_b
wait
grep -q upload-ok upload.result
cmp big /var/lib/silo/homes/alice/big

# Restart in place, reload, restart.
before=$(mainpid)
systemctl kill -s USR2 --kill-whom=main silo.service
wait_for sh -c "test \"\$(systemctl show -p MainPID --value silo.service)\" != $before"
echo ls | sftp_b
# A crash of a process started by a handover restarts the service.
before=$(mainpid)
kill -KILL "$before"
wait_for sh -c "pid=\$(systemctl show -p MainPID --value silo.service); test \$pid != 0 && test \$pid != $before"
wait_for systemctl --quiet is-active silo.service
echo ls | sftp_b
systemctl reload silo.service
systemctl restart silo.service
wait_for systemctl --quiet is-active silo.service
echo ls | sftp_b
systemd-analyze security silo.service | tail -1

# Removal stops both units and keeps the data.
dpkg -r silo
if systemctl --quiet is-active silo.socket || systemctl --quiet is-active silo.service; then exit 1; fi
test -f /var/lib/silo/homes/alice/big
journalctl -u silo.service --no-pager | tail -30
EOF
chmod +x "$t/run.sh"

cat >"$root/etc/systemd/system/silo-test.service" <<'EOF'
[Unit]
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c '/root/silo-test/run.sh >/root/silo-test/log 2>&1; echo $? >/root/silo-test/rc'
ExecStartPost=/bin/systemctl poweroff
[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/silo-test.service "$root/etc/systemd/system/multi-user.target.wants/"

timeout 600 systemd-nspawn -q -D "$root" --register=no --keep-unit --private-network \
	-M "silo-test-$$" --console=read-only -b >"$work/boot.log" 2>&1 || true
cat "$t/log" 2>/dev/null || { echo "the container did not run the test:"; cat "$work/boot.log"; exit 1; }
rc=$(cat "$t/rc" 2>/dev/null || echo 1)
echo "systemd-test: exit $rc"
exit "$rc"
