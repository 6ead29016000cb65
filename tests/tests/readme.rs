//! The README's quick start, run as written against the real mail stack.
//!
//! Every ```` ```sh ```` block after a `<!-- quickstart -->` line is run, in
//! order, as one bash script (`set -euo pipefail`) in a temp directory, with
//! the workspace's binaries first on `PATH` and the variables the README
//! itself defines with defaults (`WORK`, `GRPC_PORT`, `HTTP_PORT`,
//! `MAILSTACK_STATE`) pointing at the temp directory, free ports and this
//! run's mail stack. Every command must succeed, and every line of each
//! block after a `<!-- quickstart output -->` line must appear in what the
//! script printed, `…` standing for anything. The script runs in its own
//! process group, killed whole at the end, pass or fail, so nothing the
//! README starts outlives the test.

use mailloop_tests::Stack;
use mailloop_tests::cluster::{bin, wait_until};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT_MARK: &str = "<!-- quickstart -->";
const OUTPUT_MARK: &str = "<!-- quickstart output -->";
/// The variables the README defines with defaults and the test sets.
const README_VARS: [&str; 3] = ["WORK", "GRPC_PORT", "HTTP_PORT"];

/// The marked blocks of a README.
#[derive(Debug, PartialEq)]
struct Quickstart {
    /// The shell blocks, in order, each with the README line of its first line.
    scripts: Vec<(usize, String)>,
    /// The lines of the expected-output blocks.
    expected: Vec<String>,
}

/// Finds the marked blocks; a mark not followed by a fenced block, or an
/// unclosed block, is an error naming its line.
fn parse(readme: &str) -> Result<Quickstart, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut q = Quickstart {
        scripts: Vec::new(),
        expected: Vec::new(),
    };
    let mut i = 0;
    while i < lines.len() {
        let mark = lines[i].trim();
        if mark != SCRIPT_MARK && mark != OUTPUT_MARK {
            i += 1;
            continue;
        }
        let fence = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        let ok_fence = if mark == SCRIPT_MARK {
            fence == "```sh" || fence == "```bash"
        } else {
            fence.starts_with("```")
        };
        if !ok_fence {
            return Err(format!(
                "README.md:{}: {mark} is not followed by a ```{} block",
                i + 1,
                if mark == SCRIPT_MARK { "sh" } else { "" }
            ));
        }
        let body_start = i + 2;
        let Some(len) = lines[body_start..].iter().position(|l| l.trim() == "```") else {
            return Err(format!(
                "README.md:{}: the block after {mark} is never closed",
                i + 2
            ));
        };
        let body = &lines[body_start..body_start + len];
        if mark == SCRIPT_MARK {
            q.scripts.push((body_start + 1, body.join("\n")));
        } else {
            q.expected.extend(
                body.iter()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.to_string()),
            );
        }
        i = body_start + len + 1;
    }
    Ok(q)
}

/// Whether `line` shows `expected`: the whitespace-separated words of each
/// `…`-separated piece appear in `line` in order, as whole words; a line
/// that does not start with `…` must start with its first piece.
fn shows(expected: &str, line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut at = 0;
    let anchored = !expected.trim_start().starts_with('…');
    for (n, piece) in expected.split('…').enumerate() {
        let piece: Vec<&str> = piece.split_whitespace().collect();
        if piece.is_empty() {
            continue;
        }
        let found = (at..=words.len().saturating_sub(piece.len()))
            .find(|&s| words[s..].starts_with(&piece));
        match found {
            Some(s) if !(anchored && n == 0 && s != 0) => at = s + piece.len(),
            _ => return false,
        }
    }
    true
}

/// Two distinct free loopback ports (bound together, then released; the
/// README's coordinator binds them next).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// The script's process group: killed whole on drop; on a failure, first
/// prints what the script and the processes it started wrote.
struct Run {
    pgid: u32,
    dir: PathBuf,
    work: PathBuf,
}

impl Run {
    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = format!(
            "---- stdout ----\n{}\n---- stderr ----\n{}\n",
            self.file("stdout"),
            self.file("stderr")
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.work)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log" || x == "out"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "---- {} (tail) ----\n{}\n",
                f.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        out
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
    }
}

/// The live (not zombie) processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            out.push(format!("{head})"));
        }
    }
    out
}

