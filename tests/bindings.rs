//! The Python and Go bindings, tested the way their users would use them:
//! the Python package pip-installed into a virtual environment and run by
//! pytest, the Go package built by cgo through `pkg-config fpl` after
//! `make install`, each against real QEMU processes holding images.
//! Everything they download or cache stays under target/.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{libfpl_dir, TempDir};
use support::{cargo_toml_version, make, readme_block, require, root, run, stdout};

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

/// The environment for go: caches under target/, no network, cgo on, and
/// pkg-config seeing only the fpl.pc installed under PREFIX.
fn go(prefix: &Path, args: &[&str]) -> Command {
    let go = require("go", "apt-get install golang-go");
    require("pkg-config", "apt-get install pkg-config");
    let cache = root().join("target").join("go");
    let mut cmd = Command::new(go);
    cmd.args(args)
        .current_dir(root().join("bindings/go"))
        .env("GOPATH", cache.join("path"))
        .env("GOCACHE", cache.join("cache"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GO111MODULE", "on")
        .env("CGO_ENABLED", "1")
        // go's build cache keys a cgo package on the CGO_* variables, not on
        // pkg-config's output nor on headers outside the package: without
        // the prefix named here, a second run (a new temporary prefix)
        // reuses the package built against the last one, its fpl.h and its
        // deleted -L folder.
        .env(
            "CGO_CFLAGS",
            format!("-O2 -g -I{}", prefix.join("include").display()),
        )
        .env(
            "CGO_LDFLAGS",
            format!("-O2 -g -L{}", prefix.join("lib").display()),
        )
        .env("PKG_CONFIG_LIBDIR", prefix.join("lib/pkgconfig"))
        .env_remove("PKG_CONFIG_PATH")
        .env_remove("PKG_CONFIG_SYSROOT_DIR")
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .env("FPL_EXPECTED_VERSION", cargo_toml_version());
    cmd
}

#[test]
fn go_package_builds_through_pkg_config_and_passes_go_test_against_qemu() {
    let tmp = TempDir::new("go");
    let prefix = tmp.path().join("usr");
    make("install", &[("PREFIX", &prefix)]);

    // The README's example is the example program, as written.
    assert_eq!(
        std::fs::read_to_string(root().join("bindings/go/example/main.go")).unwrap(),
        readme_block("## Using it from Go", "go"),
        "bindings/go/example/main.go and the README's Go example differ"
    );

    let unformatted = stdout(&run(Command::new(require(
        "gofmt",
        "apt-get install golang-go",
    ))
    .arg("-l")
    .arg(root().join("bindings/go"))));
    assert_eq!(unformatted, "", "gofmt would change these files");
    run(&mut go(&prefix, &["vet", "./..."]));

    let out = go(&prefix, &["test", "-count=1", "-v", "./..."])
        .env("TMPDIR", tmp.path())
        .output()
        .expect("go test runs");
    let report = stdout(&out);
    println!("{report}");
    assert!(
        out.status.success(),
        "go test failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = report.lines().filter(|l| l.starts_with("--- PASS")).count();
    assert!(passed >= 10, "only {passed} Go tests passed:\n{report}");
    assert!(
        !report.contains("--- SKIP") && !report.contains("--- FAIL"),
        "{report}"
    );

    // A module of the user's own uses the package as the README says:
    // `go mod edit -require=fpl@v0.0.0 -replace=fpl=/path/to/libfpl/bindings/go`.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme
        .contains("go mod edit -require=fpl@v0.0.0 -replace=fpl=/path/to/libfpl/bindings/go\n"));
    let app = tmp.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(
        root().join("bindings/go/example/main.go"),
        app.join("main.go"),
    )
    .unwrap();
    run(go(&prefix, &["mod", "init", "example.org/app"]).current_dir(&app));
    let replace = format!("-replace=fpl={}", root().join("bindings/go").display());
    run(go(&prefix, &["mod", "edit", "-require=fpl@v0.0.0", &replace]).current_dir(&app));
    run(go(&prefix, &["build", "-o", "app", "."]).current_dir(&app));
    let vm = support::qemu_img_create(&app, "vm.qcow2");
    let out = run(Command::new(app.join("app"))
        .current_dir(&app)
        .env("LD_LIBRARY_PATH", prefix.join("lib")));
    assert!(
        stdout(&out).starts_with("held by app (pid "),
        "{}",
        stdout(&out)
    );
    assert!(fpl::query(&vm, false).unwrap().held.is_empty());
}
