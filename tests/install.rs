//! `make install` as a packager or a user runs it: the files land where C
//! users expect them, fpl.pc describes them, and C and C++ programs built
//! with nothing but `pkg-config` (dynamically and statically) use libfpl
//! on real images, against a real QEMU holder.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{
    cargo_toml_version, make, make_build, qemu_img_create, require, root, run, stdout, QemuIo,
};

mod common;
use common::TempDir;

/// `pkg-config ARGS fpl`, seeing only the fpl.pc in PC_DIR (never one
/// installed on this machine), with SYSROOT prefixed to its paths.
fn pkg_config(pc_dir: &Path, sysroot: Option<&Path>, args: &[&str]) -> Vec<String> {
    require("pkg-config", "apt-get install pkg-config");
    let mut cmd = Command::new("pkg-config");
    cmd.env("PKG_CONFIG_LIBDIR", pc_dir)
        .env_remove("PKG_CONFIG_PATH")
        .env_remove("PKG_CONFIG_SYSROOT_DIR")
        .args(args)
        .arg("fpl");
    if let Some(root) = sysroot {
        cmd.env("PKG_CONFIG_SYSROOT_DIR", root);
    }
    stdout(&run(&mut cmd))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Compiles SOURCE with the given pkg-config flags, every warning an error.
fn build(source: &Path, out: &Path, cxx: bool, flags: &[String], extra: &[&str]) -> PathBuf {
    let (compiler, std) = if cxx {
        ("g++", "-std=c++11")
    } else {
        ("gcc", "-std=c11")
    };
    require(compiler, &format!("apt-get install {compiler}"));
    run(Command::new(compiler)
        .arg(std)
        .args(["-Wall", "-Wextra", "-Wpedantic", "-Werror"])
        .args(extra)
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(flags));
    out.to_path_buf()
}

fn readelf_dynamic(file: &Path) -> String {
    require("readelf", "apt-get install binutils");
    stdout(&run(Command::new("readelf").arg("-d").arg(file)))
}

fn link_target(p: &Path) -> String {
    std::fs::read_link(p)
        .unwrap_or_else(|e| panic!("{p:?} is not a symlink: {e}"))
        .display()
        .to_string()
}

#[test]
fn destdir_install_builds_c_and_cxx_programs_with_pkg_config() {
    let version = cargo_toml_version();
    let built = make_build();
    let tmp = TempDir::new("install-destdir");
    let stage = tmp.path().join("stage");
    make("install", &[("DESTDIR", &stage)]);

    // The layout under the default PREFIX, /usr/local.
    let prefix = stage.join("usr/local");
    let lib = prefix.join("lib");
    let real = lib.join(format!("libfpl.so.{version}"));
    assert!(real.is_file() && !real.is_symlink(), "{real:?}");
    assert_eq!(real.metadata().unwrap().mode() & 0o777, 0o755);
    assert_eq!(
        link_target(&lib.join("libfpl.so.1")),
        format!("libfpl.so.{version}")
    );
    assert_eq!(link_target(&lib.join("libfpl.so")), "libfpl.so.1");
    assert!(readelf_dynamic(&real).contains("Library soname: [libfpl.so.1]"));
    // The archive is installed without debug information and LLVM bitcode:
    // a quarter of what rustc writes, with every fpl_ symbol still there.
    let archive = lib.join("libfpl.a");
    let (installed, as_built) = (
        archive.metadata().unwrap().len(),
        built.join("libfpl.a").metadata().unwrap().len(),
    );
    assert!(
        installed * 3 < as_built,
        "libfpl.a: {installed} bytes installed, {as_built} built"
    );
    let sections = stdout(&run(Command::new("readelf")
        .arg("-S")
        .arg("-W")
        .arg(&archive)));
    for stripped in [".debug_info", ".llvmbc"] {
        assert!(
            !sections.contains(stripped),
            "{stripped} left in {archive:?}"
        );
    }
    let symbols = stdout(&run(Command::new("nm")
        .args(["--defined-only", "-g"])
        .arg(&archive)));
    for f in [
        "fpl_acquire",
        "fpl_acquire_wait",
        "fpl_release",
        "fpl_query",
        "fpl_chain",
    ] {
        assert!(
            symbols.lines().any(|l| l.ends_with(&format!(" T {f}"))),
            "{f} not defined in {archive:?}"
        );
    }
    assert_eq!(
        std::fs::read(prefix.join("include/fpl.h")).unwrap(),
        std::fs::read(root().join("include/fpl.h")).unwrap()
    );
    // The fpl command is installed exactly when it was built.
    let cli = built.join("fpl");
    assert_eq!(
        prefix.join("bin/fpl").is_file(),
        cli.is_file(),
        "bin/fpl vs {cli:?}"
    );
    if cli.is_file() {
        assert_eq!(
            std::fs::read(prefix.join("bin/fpl")).unwrap(),
            std::fs::read(&cli).unwrap()
        );
    }

    // fpl.pc names the final prefix, not the staging folder.
    let pc_dir = lib.join("pkgconfig");
    let pc = std::fs::read_to_string(pc_dir.join("fpl.pc")).unwrap();
    assert!(pc.starts_with("prefix=/usr/local\n"), "{pc}");
    assert!(pc.contains(&format!("\nVersion: {version}\n")), "{pc}");
    assert!(!pc.contains(&stage.display().to_string()), "{pc}");
    let sysroot = Some(stage.as_path());
    assert_eq!(
        pkg_config(&pc_dir, sysroot, &["--modversion"]).join(" "),
        version
    );
    let flags = pkg_config(&pc_dir, sysroot, &["--cflags", "--libs"]);
    assert_eq!(
        flags,
        [
            format!("-I{}", prefix.join("include").display()),
            format!("-L{}", lib.display()),
            "-lfpl".to_owned()
        ]
    );

    // A C program: who holds an image QEMU is using.
    let image = qemu_img_create(tmp.path(), "disk.qcow2");
    let holders = build(
        &root().join("c-examples/holders.c"),
        &tmp.path().join("holders"),
        false,
        &flags,
        &[],
    );
    assert!(readelf_dynamic(&holders).contains("Shared library: [libfpl.so.1]"));
    let qemu = QemuIo::hold(&image, false);
    let out = run(Command::new(&holders)
        .arg(&image)
        .env("LD_LIBRARY_PATH", &lib));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0],
        format!(
            "{}: uses [consistent read] [write] [resize]; does not share [write] [resize]",
            image.display()
        )
    );
    assert!(
        lines[1].starts_with(&format!("  held by qemu-io, pid {}, fd ", qemu.pid()))
            && lines[1].ends_with(
                ": uses [consistent read] [write] [resize]; does not share [write] [resize]"
            ),
        "{text}"
    );
    drop(qemu);

    // A C++ program: the README's, as written.
    let cpp = root().join("c-examples/readme.cpp");
    assert_eq!(
        std::fs::read_to_string(&cpp).unwrap(),
        support::readme_block("## Using it from C++", "cpp"),
        "c-examples/readme.cpp and the README's C++ example differ"
    );
    let readme = build(&cpp, &tmp.path().join("readme"), true, &flags, &[]);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let vm = qemu_img_create(&work, "vm.qcow2");
    let out = run(Command::new(&readme)
        .current_dir(&work)
        .env("LD_LIBRARY_PATH", &lib));
    assert_eq!(stdout(&out), "perm 11, unshared 14\n");
    let qemu = QemuIo::hold(&vm, false);
    let refused = Command::new(&readme)
        .current_dir(&work)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(75));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        format!(
            "Failed to get \"write\" lock (held by qemu-io, pid {})\nIs another process using the image [vm.qcow2]?\n",
            qemu.pid()
        )
    );
    drop(qemu);

    // A static program: `pkg-config --static` gives what libfpl.a needs.
    let static_flags = pkg_config(&pc_dir, sysroot, &["--static", "--cflags", "--libs"]);
    let update = build(
        &root().join("c-examples/update.c"),
        &tmp.path().join("update-static"),
        false,
        &static_flags,
        &["-static"],
    );
    assert!(
        readelf_dynamic(&update).contains("There is no dynamic section"),
        "not a static executable"
    );
    let out = run(Command::new(&update)
        .arg(&image)
        .env_remove("LD_LIBRARY_PATH"));
    assert_eq!(
        stdout(&out),
        "read-shared: bytes 100\nwrite: bytes 100 101 103 201 202 203\nread-shared again: bytes 100\n"
    );

    // And uninstall leaves nothing but folders.
    make("uninstall", &[("DESTDIR", &stage)]);
    assert_eq!(files_under(&stage), Vec::<PathBuf>::new());
}

