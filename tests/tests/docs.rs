//! The README and every page under `docs/` name only what exists, host only,
//! no root:
//!
//! - every relative link reaches a file in the repository, and a link with
//!   an anchor into a Markdown page reaches one of its headings (by GitHub's
//!   slug);
//! - every repository path in code (a code span that is one path whose
//!   first part is a directory the repository tracks) exists; such paths are
//!   written from the repository's root, on every page;
//! - every `cargo xtask` and `ovpn-lb` subcommand named in code is one their
//!   command lines define, and every `cargo test --test NAME` names a file
//!   of `tests/tests`.
//!
//! Only code is read for paths and commands: prose says "ovpn-lb with tc",
//! code says what to type. A subcommand is a lowercase word standing alone,
//! so placeholders (`ARGS`, `<command>`), options and labels such as the
//! benchmark row `ovpn-lb tc, 4 tun` are not taken for one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository's root")
}

/// A documentation page, split the way Markdown renders it.
struct Page {
    /// From the repository's root, e.g. `docs/deploying.md`.
    path: PathBuf,
    /// The text outside fenced blocks, with code spans blanked out: where
    /// links live. Blanking keeps every other byte where it was, so line
    /// numbers stay right.
    prose: String,
    /// What each code span holds, with its line number; whitespace (a line
    /// break in a span included) made single spaces.
    spans: Vec<(usize, String)>,
    /// Each line of the fenced blocks likewise, less prompts and comments.
    fenced: Vec<(usize, String)>,
    /// The anchors GitHub gives the page's headings.
    anchors: BTreeSet<String>,
}

impl Page {
    fn read(root: &Path, path: PathBuf) -> Self {
        let text = fs::read_to_string(root.join(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut fenced = Vec::new();
        // Fenced lines become empty lines, so that offsets still count lines.
        let mut flow = String::with_capacity(text.len());
        let mut block: Option<&str> = None;
        for (i, line) in text.lines().enumerate() {
            match (block, line.trim_start().strip_prefix("```")) {
                (None, Some(info)) => block = Some(info.trim()),
                (Some(_), Some(_)) => block = None,
                (Some(info), None) => {
                    fenced.push((i + 1, words(without_prompt_or_comment(info, line))));
                }
                (None, None) => flow.push_str(line),
            }
            flow.push('\n');
        }
        let mut prose = flow.clone().into_bytes();
        let mut spans = Vec::new();
        for (start, end) in code_spans(&flow) {
            let inside = flow[start..end].trim_matches('`');
            spans.push((line_at(&flow, start), words(inside)));
            prose[start..end].fill(b' ');
        }
        let prose = String::from_utf8(prose).expect("backticks are ASCII");
        let anchors = anchors(
            flow.lines()
                .filter(|l| l.starts_with('#'))
                .filter_map(|l| l.trim_start_matches('#').strip_prefix(' ')),
        );
        Self {
            path,
            prose,
            spans,
            fenced,
            anchors,
        }
    }

    fn here(&self, line: usize) -> String {
        format!("{}:{line}", self.path.display())
    }
}

/// README.md, then the pages under docs/ in name order.
fn pages(root: &Path) -> Vec<Page> {
    let mut paths: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| Path::new("docs").join(e.expect("docs/ entry").file_name()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    paths.sort();
    paths.insert(0, "README.md".into());
    paths.into_iter().map(|p| Page::read(root, p)).collect()
}

/// A fenced line as the shell would take it: without a `console` block's
/// prompt (`$ ` or `# ` at the start of the line) and without a comment (a
/// `#` that starts a word, to the end of the line), which is prose.
fn without_prompt_or_comment<'a>(info: &str, line: &'a str) -> &'a str {
    let line = match info {
        "console" => line
            .strip_prefix("$ ")
            .or_else(|| line.strip_prefix("# "))
            .unwrap_or(line),
        _ => line,
    };
    let comment = line
        .char_indices()
        .find(|&(i, c)| {
            c == '#'
                && line[..i]
                    .chars()
                    .next_back()
                    .is_none_or(char::is_whitespace)
        })
        .map_or(line.len(), |(i, _)| i);
    &line[..comment]
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

/// Byte ranges of the code spans in `text`, backticks included: a run of
/// backticks up to the next run of the same length.
fn code_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let run_at = |i: usize| bytes[i..].iter().take_while(|&&b| b == b'`').count();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let opening = run_at(i);
        let mut j = i + opening;
        let close = loop {
            match bytes[j..].iter().position(|&b| b == b'`') {
                None => break None,
                Some(k) if run_at(j + k) == opening => break Some(j + k),
                Some(k) => j += k + run_at(j + k),
            }
        };
        match close {
            Some(c) => {
                spans.push((i, c + opening));
                i = c + opening;
            }
            // An unmatched run is literal text.
            None => i += opening,
        }
    }
    spans
}

