//! Section 8: a lock test on shared storage against the same on a local
//! file system, in the same process: a GlusterFS volume mounted through
//! FUSE (the two-host test bed of tests/common/gluster.rs, host A's mount)
//! against the benchmark's own folder. Each call goes to the brick and
//! back on GlusterFS; on a local file system it stays in the kernel.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fpl::{Lock, Mode, Options};

use crate::{micros, need, ratio, request, time_per_call, Bench};

#[allow(dead_code)]
#[path = "../../tests/common/gluster.rs"]
mod gluster;

pub(crate) fn shared(b: &mut Bench) {
    need("qemu-img", "qemu-utils");
    b.say("## 8. Shared storage: GlusterFS against a local file system\n");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("section shared: the GlusterFS test bed needs root (run the benchmark as root, or --only=SECTION for another section)");
    }
    let cluster = gluster::Cluster::start();
    let local = b.dir.join("shared-local.raw");
    let remote = cluster.a("shared.raw");
    for image in [&local, &remote] {
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(image)
            .arg("1M")
            .output()
            .expect("qemu-img runs");
        assert!(out.status.success(), "qemu-img create {image:?}");
    }
    let fs_type = |p: &Path| {
        let out = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(p)
            .output()
            .expect("stat runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    b.say(format!(
        "Local: {} ({}); GlusterFS 10.3: a single-brick volume on this host, \
         mounted with FUSE (fuse.glusterfs). Per call, best of the rounds.\n",
        local.display(),
        fs_type(&local),
    ));
    let (rounds, n) = if b.quick { (2, 20) } else { (5, 200) };
    type Op = fn(&Path);
    let rows: [(&str, Op); 3] = [
        ("check write (tests only)", check_write),
        ("query, no holders", query_bytes),
        ("acquire + release write", acquire_release),
    ];
    b.say("| operation | local | GlusterFS (FUSE) | ratio |");
    b.say("|---|---|---|---|");
    for (name, op) in rows {
        let l = time_per_call(rounds, n, || op(&local));
        let r = time_per_call(rounds, n, || op(&remote));
        row(b, name, l, r);
    }
    let held =
        |path: &Path| Lock::acquire(path, request(Mode::Write), Options::default()).expect("write");
    let (ll, rl) = (held(&local), held(&remote));
    let l = time_per_call(rounds, n, || ll.verify().expect("held"));
    let r = time_per_call(rounds, n, || rl.verify().expect("held"));
    row(b, "verify a held write lock", l, r);
    ll.release().expect("release");
    rl.release().expect("release");
    b.say("");
    drop(cluster);
}

fn row(b: &mut Bench, name: &str, local: Duration, remote: Duration) {
    b.say(format!(
        "| {name} | {} | {} | {:.1} |",
        micros(local),
        micros(remote),
        ratio(remote, local)
    ));
}

fn check_write(path: &Path) {
    let options = Options {
        skip_holder_lookup: true,
        ..Options::default()
    };
    fpl::check(path, request(Mode::Write), options).expect("granted");
}

fn query_bytes(path: &Path) {
    let st = fpl::query(path, false).expect("query");
    assert!(st.held.is_empty());
}

fn acquire_release(path: &Path) {
    Lock::acquire(path, request(Mode::Write), Options::default())
        .and_then(Lock::release)
        .expect("acquire + release");
}
