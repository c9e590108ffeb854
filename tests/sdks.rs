//! The real analytics SDKs against the server: Segment's `segment-analytics-python`
//! and RudderStack's `rudder-sdk-python`, from PyPI, each sending a shop session
//! (`tests/sdk/send.py`) with its own client, batching and (RudderStack) gzip, to
//! `POST /v1/batch`; the profiles must then show exactly those events.
//!
//! The SDKs live in a virtual environment under Cargo's test temp directory, made
//! on the first run from the pinned `tests/sdk/requirements.txt` and reused after.
//! On a fresh Debian machine without python3's venv the set-up installs Debian's
//! `python3-venv` (as root, or with passwordless sudo), so that the README's test
//! command needs nothing installed by hand. Without that or without PyPI the tests
//! fail and say why; `SHOPSTREAM_SKIP_SDK_TESTS=1` skips them explicitly.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::*;

const REQUIREMENTS: &str = include_str!("sdk/requirements.txt");

/// How long pip may take to install the SDKs, and one script to send.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

fn skipped() -> bool {
    if std::env::var("SHOPSTREAM_SKIP_SDK_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SHOPSTREAM_SKIP_SDK_TESTS=1: the SDK test is skipped");
        return true;
    }
    false
}

/// Runs `cmd` to completion within `limit`, returning its output; the error says
/// what failed, with the command's stderr.
fn run(mut cmd: Command, what: &str, limit: Duration) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("shopstream-sdk-{}-{what}", std::process::id()));
    let out = std::fs::File::create(&path).map_err(|e| format!("{what}: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("{what}: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{what}: cannot start {cmd:?}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("{what} failed ({s}):\n{text}")),
        None => Err(format!("{what} did not finish within {limit:?}:\n{text}")),
    }
}

/// The venv's python, made once per test process (and once per requirements
/// file: its hash names the directory).
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(make_venv) {
        Ok(p) => p,
        Err(e) => panic!(
            "{e}\n\nThe SDK tests need python3 with venv (Debian: apt-get install -y python3-venv) \
             and access to PyPI; set SHOPSTREAM_SKIP_SDK_TESTS=1 to skip them explicitly."
        ),
    }
}

fn make_venv() -> Result<PathBuf, String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    REQUIREMENTS.hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sdk-venv-{:016x}", h.finish()));
    let python = dir.join("bin").join("python");
    if dir.join("installed").exists() {
        return Ok(python);
    }
    // Built beside, then renamed: a venv half made by an interrupted run is never used.
    let building = dir.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    if let Err(e) = install(&building) {
        let _ = std::fs::remove_dir_all(&building);
        return Err(e);
    }
    // Another test process may have won the race: then its venv is used.
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    Ok(python)
}

/// Whether `python3` can make a venv with pip in it.
fn has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian's python3 and python3-venv when `python3` cannot make a venv.
fn ensure_venv() -> Result<(), String> {
    if has_venv() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    eprintln!("sdk tests: python3 cannot make a venv; installing Debian's python3-venv");
    run(apt(&["update", "-q"]), "apt-get update", INSTALL_TIMEOUT)?;
    run(
        apt(&["install", "-y", "-q", "python3", "python3-venv"]),
        "apt-get install python3-venv",
        INSTALL_TIMEOUT,
    )?;
    if has_venv() {
        Ok(())
    } else {
        Err("python3-venv was installed, and python3 still cannot make a venv".into())
    }
}

/// A venv in `dir` with the pinned SDKs.
fn install(dir: &Path) -> Result<(), String> {
    ensure_venv()?;
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(dir);
    run(venv, "python3 -m venv", INSTALL_TIMEOUT)?;
    let requirements = dir.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS).map_err(|e| e.to_string())?;
    let mut pip = Command::new(dir.join("bin").join("python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .args(["--timeout", "30", "--retries", "2", "-r"])
    .arg(&requirements);
    run(pip, "pip install the SDKs from PyPI", INSTALL_TIMEOUT)?;
    std::fs::write(dir.join("installed"), REQUIREMENTS).map_err(|e| e.to_string())
}

/// Sends the session of `tests/sdk/send.py` through `sdk` as `user`, then checks
/// the profiles of `user` and of its anonymous visitor.
fn sdk_session_lands_in_the_profiles(sdk: &str, user: &str) {
    if skipped() {
        return;
    }
    let python = python();
    let server = TestServer::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/send.py");
    let mut send = Command::new(python);
    send.arg(&script).args([
        sdk,
        &format!("http://{}", server.http),
        "test-write-key",
        user,
    ]);
    let out = run(send, &format!("send.py {sdk}"), SEND_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains(&format!("{sdk}: sent")), "{out}");

    // Every answered batch was durable before its answer: wait for it to be visible.
    let (_, health) = get_json(server.http, "/healthz");
    let seq = health["logged_seq"].as_u64().expect("logged_seq");
    assert_eq!(seq, 5, "the retried order is a duplicate: {health}");
    let p = &profile(server.http, user, seq)["profile"];
    assert_eq!(
        p["events"],
        json!({"identify": 1, "Product Viewed": 1, "Product Added": 1, "Order Completed": 1}),
        "{p}"
    );
    assert_eq!(p["orders"], 1);
    assert_eq!(p["items_purchased"], 3);
    assert_money(&p["revenue"], 59.97);
    assert_eq!(p["first_seen"], "2023-11-14T22:13:20Z");
    assert_eq!(p["last_seen"], "2023-11-14T22:13:50Z");
    assert_eq!(
        p["traits"],
        json!({"plan": "pro", "email": format!("{user}@example.com")})
    );
    assert_eq!(
        p["top_categories"],
        json!([{"category": "shoes", "score": 9}])
    );
    let anon = &profile(server.http, &format!("{user}-anon"), seq)["profile"];
    assert_eq!(anon["events"], json!({"Product Viewed": 1}), "{anon}");
    assert_eq!(anon["first_seen"], "2023-11-14T22:14:00Z");
    let (_, metrics) = get_text(server.http, "/metrics");
    let rejected: Value = metrics
        .lines()
        .filter(|l| l.starts_with("shopstream_events_rejected_total"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap_or("0")
                .parse::<f64>()
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        .into();
    assert_eq!(
        rejected,
        json!(0.0),
        "nothing the SDK sent is refused:\n{metrics}"
    );
    server.shutdown();
}

#[test]
fn segment_sdk_session_lands_in_the_profiles() {
    sdk_session_lands_in_the_profiles("segment", "segment-user");
}

/// RudderStack gzips every batch and sends an identify's traits in
/// `context.traits` only.
#[test]
fn rudderstack_sdk_session_lands_in_the_profiles() {
    sdk_session_lands_in_the_profiles("rudder", "rudder-user");
}
