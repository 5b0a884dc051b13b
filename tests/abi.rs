//! The ABI guard: abi/fpl.abi records what programs linked against
//! libfpl.so.1 rely on (every function with its signature, the structures'
//! fields, the constants). Removing or changing any of it without bumping
//! the SONAME (Cargo.toml's major version) fails here, and so does an
//! addition not yet recorded. `FPL_ABI_BLESS=1 cargo test --test abi`
//! records additions, or everything after a SONAME bump, never a silent
//! break. Also: the header, the built library and Cargo.toml agree on the
//! version.

mod common;
mod support;

use std::collections::BTreeMap;
use std::process::Command;

use common::{compile, libfpl_dir, root, TempDir};
use support::{cargo_toml_version, require, run, stdout};

/// One recorded fact: its kind and name (the key) and its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    name: String,
    def: String,
}

impl Entry {
    fn line(&self) -> String {
        format!("{} {} {}", self.kind, self.name, self.def)
    }
}

/// The ABI as a header declares it, in the header's order.
#[derive(Debug, Default)]
struct Abi {
    entries: Vec<Entry>,
}

impl Abi {
    fn functions(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.kind == "function")
            .map(|e| e.name.as_str())
            .collect()
    }
}

fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
            out.push(' ');
        } else if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `const char *const *paths` → `const char *const *`: the type without
/// the parameter's name, spaced one way.
fn param_type(param: &str) -> String {
    let spaced = param.replace('*', " * ");
    let mut tokens: Vec<&str> = spaced.split_whitespace().collect();
    let named = tokens.len() > 1
        && tokens
            .last()
            .is_some_and(|t| *t != "*" && *t != "void" && *t != "const");
    if named {
        tokens.pop();
    }
    let mut t = String::new();
    let mut after_star = false;
    for token in tokens {
        if token == "*" {
            t.push_str(if after_star { "*" } else { " *" });
            after_star = true;
        } else {
            if !after_star && !t.is_empty() {
                t.push(' ');
            }
            t.push_str(token);
            after_star = false;
        }
    }
    t
}

/// The value of a constant: numbers and other constants or'ed together.
fn evaluate(expr: &str, defines: &BTreeMap<String, String>) -> String {
    let cleaned = expr.replace(['(', ')'], " ");
    let mut value = 0u64;
    for term in cleaned.split('|').map(str::trim) {
        let number = term
            .trim_end_matches(['u', 'U'])
            .parse::<u64>()
            .ok()
            .or_else(|| {
                let hex = term.trim_end_matches(['u', 'U']).strip_prefix("0x")?;
                u64::from_str_radix(hex, 16).ok()
            })
            .or_else(|| {
                defines
                    .get(term)
                    .map(|d| evaluate(d, defines).parse().ok())?
            });
        match number {
            Some(n) => value |= n,
            None => return expr.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }
    value.to_string()
}

/// Parses a cbindgen header: defines, opaque types, structures, functions.
fn parse_header(text: &str) -> Abi {
    let code = strip_comments(text);
    let mut defines = BTreeMap::new();
    let mut order = Vec::new();
    let mut body = String::new();
    for line in code.lines() {
        let line = line.trim();
        if let Some(def) = line.strip_prefix("#define ") {
            let (name, value) = def.split_once(' ').unwrap_or((def, ""));
            defines.insert(name.to_owned(), value.trim().to_owned());
            order.push(name.to_owned());
        } else if line.starts_with('#') || line == "extern \"C\" {" || line == "}" {
            continue;
        } else {
            body.push_str(line);
            body.push(' ');
        }
    }

    let mut abi = Abi::default();
    for name in &order {
        // The version macros change with every release: checked against
        // Cargo.toml below, not recorded.
        if name.starts_with("FPL_VERSION_") || name == "FPL_H" {
            continue;
        }
        abi.entries.push(Entry {
            kind: "constant",
            name: name.clone(),
            def: evaluate(&defines[name], &defines),
        });
    }
    let mut depth = 0;
    let mut statement = String::new();
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ';' && depth == 0 {
            let s = statement.split_whitespace().collect::<Vec<_>>().join(" ");
            statement.clear();
            if let Some(rest) = s.strip_prefix("typedef struct ") {
                if let Some((head, tail)) = rest.split_once('{') {
                    let name = head.trim().to_owned();
                    let (fields, _) = tail.rsplit_once('}').expect("a closed struct");
                    let fields: Vec<String> = fields
                        .split(';')
                        .map(str::trim)
                        .filter(|f| !f.is_empty())
                        .map(|f| {
                            // Array sizes by value: FPL_MESSAGE_SIZE is 256.
                            match f.split_once('[') {
                                Some((decl, size)) => {
                                    let size = size.trim_end_matches(']');
                                    format!("{decl}[{}]", evaluate(size, &defines))
                                }
                                None => f.to_owned(),
                            }
                        })
                        .collect();
                    abi.entries.push(Entry {
                        kind: "struct",
                        name,
                        def: format!("{{ {}; }}", fields.join("; ")),
                    });
                } else {
                    let name = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    abi.entries.push(Entry {
                        kind: "opaque",
                        name,
                        def: String::new(),
                    });
                }
            } else if let Some((head, params)) = s.split_once('(') {
                let params = params.trim_end_matches(')');
                let name_at = head
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(0, |i| i + 1);
                let name = head[name_at..].to_owned();
                let ret = param_type(&format!("{} x", &head[..name_at]));
                let types: Vec<String> = if params.trim() == "void" {
                    Vec::new()
                } else {
                    params.split(',').map(param_type).collect()
                };
                abi.entries.push(Entry {
                    kind: "function",
                    name,
                    def: format!("{ret}({})", types.join(", ")),
                });
            } else if !s.is_empty() {
                panic!("fpl.h: cannot read the declaration {s:?}");
            }
        } else if c != ';' || depth > 0 {
            statement.push(c);
        }
    }
    abi
}

