//! The objects `--json` prints. `status --json` and `check --json` print
//! one JSON array with one object per image, in command-line order, each
//! object on a line of its own. Names
//! are those of the C structs (`fpl_status`, `fpl_holder`, `fpl_error`);
//! permission sets are lists of QEMU's names.
//!
//! `status`, an image that could be inspected:
//!
//! ```json
//! {"path": "vm.qcow2",
//!  "perm": ["consistent-read", "write", "resize"],  // bytes 100+i held
//!  "unshared": ["write", "resize"],                   // bytes 200+i held
//!  "flags": [],               // "legacy" (104/204), "libvirt" (byte 0),
//!                             // "holders-partial" (some process not inspectable)
//!  "holders": [{"pid": 4410, "fd": 12, "name": "qemu-system-x86",
//!               "guest": "vm01",      // -name guest=vm01 (libvirt), or null
//!               "uid": 64055, "user": "libvirt-qemu",   // or null, null
//!               "perm": [...], "unshared": [...], "flags": [...],
//!               "access": ["read", "write"]}]}   // how it opened the image
//! ```
//!
//! An opener (a process with the image open that holds none of its bytes:
//! QEMU with `locking=off`, an incoming migration's destination) is in
//! `holders` too, with `"flags": ["no-locks"]` and empty `perm` and
//! `unshared`. `holders` is left out with `--no-holders`, which looks for
//! neither. Bytes held while `holders` is
//! empty mean a holder fpl cannot see, never a free image.
//!
//! `status --chain`: `{"path": IMAGE, "members": [...]}`, one object per
//! file of the image, top first: `path` (as QEMU opens it), `role`
//! (`image`, `backing`, `data-file`), `format` (`raw`, `qcow2`, `remote`),
//! `depth`, then the keys of a `status` object (`perm`, `unshared`, `flags`,
//! `holders`; or `error`, `errno`, `hint`; none for a remote member, which
//! is never opened), then `overlays`: the images named whose chain holds
//! this file below their top, `[{"path", "role", "depth"}]` (its role and
//! depth in that image's chain). A file already described under an earlier
//! image named (a base shared by a pool) carries `described_in` (that
//! image) instead of `holders` and `overlays`, so that the output grows
//! with the files, not with overlays times overlays.
//!
//! `check`: `{"path": ..., "ok": true}` when the access would be granted;
//! on a conflict `{"path": ..., "ok": false, "error": MESSAGE, "errno": 11,
//! "conflict": {"byte": 201, "perm": "write", "message": QEMU's first line,
//! "holder": {"pid": ..., "name": ...} or null}}`; with `--chain` the
//! conflict also has `"member"`, the file of the image's chain refused.
//! Refused beside an opener (`--no-unlocked-openers`, errno 16, EBUSY):
//! `"opener": {"pid", "fd", "name", "access"}` instead of `"conflict"`,
//! with `"member"` too under `--chain`.
//!
//! Any command, an image that could not be inspected: `{"path": ...,
//! "error": MESSAGE, "errno": N}`, plus `"hint"` when there is advice, and
//! `"ok": false` for `check`.

use std::path::Path;

use fpl::{Error, Held, Holder, PermSet, Status};

use crate::chain_status::{format_name, role_name, Inspected};
use serde_json::{json, Map, Value};

use crate::report;

/// QEMU's names of the permissions in `set`, in bit order.
fn perm_list(set: PermSet) -> Value {
    set.iter().map(|p| p.cli_name()).collect()
}

fn held_flags(held: &Held) -> Vec<&'static str> {
    let mut flags = Vec::new();
    if held.legacy {
        flags.push("legacy");
    }
    if held.libvirt {
        flags.push("libvirt");
    }
    flags
}

fn holder(h: &Holder) -> Value {
    let mut flags = held_flags(&h.held);
    if h.no_locks {
        flags.push("no-locks");
    }
    if h.inferred {
        flags.push("inferred");
    }
    let id = crate::status::identity(h.pid);
    let (uid, user) = match &id.user {
        Some((uid, user)) => (json!(uid), json!(user)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "pid": h.pid,
        "fd": h.fd,
        "name": h.name,
        "guest": id.guest,
        "uid": uid,
        "user": user,
        "perm": perm_list(h.held.perm),
        "unshared": perm_list(h.held.unshared),
        "flags": flags,
        "access": access_list(h.access),
    })
}

/// How the holder's descriptor was opened: `["read"]`, `["read", "write"]`,
/// `["write"]`, or `[]` when fdinfo did not say.
fn access_list(a: fpl::fdinfo::Access) -> Value {
    let mut list = Vec::new();
    if a.read {
        list.push("read");
    }
    if a.write {
        list.push("write");
    }
    json!(list)
}

