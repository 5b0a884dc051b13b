//! `fpl status --chain`: each image as the tree of files QEMU opens for it
//! (the image, its data file, its backing chain; `fpl::chain::resolve`),
//! who holds each file and for what, and which of the other images named
//! refer to it (its overlays). Over a pool (`fpl status --chain dir/*`)
//! that answers "who uses this base image?": the processes holding it, and
//! the overlays that would need it.
//!
//! The files of all the images are inspected together: each file once
//! (by inode), and `/proc` walked once for all of them, for holders and
//! openers alike (`fpl::query::query_many_with`). Remote members (`nbd:`, ...) are listed and
//! never opened: their server locks its own file.

use std::collections::HashMap;
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
    /// The image named earlier whose tree already describes this file (a
    /// base shared by a pool): its holders and overlays are said there
    /// once, not again under every overlay.
    pub described_in: Option<PathBuf>,
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
/// of `/proc` for holders and openers with `holders`), and finds each file's overlays among the
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
    let mut index: HashMap<FileId, usize> = HashMap::new();
    let mut names: Vec<&Path> = Vec::new();
    for m in chains.iter().flatten().flatten() {
        if let Some(id) = m.file {
            index.entry(id).or_insert_with(|| {
                names.push(m.path.as_path());
                names.len() - 1
            });
        }
    }
    // One result per file, shared by every member that is that file.
    let statuses: Vec<Rc<Result<Status, Error>>> =
        fpl::query::query_many_with(&names, status::looked_up(holders))
            .into_iter()
            .map(Rc::new)
            .collect();

    // Every file's overlays, in one pass over all chains.
    let mut overlays: HashMap<FileId, Vec<Overlay>> = HashMap::new();
    for (path, chain) in paths.iter().zip(&chains) {
        let Ok(chain) = chain else { continue };
        let top = chain.first().and_then(|t| t.file);
        for m in chain.iter().filter(|m| m.role != Role::Image) {
            if let Some(id) = m.file {
                overlays.entry(id).or_default().push(Overlay {
                    path: path.clone(),
                    role: m.role,
                    depth: m.depth,
                    file: top,
                });
            }
        }
    }

    // A file is described in full once: under its own name when it is
    // named itself (the base in `fpl status --chain pool/*`), else under
    // the first image that has it.
    let mut first: HashMap<FileId, PathBuf> = HashMap::new();
    for (path, chain) in paths.iter().zip(&chains) {
        if let Some(id) = chain.as_ref().ok().and_then(|c| c.first()?.file) {
            first.entry(id).or_insert_with(|| path.clone());
        }
    }
    paths
        .iter()
        .zip(chains)
        .map(|(path, chain)| Tree {
            path: path.clone(),
            members: chain.map(|members| {
                members
                    .into_iter()
                    .map(|member| {
                        let described_in = member.file.and_then(|id| match first.get(&id) {
                            Some(p) if p == path => None,
                            Some(p) => Some(p.clone()),
                            None => {
                                first.insert(id, path.clone());
                                None
                            }
                        });
                        let full = described_in.is_none();
                        Inspected {
                            status: member.file.map(|id| Rc::clone(&statuses[index[&id]])),
                            overlays: member
                                .file
                                .filter(|_| full)
                                .and_then(|id| overlays.remove(&id))
                                .unwrap_or_default(),
                            member,
                            described_in,
                        }
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
        let mut notes = status::Notes::default();
        for tree in &trees {
            match &tree.members {
                Ok(members) => {
                    for line in describe_tree(members, holders, &mut notes) {
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
/// those in this tree, which the tree shows already. A file described under
/// an earlier image (a base shared by a pool) is one line, `(described
/// under top0.qcow2)`, so a pool's output grows with its files, not with
/// overlays times overlays. A note said once in `notes` (what an opener
/// is) is not said again.
pub fn describe_tree(
    members: &[Inspected],
    holders: bool,
    notes: &mut status::Notes,
) -> Vec<String> {
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
        if let Some(first) = &m.described_in {
            head.push_str(&format!(" (described under {})", escape::path(first)));
            lines.push(head);
            continue;
        }
        lines.push(head);
        let body = match m.status.as_deref() {
            None => vec!["not opened: its server locks its own file".to_owned()],
            Some(Ok(status)) => status::describe(status, holders, notes),
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