#[test]
fn prefix_install_and_uninstall() {
    let version = cargo_toml_version();
    let tmp = TempDir::new("install-prefix");
    let prefix = tmp.path().join("opt/fpl");
    make("install", &[("PREFIX", &prefix)]);
    let pc_dir = prefix.join("lib/pkgconfig");
    let pc = std::fs::read_to_string(pc_dir.join("fpl.pc")).unwrap();
    assert!(
        pc.starts_with(&format!("prefix={}\n", prefix.display())),
        "{pc}"
    );
    assert!(pc.contains("\nlibdir=${exec_prefix}/lib\n"), "{pc}");
    assert_eq!(
        pkg_config(&pc_dir, None, &["--cflags", "--libs"]),
        [
            format!("-I{}", prefix.join("include").display()),
            format!("-L{}", prefix.join("lib").display()),
            "-lfpl".to_owned()
        ]
    );
    // pkg-config's --define-prefix relocates it (the paths are ${prefix}-relative).
    let moved = tmp.path().join("moved");
    std::fs::rename(&prefix, &moved).unwrap();
    assert_eq!(
        pkg_config(
            &moved.join("lib/pkgconfig"),
            None,
            &["--define-prefix", "--cflags"]
        ),
        [format!("-I{}", moved.join("include").display())]
    );
    std::fs::rename(&moved, &prefix).unwrap();

    let mut installed = files_under(&prefix);
    installed.sort();
    let mut want = vec![
        PathBuf::from("include/fpl.h"),
        PathBuf::from("lib/libfpl.a"),
        PathBuf::from("lib/libfpl.so"),
        PathBuf::from("lib/libfpl.so.1"),
        PathBuf::from(format!("lib/libfpl.so.{version}")),
        PathBuf::from("lib/pkgconfig/fpl.pc"),
    ];
    // The library's pages (libfpl(3), one per function) always.
    for page in std::fs::read_dir(common::root().join("man/man3")).unwrap() {
        let name = page.unwrap().file_name();
        want.push(PathBuf::from("share/man/man3").join(name));
    }
    want.sort();
    let with_command = make_build().join("fpl").is_file();
    if with_command {
        want.insert(0, PathBuf::from("bin/fpl"));
        for page in [
            "fpl-check.1",
            "fpl-completions.1",
            "fpl-demo.1",
            "fpl-hold.1",
            "fpl-status.1",
            "fpl.1",
        ] {
            want.push(PathBuf::from("share/man/man1").join(page));
        }
        want.push(PathBuf::from("share/bash-completion/completions/fpl"));
        want.push(PathBuf::from("share/fish/vendor_completions.d/fpl.fish"));
        want.push(PathBuf::from("share/zsh/site-functions/_fpl"));
        want.sort();
    }
    assert_eq!(
        installed
            .iter()
            .map(|p| p.strip_prefix(&prefix).unwrap().to_path_buf())
            .collect::<Vec<_>>(),
        want
    );
    if with_command {
        // The pages are clean roff, and name every subcommand and option.
        let man1 = prefix.join("share/man/man1");
        let man3 = prefix.join("share/man/man3");
        let pages = std::fs::read_dir(&man1)
            .unwrap()
            .chain(std::fs::read_dir(&man3).unwrap());
        for page in pages {
            let page = page.unwrap().path();
            let out = Command::new("groff")
                .args(["-man", "-ww", "-z"])
                .arg(&page)
                .output()
                .expect("groff runs (apt-get install groff-base)");
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "groff -man -ww -z {page:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let fpl1 = std::fs::read_to_string(man1.join("fpl.1")).unwrap();
        for sub in ["fpl-status(1)", "fpl-check(1)", "fpl-hold(1)"] {
            assert!(fpl1.contains(&sub.replace('-', "\\-")), "{sub} in fpl.1");
        }
        let hold = std::fs::read_to_string(man1.join("fpl-hold.1")).unwrap();
        for option in [
            "verify\\-interval",
            "no\\-unlocked\\-openers",
            "Exit status",
        ] {
            assert!(hold.contains(option), "{option} in fpl-hold.1");
        }
        // Each shell's script parses in that shell (`-n`: read, never run),
        // and completes the subcommands and options.
        for (shell, script) in [
            ("bash", "share/bash-completion/completions/fpl"),
            ("zsh", "share/zsh/site-functions/_fpl"),
            ("fish", "share/fish/vendor_completions.d/fpl.fish"),
        ] {
            let script = prefix.join(script);
            parses(shell, &script);
            let text = std::fs::read_to_string(&script).unwrap();
            assert!(
                text.contains("status") && text.contains("verify-interval"),
                "{script:?} completes neither status nor --verify-interval"
            );
        }
    }
    make("uninstall", &[("PREFIX", &prefix)]);
    assert_eq!(files_under(&prefix), Vec::<PathBuf>::new());
}

/// `SHELL -n SCRIPT` succeeds, with nothing on stderr; a missing shell
/// fails the test, saying what to install (the package is the shell's name).
fn parses(shell: &str, script: &Path) {
    let out = Command::new(shell)
        .arg("-n")
        .arg(script)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {shell} -n {script:?} ({e}): install {shell} (apt-get install {shell})"
            )
        });
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{shell} -n {script:?} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file or symlink under DIR.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}
