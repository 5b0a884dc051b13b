//! `fpl status --chain`: each image as the tree of files QEMU opens for it
//! (the image, its data file, its backing chain; `fpl::chain::resolve`),
//! who holds each file and for what, and which of the other images named
//! refer to it (its overlays). Over a pool (`fpl status --chain dir/*`)
//! that answers "who uses this base image?": the processes holding it, and
//! the overlays that would need it.
//!
//! The files of all the images are inspected together: each file once
//! (by inode), and `/proc` walked once for all of them
//! (`fpl::query::query_many`). Remote members (`nbd:`, ...) are listed and
//! never opened: their server locks its own file.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use fpl::chain::{self, Format, Member, Role};
use fpl::{Error, FileId, Mode, Request, Status};

use crate::{escape, json, out, report, status, EXIT_ERROR, EXIT_OK};

/// One member of an image, inspected.
pub struct Inspected {
    /// The member as resolved (path as QEMU opens it, role, format, depth).
    pub member: Member,
    /// Its bytes and holders; `None` for a remote member (never opened).
    pub status: Option<Rc<Result<Status, Error>>>,
    /// The images named whose chain has this file below their top.
    pub overlays: Vec<Overlay>,
}

/// An image named that refers to a file (as backing file or data file).
pub struct Overlay {
    /// The image, as named on the command line.
    pub path: PathBuf,
    /// What the file is to it: [`Role::Backing`] or [`Role::DataFile`].
    pub role: Role,
    /// The file's depth in that image's chain.
    pub depth: u32,
    /// The inode of that image (to tell whether it is in a given tree).
    file: Option<FileId>,
}

/// One image named on the command line.
pub struct Tree {
    /// As named.
    pub path: PathBuf,
    /// Its members, top first, or why its chain could not be resolved.
    pub members: Result<Vec<Inspected>, Error>,
}

/// Resolves every image's chain, inspects every local file once (one walk
/// of `/proc` with `holders`), and finds each file's overlays among the
/// images named.
pub fn inspect(paths: &[PathBuf], holders: bool) -> Vec<Tree> {
    // The members do not depend on the request; only their derived
    // requests do, which status does not show.
    let request = Request {
        perm: Mode::ReadShared.perm(),
        shared: Mode::ReadShared.shared(),
        exact: false,
    };
    let chains: Vec<Result<Vec<Member>, Error>> =
        paths.iter().map(|p| chain::resolve(p, request)).collect();

    // Each file once, by inode: names of one inode share its locks.
    let mut files: Vec<(FileId, PathBuf)> = Vec::new();
    for m in chains.iter().flatten().flatten() {
        if let Some(id) = m.file {
            if !files.iter().any(|(f, _)| *f == id) {
                files.push((id, m.path.clone()));
            }
        }
    }
    let names: Vec<&Path> = files.iter().map(|(_, p)| p.as_path()).collect();
    // One result per file, shared by every member that is that file.
    let statuses: Vec<Rc<Result<Status, Error>>> = fpl::query::query_many(&names, holders)
        .into_iter()
        .map(Rc::new)
        .collect();
    let status_of = |id: FileId| {
        files
            .iter()
            .position(|(f, _)| *f == id)
            .map(|i| Rc::clone(&statuses[i]))
    };

    let overlays_of = |id: FileId| -> Vec<Overlay> {
        paths
            .iter()
            .zip(&chains)
            .filter_map(|(path, chain)| {
                let chain = chain.as_ref().ok()?;
                let m = chain
                    .iter()
                    .find(|m| m.file == Some(id) && m.role != Role::Image)?;
                Some(Overlay {
                    path: path.clone(),
                    role: m.role,
                    depth: m.depth,
                    file: chain.first().and_then(|top| top.file),
                })
            })
            .collect()
    };

    let overlays: Vec<Vec<Vec<Overlay>>> = chains
        .iter()
        .map(|chain| match chain {
            Ok(members) => members
                .iter()
                .map(|m| m.file.map_or_else(Vec::new, overlays_of))
                .collect(),
            Err(_) => Vec::new(),
        })
        .collect();

    paths
        .iter()
        .zip(chains)
        .zip(overlays)
        .map(|((path, chain), overlays)| Tree {
            path: path.clone(),
            members: chain.map(|members| {
                members
                    .into_iter()
                    .zip(overlays)
                    .map(|(member, overlays)| Inspected {
                        status: member.file.and_then(status_of),
                        member,
                        overlays,
                    })
                    .collect()
            }),
        })
        .collect()
}
/// Runs `fpl status --chain`; returns the exit status.
pub fn run(paths: &[PathBuf], holders: bool, as_json: bool) -> u8 {
    let trees = inspect(paths, holders);
    let all_ok = trees.iter().all(|t| match &t.members {
        Ok(members) => members
            .iter()
            .all(|m| !m.status.as_ref().is_some_and(|s| s.is_err())),
        Err(_) => false,
    });
    if as_json {
        json::print(
            trees
                .iter()
                .map(|t| match &t.members {
                    Ok(members) => json::chain(&t.path, members, holders),
                    Err(e) => json::error(&t.path, e),
                })
                .collect(),
        );
    } else {
        for tree in &trees {
            match &tree.members {
                Ok(members) => {
                    for line in describe_tree(members, holders) {
                        out(&line);
                    }
                }
                Err(e) => report::print_error(&tree.path, e),
            }
        }
    }
    if all_ok {
        EXIT_OK
    } else {
        EXIT_ERROR
    }
}