const ABI_FILE: &str = "abi/fpl.abi";
const HEADER_NOTE: &str = "\
# The C ABI of libfpl, checked by tests/abi.rs against include/fpl.h and the
# symbols the built library exports. Programs linked against the SONAME
# below rely on every line: removing or changing one needs a new SONAME
# (bump Cargo.toml's major version). Additions are recorded with
# `FPL_ABI_BLESS=1 cargo test --test abi`; a SONAME bump also needs
# `FPL_ABI_REASON=\"why\"`, kept below as a `# bump:` line.
";

/// The `# bump:` lines of a recorded file: why each SONAME changed.
fn bumps(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("# bump: "))
        .map(str::to_owned)
        .collect()
}

fn read_recorded(text: &str) -> (String, Vec<String>) {
    let mut soname = String::new();
    let mut lines = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        if let Some(s) = line.strip_prefix("soname ") {
            soname = s.to_owned();
        } else {
            lines.push(line.to_owned());
        }
    }
    (soname, lines)
}

fn render(soname: &str, abi: &Abi) -> String {
    let mut text = format!("{HEADER_NOTE}soname {soname}\n");
    for e in &abi.entries {
        text.push_str(e.line().trim_end());
        text.push('\n');
    }
    text
}

/// What changed between the recorded ABI and the header's.
#[derive(Debug, Default, PartialEq)]
struct Drift {
    /// Recorded lines the header no longer has as recorded (removed or changed).
    broken: Vec<String>,
    /// Header lines not recorded yet.
    added: Vec<String>,
}

fn compare(recorded: &[String], current: &Abi) -> Drift {
    let now: Vec<String> = current
        .entries
        .iter()
        .map(|e| e.line().trim_end().to_owned())
        .collect();
    Drift {
        broken: recorded
            .iter()
            .filter(|l| !now.contains(l))
            .cloned()
            .collect(),
        added: now
            .iter()
            .filter(|l| !recorded.contains(l))
            .cloned()
            .collect(),
    }
}

fn current_soname() -> String {
    let version = cargo_toml_version();
    format!(
        "libfpl.so.{}",
        version.split('.').next().unwrap_or_default()
    )
}

fn header() -> String {
    std::fs::read_to_string(root().join("include/fpl.h")).expect("include/fpl.h readable")
}

