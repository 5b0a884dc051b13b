//! Chain resolution against real QEMU: `fpl::chain::resolve` must list the
//! files `qemu-img info --backing-chain -U --output=json` lists (QEMU 10.0
//! and 7.2), and a corpus of hostile images must each give its documented
//! errno and message, without panic, hang or leaked descriptor.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::TempDir;
use fpl::chain::{self, Format, Member, Role, MAX_DEPTH};
use fpl::{Mode, Request};

/// The tests change the working directory (relative names are resolved
/// against it, as QEMU does) and count descriptors: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// (version, folder of qemu-img) for QEMU 10.0 and 7.2; fails saying what
/// to install when one is missing.
fn qemus() -> Vec<(String, PathBuf)> {
    common::qemu_dirs()
        .split(':')
        .filter_map(|kv| kv.split_once('='))
        .map(|(v, d)| (v.to_owned(), PathBuf::from(d)))
        .collect()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn img(qemu: &Path, cwd: &Path, args: &[&str]) {
    run(Command::new(qemu.join("qemu-img"))
        .args(args)
        .current_dir(cwd));
}

fn req(mode: Mode) -> Request {
    Request::new(mode.perm(), mode.shared())
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
        Format::Remote => "remote",
    }
}

/// What QEMU's chain says, in our terms: per image of the chain, (path,
/// format, data file as written).
fn qemu_chain(qemu: &Path, cwd: &Path, top: &str) -> Vec<(String, String, Option<String>)> {
    let out = run(Command::new(qemu.join("qemu-img"))
        .args(["info", "--backing-chain", "-U", "--output=json", top])
        .current_dir(cwd));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("qemu-img's JSON: {e}"));
    let arr = v.as_array().cloned().unwrap_or_default();
    let mut chain = Vec::new();
    for (k, e) in arr.iter().enumerate() {
        let s = |key: &str| e.get(key).and_then(|x| x.as_str()).map(str::to_owned);
        if k > 0 {
            // Element k's filename is element k-1's full-backing-filename
            // (or, for json: names, the file they reduce to).
            let prev = arr[k - 1]
                .get("full-backing-filename")
                .and_then(|x| x.as_str())
                .unwrap_or_default();
            let name = s("filename").unwrap_or_default();
            assert!(
                prev == name || prev.starts_with("json:"),
                "{prev} then {name}"
            );
        }
        let data = e
            .pointer("/format-specific/data/data-file")
            .and_then(|x| x.as_str())
            .map(str::to_owned);
        chain.push((
            s("filename").unwrap_or_default(),
            s("format").unwrap_or_default(),
            data,
        ));
    }
    chain
}

fn ours(members: &[Member]) -> Vec<(String, String, Option<String>)> {
    let images: Vec<&Member> = members
        .iter()
        .filter(|m| m.role != Role::DataFile)
        .collect();
    images
        .iter()
        .map(|m| {
            let data = members
                .iter()
                .find(|d| d.role == Role::DataFile && d.depth == m.depth)
                .map(|d| d.path.to_string_lossy().into_owned());
            (
                m.path.to_string_lossy().into_owned(),
                format_name(m.format).to_owned(),
                data,
            )
        })
        .collect()
}

/// The chain of `top`, by the Rust API; the C ABI's fpl_chain must list
/// exactly the same members, so every comparison with qemu-img below
/// holds for both.
fn resolve(top: &str) -> Vec<Member> {
    let members =
        chain::resolve(Path::new(top), req(Mode::Write)).unwrap_or_else(|e| panic!("{top}: {e}"));
    assert_eq!(
        c_chain(top),
        rust_rows(&members),
        "fpl_chain vs resolve for {top}"
    );
    members
}

type Row = (u32, u32, u32, u32, u32, Vec<u8>);

fn rust_rows(members: &[Member]) -> Vec<Row> {
    use fpl::ffi::*;
    members
        .iter()
        .map(|m| {
            (
                match m.role {
                    Role::Image => FPL_ROLE_IMAGE,
                    Role::Backing => FPL_ROLE_BACKING,
                    Role::DataFile => FPL_ROLE_DATA_FILE,
                },
                match m.format {
                    Format::Raw => FPL_FORMAT_RAW,
                    Format::Qcow2 => FPL_FORMAT_QCOW2,
                    Format::Remote => FPL_FORMAT_REMOTE,
                },
                m.depth,
                m.request.perm.bits(),
                m.request.shared.bits(),
                m.path.as_os_str().as_bytes().to_vec(),
            )
        })
        .collect()
}

