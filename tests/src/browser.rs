//! The headless browser the page tests drive: Debian's `chromium` with
//! `playwright-core` and `axe-core` from npm under `tests/browser`.

use std::path::{Path, PathBuf};

/// `tests/browser`: the scripts and their `node_modules`.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Fails (never skips) with the install hint when the browser tooling is missing.
pub fn require_browser() {
    const HINT: &str = "install with `make deps` (Debian `chromium` through tests/mailstack/install.sh, \
        then `npm ci --prefix tests/browser` for playwright-core and axe-core)";
    assert!(Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium is missing: {HINT}");
    for module in ["playwright-core", "axe-core"] {
        assert!(
            browser_dir().join("node_modules").join(module).join("package.json").exists(),
            "tests/browser/node_modules/{module} is missing: {HINT}"
        );
    }
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is missing (apt-get install nodejs npm): {HINT}");
}