/// QEMU's name of a role, for text.
fn role_words(role: Role) -> &'static str {
    match role {
        Role::Image => "image",
        Role::Backing => "backing file",
        Role::DataFile => "data file",
    }
}

/// The JSON name of a role (`FPL_ROLE_*`).
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Image => "image",
        Role::Backing => "backing",
        Role::DataFile => "data-file",
    }
}

/// The JSON and text name of a format (`FPL_FORMAT_*`).
pub fn format_name(format: Format) -> &'static str {
    match format {
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
        Format::Remote => "remote",
    }
}

/// The lines of one image's tree. Each member is a line `PATH: FORMAT ROLE`
/// (with `, depth N` below the image), indented two spaces per level: a
/// member's data file and backing file are its children. Under it, indented
/// once more, what `fpl status` says of it, and the other images named
/// that refer to it (`backing file of b.qcow2 (depth 1)`), leaving out
/// those in this tree, which the tree shows already.
pub fn describe_tree(members: &[Inspected], holders: bool) -> Vec<String> {
    let in_tree: Vec<FileId> = members.iter().filter_map(|m| m.member.file).collect();
    let mut lines = Vec::new();
    for m in members {
        let level = m.member.depth as usize + usize::from(m.member.role == Role::DataFile);
        let indent = "  ".repeat(level);
        let mut head = format!(
            "{indent}{}: {} {}",
            escape::path(&m.member.path),
            format_name(m.member.format),
            role_words(m.member.role)
        );
        if m.member.role != Role::Image {
            head.push_str(&format!(", depth {}", m.member.depth));
        }
        lines.push(head);
        let body = match m.status.as_deref() {
            None => vec!["not opened: its server locks its own file".to_owned()],
            Some(Ok(status)) => status::describe(status, holders),
            Some(Err(e)) => {
                // On standard error like every error, and said in the tree.
                report::print_error(&m.member.path, e);
                vec![format!("cannot be inspected: {}", escape::error(e))]
            }
        };
        let overlays = m
            .overlays
            .iter()
            .filter(|o| !o.file.is_some_and(|f| in_tree.contains(&f)))
            .map(|o| match o.role {
                Role::DataFile => format!("data file of {}", escape::path(&o.path)),
                role => format!(
                    "{} of {} (depth {})",
                    role_words(role),
                    escape::path(&o.path),
                    o.depth
                ),
            });
        lines.extend(
            body.into_iter()
                .chain(overlays)
                .map(|line| format!("{indent}  {line}")),
        );
    }
    lines
}
