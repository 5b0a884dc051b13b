//! The Python and Go bindings, tested the way their users would use them:
//! the Python package pip-installed into a virtual environment and run by
//! pytest, the Go package built by cgo with no libfpl installed (it loads
//! libfpl.so.1 when first used), each against real QEMU processes holding
//! images. What pip downloads or caches stays under target/; Go's caches
//! are new for each run.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{libfpl_dir, TempDir};
use support::{cargo_toml_version, readme_block, require, root, run, stdout};

/// A virtual environment under target/ with pytest and mypy (and what
/// mypy needs to check setup.py: setuptools 70.1 or later and its stubs),
/// made once and then reused.
fn python_venv() -> PathBuf {
    let python3 = require("python3", "apt-get install python3 python3-venv");
    let venv = root().join("target").join("python-venv");
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        let out = Command::new(&python3)
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "python3 -m venv failed (install python3-venv):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let has_tools = Command::new(&python)
        .args([
            "-c",
            "import pytest, mypy, setuptools.command.bdist_wheel, importlib.metadata as m; \
             m.version('types-setuptools')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tools {
        run(pip(&python).args([
            "install",
            "--quiet",
            "pytest",
            "mypy",
            "setuptools>=70.1",
            "types-setuptools",
        ]));
    }
    python
}

fn pip(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip"])
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_CACHE_DIR", root().join("target").join("pip-cache"));
    cmd
}

#[test]
fn python_package_installs_with_pip_and_passes_pytest_against_qemu() {
    let python = python_venv();
    let pkg = root().join("bindings/python");

    // The version the package declares is Cargo.toml's.
    let pyproject = std::fs::read_to_string(pkg.join("pyproject.toml")).unwrap();
    let version = cargo_toml_version();
    assert!(
        pyproject.contains(&format!("\nversion = \"{version}\"\n")),
        "bindings/python/pyproject.toml's version is not {version}"
    );

    // `pip wheel` builds a wheel carrying libfpl.so.1 (setup.py runs cargo
    // build --release --lib), tagged for this platform, any Python 3.
    let tmp = TempDir::new("python");
    let wheels = tmp.path().join("wheels");
    run(pip(&python)
        .args(["wheel", "--quiet", "--no-deps", "-w"])
        .arg(&wheels)
        .arg(&pkg));
    let built: Vec<PathBuf> = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let wheel_name = format!(
        "libfpl-{version}-py3-none-{}_{}.whl",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    assert_eq!(
        built,
        [wheels.join(&wheel_name)],
        "pip wheel built {built:?}"
    );

    // `pip install` does the same and installs it.
    run(pip(&python)
        .args(["install", "--quiet", "--force-reinstall", "--no-deps"])
        .arg(&pkg));
    let lib = libfpl_dir().join("libfpl.so.1");
    let out = run(Command::new(&python)
        .args([
            "-c",
            "import fpl; print(fpl.__file__); print(fpl.__version__); print(fpl.version())",
        ])
        .current_dir(tmp.path())
        .env_remove("FPL_LIBRARY")
        .env_remove("LD_LIBRARY_PATH"));
    let text = stdout(&out);
    let mut lines = text.lines();
    let installed = lines.next().unwrap_or_default();
    assert!(
        installed.starts_with(&root().join("target/python-venv").display().to_string())
            && installed.contains("site-packages"),
        "fpl imported from {installed}, not from the virtual environment"
    );
    assert_eq!(lines.next(), Some(version.as_str()));
    // ... and the library it loaded with no help, its own copy, is too.
    assert_eq!(lines.next(), Some(version.as_str()));
    let package = Path::new(installed).parent().unwrap();
    assert!(package.join("_lib/libfpl.so.1").is_file());
    // The installed package carries its type information.
    assert!(package.join("py.typed").is_file());

    // The type hints are complete and consistent (the build step's too).
    run(Command::new(&python)
        .args(["-m", "mypy", "--strict", "--cache-dir"])
        .arg(root().join("target/mypy-cache"))
        .arg(pkg.join("src/fpl"))
        .arg(pkg.join("setup.py"))
        .arg(pkg.join("tests"))
        .current_dir(&pkg));

    let out = Command::new(&python)
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider", "--basetemp"])
        .arg(tmp.path().join("pytest"))
        .arg(pkg.join("tests"))
        .current_dir(&pkg)
        // The suite runs on the package's own copy of libfpl, as users do;
        // the debug build is the other library the lookup tests load.
        .env_remove("FPL_LIBRARY")
        .env_remove("LD_LIBRARY_PATH")
        .env("FPL_TEST_LIBRARY", &lib)
        .env("FPL_WHEEL", wheels.join(&wheel_name))
        .env("FPL_EXPECTED_VERSION", &version)
        .env("FPL_HEADER", root().join("include/fpl.h"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("pytest runs");
    let report = stdout(&out);
    println!("{report}");
    assert!(
        out.status.success(),
        "pytest failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = report.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped") && !summary.contains("failed"),
        "{summary}"
    );
}

/// go with nothing of libfpl in sight: no pkg-config (a failing one), no
/// -I, -L or library path, no FPL_LIBRARY. Its build cache and GOPATH are
/// TMP's, new for each run: no answer from another run or checkout can be
/// reused (a shared cache once kept link flags naming a deleted temporary
/// prefix, and a second run failed with `cannot find -lfpl`).
fn go(tmp: &Path, args: &[&str]) -> Command {
    let go = require("go", "apt-get install golang-go");
    let mut cmd = Command::new(go);
    cmd.args(args)
        .current_dir(root().join("bindings/go"))
        .env("GOCACHE", tmp.join("go-cache"))
        .env("GOPATH", tmp.join("go-path"))
        .env("GOENV", "off")
        .env("GOWORK", "off")
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GO111MODULE", "on")
        .env("CGO_ENABLED", "1")
        .env("TMPDIR", tmp)
        .env("PKG_CONFIG", "false");
    for var in [
        "CGO_CFLAGS",
        "CGO_CPPFLAGS",
        "CGO_LDFLAGS",
        "CPATH",
        "C_INCLUDE_PATH",
        "LIBRARY_PATH",
        "LD_LIBRARY_PATH",
        "PKG_CONFIG_PATH",
        "PKG_CONFIG_LIBDIR",
        "FPL_LIBRARY",
        "FPL_TEST_NO_LIBRARY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Fails unless the executable at PATH was linked with nothing of libfpl:
/// no NEEDED libfpl, no undefined fpl_ symbol.
fn assert_links_no_libfpl(path: &Path) {
    let readelf = require("readelf", "apt-get install binutils");
    let out = stdout(&run(Command::new(readelf)
        .args(["-d", "--dyn-syms", "-W"])
        .arg(path)));
    for line in out.lines() {
        let needs = line.contains("(NEEDED)") && line.contains("libfpl");
        // The name may carry its version: fpl_version@LIBFPL_1.0 (4).
        let undefined =
            line.contains(" UND ") && line.split_whitespace().any(|name| name.starts_with("fpl_"));
        assert!(!needs && !undefined, "{path:?} links libfpl: {line}");
    }
}

/// Runs the Go test binary TEST in the package's folder; fails unless it
/// passes every test it runs, without skipping one. Returns its report.
fn go_test_binary(test: &Path, tmp: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(test);
    cmd.args(["-test.v", "-test.count=1"])
        .args(args)
        .current_dir(root().join("bindings/go"))
        .env("TMPDIR", tmp)
        .env("FPL_EXPECTED_VERSION", cargo_toml_version())
        .env_remove("FPL_LIBRARY")
        .env_remove("FPL_TEST_NO_LIBRARY")
        .env_remove("LD_LIBRARY_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the Go test binary runs");
    let report = stdout(&out);
    println!("{report}");
    assert!(
        out.status.success(),
        "go test failed ({env:?}):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("--- SKIP") && !report.contains("--- FAIL"),
        "{report}"
    );
    report
}

#[test]
fn go_package_builds_without_libfpl_and_passes_go_test_against_qemu() {
    let tmp = TempDir::new("go");
    let pkg = root().join("bindings/go");

    // The package carries the header it is compiled with (a user building
    // it from a module cache has no include/): the repository's, unchanged.
    assert!(
        std::fs::read(pkg.join("fpl.h")).unwrap()
            == std::fs::read(root().join("include/fpl.h")).unwrap(),
        "bindings/go/fpl.h differs from include/fpl.h: cp include/fpl.h bindings/go/fpl.h"
    );

    // The README's example is the example program, as written.
    assert_eq!(
        std::fs::read_to_string(pkg.join("example/main.go")).unwrap(),
        readme_block("## Using it from Go", "go"),
        "bindings/go/example/main.go and the README's Go example differ"
    );

    let unformatted = stdout(&run(Command::new(require(
        "gofmt",
        "apt-get install golang-go",
    ))
    .arg("-l")
    .arg(&pkg)));
    assert_eq!(unformatted, "", "gofmt would change these files");

    // Built with no libfpl installed: cgo and the C library only.
    run(&mut go(tmp.path(), &["vet", "./..."]));
    run(&mut go(tmp.path(), &["build", "./..."]));
    let test = tmp.path().join("fpl.test");
    run(go(tmp.path(), &["test", "-c", "-o"]).arg(&test).arg("."));
    assert_links_no_libfpl(&test);

    // Against the built library, named by FPL_LIBRARY, with real QEMU
    // holders.
    let lib = libfpl_dir().join("libfpl.so.1");
    let report = go_test_binary(&test, tmp.path(), &[], &[("FPL_LIBRARY", &lib)]);
    let passed = report.lines().filter(|l| l.starts_with("--- PASS")).count();
    assert!(passed >= 10, "only {passed} Go tests passed:\n{report}");
    assert!(
        report.contains("--- PASS: TestWithoutLibfplEveryCallFailsWithErrNotInstalled"),
        "{report}"
    );

    // Loading on first use from many goroutines, and using libfpl from
    // them, under the race detector.
    let out = run(go(
        tmp.path(),
        &[
            "test",
            "-race",
            "-count=1",
            "-v",
            "-run=^(TestFirstUseFromManyGoroutinesLoadsLibfplOnce|TestGoroutines|TestWithoutLibfplEveryCallFailsWithErrNotInstalled)$",
            ".",
        ],
    )
    .env("FPL_LIBRARY", &lib));
    let report = stdout(&out);
    assert_eq!(
        report.lines().filter(|l| l.starts_with("--- PASS")).count(),
        3,
        "{report}"
    );

    // Against none: neither FPL_LIBRARY nor the loader finds a libfpl.so.1.
    let report = go_test_binary(
        &test,
        tmp.path(),
        &["-test.run=^TestWithoutLibfplEveryCallFailsWithErrNotInstalled$"],
        &[(
            "FPL_TEST_NO_LIBRARY",
            Path::new("No such file or directory"),
        )],
    );
    assert!(
        report.contains("--- PASS: TestWithoutLibfplEveryCallFailsWithErrNotInstalled"),
        "{report}"
    );

    // A module of the user's own uses the package as the README says:
    // `go mod edit -require=fpl@v0.0.0 -replace=fpl=/path/to/libfpl/bindings/go`,
    // here a copy of it away from the repository, as in a module cache.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme
        .contains("go mod edit -require=fpl@v0.0.0 -replace=fpl=/path/to/libfpl/bindings/go\n"));
    let module = tmp.path().join("fpl-module");
    std::fs::create_dir(&module).unwrap();
    for entry in std::fs::read_dir(&pkg).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, module.join(path.file_name().unwrap())).unwrap();
        }
    }
    let app = tmp.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(pkg.join("example/main.go"), app.join("main.go")).unwrap();
    run(go(tmp.path(), &["mod", "init", "example.org/app"]).current_dir(&app));
    let replace = format!("-replace=fpl={}", module.display());
    run(go(
        tmp.path(),
        &["mod", "edit", "-require=fpl@v0.0.0", &replace],
    )
    .current_dir(&app));
    run(go(tmp.path(), &["build", "-o", "app", "."]).current_dir(&app));
    assert_links_no_libfpl(&app.join("app"));

    // libfpl.so.1 found by the dynamic loader, without FPL_LIBRARY.
    let vm = support::qemu_img_create(&app, "vm.qcow2");
    let out = run(Command::new(app.join("app"))
        .current_dir(&app)
        .env_remove("FPL_LIBRARY")
        .env("LD_LIBRARY_PATH", libfpl_dir()));
    assert!(
        stdout(&out).starts_with("held by app (pid "),
        "{}",
        stdout(&out)
    );
    assert!(fpl::query(&vm, false).unwrap().held.is_empty());

    // Without it, the program is told what to install.
    let out = Command::new(app.join("app"))
        .current_dir(&app)
        .env_remove("FPL_LIBRARY")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("the example runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("fpl: cannot load libfpl.so.1 (dlopen: libfpl.so.1: ")
            && stderr.contains("make install")
            && stderr.contains("FPL_LIBRARY"),
        "{stderr}"
    );
}
