//! The section 3 manual pages: `man/man3/fpl_*.3` are made from the
//! documentation of each function in include/fpl.h (itself generated from
//! the code), so that the pages can never drift from the header: this test
//! makes them again and compares. `FPL_MAN_BLESS=1 cargo test --test
//! manpages` writes them. Their NAME lines (what whatis(1) shows) come
//! from SUMMARIES below, kept by hand, one for every function of the header;
//! `code` spans become bold and the arguments (PATH, ERR) italic.
//! `man/man3/libfpl.3`, the overview, is written by hand; every page must
//! be clean under `groff -man -ww -z`, and the overview must name every
//! function.

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

/// The NAME line of each function's page: what whatis(1) and apropos(1)
/// show, a complete phrase kept by hand (the header's first sentences are
/// too long for one line). The test requires one for every function of
/// the header, and none for a function it no longer has.
const SUMMARIES: &[(&str, &str)] = &[
    (
        "fpl_acquire",
        "open an image and take QEMU's locks for a request",
    ),
    (
        "fpl_acquire_wait",
        "take an image's locks, waiting a bounded time while it is in use",
    ),
    (
        "fpl_acquire_fd",
        "take QEMU's locks on a descriptor the caller opened",
    ),
    (
        "fpl_update",
        "change the permissions of a held lock, all or nothing",
    ),
    ("fpl_release", "unlock every byte of a handle and free it"),
    (
        "fpl_check",
        "tell whether an acquire would succeed now, taking no lock",
    ),
    (
        "fpl_query",
        "tell which lock bytes of an image are held, and by which processes",
    ),
    ("fpl_query_many", "query many images with one walk of /proc"),
    (
        "fpl_chain",
        "list the files QEMU opens for an image, from their headers",
    ),
    (
        "fpl_verify",
        "tell whether a handle's bytes are still held on the file",
    ),
    ("fpl_version", "the version of the loaded library"),
];

/// Text for roff: backslashes and hyphens escaped, nothing else.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A line for roff: escaped, and a leading `.` or `'` (which would make it
/// a request) guarded with `\&`.
fn roff(text: &str) -> String {
    guard(escape(text))
}

fn guard(line: String) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}

/// One paragraph of Markdown-ish documentation as roff lines: text
/// escaped, `code` spans in bold (a span may run over a line break), and
/// the function's arguments, which the header writes in capitals (PATH,
/// ERR's), in italics and in lower case as in the synopsis, inside code
/// spans too (`RESULTS[i]`).
fn paragraph(lines: &[String], arguments: &[String]) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in lines {
        let mut text = String::new();
        if in_code {
            text.push_str("\\fB");
        }
        let mut word = String::new();
        let flush = |word: &mut String, text: &mut String, in_code: bool| {
            if word.is_empty() {
                return;
            }
            let lower = word.to_lowercase();
            let is_argument = *word == word.to_uppercase()
                && word.chars().any(|c| c.is_ascii_uppercase())
                && arguments.contains(&lower);
            if is_argument {
                let back = if in_code { "\\fB" } else { "\\fR" };
                text.push_str(&format!("\\fI{}{back}", escape(&lower)));
            } else {
                text.push_str(&escape(word));
            }
            word.clear();
        };
        for c in line.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            flush(&mut word, &mut text, in_code);
            if c == '`' {
                text.push_str(if in_code { "\\fR" } else { "\\fB" });
                in_code = !in_code;
            } else {
                text.push_str(&escape(&c.to_string()));
            }
        }
        flush(&mut word, &mut text, in_code);
        if in_code {
            text.push_str("\\fR");
        }
        out.push(guard(text.replace("\\fB\\fI", "\\fI")));
    }
    out
}

/// The argument names of a prototype: the last word before each `,` or
/// the closing `)`.
fn arguments(prototype: &str) -> Vec<String> {
    let inside = prototype
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map_or("", |(args, _)| args);
    inside
        .split(',')
        .filter_map(|a| a.rsplit([' ', '*']).next())
        .filter(|a| !a.is_empty() && *a != "void")
        .map(str::to_owned)
        .collect()
}

fn summary(name: &str) -> &'static str {
    SUMMARIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| {
            panic!("{name} has no NAME line: add it to SUMMARIES in tests/manpages.rs")
        })
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
    let arguments = arguments(&f.prototype);
    let mut out = format!(
        ".\\\" Made from include/fpl.h by tests/manpages.rs: edit the code's documentation.\n\
         .TH {} 3 \"\" \"libfpl {version}\" \"libfpl Manual\"\n\
         .SH NAME\n{} \\- {}\n\
         .SH SYNOPSIS\n.nf\n.B #include <fpl.h>\n.PP\n{}\n.fi\n",
        f.name.to_uppercase(),
        f.name,
        roff(summary(&f.name)),
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
            for line in paragraph(p, &arguments) {
                out.push_str(&line);
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
    // One NAME line for each function of the header, no more.
    let header = fs::read_to_string(root().join("include/fpl.h")).expect("include/fpl.h");
    let functions: Vec<String> = functions(&header).into_iter().map(|f| f.name).collect();
    for (i, (name, text)) in SUMMARIES.iter().enumerate() {
        assert!(
            functions.iter().any(|f| f == name),
            "SUMMARIES in tests/manpages.rs has {name}, which include/fpl.h does not declare"
        );
        assert!(
            SUMMARIES[..i].iter().all(|(n, _)| n != name),
            "SUMMARIES in tests/manpages.rs has {name} twice"
        );
        assert!(
            !text.is_empty() && !text.ends_with('.') && !text.contains("..."),
            "{name}'s NAME line should be a short complete phrase: {text:?}"
        );
    }
    // No Markdown left: code spans are bold, arguments italic.
    for (name, text) in &pages {
        assert!(!text.contains('`'), "a backtick left in man/man3/{name}");
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

#[test]
fn text_becomes_roff_with_nothing_left_to_interpret() {
    let args = ["path".to_owned(), "err".to_owned()];
    let lines: Vec<String> = [
        "A `C:\\dir` and a-b for PATH, ERR's, PATHS and FPL_PATH_SIZE; `split",
        ".starts a line` then `PATH[0]`",
        "'quoted' at the start",
        "`.dot` in code at the start",
    ]
    .map(str::to_owned)
    .to_vec();
    assert_eq!(
        paragraph(&lines, &args),
        [
            "A \\fBC:\\edir\\fR and a\\-b for \\fIpath\\fR, \\fIerr\\fR's, PATHS and FPL_PATH_SIZE; \\fBsplit\\fR",
            "\\fB.starts a line\\fR then \\fIpath\\fB[0]\\fR",
            "\\&'quoted' at the start",
            "\\fB.dot\\fR in code at the start",
        ]
    );
    assert_eq!(roff(".TH"), "\\&.TH");
    assert_eq!(
        arguments("int fpl_x(const char *const *paths, size_t n, struct fpl_error *err);"),
        ["paths", "n", "err"]
    );
    assert!(arguments("const char *fpl_version(void);").is_empty());
}