/// GitHub's anchors for these headings: lowercased, spaces made hyphens,
/// everything but letters, digits, hyphens and underscores dropped, and a
/// repeated anchor numbered `-1`, `-2`, ...
fn anchors<'a>(headings: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut repeats: BTreeMap<String, usize> = BTreeMap::new();
    for heading in headings {
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let earlier = repeats.entry(slug.clone()).or_default();
        anchors.insert(if *earlier == 0 {
            slug
        } else {
            format!("{slug}-{earlier}")
        });
        *earlier += 1;
    }
    anchors
}

/// `(line, target)` of every inline link and image in the page's prose.
fn links(page: &Page) -> Vec<(usize, &str)> {
    page.prose
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &page.prose[at + 2..];
            let end = rest.find(')')?;
            let target = rest[..end].split_whitespace().next()?;
            Some((line_at(&page.prose, at), target))
        })
        .collect()
}

/// Panics listing every offender at once, or if the check found nothing to
/// check (a parser that sees nothing passes everything).
fn report(what: &str, checked: usize, offenders: &[String]) {
    assert!(
        checked > 0,
        "no {what} found in the docs: is the parser blind?"
    );
    assert!(
        offenders.is_empty(),
        "{} of {checked} {what} in the docs name nothing that exists:\n{}",
        offenders.len(),
        offenders.join("\n")
    );
}

#[test]
fn every_relative_link_reaches_a_file_and_its_heading() {
    let root = root();
    let pages = pages(&root);
    let mut checked = 0;
    let mut offenders = Vec::new();
    for page in &pages {
        let dir = page.path.parent().expect("a page is a file");
        for (line, target) in links(page) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if file.is_empty() {
                page.path.clone()
            } else {
                dir.join(file)
            };
            // Inside the repository: a link that climbs out of it may happen
            // to resolve on one machine and nowhere else.
            let Some(linked) = root
                .join(&linked)
                .canonicalize()
                .ok()
                .and_then(|p| p.strip_prefix(&root).ok().map(Path::to_path_buf))
            else {
                offenders.push(format!(
                    "{}: ({target}): no such file in the repository",
                    page.here(line)
                ));
                continue;
            };
            if anchor.is_empty() || linked.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let unlisted;
            let target_page = if let Some(listed) = pages.iter().find(|p| p.path == linked) {
                listed
            } else {
                unlisted = Page::read(&root, linked.clone());
                &unlisted
            };
            if !target_page.anchors.contains(anchor) {
                offenders.push(format!(
                    "{}: ({target}): {} has no heading #{anchor}",
                    page.here(line),
                    linked.display()
                ));
            }
        }
    }
    report("relative links", checked, &offenders);
}