#[test]
fn the_quick_start_runs_as_written() {
    let started = Instant::now();
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let q = parse(&readme).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !q.scripts.is_empty(),
        "README.md has no {SCRIPT_MARK} ```sh blocks: the quick start is not tested"
    );
    assert!(
        !q.expected.is_empty(),
        "README.md has no {OUTPUT_MARK} blocks: nothing checks the quick start's output"
    );
    let script: String = q.scripts.iter().map(|(_, b)| format!("{b}\n")).collect();
    for var in README_VARS {
        assert!(
            script.contains(&format!("${{{var}:=")),
            "the quick start no longer defines ${{{var}:=default}}; the test places it through that variable"
        );
    }
    assert!(
        script.contains("${MAILSTACK_STATE:-"),
        "the quick start no longer reads the stack through $MAILSTACK_STATE"
    );

    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    // The script, and the README line of each of its lines (for errors).
    let mut text = String::from(
        "set -euo pipefail\ntrap 'echo \"quickstart: failed (exit $?) at script line $LINENO: $BASH_COMMAND\" >&2' ERR\n",
    );
    let mut readme_line = vec![0, 0];
    for (first, block) in &q.scripts {
        for (n, line) in block.lines().enumerate() {
            text.push_str(line);
            text.push('\n');
            readme_line.push(first + n);
        }
    }
    let script_path = dir.path().join("quickstart.sh");
    std::fs::write(&script_path, text).unwrap();
    // "script line 12" → "README.md:290".
    let located = |stderr: String| -> String {
        stderr
            .lines()
            .map(|l| {
                match l
                    .split_once("at script line ")
                    .and_then(|(a, b)| Some((a, b.split_once(':')?)))
                {
                    Some((head, (n, tail))) => {
                        match n.parse::<usize>().ok().and_then(|n| readme_line.get(n - 1)) {
                            Some(r) => format!("{head}at README.md:{r}:{tail}"),
                            None => l.to_string(),
                        }
                    }
                    None => l.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let bin_dir = bin("mailloop-agent").parent().unwrap().to_path_buf();
    bin("mailloop-coordinator");
    bin("mailloopctl");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (grpc_port, http_port) = free_ports();
    let mut cmd = Command::new("bash");
    cmd.arg(&script_path)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("WORK", &work)
        .env("GRPC_PORT", grpc_port.to_string())
        .env("HTTP_PORT", http_port.to_string())
        .env("MAILSTACK_STATE", stack.var("MAILSTACK_STATE"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .process_group(0);
    // Nothing of this shell's own mailloop settings leaks into the reader's.
    for (k, _) in std::env::vars() {
        if k.starts_with("MAILLOOP_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("run bash");
    let run = Run {
        pgid: child.id(),
        dir: dir.path().to_path_buf(),
        work: work.clone(),
    };

    let status = wait_until(
        Duration::from_secs(600),
        "the quick start to finish",
        || child.try_wait().unwrap(),
    );
    assert!(
        status.success(),
        "the README's quick start failed ({status}):\n{}",
        located(run.file("stderr"))
    );

    // A panic inside a pipeline (`mailloopctl … | grep`) would not fail the script.
    let stderr = run.file("stderr");
    assert!(
        !stderr.contains("panicked"),
        "a quick-start command panicked:\n{stderr}"
    );
    let stdout = run.file("stdout");
    let missing: Vec<&String> = q
        .expected
        .iter()
        .filter(|e| !stdout.lines().any(|l| shows(e, l)))
        .collect();
    assert!(
        missing.is_empty(),
        "the README's quick-start output lists lines the run did not print: {missing:#?}"
    );

    // The tokens it created are for their owner's eyes only.
    for t in ["admin", "eu-1", "us-1"] {
        let mode = std::fs::metadata(work.join(format!("{t}.token")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{t}.token is mode {:o}: readable by others",
            mode & 0o777
        );
    }
    // Its last block stopped everything it started.
    let deadline = Instant::now() + mailloop_tests::patience(Duration::from_secs(60));
    loop {
        let left = group_members(run.pgid);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quick start's last block left these running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(run);
    eprintln!(
        "the quick start ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn marked_blocks_are_found_and_a_bad_mark_is_named() {
    let readme = "intro\n<!-- quickstart -->\n```sh\necho one\n```\ntext\n<!-- quickstart output -->\n```\none\n\n```\n\
                  ```sh\nnot marked\n```\n<!-- quickstart -->\n```sh\necho two\n```\n";
    assert_eq!(
        parse(readme).unwrap(),
        Quickstart {
            scripts: vec![(4, "echo one".into()), (17, "echo two".into())],
            expected: vec!["one".into()]
        }
    );
    assert_eq!(
        parse("<!-- quickstart -->\n```toml\nx\n```\n").unwrap_err(),
        "README.md:1: <!-- quickstart --> is not followed by a ```sh block"
    );
    assert!(
        parse("<!-- quickstart -->\n```sh\necho\n")
            .unwrap_err()
            .contains("never closed")
    );
}

#[test]
fn expected_lines_match_whole_words_in_order() {
    assert!(shows(
        "corp … UP … eu-west … ok",
        "corp  UP  12  14:05:00  eu-west  ok"
    ));
    assert!(shows("result: OK …", "  result: OK  eu-west=ok us-east=ok"));
    assert!(shows(
        "… us-east … ok",
        "                         us-east  ok"
    ));
    assert!(!shows("corp … UP", "corp  DEGRADED  12"), "another verdict");
    assert!(
        !shows("… us-east … ok", "us-east  failed  took 3 s"),
        "ok only inside a word"
    );
    assert!(!shows("corp … UP", "other corp UP"), "not at the start");
    assert!(
        !shows("eu-west … ok … corp", "corp eu-west ok"),
        "out of order"
    );
}
