//! Generates include/fpl.h with cbindgen (into OUT_DIR, copied over the
//! committed header only when its content changed), sets the SONAME and
//! puts the `libfpl.so.0` name beside the built library.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let crate_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    let minor = env::var("CARGO_PKG_VERSION_MINOR").expect("cargo sets the version");
    let patch = env::var("CARGO_PKG_VERSION_PATCH").expect("cargo sets the version");
    let version = env::var("CARGO_PKG_VERSION").expect("cargo sets the version");

    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/fpl.h");

    let soname = format!("libfpl.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");

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

    // OUT_DIR is <target>/<profile>/build/fpl-<hash>/out: the library lands
    // in <target>/<profile>. Programs linked with -lfpl ask for the SONAME,
    // so give it a name there (the link dangles until the library is built).
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        link_soname(profile_dir, &soname);
    }
}

fn link_soname(dir: &Path, soname: &str) {
    let link = dir.join(soname);
    if fs::symlink_metadata(&link).is_err() {
        let _ = std::os::unix::fs::symlink("libfpl.so", &link);
    }
}
