# A thin layer over cargo for installing libfpl the way C libraries install.
#
#   make                      # cargo build --release (libfpl and the fpl command)
#   make check                # install what the tests need, then every test
#   make dist                 # target/dist/libfpl-VERSION.tar.gz and its .sha256
#   make install              # as root (sudo make install): into /usr/local; never runs cargo
#   make install DESTDIR=/tmp/stage PREFIX=/usr
#   make uninstall            # as root too (sudo make uninstall)
#
# Installs lib/libfpl.so.$(VERSION) with its libfpl.so.1 (SONAME) and
# libfpl.so links, lib/libfpl.a, include/fpl.h, lib/pkgconfig/fpl.pc and,
# when it was built, bin/fpl with its manual pages (share/man/man1: fpl(1),
# fpl-status(1), ...) and completions (bash, zsh, fish), which the built
# fpl writes from its own command-line definition. `install` uses what `make` built and never
# builds: as root, cargo would want a toolchain root may not have and would
# leave root-owned files in target/.

PREFIX ?= /usr/local
EXEC_PREFIX ?= $(PREFIX)
LIBDIR ?= $(EXEC_PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(EXEC_PREFIX)/bin
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
DESTDIR ?=

CARGO ?= cargo
CARGO_FLAGS ?=
# Where cargo builds; the same variable cargo itself reads.
CARGO_TARGET_DIR ?= target
BUILD := $(CARGO_TARGET_DIR)/release

# The [package] version of Cargo.toml, e.g. 1.0.0; the SONAME carries its major.
VERSION := $(shell awk -F'"' '/^\[/ { pkg = ($$0 == "[package]") } pkg && /^version *=/ { print $$2; exit }' Cargo.toml)
MAJOR := $(firstword $(subst ., ,$(VERSION)))
SONAME := libfpl.so.$(MAJOR)
REALNAME := libfpl.so.$(VERSION)

# What a program linking libfpl.a also needs. rustc's answer
# (`cargo rustc --release --lib --crate-type staticlib -- --print
# native-static-libs`) is `-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc`;
# -lgcc_s is left out because the compiler driver already links the
# unwinder that fits the link (libgcc_s as needed, or libgcc_eh with
# -static), and naming it breaks `cc -static`.
LIBS_PRIVATE ?= -lutil -lrt -lpthread -lm -ldl -lc

INSTALL ?= install
# libfpl.a as rustc writes it is about 22 MB: it carries Rust's standard
# library with its debug information and LLVM bitcode. The installed copy
# has neither (about 5 MB), as distributions strip static libraries; what
# a program links from it is what it uses (a static holders.c: 0.6 MB with
# -Wl,--gc-sections). STRIP=true installs it as built.
STRIP ?= strip
# Refreshes the loader's cache after a real (not staged) install as root,
# so that programs find libfpl.so.1 in a new LIBDIR; LDCONFIG=true skips it.
LDCONFIG ?= ldconfig
RUN_LDCONFIG = @if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v $(LDCONFIG) >/dev/null; then \
	  echo $(LDCONFIG); $(LDCONFIG); \
	fi

.PHONY: all build check dist install uninstall clean

all: build

# Every test, on a fresh machine of this project's kind too: installs what
# it lacks (as root: scripts/install-test-tools, never a QEMU package),
# unpacks QEMU 7.2 beside QEMU 10 (scripts/fetch-qemu-7.2), then cargo
# test. FPL_SOAK=1 adds the long soaks.
check:
	bash scripts/install-test-tools
	bash scripts/fetch-qemu-7.2 >/dev/null
	$(CARGO) test $(CARGO_FLAGS)

build:
	$(CARGO) build --release --target-dir $(CARGO_TARGET_DIR) $(CARGO_FLAGS)

# fpl.pc, written at install time because it records PREFIX and friends;
# paths under the prefix are kept relative to ${prefix}, as pkg-config's
# --define-prefix and PKG_CONFIG_SYSROOT_DIR expect.
PC_EXEC_PREFIX := $(patsubst $(PREFIX)%,$${prefix}%,$(EXEC_PREFIX))
PC_LIBDIR := $(patsubst $(EXEC_PREFIX)%,$${exec_prefix}%,$(LIBDIR))
PC_INCLUDEDIR := $(patsubst $(PREFIX)%,$${prefix}%,$(INCLUDEDIR))

# A source tarball of the committed tree (HEAD), with its SHA-256 beside
# it: target/dist/libfpl-$(VERSION).tar.gz and .sha256. Unpacked anywhere,
# it builds and passes `make check` (it needs no git).
DIST := libfpl-$(VERSION)
dist:
	@test -n "$(VERSION)" || { echo "no [package] version found in Cargo.toml" >&2; exit 1; }
	@git diff --quiet HEAD -- || echo "note: uncommitted changes are not in the tarball (it is HEAD)" >&2
	mkdir -p $(CARGO_TARGET_DIR)/dist
	git archive --format=tar.gz --prefix=$(DIST)/ -o $(CARGO_TARGET_DIR)/dist/$(DIST).tar.gz HEAD
	cd $(CARGO_TARGET_DIR)/dist && sha256sum $(DIST).tar.gz > $(DIST).tar.gz.sha256
	@echo "$(CARGO_TARGET_DIR)/dist/$(DIST).tar.gz"; cat $(CARGO_TARGET_DIR)/dist/$(DIST).tar.gz.sha256

install:
	@test -n "$(VERSION)" || { echo "no [package] version found in Cargo.toml" >&2; exit 1; }
	@for f in libfpl.so libfpl.a; do \
	  test -f $(BUILD)/$$f || { echo "$(BUILD)/$$f is missing: run 'make' first" >&2; exit 1; }; \
	done
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	printf '%s\n' \
	  'prefix=$(PREFIX)' \
	  'exec_prefix=$(PC_EXEC_PREFIX)' \
	  'libdir=$(PC_LIBDIR)' \
	  'includedir=$(PC_INCLUDEDIR)' \
	  '' \
	  'Name: fpl' \
	  'Description: QEMU-compatible image locks (file-posix byte-range locking)' \
	  'Version: $(VERSION)' \
	  'Libs: -L$${libdir} -lfpl' \
	  'Libs.private: $(LIBS_PRIVATE)' \
	  'Cflags: -I$${includedir}' > $(DESTDIR)$(PKGCONFIGDIR)/fpl.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/fpl.pc
	$(INSTALL) -m 755 $(BUILD)/libfpl.so $(DESTDIR)$(LIBDIR)/$(REALNAME)
	ln -sf $(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libfpl.so
	$(INSTALL) -m 644 $(BUILD)/libfpl.a $(DESTDIR)$(LIBDIR)/libfpl.a
	$(STRIP) --strip-debug --remove-section=.llvmbc --remove-section=.llvmcmd $(DESTDIR)$(LIBDIR)/libfpl.a
	$(INSTALL) -m 644 include/fpl.h $(DESTDIR)$(INCLUDEDIR)/fpl.h
	$(INSTALL) -d $(DESTDIR)$(MANDIR)/man3
	$(INSTALL) -m 644 man/man3/*.3 $(DESTDIR)$(MANDIR)/man3/
	@if [ -x $(BUILD)/fpl ]; then \
	  echo "$(INSTALL) -m 755 -D $(BUILD)/fpl $(DESTDIR)$(BINDIR)/fpl"; \
	  $(INSTALL) -m 755 -D $(BUILD)/fpl $(DESTDIR)$(BINDIR)/fpl; \
	  echo "fpl(1) pages into $(DESTDIR)$(MANDIR)/man1; completions for bash, zsh, fish"; \
	  $(INSTALL) -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) \
	    $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) && \
	  $(BUILD)/fpl manpages $(DESTDIR)$(MANDIR)/man1 && \
	  chmod 644 $(DESTDIR)$(MANDIR)/man1/fpl.1 $(DESTDIR)$(MANDIR)/man1/fpl-*.1 && \
	  $(BUILD)/fpl completions bash > $(DESTDIR)$(BASHCOMPDIR)/fpl && \
	  $(BUILD)/fpl completions zsh > $(DESTDIR)$(ZSHCOMPDIR)/_fpl && \
	  $(BUILD)/fpl completions fish > $(DESTDIR)$(FISHCOMPDIR)/fpl.fish || exit 1; \
	else \
	  echo "note: $(BUILD)/fpl was not built: the fpl command is not installed"; \
	fi
	$(RUN_LDCONFIG)

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME) \
	      $(DESTDIR)$(LIBDIR)/libfpl.so $(DESTDIR)$(LIBDIR)/libfpl.a \
	      $(DESTDIR)$(INCLUDEDIR)/fpl.h $(DESTDIR)$(PKGCONFIGDIR)/fpl.pc \
	      $(DESTDIR)$(BINDIR)/fpl \
	      $(patsubst man/man3/%,$(DESTDIR)$(MANDIR)/man3/%,$(wildcard man/man3/*.3)) \
	      $(DESTDIR)$(MANDIR)/man1/fpl.1 $(DESTDIR)$(MANDIR)/man1/fpl-*.1 \
	      $(DESTDIR)$(BASHCOMPDIR)/fpl $(DESTDIR)$(ZSHCOMPDIR)/_fpl \
	      $(DESTDIR)$(FISHCOMPDIR)/fpl.fish
	$(RUN_LDCONFIG)

clean:
	$(CARGO) clean --target-dir $(CARGO_TARGET_DIR)
