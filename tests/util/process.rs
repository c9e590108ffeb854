//! A `shopstream serve` child process, for the tests that SIGKILL a server.
//!
//! Kept out of [`util`](super::util): it names the binary (`CARGO_BIN_EXE_shopstream`),
//! which Cargo sets only for the tests of the package that builds it, so a test that
//! never starts the binary can include `util` from another package.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use super::util::IO_TIMEOUT;

/// A `shopstream serve` child process (for crash tests: it can be SIGKILLed).
pub struct ServerProcess {
    child: Child,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    /// `as_of` from the ready line: what the replayed log holds.
    pub as_of: u64,
    stderr: Arc<Mutex<Vec<u8>>>,
    drains: Vec<JoinHandle<()>>,
    killed: bool,
}

impl ServerProcess {
    /// Starts the binary on `data_dir` with OS-chosen ports and waits for its ready
    /// line `shopstream listening ingest=ADDR http=ADDR as_of=SEQ`.
    pub fn spawn(data_dir: &Path) -> ServerProcess {
        Self::spawn_with(data_dir, &[])
    }

    /// As [`spawn`](Self::spawn), with more arguments for `serve` (`--config F`).
    pub fn spawn_with(data_dir: &Path, args: &[&std::ffi::OsStr]) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shopstream"));
        // In the repository root, as from a checkout (the default segment file,
        // config/segments.toml, is found there); this test's own directory is tools/.
        cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .arg("serve")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--ingest-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--workers", "2"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHOPSTREAM_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("spawn shopstream serve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut drains = Vec::new();
        {
            let mut pipe = child.stderr.take().expect("stderr");
            let sink = stderr.clone();
            drains.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().expect("poisoned").extend_from_slice(&buf[..n]);
                }
            }));
        }
        let (tx, rx) = mpsc::channel();
        {
            let pipe = child.stdout.take().expect("stdout");
            drains.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("shopstream listening") {
                        let _ = tx.send(line);
                    }
                }
            }));
        }
        let mut p = ServerProcess {
            child,
            tcp: "0.0.0.0:0".parse().expect("addr"),
            http: "0.0.0.0:0".parse().expect("addr"),
            as_of: 0,
            stderr,
            drains,
            killed: false,
        };
        let line = match rx.recv_timeout(IO_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                p.kill();
                panic!(
                    "no ready line from shopstream serve ({e}); stderr:\n{}",
                    p.stderr()
                );
            }
        };
        for word in line.split_whitespace() {
            if let Some(a) = word.strip_prefix("ingest=") {
                p.tcp = a.parse().expect("ingest address");
            } else if let Some(a) = word.strip_prefix("http=") {
                p.http = a.parse().expect("http address");
            } else if let Some(s) = word.strip_prefix("as_of=") {
                p.as_of = s.parse().expect("as_of");
            }
        }
        assert_ne!(p.tcp.port(), 0, "ready line without ingest address: {line}");
        assert_ne!(p.http.port(), 0, "ready line without http address: {line}");
        p
    }

    /// SIGKILL, then wait for the process and for its output to be drained.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
    }

    /// What the process wrote to stderr so far (complete after [`kill`](Self::kill)),
    /// without terminal colour codes.
    pub fn stderr(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &self.stderr.lock().expect("poisoned"),
        ))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes `ESC [ ... letter` sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
