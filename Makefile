# silo: build, run, test, bench.
GO      ?= go
BIN     := silo
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build run test bench crashtest fuzz clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/silo

# Serves on 127.0.0.1:2022 with config.toml. The first run creates the demo
# account (password "demo").
run: build
	@test -f users.toml || { echo demo | ./$(BIN) user add demo --password-stdin --config config.toml >/dev/null && \
		echo "created user demo (password: demo)"; }
	@echo "log in with: sftp -P 2022 demo@127.0.0.1   (password: demo)"
	./$(BIN) serve --config config.toml

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
# disk, users.toml parsing, the password verifier and an SFTP packet stream
# into the real handlers.
FUZZTIME ?= 60s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

bench: build
	./scripts/bench.sh

clean:
	rm -f $(BIN)