/// fpl_chain (write preset), asked for the count first, then all members.
fn c_chain(top: &str) -> Vec<Row> {
    use fpl::ffi::*;
    let path = std::ffi::CString::new(top).expect("no NUL");
    let mut err = fpl_error::default();
    let mut n = 0usize;
    let call = |members: *mut fpl_member, cap: usize, n: &mut usize, err: &mut fpl_error| unsafe {
        fpl_chain(
            path.as_ptr(),
            FPL_MODE_WRITE_PERM,
            FPL_MODE_WRITE_SHARE,
            0,
            members,
            cap,
            n,
            err,
        )
    };
    assert_eq!(call(std::ptr::null_mut(), 0, &mut n, &mut err), 0);
    let mut members: Vec<fpl_member> = (0..n).map(|_| fpl_member::default()).collect();
    let mut again = 0usize;
    assert_eq!(call(members.as_mut_ptr(), n, &mut again, &mut err), 0);
    assert_eq!(again, n);
    members
        .iter()
        .map(|m| {
            // SAFETY: libfpl NUL-terminates the path.
            let p = unsafe { std::ffi::CStr::from_ptr(m.path.as_ptr()) };
            (
                m.role,
                m.format,
                m.depth,
                m.perm,
                m.shared,
                p.to_bytes().to_vec(),
            )
        })
        .collect()
}

