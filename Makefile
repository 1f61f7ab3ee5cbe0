# silo: build, run, test, bench.
GO      ?= go
BIN     := silo
# The version is the nearest tag (v0.0.0 before the first one), plus the
# commits since it and the commit itself: a Debian version and a semver both.
VERSION ?= $(shell (git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null || \
	echo v0.0.0-$$(git rev-list --count HEAD 2>/dev/null || echo 0)-g$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)) | sed 's/^v//')
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build run test bench crashtest fuzz deb systemd-test clean

# A static binary: no libc, so the same file runs on any Linux of its
# architecture, and -trimpath keeps the build machine's paths out of it.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/silo

# Serves with config.toml (127.0.0.1:2022, loopback exempt from penalties);
# silo prints the sftp command for the address it really listens on. The
# first run creates the demo account (password "demo").
run: build
	@test -f users.toml || echo demo | ./$(BIN) user add demo --password-stdin --config config.toml >/dev/null
	@! ./$(BIN) user show demo --config config.toml >/dev/null 2>&1 || \
		echo "demo account: user demo, password demo (made by the first make run)"
	./$(BIN) serve --config config.toml

# dist/silo_VERSION_ARCH.deb: the static binary, /etc/silo/config.toml (this
# config.toml with the package's paths, port 22 and no loopback exemption),
# silo.service and silo.socket. nfpm is built from its module, pinned here.
NFPM        ?= github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0
DEB_VERSION := $(subst -,+,$(VERSION))
DEB_ARCH    := $(shell $(GO) env GOARCH)
deb:
	rm -rf dist && mkdir -p dist
	$(MAKE) build BIN=dist/silo
	sed -e 's|^listen = .*|listen = "0.0.0.0:22"|' \
	    -e 's|^homes = .*|homes = "/var/lib/silo/homes"|' \
	    -e 's|^host_keys = .*|host_keys = "/var/lib/silo/hostkeys"|' \
	    -e 's|^users = .*|users = "/var/lib/silo/users.toml"|' \
	    -e 's|^admin_socket = .*|admin_socket = "/var/lib/silo/admin.sock"|' \
	    -e 's|^exempt = .*|exempt = []|' config.toml >dist/config.toml
	./dist/silo check-config --config dist/config.toml
	DEB_VERSION=$(DEB_VERSION) DEB_ARCH=$(DEB_ARCH) $(GO) run $(NFPM) package \
	    --config packaging/nfpm.yaml --packager deb --target dist/
	@ls dist/*.deb

# The package under a real systemd (systemd-nspawn of this machine's root on
# an overlay; root needed): install, log in, upgrade during an upload,
# restart in place, reload, remove.
systemd-test:
	$(MAKE) deb
	cp dist/silo_*.deb /tmp/silo-systemd-test-old.deb
	$(MAKE) deb VERSION=$(VERSION)-upgraded
	packaging/systemd-test.sh /tmp/silo-systemd-test-old.deb dist/silo_*.deb
	rm -f /tmp/silo-systemd-test-old.deb

# Packages run side by side (-p), and within a package the tests that start
# their own server (-parallel: most of their time is spent waiting on
# clients). No test depends on timing, so a loaded machine is slower, not red.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m -p 2 -parallel 4 ./...

# SIGKILL silo during 200 MiB uploads, in order (OpenSSH's sftp) and out of
# order (pkg/sftp's client, beside an account that holds all it may), ten
# times each; reput must make each whole.
crashtest:
	SILO_CRASHTEST=1 $(GO) test -count=1 -run 'TestCrash(Then|OutOfOrderThen)Reput' -v ./cmd/silo

# Each fuzz target for FUZZTIME (60s), with the inputs it ran: the jail (path
# mapping, os.Root, the link rule), sequences of link operations checked on
# disk, users.toml parsing, the password verifier, an SFTP packet stream
# into the real handlers and an rsync client stream into the rsync server.
FUZZTIME ?= 60s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

bench: build
	./scripts/bench.sh

clean:
	rm -rf $(BIN) dist