/// The repository's top-level directories: those at the root that
/// `.gitignore` does not list as `/name` (build and benchmark output, whose
/// files exist only after a run).
fn tracked_top_directories(root: &Path) -> BTreeSet<String> {
    let gitignore = fs::read_to_string(root.join(".gitignore")).unwrap_or_default();
    let ignored: BTreeSet<&str> = gitignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('/'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    fs::read_dir(root)
        .expect("the repository's root")
        .map(|e| e.expect("a root entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".git" && !ignored.contains(name.as_str()))
        .collect()
}

#[test]
fn every_repository_path_in_code_exists() {
    let root = root();
    let tops = tracked_top_directories(&root);
    let mut checked = 0;
    let mut offenders = Vec::new();
    for page in pages(&root) {
        // Fenced blocks hold commands and output, never a path on its own.
        for (line, path) in &page.spans {
            let is_repository_path = !path.contains(' ')
                && path
                    .split_once('/')
                    .is_some_and(|(top, _)| tops.contains(top));
            if !is_repository_path {
                continue;
            }
            checked += 1;
            if !root.join(path).exists() {
                offenders.push(format!("{}: `{path}`", page.here(*line)));
            }
        }
    }
    report("repository paths", checked, &offenders);
}

/// `cargo xtask`'s subcommands: the variants of `enum Command` in
/// `xtask/src/main.rs`, kebab-cased as clap names them. Read from the
/// source, since xtask is a binary the tests cannot link.
fn xtask_subcommands(root: &Path) -> BTreeSet<String> {
    let main = fs::read_to_string(root.join("xtask/src/main.rs")).expect("xtask/src/main.rs");
    let variants: BTreeSet<String> = main
        .lines()
        .skip_while(|l| !l.starts_with("enum Command {"))
        .skip(1)
        .take_while(|l| *l != "}")
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|l| {
            let name = l.split(|c: char| !c.is_ascii_alphanumeric()).next();
            let mut kebab = String::new();
            for c in name.expect("a variant has a name").chars() {
                if c.is_ascii_uppercase() && !kebab.is_empty() {
                    kebab.push('-');
                }
                kebab.push(c.to_ascii_lowercase());
            }
            kebab
        })
        .collect();
    assert!(
        variants.contains("test"),
        "no `enum Command` with a Test variant in xtask/src/main.rs: {variants:?}"
    );
    variants
}

/// A subcommand as the docs write one: a lowercase word standing alone.
fn is_subcommand_word(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[test]
fn every_command_in_code_exists() {
    let root = root();
    let xtask = xtask_subcommands(&root);
    let ovpn_lb: BTreeSet<String> = ovpn_lb::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    let mut checked = 0;
    let mut offenders = Vec::new();
    for page in pages(&root) {
        for (line, code) in page.spans.iter().chain(&page.fenced) {
            let words: Vec<&str> = code.split(' ').collect();
            for (i, pair) in words.windows(2).enumerate() {
                let next = words.get(i + 2).copied().unwrap_or("");
                let problem = match pair {
                    ["cargo", "xtask"] if is_subcommand_word(next) => {
                        (!xtask.contains(next)).then(|| format!("`cargo xtask {next}`"))
                    }
                    [program, command]
                        if (*program == "ovpn-lb" || program.ends_with("/ovpn-lb"))
                            && is_subcommand_word(command) =>
                    {
                        (!ovpn_lb.contains(*command)).then(|| format!("`ovpn-lb {command}`"))
                    }
                    ["cargo", "test"] => {
                        let Some(name) = words[i..]
                            .iter()
                            .take_while(|w| **w != "--")
                            .skip_while(|w| **w != "--test")
                            .nth(1)
                        else {
                            continue;
                        };
                        let file = format!("tests/tests/{name}.rs");
                        (!root.join(&file).exists())
                            .then(|| format!("`cargo test --test {name}`: no {file}"))
                    }
                    _ => continue,
                };
                checked += 1;
                if let Some(problem) = problem {
                    offenders.push(format!("{}: {problem}", page.here(*line)));
                }
            }
        }
    }
    report("commands", checked, &offenders);
}