#[test]
fn resolution_agrees_with_qemu_img_info() {
    let _g = serial();
    let qemus = qemus();
    assert_eq!(
        qemus.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(),
        ["10.0", "7.2"]
    );
    for (version, qemu) in qemus {
        let dir = TempDir::new(&format!("chain-{version}"));
        let d = dir.path();
        let abs = d.to_string_lossy().into_owned();
        std::fs::create_dir_all(d.join("sub")).ok();
        std::fs::create_dir_all(d.join("abs")).ok();
        std::fs::create_dir_all(d.join("v2")).ok();
        // raw base, qcow2 base, a 3-deep chain opened as sub/top.qcow2.
        img(&qemu, d, &["create", "-q", "-f", "raw", "base.raw", "1M"]);
        img(
            &qemu,
            d,
            &[
                "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "t1.qcow2",
            ],
        );
        img(
            &qemu,
            d,
            &["create", "-q", "-f", "qcow2", "base.qcow2", "1M"],
        );
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "t2.qcow2",
            ],
        );
        img(
            &qemu,
            d,
            &["create", "-q", "-f", "raw", "sub/base.raw", "1M"],
        );
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                "sub/mid.qcow2",
            ],
        );
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "mid.qcow2",
                "-F",
                "qcow2",
                "sub/top.qcow2",
            ],
        );
        // Absolute names.
        let absbase = format!("{abs}/abs/base.qcow2");
        img(&qemu, d, &["create", "-q", "-f", "qcow2", &absbase, "1M"]);
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &absbase,
                "-F",
                "qcow2",
                "abs/mid.qcow2",
            ],
        );
        let absmid = format!("{abs}/abs/mid.qcow2");
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                &absmid,
                "-F",
                "qcow2",
                "abs/top.qcow2",
                "1M",
            ],
        );
        // A version 2 (compat=0.10) image, its backing name going up.
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10",
                "-b",
                "../base.raw",
                "-F",
                "raw",
                "v2/top.qcow2",
            ],
        );
        // json: names.
        let json = format!(
            r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{abs}/base.raw"}}}}"#
        );
        img(
            &qemu,
            d,
            &[
                "create", "-q", "-f", "qcow2", "-u", "-b", &json, "-F", "raw", "j.qcow2", "1M",
            ],
        );
        let json_q = r#"json:{"driver":"qcow2","file.filename":"base.qcow2"}"#;
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                json_q,
                "-F",
                "qcow2",
                "sub/jq.qcow2",
                "1M",
            ],
        );
        // A data file (relative: created in the working directory) under a
        // qcow2 base, itself under an overlay.
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file=d.raw,data_file_raw=on",
                "sub/x.qcow2",
                "1M",
            ],
        );
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "x.qcow2",
                "-F",
                "qcow2",
                "sub/xo.qcow2",
            ],
        );

        std::env::set_current_dir(d).unwrap_or_else(|e| panic!("cd {d:?}: {e}"));
        for top in [
            "t1.qcow2",
            "t2.qcow2",
            "sub/top.qcow2",
            "abs/top.qcow2",
            &format!("{abs}/sub/top.qcow2"),
            "v2/top.qcow2",
            "j.qcow2",
            "sub/jq.qcow2",
            "sub/x.qcow2",
            "sub/xo.qcow2",
            "base.raw",
        ] {
            let members = resolve(top);
            assert_eq!(
                ours(&members),
                qemu_chain(&qemu, d, top),
                "QEMU {version}: {top}"
            );
        }
        // The 3-deep chain in full: roles, depths, inodes.
        let m = resolve("sub/top.qcow2");
        let roles: Vec<(Role, u32)> = m.iter().map(|m| (m.role, m.depth)).collect();
        assert_eq!(
            roles,
            [(Role::Image, 0), (Role::Backing, 1), (Role::Backing, 2)]
        );
        let x = resolve("sub/xo.qcow2");
        assert_eq!(
            x.iter()
                .map(|m| (m.role, m.depth, m.path.clone()))
                .collect::<Vec<_>>(),
            [
                (Role::Image, 0, PathBuf::from("sub/xo.qcow2")),
                (Role::Backing, 1, PathBuf::from("sub/x.qcow2")),
                (Role::DataFile, 1, PathBuf::from("d.raw")),
            ]
        );

        // nbd: listed as remote, never opened (nothing listens there).
        for name in [
            "nbd://127.0.0.1:1/x",
            "nbd+unix:///x?socket=/nonexistent.sock",
            "http://127.0.0.1:1/b.raw",
        ] {
            img(
                &qemu,
                d,
                &[
                    "create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "raw", "n.qcow2", "1M",
                ],
            );
            let out = run(Command::new(qemu.join("qemu-img"))
                .args(["info", "-U", "--output=json", "n.qcow2"])
                .current_dir(d));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let m = resolve("n.qcow2");
            assert_eq!(m.len(), 2, "{name}");
            assert_eq!(m[1].format, Format::Remote);
            assert_eq!(m[1].file, None);
            assert_eq!(
                Some(&*m[1].path.to_string_lossy()),
                v.get("full-backing-filename").and_then(|x| x.as_str()),
                "QEMU {version}: {name}"
            );
        }

        // A missing member: QEMU's wording, and qemu-io says the same.
        img(
            &qemu,
            d,
            &["create", "-q", "-f", "raw", "sub/gone.raw", "1M"],
        );
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "gone.raw",
                "-F",
                "raw",
                "sub/orphan.qcow2",
            ],
        );
        img(
            &qemu,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "orphan.qcow2",
                "-F",
                "qcow2",
                "sub/o2.qcow2",
            ],
        );
        std::fs::remove_file(d.join("sub/gone.raw")).ok();
        for (top, msg) in [
            ("sub/orphan.qcow2", "Could not open backing file: Could not open 'sub/gone.raw': No such file or directory"),
            ("sub/o2.qcow2", "Could not open backing file: Could not open backing file: Could not open 'sub/gone.raw': No such file or directory"),
        ] {
            let e = chain::resolve(Path::new(top), req(Mode::Read)).err();
            assert_eq!(e.as_ref().map(|e| e.errno()), Some(libc::ENOENT));
            assert_eq!(e.map(|e| e.to_string()).as_deref(), Some(msg));
            let io = Command::new(qemu.join("qemu-io"))
                .args(["-c", "quit", top])
                .current_dir(d)
                .output()
                .unwrap_or_else(|e| panic!("qemu-io: {e}"));
            let stderr = String::from_utf8_lossy(&io.stderr);
            assert!(stderr.trim_end().ends_with(msg), "QEMU {version}: {stderr}");
            let info = Command::new(qemu.join("qemu-img"))
                .args(["info", "--backing-chain", "-U", "--output=json", top])
                .current_dir(d)
                .output()
                .unwrap_or_else(|e| panic!("qemu-img: {e}"));
            assert!(!info.status.success() && info.stdout.is_empty());
        }
        // The data file is looked up in the working directory: from sub/
        // the same image misses it, as qemu-io does.
        let sub = d.join("sub");
        std::env::set_current_dir(&sub).unwrap_or_else(|e| panic!("cd: {e}"));
        let e = chain::resolve(Path::new("x.qcow2"), req(Mode::Read)).err();
        let msg = "Could not open 'd.raw': No such file or directory";
        assert_eq!(e.map(|e| e.to_string()).as_deref(), Some(msg));
        let io = Command::new(qemu.join("qemu-io"))
            .args(["-c", "quit", "x.qcow2"])
            .current_dir(&sub)
            .output()
            .unwrap_or_else(|e| panic!("qemu-io: {e}"));
        assert!(String::from_utf8_lossy(&io.stderr)
            .trim_end()
            .ends_with(msg));
        std::env::set_current_dir(common::root()).ok();
    }
}