/// The `status` object of an inspected image; `holders` when they were looked up.
pub fn status(path: &Path, status: &Status, holders: bool) -> Value {
    let mut flags = held_flags(&status.held);
    if status.holders_partial {
        flags.push("holders-partial");
    }
    let mut object = json!({
        "path": path.to_string_lossy(),
        "perm": perm_list(status.held.perm),
        "unshared": perm_list(status.held.unshared),
        "flags": flags,
    });
    if holders {
        object["holders"] = status.holders.iter().map(holder).collect();
    }
    object
}

/// The `status --chain` object of an image whose chain was resolved:
/// `{"path", "members": [...]}`, one member object per file, top first.
pub fn chain(path: &Path, members: &[Inspected], holders: bool) -> Value {
    json!({
        "path": path.to_string_lossy(),
        "members": members.iter().map(|m| member(m, holders)).collect::<Value>(),
    })
}

/// A member: `path`, `role`, `format`, `depth`, then what `status` says
/// of it (`perm`, `unshared`, `flags`, `holders`; or `error`, `errno`,
/// `hint`; nothing for a remote member, which is never opened), then
/// `overlays`: the images named that refer to it.
fn member(m: &Inspected, holders: bool) -> Value {
    let mut object = Map::new();
    object.insert("path".into(), m.member.path.to_string_lossy().into());
    object.insert("role".into(), role_name(m.member.role).into());
    object.insert("format".into(), format_name(m.member.format).into());
    object.insert("depth".into(), m.member.depth.into());
    // A file described under an earlier image: its bytes, not its holders.
    let holders = holders && m.described_in.is_none();
    let fields = match m.status.as_deref() {
        None => Value::Null,
        Some(Ok(s)) => status(&m.member.path, s, holders),
        Some(Err(e)) => error(&m.member.path, e),
    };
    if let Some(first) = &m.described_in {
        // Said in full under the first image that has this file.
        if let Value::Object(fields) = fields {
            object.extend(
                fields
                    .into_iter()
                    .filter(|(k, _)| k != "path" && k != "holders"),
            );
        }
        object.insert("described_in".into(), first.to_string_lossy().into());
        return Value::Object(object);
    }
    if let Value::Object(fields) = fields {
        object.extend(fields.into_iter().filter(|(k, _)| k != "path"));
    }
    let overlays = m
        .overlays
        .iter()
        .map(|o| {
            json!({
                "path": o.path.to_string_lossy(),
                "role": role_name(o.role),
                "depth": o.depth,
            })
        })
        .collect();
    object.insert("overlays".into(), overlays);
    Value::Object(object)
}

/// The object of an image that could not be inspected.
pub fn error(path: &Path, e: &Error) -> Value {
    let mut object = Map::new();
    object.insert("path".into(), path.to_string_lossy().into());
    object.insert("error".into(), e.to_string().into());
    object.insert("errno".into(), e.errno().into());
    if let Some(hint) = report::hint(e) {
        object.insert("hint".into(), hint.into());
    }
    Value::Object(object)
}

/// The `check` object: granted, refused (with the conflict) or an error.
/// With `chain`, the conflict names the file refused (`member`).
pub fn check(path: &Path, outcome: &Result<(), Error>, chain: bool) -> Value {
    let e = match outcome {
        Ok(()) => return json!({"path": path.to_string_lossy(), "ok": true}),
        Err(e) => e,
    };
    let mut object = Map::new();
    object.insert("path".into(), path.to_string_lossy().into());
    object.insert("ok".into(), false.into());
    if let Value::Object(fields) = error(path, e) {
        object.extend(fields.into_iter().filter(|(k, _)| k != "path"));
    }
    if let Some(c) = e.conflict() {
        let holder = c
            .holder
            .as_ref()
            .map_or(Value::Null, |h| json!({"pid": h.pid, "name": h.name}));
        let mut conflict = json!({
            "byte": c.byte,
            "perm": c.perm.cli_name(),
            "message": c.qemu_message(),
            "holder": holder,
        });
        if chain {
            let member = c.path.as_deref().unwrap_or(path);
            conflict["member"] = member.to_string_lossy().into();
        }
        object.insert("conflict".into(), conflict);
    }
    if let Error::Opened { path: file, opener } = e {
        let mut found = json!({
            "pid": opener.pid,
            "fd": opener.fd,
            "name": opener.name,
            "access": access_list(opener.access),
        });
        if chain {
            found["member"] = file.to_string_lossy().into();
        }
        object.insert("opener".into(), found);
    }
    Value::Object(object)
}

/// Prints the array on standard output, one object per line:
/// `[\n{...},\n{...}\n]`, valid JSON that line tools can still read.
pub fn print(objects: Vec<Value>) {
    // Serializing a Value cannot fail: all its map keys are strings.
    let lines: Vec<String> = objects.iter().map(Value::to_string).collect();
    if lines.is_empty() {
        crate::out("[]");
    } else {
        crate::out(&format!("[\n{}\n]", lines.join(",\n")));
    }
}
