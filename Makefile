# Cocoon: `make demo` and `make test` are the two commands; the rest are
# their steps.
SHELL := /bin/bash
.DEFAULT_GOAL := build

ROOT        := $(CURDIR)
BUILD       := $(ROOT)/build
TOOLS       := $(BUILD)/tools
GUEST       := $(BUILD)/guest
TARGET      := x86_64-unknown-linux-gnu
AGENT       := $(ROOT)/target/$(TARGET)/release/cocoon-agent
BIN         := $(ROOT)/target/release
DEV_CONFIG  := $(BUILD)/cocoon-dev.toml
PREFIX      ?= /usr/local
CARGO       ?= cargo

# The guest kernel: `cocoon` (built here from pinned Debian source with
# guest-rootfs/kernel/cocoon.config, reproducible) or `debian` (Debian's
# generic linux-image, unpacked by `make deps`).
KERNEL      ?= cocoon
ifeq ($(KERNEL),debian)
KERNEL_DIR  := $(BUILD)/kernel
KERNEL_DEP  :=
else ifeq ($(KERNEL),cocoon)
KERNEL_DIR  := $(BUILD)/kernel-cocoon
KERNEL_DEP  := kernel
else
$(error KERNEL must be "cocoon" or "debian", not "$(KERNEL)")
endif

.PHONY: deps build agent kernel guest config test test-unit test-repro test-integration test-hw demo bench soak install lint fmt clean

## deps: Debian packages, virtiofsd, vhost-device-vsock and the guest kernel (idempotent)
deps:
	tests/deps.sh $(TOOLS)

## build: host binaries (cocoon, containerd-shim-cocoon-v2)
build:
	$(CARGO) build --release --locked --workspace --exclude cocoon-agent

## agent: the static cocoon-agent for the guest (libseccomp linked in)
agent:
	RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static \
	LIBSECCOMP_LIB_PATH=/usr/lib/$$(gcc -print-multiarch) $(CARGO) build --release --locked -p cocoon-agent --target $(TARGET)

## kernel: Cocoon's guest kernel into build/kernel-cocoon (cached in
## $$COCOON_CACHE_DIR, default ~/.cache/cocoon; about 8 minutes when not cached)
kernel:
	guest-rootfs/kernel/build.sh $(BUILD)/kernel-cocoon

## guest: build/guest/{vmlinuz,initrd.img,manifest.json} (KERNEL=cocoon|debian)
guest: agent $(KERNEL_DEP)
	$(CARGO) run --release --locked -q -p cocoon-guest-builder -- \
		--kernel-dir $(KERNEL_DIR) --agent $(AGENT) --out $(GUEST)

## config: a node config that uses this build tree (build/cocoon-dev.toml)
config: $(DEV_CONFIG)
$(DEV_CONFIG): configs/cocoon-dev.toml
	mkdir -p $(BUILD)
	sed -e 's#/usr/local/share/cocoon#$(GUEST)#' \
	    -e 's#/usr/local/libexec/cocoon#$(TOOLS)/bin#' \
	    -e 's#^state_dir = .*#state_dir = "/run/cocoon-dev"#' $< > $@

## test: everything, against real QEMU, the real guest kernel and agent
test: deps build guest config
	COCOON_TEST_CONFIG=$(DEV_CONFIG) COCOON_BIN_DIR=$(BIN) COCOON_AGENT_BIN=$(AGENT) \
		$(CARGO) test --release --locked --workspace -- --test-threads=1

## test-unit: only the hermetic tests (no VM)
test-unit:
	$(CARGO) test --locked --workspace

## test-repro: a second, uncached kernel build in another directory must be
## byte-identical to build/kernel-cocoon (about 8 minutes)
test-repro: kernel
	tests/kernel-repro.sh $(BUILD)/kernel-cocoon

## test-hw: tests that need SEV-SNP/TDX/GPU hardware (bare-metal runners)
test-hw: deps build guest config
	COCOON_TEST_HW=1 COCOON_TEST_CONFIG=$(DEV_CONFIG) COCOON_BIN_DIR=$(BIN) \
		$(CARGO) test --release --locked --workspace -- --test-threads=1 hw_

## demo: a private containerd runs a locally built busybox image in a Cocoon VM
demo: deps build guest config
	tests/demo.sh $(DEV_CONFIG) $(BIN)

## bench: boot time vs a minimal init, host RSS, initrd size
bench: deps build guest config
	COCOON_BIN_DIR=$(BIN) tests/bench.sh $(DEV_CONFIG)

## soak: parallel ctr run cycles with random kill -9 of QEMU / virtiofsd /
## vhost-device-vsock / the shim and a leak audit after each
## (SOAK_SECONDS, default 1800; not part of make test)
soak: deps build guest config
	tests/soak.sh $(DEV_CONFIG) $(BIN)

## install: binaries to $(PREFIX)/bin, guest to $(PREFIX)/share/cocoon, helpers to
## $(PREFIX)/libexec/cocoon, config to /etc/cocoon/config.toml (never overwritten)
install: build guest
	install -D -m 0755 $(BIN)/cocoon $(DESTDIR)$(PREFIX)/bin/cocoon
	install -D -m 0755 $(BIN)/containerd-shim-cocoon-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-cocoon-v2
	install -D -m 0644 $(GUEST)/vmlinuz $(DESTDIR)$(PREFIX)/share/cocoon/vmlinuz
	install -D -m 0644 $(GUEST)/initrd.img $(DESTDIR)$(PREFIX)/share/cocoon/initrd.img
	install -D -m 0644 $(GUEST)/manifest.json $(DESTDIR)$(PREFIX)/share/cocoon/manifest.json
	install -D -m 0755 $(TOOLS)/bin/virtiofsd $(DESTDIR)$(PREFIX)/libexec/cocoon/virtiofsd
	install -D -m 0755 $(TOOLS)/bin/vhost-device-vsock $(DESTDIR)$(PREFIX)/libexec/cocoon/vhost-device-vsock
	@if [ -e $(DESTDIR)/etc/cocoon/config.toml ]; then \
		echo "install: keeping existing /etc/cocoon/config.toml"; \
	else \
		install -D -m 0644 configs/cocoon-dev.toml $(DESTDIR)/etc/cocoon/config.toml; \
	fi

## lint: rustfmt and clippy as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(GUEST) $(DEV_CONFIG) $(BUILD)/test-fixtures