/// A version 3 qcow2 header (64 KiB clusters) with the given extensions,
/// incompatible bits and backing name.
fn v3(exts: &[(u32, &[u8])], incompat: u64, backing: Option<&[u8]>) -> Vec<u8> {
    let mut h = vec![0u8; 112];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    h[72..80].copy_from_slice(&incompat.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    for (kind, data) in exts {
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&(data.len() as u32).to_be_bytes());
        h.extend_from_slice(data);
        while h.len() % 8 != 0 {
            h.push(0);
        }
    }
    h.extend_from_slice(&[0; 8]);
    if let Some(name) = backing {
        let at = h.len() as u64;
        h[8..16].copy_from_slice(&at.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h.extend_from_slice(name);
    }
    h
}

const FMT: u32 = 0xe279_2aca;
const DATA: u32 = 0x4441_5441;

fn set(mut h: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    h[at..at + bytes.len()].copy_from_slice(bytes);
    h
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[test]
fn hostile_images_give_their_documented_errors() {
    let _g = serial();
    let dir = TempDir::new("chain-hostile");
    let d = dir.path();
    let p = |n: &str| d.join(n);
    let w = |n: &str, bytes: &[u8]| {
        std::fs::write(p(n), bytes).unwrap_or_else(|e| panic!("{n}: {e}"));
    };
    let ok = v3(&[], 0, Some(b"base.raw"));
    w("base.raw", &[0u8; 4096]);
    w("good.qcow2", &ok);
    let abs = |n: &str| p(n).to_string_lossy().into_owned();

    // (file, contents, errno, part of the message)
    let cases: Vec<(&str, Vec<u8>, i32, String)> = vec![
        (
            "trunc50",
            ok[..50].to_vec(),
            libc::EINVAL,
            "qcow2 header truncated: 50 bytes".into(),
        ),
        (
            "trunc8",
            b"QFI\xfb\0\0\0\x03".to_vec(),
            libc::EINVAL,
            "qcow2 header truncated: 8 bytes, the version 3 header needs 104".into(),
        ),
        (
            "trunc-v2",
            set(ok.clone(), 4, &2u32.to_be_bytes())[..71].to_vec(),
            libc::EINVAL,
            "the version 2 header needs 72".into(),
        ),
        (
            "trunc-v3",
            ok[..80].to_vec(),
            libc::EINVAL,
            "the version 3 header needs 104".into(),
        ),
        (
            "name-past-end",
            set(ok.clone(), 16, &200u32.to_be_bytes()),
            libc::EINVAL,
            "backing file name at offset 120, 200 bytes, is past the end of the file".into(),
        ),
        (
            "offset-past-end",
            set(ok.clone(), 8, &60000u64.to_be_bytes()),
            libc::EINVAL,
            "past the end of the file".into(),
        ),
        (
            "offset-past-cluster",
            set(ok.clone(), 8, &70000u64.to_be_bytes()),
            libc::EINVAL,
            "Invalid backing file offset 70000".into(),
        ),
        (
            "name-1024",
            set(ok.clone(), 16, &1024u32.to_be_bytes()),
            libc::EINVAL,
            "backing file name too long: 1024 bytes".into(),
        ),
        (
            "v1",
            set(ok.clone(), 4, &1u32.to_be_bytes()),
            libc::ENOTSUP,
            "it is a qcow image, and libfpl follows only raw and qcow2".into(),
        ),
        (
            "v4",
            set(ok.clone(), 4, &4u32.to_be_bytes()),
            libc::ENOTSUP,
            "Unsupported qcow2 version 4".into(),
        ),
        (
            "incompat-5",
            v3(&[], 1 << 5, None),
            libc::ENOTSUP,
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 20".into(),
        ),
        (
            "incompat-63",
            v3(&[], 1 << 63, None),
            libc::ENOTSUP,
            "Unknown incompatible feature: 8000000000000000".into(),
        ),
        (
            "datafile-bit-only",
            v3(&[], 4, None),
            libc::EINVAL,
            "'data-file' is required for this image".into(),
        ),
        (
            "datafile-empty",
            v3(&[(DATA, b"")], 4, None),
            libc::EINVAL,
            "'data-file' is required".into(),
        ),
        (
            "datafile-1024",
            v3(&[(DATA, &[b'a'; 1024])], 4, None),
            libc::EINVAL,
            "data file name too long: 1024 bytes".into(),
        ),
        (
            "datafile-missing",
            v3(&[(DATA, abs("nonexistent.raw").as_bytes())], 4, None),
            libc::ENOENT,
            format!(
                "Could not open '{}': No such file or directory",
                abs("nonexistent.raw")
            ),
        ),
        (
            "ext-huge",
            set(
                v3(&[(0x1234, b"abcd")], 0, None),
                116,
                &u32::MAX.to_be_bytes(),
            ),
            libc::EINVAL,
            "Header extension too large".into(),
        ),
        (
            "ext-past-end",
            v3(&[(0x1234, b"abcd")], 0, None)[..116].to_vec(),
            libc::EINVAL,
            "header extension at offset 112, 8 bytes, is past the end".into(),
        ),
        (
            "fmt-16",
            v3(&[(FMT, &[b'r'; 16])], 0, Some(b"base.raw")),
            libc::EINVAL,
            "backing format name too long: 16 bytes".into(),
        ),
        (
            "fmt-vmdk",
            v3(&[(FMT, b"vmdk")], 0, Some(b"base.raw")),
            libc::ENOTSUP,
            "it is a vmdk image".into(),
        ),
        (
            "fmt-zork",
            v3(&[(FMT, b"zork")], 0, Some(b"base.raw")),
            libc::EINVAL,
            "Could not open backing file: Could not open 'base.raw': Unknown driver 'zork'".into(),
        ),
        (
            "fmt-qcow2-on-raw",
            v3(&[(FMT, b"qcow2")], 0, Some(b"base.raw")),
            libc::EINVAL,
            "Could not open backing file: Could not open '".to_owned()
                + &abs("base.raw")
                + "': Image is not in qcow2 format",
        ),
        (
            "cluster-8",
            set(ok.clone(), 20, &8u32.to_be_bytes()),
            libc::EINVAL,
            "Unsupported cluster size: 2^8".into(),
        ),
        (
            "hdrlen-50",
            set(ok.clone(), 100, &50u32.to_be_bytes()),
            libc::EINVAL,
            "qcow2 header too short".into(),
        ),
        (
            "hdrlen-huge",
            set(ok.clone(), 100, &100_000u32.to_be_bytes()),
            libc::EINVAL,
            "qcow2 header exceeds cluster size".into(),
        ),
        (
            "self",
            v3(&[], 0, Some(b"self")),
            libc::ELOOP,
            "creates an infinite loop".into(),
        ),
        (
            "loop-a",
            v3(&[], 0, Some(b"loop-b")),
            libc::ELOOP,
            "creates an infinite loop".into(),
        ),
        (
            "to-fifo",
            v3(&[], 0, Some(b"fifo")),
            libc::EINVAL,
            "Could not open backing file: Could not open '".to_owned()
                + &abs("fifo")
                + "': not a regular file or block device",
        ),
        (
            "to-dir",
            v3(&[], 0, Some(b"adir")),
            libc::EISDIR,
            "Is a directory".into(),
        ),
        (
            "to-zero",
            v3(&[], 0, Some(b"/dev/zero")),
            libc::EINVAL,
            "Could not open backing file: Could not open '/dev/zero': not a regular file".into(),
        ),
        (
            "to-vmdk",
            v3(&[], 0, Some(b"x.vmdk")),
            libc::ENOTSUP,
            "it is a vmdk image".into(),
        ),
        (
            "to-qed",
            v3(&[], 0, Some(b"x.qed")),
            libc::ENOTSUP,
            "it is a qed image".into(),
        ),
        (
            "to-vhdx",
            v3(&[], 0, Some(b"x.vhdx")),
            libc::ENOTSUP,
            "it is a vhdx image".into(),
        ),
        (
            "to-luks",
            v3(&[], 0, Some(b"x.luks")),
            libc::ENOTSUP,
            "it is a luks image".into(),
        ),
        (
            "to-unknown-protocol",
            v3(&[], 0, Some(b"foo:bar")),
            libc::EINVAL,
            "Could not open backing file: Unknown protocol 'foo'".into(),
        ),
        (
            "to-blkdebug",
            v3(&[], 0, Some(b"blkdebug::x")),
            libc::ENOTSUP,
            "does not follow the 'blkdebug' protocol".into(),
        ),
        (
            "to-bad-json",
            v3(&[], 0, Some(b"json:{\"driver\":")),
            libc::EINVAL,
            "Could not parse the JSON options".into(),
        ),
        (
            "to-non-utf8-missing",
            v3(&[], 0, Some(b"gone-\xff.raw")),
            libc::ENOENT,
            "Could not open backing file: Could not open '".to_owned()
                + &abs("gone-\u{fffd}.raw")
                + "': No such file or directory",
        ),
        (
            "deep-0",
            Vec::new(),
            libc::ELOOP,
            format!("is longer than {MAX_DEPTH} backing files"),
        ),
    ];
    w("loop-b", &v3(&[], 0, Some(b"loop-a")));
    nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo: {e}"));
    std::fs::create_dir(p("adir")).ok();
    w("x.vmdk", b"KDMV\x01\0\0\0");
    w("x.qed", b"QED\0\0\0\0\0");
    w("x.vhdx", b"vhdxfile\0\0");
    w("x.luks", b"LUKS\xba\xbe\0\x01");
    // A 2,000-deep chain, headers written directly.
    for i in 0..2000 {
        // The last overlay names no format: its raw base is probed.
        let fmt: &[(u32, &[u8])] = if i < 1999 { &[(FMT, b"qcow2")] } else { &[] };
        w(
            &format!("deep-{i}"),
            &v3(fmt, 0, Some(format!("deep-{}", i + 1).as_bytes())),
        );
    }
    w("deep-2000", &[0u8; 512]);
    assert!(cases.len() >= 30);

    let before = fd_count();
    for round in 0..2 {
        for (name, bytes, errno, msg) in &cases {
            if !bytes.is_empty() {
                w(name, bytes);
            }
            for mode in Mode::ALL {
                let e = chain::resolve(&p(name), req(mode)).err();
                let got = e.as_ref().map(|e| (e.errno(), e.to_string()));
                let Some((got_errno, got_msg)) = got else {
                    panic!("{name}: resolved, expected errno {errno}");
                };
                assert_eq!(got_errno, *errno, "{name}: {got_msg}");
                assert!(
                    got_msg.contains(msg.as_str()),
                    "{name} (round {round}): {got_msg:?} lacks {msg:?}"
                );
            }
            // The chain lock refuses the same way, through both APIs.
            let e = fpl::ChainLock::acquire(&p(name), req(Mode::Write), Default::default())
                .err()
                .unwrap_or_else(|| panic!("{name}: locked, expected errno {errno}"));
            assert_eq!(e.errno(), *errno, "{name}: {e}");
            let c = std::ffi::CString::new(p(name).as_os_str().as_bytes()).expect("no NUL");
            let mut lock: *mut fpl::ffi::fpl_lock = std::ptr::null_mut();
            let mut err = fpl::ffi::fpl_error::default();
            // SAFETY: valid pointers.
            let rc = unsafe {
                fpl::ffi::fpl_acquire(
                    c.as_ptr(),
                    fpl::ffi::FPL_MODE_READ_PERM,
                    fpl::ffi::FPL_MODE_READ_SHARE,
                    fpl::ffi::FPL_FLAG_CHAIN,
                    &mut lock,
                    &mut err,
                )
            };
            assert_eq!(rc, -errno, "{name}");
            assert!(lock.is_null());
        }
    }
    assert_eq!(fd_count(), before, "descriptors left open");
    // And no lock of this process is left on any file of the corpus.
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir(d).expect("list the corpus") {
        let f = entry.expect("entry").path();
        if f.is_file() {
            if let Ok(st) = fpl::query(&f, true) {
                assert!(
                    st.holders.iter().all(|h| h.pid != me),
                    "{f:?}: a lock of ours is left"
                );
            }
        }
    }

    // Cases that resolve, as QEMU resolves them.
    let shared_data = v3(&[(DATA, abs("shared.raw").as_bytes())], 4, None);
    w("shared.raw", &[0u8; 512]);
    w("data-base.qcow2", &shared_data);
    let mut top = v3(
        &[(DATA, abs("shared.raw").as_bytes()), (FMT, b"qcow2")],
        4,
        Some(b"data-base.qcow2"),
    );
    top.extend_from_slice(&[0; 8]);
    w("data-top.qcow2", &top);
    w("empty-name", &set(ok.clone(), 16, &0u32.to_be_bytes()));
    w("v0", &set(ok.clone(), 4, &0u32.to_be_bytes()));
    // Too short for QEMU's qcow2 probe (8 bytes): raw.
    w("trunc7", b"QFI\xfb\0\0\0");
    w("gone-\u{fffd}.raw", b"not the file");
    w("non-utf8", &v3(&[], 0, Some(b"b-\xff.raw")));
    std::fs::write(d.join(OsStr::from_bytes(b"b-\xff.raw")), [0u8; 512]).ok();
    let deep_ok = format!("deep-{}", 2000 - MAX_DEPTH);
    type Shape = Vec<(Role, Format, u32)>;
    let checks: [(&str, Shape); 7] = [
        ("trunc7", vec![(Role::Image, Format::Raw, 0)]),
        (
            "good.qcow2",
            vec![
                (Role::Image, Format::Qcow2, 0),
                (Role::Backing, Format::Raw, 1),
            ],
        ),
        // A data file shared by the image and its backing file: once.
        (
            "data-top.qcow2",
            vec![
                (Role::Image, Format::Qcow2, 0),
                (Role::DataFile, Format::Raw, 0),
                (Role::Backing, Format::Qcow2, 1),
            ],
        ),
        // An empty backing name is no backing file, for QEMU too.
        ("empty-name", vec![(Role::Image, Format::Qcow2, 0)]),
        // Version 0: neither qcow nor qcow2 claims it, so QEMU probes raw.
        ("v0", vec![(Role::Image, Format::Raw, 0)]),
        (
            "non-utf8",
            vec![
                (Role::Image, Format::Qcow2, 0),
                (Role::Backing, Format::Raw, 1),
            ],
        ),
        (
            &deep_ok,
            (0..=MAX_DEPTH)
                .map(|i| {
                    (
                        if i == 0 { Role::Image } else { Role::Backing },
                        if i == MAX_DEPTH {
                            Format::Raw
                        } else {
                            Format::Qcow2
                        },
                        i,
                    )
                })
                .collect(),
        ),
    ];
    for (name, want) in checks {
        let m =
            chain::resolve(&p(name), req(Mode::Write)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<(Role, Format, u32)> = m.iter().map(|m| (m.role, m.format, m.depth)).collect();
        assert_eq!(got, want, "{name}");
    }
    let m = chain::resolve(&p("non-utf8"), req(Mode::Read)).unwrap_or_default();
    let want = [d.as_os_str().as_bytes(), b"/b-\xff.raw"].concat();
    assert_eq!(
        m.get(1).map(|m| m.path.as_os_str().as_bytes().to_vec()),
        Some(want)
    );
    // The shared data file got both requests: the image's write included.
    let m = chain::resolve(&p("data-top.qcow2"), req(Mode::Write)).unwrap_or_default();
    assert_eq!(m.get(1).map(|m| m.request.perm), Some(Mode::Write.perm()));
    assert_eq!(fd_count(), before, "descriptors left open");
}
