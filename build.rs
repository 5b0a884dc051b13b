//! Generates include/fpl.h with cbindgen (into OUT_DIR, copied over the
//! committed header only when its content changed; `header` feature), sets the SONAME, puts
//! the `libfpl.so.1` name beside the built library, and versions its
//! symbols (`LIBFPL_1.0`).
//!
//! Symbol versions: rustc links a cdylib with a version script of its own
//! that has no version node (`{ global: fpl_...; local: *; };`), and GNU
//! ld lets that anonymous script win over a second one, so a plain
//! `--version-script` is silently ignored. `.symver` directives in the
//! code would reach the staticlib and rlib too and break every shared
//! object a user links them into ("version node not found"). So only the
//! cdylib's link goes through a two-line `ld` in OUT_DIR, found by the
//! compiler driver through `-B` (with `-fuse-ld=bfd`: rustc's default
//! rust-lld treats the two scripts the same way), which swaps rustc's script for
//! abi/libfpl.map (the same exports, under version nodes) and runs the
//! real linker. Where that cannot be set up (no `cc`, a driver that
//! does not name its linker `ld`), the library is built without versions
//! and a warning says so; CI's .ci/check-exports fails on that.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let crate_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");

    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/fpl.h");

    let soname = format!("libfpl.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    println!("cargo:rerun-if-changed=abi/libfpl.map");
    println!("cargo:rerun-if-env-changed=CC");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        match versioning_linker(&out_dir, &crate_dir.join("abi/libfpl.map")) {
            Ok(dir) => {
                // GNU ld (bfd), not the rust-lld rustc picks by default:
                // the driver then looks for `ld.bfd` along -B, finding the
                // wrapper before anything else of that name.
                println!("cargo:rustc-cdylib-link-arg=-fuse-ld=bfd");
                println!("cargo:rustc-cdylib-link-arg=-B{}/", dir.display());
            }
            Err(why) => println!("cargo:warning=libfpl.so is built without symbol versions: {why}"),
        }
    }

    #[cfg(feature = "header")]
    write_header(&crate_dir, &out_dir);

    // OUT_DIR is <target>/<profile>/build/fpl-<hash>/out: the library lands
    // in <target>/<profile>. Programs linked with -lfpl ask for the SONAME,
    // so give it a name there (the link dangles until the library is built).
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        link_soname(profile_dir, &soname);
    }
}

/// Generates the header from src/ffi.rs into OUT_DIR and copies it over
/// include/fpl.h when its content changed. Without the `header` feature
/// (an embedding crate's `default-features = false`) the committed header
/// is left as it is and cbindgen is not built at all.
#[cfg(feature = "header")]
fn write_header(crate_dir: &Path, out_dir: &Path) {
    let version = |part| env::var(part).expect("cargo sets the version");
    let (major, minor) = (
        version("CARGO_PKG_VERSION_MAJOR"),
        version("CARGO_PKG_VERSION_MINOR"),
    );
    let (patch, version) = (
        version("CARGO_PKG_VERSION_PATCH"),
        version("CARGO_PKG_VERSION"),
    );
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    config.after_includes = Some(format!(
        "\n/** Version of this header; fpl_version() gives the loaded library's. */\n\
         #define FPL_VERSION_MAJOR {major}\n\
         #define FPL_VERSION_MINOR {minor}\n\
         #define FPL_VERSION_PATCH {patch}\n\
         #define FPL_VERSION_STRING \"{version}\"\n"
    ));
    let generated = out_dir.join("fpl.h");
    cbindgen::Builder::new()
        .with_src(crate_dir.join("src/ffi.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen can read src/ffi.rs")
        .write_to_file(&generated);

    let header = crate_dir.join("include/fpl.h");
    let new = fs::read(&generated).expect("cbindgen wrote the header");
    if fs::read(&header).ok().as_deref() != Some(new.as_slice()) {
        fs::create_dir_all(crate_dir.join("include")).expect("include/ can be created");
        fs::write(&header, &new).expect("include/fpl.h can be written");
    }
}

/// Writes OUT_DIR/ld/ld: the real linker, with rustc's version script
/// replaced by `map`. Returns the folder to pass with `-B`.
fn versioning_linker(out_dir: &Path, map: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    if !map.is_file() {
        return Err(format!("{} is missing", map.display()));
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .arg("-print-prog-name=ld.bfd")
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    let named = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let real = if named.starts_with('/') {
        PathBuf::from(&named)
    } else {
        env::split_paths(&env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(&named))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("{cc} names its linker '{named}', which is not on PATH"))?
    };
    let dir = out_dir.join("ld");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    let script = format!(
        "#!/bin/sh\n\
         # Written by libfpl's build.rs: links libfpl.so with its version nodes.\n\
         for a do shift; case $a in --version-script=*) set -- \"$@\" --version-script={map};; \
         *) set -- \"$@\" \"$a\";; esac; done\n\
         exec {real} \"$@\"\n",
        map = quote(map),
        real = quote(&real),
    );
    for name in ["ld.bfd", "ld"] {
        let wrapper = dir.join(name);
        if fs::read_to_string(&wrapper).ok().as_deref() != Some(script.as_str()) {
            fs::write(&wrapper, &script).map_err(|e| e.to_string())?;
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(dir)
}

fn link_soname(dir: &Path, soname: &str) {
    let link = dir.join(soname);
    if fs::symlink_metadata(&link).is_err() {
        let _ = std::os::unix::fs::symlink("libfpl.so", &link);
    }
}
