//! What `--help` shows a new user: options grouped under headings (the global ones apart), and examples that
//! can be pasted as they are printed.

#[test]
fn help_groups_the_options_and_prints_examples_that_paste() {
    for cmd in ["layers", "extract", "compare", "analyze", "report", "merge"] {
        let out = assert_cmd::Command::cargo_bin("domsim")
            .unwrap()
            .env("COLUMNS", "80")
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Global options (any command):"),
            "{cmd}: {text}"
        );
        let examples = text
            .split_once("Examples:")
            .unwrap_or_else(|| panic!("{cmd} --help has no examples"))
            .1;
        // each command starts on its own line with `domsim`; a continuation line follows a trailing `\`
        let lines: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let continued = i > 0 && lines[i - 1].trim_end().ends_with('\\');
            assert!(
                t.starts_with("domsim ") || t.starts_with('#') || continued,
                "{cmd}: an example line that is neither a command, a comment nor a continuation: {l:?}"
            );
            assert!(
                l.chars().count() <= 80,
                "{cmd}: {l:?} is wider than 80 columns"
            );
        }
    }
    let analyze = assert_cmd::Command::cargo_bin("domsim")
        .unwrap()
        .args(["analyze", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(analyze.stdout).unwrap();
    for heading in [
        "Inputs and output:",
        "Model and layers:",
        "Preprocessing:",
        "Estimators:",
    ] {
        assert!(text.contains(heading), "analyze --help lacks '{heading}'");
    }
    // the inputs come first
    assert!(text.find("Inputs and output:") < text.find("Model and layers:"));
}

/// Each command lists only the flags it uses; the runtime flags written before a command still work, and a
/// command that ignores them says so.
#[test]
fn each_command_lists_its_own_flags() {
    let help = |cmd: &str| {
        let out = assert_cmd::Command::cargo_bin("domsim")
            .unwrap()
            .args([cmd, "--help"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let uses: [(&str, &[&str]); 6] = [
        ("layers", &["--ort-lib"]),
        ("extract", &["--threads", "--ort-lib"]),
        ("compare", &["--threads", "--seed"]),
        ("analyze", &["--threads", "--seed", "--ort-lib"]),
        ("report", &[]),
        ("merge", &[]),
    ];
    for (cmd, own) in uses {
        let text = help(cmd);
        for flag in ["--threads", "--seed", "--ort-lib"] {
            assert_eq!(
                text.contains(flag),
                own.contains(&flag),
                "`domsim {cmd} --help` and {flag}: {text}"
            );
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = assert_cmd::Command::cargo_bin("domsim")
        .unwrap()
        .args(["--threads", "2", "--seed", "4", "report"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--threads has no effect on `domsim report`"),
        "{err}"
    );
    assert!(
        err.contains("--seed has no effect on `domsim report`"),
        "{err}"
    );
}

#[test]
fn the_readme_is_short_and_its_test_command_is_what_ci_runs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 220,
        "the README has {lines} lines; reference, validation and performance belong in docs/"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(readme.contains("bash scripts/test.sh") && ci.contains("bash scripts/test.sh"));
    // every document the README links to exists
    for link in readme.split("](").skip(1) {
        let target = link.split(')').next().unwrap();
        if !target.starts_with("http") {
            assert!(
                root.join(target).exists(),
                "README links to missing {target}"
            );
        }
    }
}