#[test]
fn recorded_abi_is_intact() {
    let current = parse_header(&header());
    assert!(current.functions().len() >= 7, "{:?}", current.functions());
    let soname = current_soname();
    let path = root().join(ABI_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (recorded_soname, recorded) = read_recorded(&text);
    let drift = compare(&recorded, &current);
    let bless = std::env::var_os("FPL_ABI_BLESS").is_some();
    let bumped = recorded_soname != soname;

    if drift.broken.is_empty() && drift.added.is_empty() && !bumped {
        return;
    }
    if !drift.broken.is_empty() && !bumped {
        panic!(
            "the ABI of {soname} changed: these recorded declarations are gone or differ in \
             include/fpl.h:\n  {}\nRestore them, or bump Cargo.toml's major version (the SONAME) \
             and re-record {ABI_FILE}.",
            drift.broken.join("\n  ")
        );
    }
    if bless {
        let mut history = bumps(&text);
        if bumped && !recorded_soname.is_empty() {
            let reason = std::env::var("FPL_ABI_REASON").unwrap_or_default();
            assert!(
                !reason.trim().is_empty(),
                "the SONAME changes from {recorded_soname} to {soname}: say why in \
                 FPL_ABI_REASON=\"...\" (kept in {ABI_FILE})"
            );
            history.push(format!(
                "# bump: {recorded_soname} -> {soname}: {}",
                reason.trim()
            ));
        }
        let mut rendered = render(&soname, &current);
        if !history.is_empty() {
            let at = rendered.find("soname ").unwrap_or(0);
            rendered.insert_str(at, &format!("{}\n", history.join("\n")));
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rendered).unwrap();
        println!("recorded {ABI_FILE} for {soname}");
        return;
    }
    if bumped {
        panic!(
            "the SONAME is now {soname} (was {recorded_soname:?}): re-record {ABI_FILE} with \
             FPL_ABI_BLESS=1 cargo test --test abi"
        );
    }
    panic!(
        "new in include/fpl.h, not recorded in {ABI_FILE}:\n  {}\nRecord them with \
         FPL_ABI_BLESS=1 cargo test --test abi",
        drift.added.join("\n  ")
    );
}

/// The guard can fail: a removed function, a changed parameter, a resized
/// structure and a changed constant are each caught; an addition is
/// reported as an addition.
#[test]
fn guard_catches_breaks() {
    let original = header();
    let (_, recorded) = read_recorded(&render("libfpl.so.1", &parse_header(&original)));
    assert_eq!(
        compare(&recorded, &parse_header(&original)),
        Drift::default()
    );

    let cases = [
        (
            "int fpl_check(",
            "int fpl_check_renamed(",
            "function fpl_check ",
        ),
        (
            "uint32_t flags,\n                struct fpl_lock **out",
            "uint64_t flags,\n                struct fpl_lock **out",
            "function fpl_acquire ",
        ),
        (
            "#define FPL_MESSAGE_SIZE 256",
            "#define FPL_MESSAGE_SIZE 128",
            "struct fpl_error ",
        ),
        (
            "#define FPL_PERM_WRITE 2",
            "#define FPL_PERM_WRITE 3",
            "constant FPL_PERM_WRITE ",
        ),
        (
            "  int32_t holder_pid;",
            "  int64_t holder_pid;",
            "struct fpl_error ",
        ),
    ];
    for (from, to, broken) in cases {
        assert!(
            original.contains(from),
            "include/fpl.h no longer has {from:?}: update this test"
        );
        let drift = compare(&recorded, &parse_header(&original.replacen(from, to, 1)));
        assert!(
            drift.broken.iter().any(|l| l.starts_with(broken)),
            "{from:?} -> {to:?} not caught: {drift:?}"
        );
    }
    let added = original.replace(
        "const char *fpl_version(void);",
        "const char *fpl_version(void);\nint fpl_new(int fd);",
    );
    let drift = compare(&recorded, &parse_header(&added));
    assert_eq!(drift.broken, Vec::<String>::new());
    assert_eq!(drift.added, ["function fpl_new int(int)"]);
}

/// The built library exports exactly the recorded functions, under the
/// SONAME Cargo.toml's version gives.
#[test]
fn library_exports_the_recorded_functions() {
    let lib = libfpl_dir().join("libfpl.so");
    require("nm", "apt-get install binutils");
    let nm = stdout(&run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)));
    let exported: Vec<&str> = nm
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            (kind == "T").then_some(name)
        })
        .collect();
    // Every function is exported under a version node (abi/libfpl.map).
    let unversioned: Vec<&&str> = exported
        .iter()
        .filter(|n| !n.contains("@@LIBFPL_"))
        .collect();
    assert!(
        unversioned.is_empty(),
        "exported without a LIBFPL_ version node: {unversioned:?}"
    );
    let mut exported: Vec<&str> = exported
        .iter()
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    exported.sort_unstable();
    let text = std::fs::read_to_string(root().join(ABI_FILE)).expect("abi/fpl.abi is committed");
    let (soname, recorded) = read_recorded(&text);
    let mut functions: Vec<&str> = recorded
        .iter()
        .filter_map(|l| l.strip_prefix("function "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    functions.sort_unstable();
    assert_eq!(exported, functions, "exported functions vs {ABI_FILE}");

    let dynamic = stdout(&run(Command::new("readelf").arg("-d").arg(&lib)));
    assert!(
        dynamic.contains(&format!("Library soname: [{soname}]")),
        "{ABI_FILE} records {soname}:\n{dynamic}"
    );
}

/// fpl_version(), the FPL_VERSION_* macros and Cargo.toml agree.
#[test]
fn version_agrees_with_cargo_toml() {
    let version = cargo_toml_version();
    let tmp = TempDir::new("abi-version");
    let src = tmp.path().join("version.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include \"fpl.h\"\nint main(void) {\n  \
         printf(\"%s\\n%d.%d.%d\\n%s\\n\", fpl_version(), FPL_VERSION_MAJOR, \
         FPL_VERSION_MINOR, FPL_VERSION_PATCH, FPL_VERSION_STRING);\n  return 0;\n}\n",
    )
    .unwrap();
    let exe = compile(&[&src], &tmp.path().join("version"), false, &[]);
    let out = run(&mut Command::new(exe));
    assert_eq!(stdout(&out), format!("{version}\n{version}\n{version}\n"));
}
