//! The section 3 manual pages: `man/man3/fpl_*.3` are made from the
//! documentation of each function in include/fpl.h (itself generated from
//! the code), so that the pages can never drift from the header: this test
//! makes them again and compares. `FPL_MAN_BLESS=1 cargo test --test
//! manpages` writes them. `man/man3/libfpl.3`, the overview, is written by
//! hand; every page must be clean under `groff -man -ww -z`, and the
//! overview must name every function.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use common::root;

/// One function of the header: its name, its documentation (the lines of
/// its `/** ... */` comment, without the ` * `), its prototype.
struct Function {
    name: String,
    doc: Vec<String>,
    prototype: String,
}

/// The functions of include/fpl.h, in header order.
fn functions(header: &str) -> Vec<Function> {
    let mut out = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    let mut in_doc = false;
    let mut proto: Option<String> = None;
    for line in header.lines() {
        if in_doc {
            if line.trim_start().starts_with("*/") {
                in_doc = false;
            } else {
                let text = line.trim_start().strip_prefix('*').unwrap_or(line);
                doc.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
            }
            continue;
        }
        if proto.is_none() {
            if line.starts_with("/**") {
                in_doc = true;
                doc.clear();
                continue;
            }
            let is_function = (line.starts_with("int fpl_")
                || line.starts_with("const char *fpl_"))
                && line.contains('(');
            if !is_function {
                if !line.trim().is_empty() {
                    doc.clear();
                }
                continue;
            }
            proto = Some(String::new());
        }
        let p = proto.as_mut().expect("a prototype is being read");
        p.push(' ');
        p.push_str(line.trim());
        if line.trim_end().ends_with(");") {
            let prototype = p.split_whitespace().collect::<Vec<_>>().join(" ");
            let name = prototype
                .split('(')
                .next()
                .and_then(|head| head.split([' ', '*']).next_back())
                .unwrap_or_default()
                .to_owned();
            out.push(Function {
                name,
                doc: std::mem::take(&mut doc),
                prototype,
            });
            proto = None;
        }
    }
    out
}

/// Text for roff: backslashes, hyphens and a leading `.` or `'` escaped.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// The page of one function.
fn page(f: &Function, version: &str) -> String {
    let mut sections: Vec<(String, Vec<Vec<String>>)> =
        vec![("DESCRIPTION".to_owned(), vec![Vec::new()])];
    for line in &f.doc {
        if let Some(title) = line.strip_prefix("# ") {
            sections.push((title.to_uppercase(), vec![Vec::new()]));
        } else if line.trim().is_empty() {
            sections.last_mut().expect("one").1.push(Vec::new());
        } else {
            let paragraphs = &mut sections.last_mut().expect("one").1;
            paragraphs.last_mut().expect("one").push(line.clone());
        }
    }
    // The first sentence of the first paragraph, as the NAME line's
    // description (cut at a word past 90 characters).
    let first: Vec<&str> = f
        .doc
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(String::as_str)
        .collect();
    let first = first.join(" ");
    // The earliest ". " or "? " that is not inside "e.g. " or "i.e. ".
    let end = first
        .char_indices()
        .find(|&(i, c)| {
            (c == '.' || c == '?')
                && first[i + 1..].starts_with(' ')
                && !first[..=i].ends_with("e.g.")
                && !first[..=i].ends_with("i.e.")
        })
        .map_or(first.len(), |(i, c)| if c == '?' { i + 1 } else { i });
    let mut summary = first[..end].trim_end_matches('.').to_owned();
    if summary.len() > 90 {
        let cut = summary[..90].rfind(' ').unwrap_or(90);
        summary.truncate(cut);
        summary.push_str(" ...");
    }
    let mut out = format!(
        ".\\\" Made from include/fpl.h by tests/manpages.rs: edit the code's documentation.\n\
         .TH {} 3 \"\" \"libfpl {version}\" \"libfpl Manual\"\n\
         .SH NAME\n{} \\- {}\n\
         .SH SYNOPSIS\n.nf\n.B #include <fpl.h>\n.PP\n{}\n.fi\n",
        f.name.to_uppercase(),
        f.name,
        roff(&summary),
        roff(&f.prototype),
    );
    for (title, paragraphs) in sections {
        let paragraphs: Vec<&Vec<String>> = paragraphs.iter().filter(|p| !p.is_empty()).collect();
        if paragraphs.is_empty() {
            continue;
        }
        out.push_str(&format!(".SH {title}\n"));
        for (i, p) in paragraphs.iter().enumerate() {
            if i > 0 {
                out.push_str(".PP\n");
            }
            for line in p.iter() {
                out.push_str(&roff(line));
                out.push('\n');
            }
        }
    }
    out.push_str(".SH SEE ALSO\n.BR libfpl (3),\n.BR fpl (1)\n");
    out
}

fn version() -> String {
    let toml = fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version")
        .to_owned()
}

fn pages() -> BTreeMap<String, String> {
    let header = fs::read_to_string(root().join("include/fpl.h")).expect("include/fpl.h");
    let version = version();
    functions(&header)
        .iter()
        .map(|f| (format!("{}.3", f.name), page(f, &version)))
        .collect()
}

#[test]
fn every_function_has_its_page_made_from_the_header() {
    let dir = root().join("man/man3");
    let pages = pages();
    let names: Vec<&str> = pages.keys().map(String::as_str).collect();
    for want in [
        "fpl_acquire.3",
        "fpl_acquire_fd.3",
        "fpl_acquire_wait.3",
        "fpl_chain.3",
        "fpl_check.3",
        "fpl_query.3",
        "fpl_query_many.3",
        "fpl_release.3",
        "fpl_update.3",
        "fpl_verify.3",
        "fpl_version.3",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    if std::env::var_os("FPL_MAN_BLESS").is_some() {
        fs::create_dir_all(&dir).expect("mkdir man/man3");
        for (name, text) in &pages {
            fs::write(dir.join(name), text).expect("write a page");
        }
    }
    for (name, text) in &pages {
        let committed = fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *text,
            "man/man3/{name} differs from what include/fpl.h gives: \
             FPL_MAN_BLESS=1 cargo test --test manpages, and commit it"
        );
    }
    // No page of a function the header no longer has.
    for entry in fs::read_dir(&dir).expect("man/man3") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            name == "libfpl.3" || pages.contains_key(&name),
            "man/man3/{name} belongs to no function of include/fpl.h"
        );
    }
}

#[test]
fn every_page_is_clean_roff_and_the_overview_names_every_function() {
    let dir = root().join("man/man3");
    let overview = fs::read_to_string(dir.join("libfpl.3")).expect("man/man3/libfpl.3");
    for name in pages().keys() {
        let function = name.trim_end_matches(".3");
        assert!(
            overview.contains(&format!(".BR {function} (3)")),
            "libfpl(3) does not point to {function}(3)"
        );
    }
    for entry in fs::read_dir(&dir).expect("man/man3") {
        let page = entry.expect("entry").path();
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
}
